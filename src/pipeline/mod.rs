//! The build pipeline's entry point: a validated spec in, an output directory
//! out.
//!
//! The closure is read first (the one input every kind of image needs), then
//! the spec picks the way: a store-only image made on the host
//! ([`store_only`]), or a full image made by the builder VM ([`full`]). Both
//! end the same way: conversion to the output format, hydra-build-products,
//! postVM, and the output directory appearing only when all of it succeeded.

mod full;
mod inputs;
mod store_only;

use std::path::{Path, PathBuf};

use crate::closure::ClosureError;
use crate::convert::ConvertError;
use crate::interrupt::{self, Interrupted, Phase};
use crate::output::{OutputDir, OutputError};
use crate::spec::ImageSpec;

pub(crate) use full::{FullImageError, grub_devices, run_step, steps};
pub use inputs::{CLOSURE_INFO_ENV, read_closure};

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The closure of the system could not be read.
    #[error("could not read the closure to install")]
    Closure(#[from] ClosureError),
    /// The store-only image could not be made.
    #[error("could not build the store image")]
    StoreImage(#[from] crate::store_image::StoreImageError),
    /// The full image could not be made.
    #[error(transparent)]
    Full(#[from] full::FullImageError),
    /// The raw image could not be converted to the output format.
    #[error("could not convert the image")]
    Convert(#[from] ConvertError),
    /// The output directory could not be prepared, postVM failed, or the
    /// result could not be published.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// Ctrl-C or SIGTERM stopped the build.
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    /// The raw scratch image could not be removed.
    #[error("could not remove the scratch image {}", path.display())]
    Scratch {
        /// The scratch image.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// Builds the image `spec` describes into the directory `out`, which appears
/// only when everything succeeded. `spec` must have passed validation.
pub fn run(spec: &ImageSpec, out: &Path) -> Result<PathBuf, BuildError> {
    interrupt::enter(Phase::ClosureRead)?;
    let closure = crate::timings::phase("read the closure", || read_closure(spec))?;
    tracing::info!(
        paths = closure.paths.len(),
        nar_bytes = closure.total_nar_size(),
        "closure read"
    );
    let output = OutputDir::create(out)?;
    // The raw image is made beside the result and converted (or renamed) into
    // place, so a half-written image never carries the final name.
    let raw = output.path().join(".disk.raw");
    let efi_vars = if spec.only_nix_store {
        interrupt::enter(Phase::StoreImage)?;
        crate::timings::phase("store file system", || {
            store_only::build(spec, &closure, &raw)
        })?;
        None
    } else {
        full::build(spec, &closure, &raw, output.path())?
    };
    finish(spec, output, &raw, efi_vars.as_deref())
}

/// Converts the raw image into the output, adds the build products, runs
/// postVM, and publishes the output directory.
fn finish(
    spec: &ImageSpec,
    output: OutputDir,
    raw: &Path,
    efi_vars: Option<&Path>,
) -> Result<PathBuf, BuildError> {
    let image = output.image_path(&spec.base_name, spec.format);
    interrupt::enter(Phase::Conversion)?;
    crate::timings::phase("conversion", || {
        crate::convert::convert(spec.format, raw, &image, spec.deterministic)
    })?;
    if raw.exists() {
        std::fs::remove_file(raw).map_err(|source| BuildError::Scratch {
            path: raw.to_owned(),
            source,
        })?;
    }
    output.add_hydra_build_product(&spec.base_name, spec.format)?;
    if let Some(vars) = efi_vars {
        output.add_efi_vars(vars)?;
        // The builder's copy (in the output's work directory) is not a product.
        std::fs::remove_file(vars).map_err(|source| BuildError::Scratch {
            path: vars.to_owned(),
            source,
        })?;
    }
    interrupt::enter(Phase::PostVm)?;
    output.run_post_vm(&spec.post_vm, &image)?;
    interrupt::enter(Phase::Publish)?;
    let published = output.finish()?;
    tracing::info!(out = %published.display(), "image ready");
    Ok(published)
}
