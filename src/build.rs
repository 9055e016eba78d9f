//! The build pipeline's entry point: a validated spec in, an output directory out.
//!
//! The integrator assembles the pipeline (closure, sizing, layout, builder VM
//! or store image, conversion, outputs) here; until then it refuses to run.

use std::path::{Path, PathBuf};

use crate::spec::ImageSpec;

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The pipeline is not assembled in this build of nixdisk yet.
    #[error("cannot build `{}`: the build pipeline is not wired yet (the integrator assembles it)", out.display())]
    NotWired {
        /// The output directory that was asked for.
        out: PathBuf,
    },
}

/// Builds the image `spec` describes into the directory `out`, which appears
/// only when everything succeeded. `spec` must have passed validation.
pub fn run(spec: &ImageSpec, out: &Path) -> Result<(), BuildError> {
    tracing::debug!(name = %spec.name, out = %out.display(), "build requested");
    Err(BuildError::NotWired {
        out: out.to_owned(),
    })
}
