//! Full images: the builder VM partitions, makes the file systems, installs
//! the closure and runs the bootloader installation.

use std::path::{Path, PathBuf};

use crate::closure::Closure;
use crate::spec::ImageSpec;

/// Why a full image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FullImageError {
    /// Full images need the builder VM's install steps, which this build of
    /// nixdisk does not have yet.
    #[error(
        "full images are not available yet: this nixdisk builds store-only images\nhint: set \"onlyNixStore\": true (or --only-nix-store) for a store image"
    )]
    NotAvailable,
}

/// Builds the full image into the raw image `raw`; returns the EFI variables
/// file when `touchEFIVars` asked for one.
pub fn build(
    _spec: &ImageSpec,
    _closure: &Closure,
    _raw: &Path,
    _work: &Path,
) -> Result<Option<PathBuf>, FullImageError> {
    Err(FullImageError::NotAvailable)
}
