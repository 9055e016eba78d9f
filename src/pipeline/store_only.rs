//! Store-only images (`onlyNixStore`): the closure at the root of one file
//! system, made on the host with no VM.

use std::path::{Path, PathBuf};

use crate::closure::Closure;
use crate::spec::ImageSpec;
use crate::store_image::{StoreDiskReport, StoreImageError, build_store_disk};

/// Builds the store-only disk into the raw image `raw`.
pub fn build(
    spec: &ImageSpec,
    closure: &Closure,
    raw: &Path,
) -> Result<StoreDiskReport, StoreImageError> {
    let paths: Vec<PathBuf> = closure.store_paths().map(Path::to_path_buf).collect();
    let registration = spec
        .nix_path_registration
        .then(|| closure.registration_text());
    let spinner = crate::progress::spinner(format!(
        "building the {} store image ({} paths)",
        spec.fs_type.as_str(),
        paths.len()
    ));
    let report = build_store_disk(spec, &paths, registration.as_deref(), raw);
    spinner.finish_and_clear();
    let report = report?;
    if let Some(sizing) = &report.sizing {
        tracing::info!("auto size of the store file system:\n{}", sizing.breakdown);
    }
    if let Some((extra, share)) = report.slack(spec.additional_space.bytes()) {
        tracing::info!(
            disk = report.disk_size,
            slack_bytes = extra,
            "store image built; slack beyond additionalSpace {:.2}%",
            share * 100.0
        );
    }
    Ok(report)
}
