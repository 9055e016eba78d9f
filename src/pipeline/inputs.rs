//! What a build installs: the systems named by the spec and the closure of
//! everything that goes into the image's store.

use std::path::{Path, PathBuf};

use crate::closure::{Closure, ClosureError};
use crate::spec::ImageSpec;

/// Environment variable naming a closureInfo directory (`store-paths` +
/// `registration`) that holds the whole closure; the Nix wrapper sets it,
/// since a sandboxed build cannot ask Nix.
pub const CLOSURE_INFO_ENV: &str = "NIXDISK_CLOSURE_INFO";

/// The systems the spec installs, oldest first: `system`, or `systems`.
pub fn systems(spec: &ImageSpec) -> Vec<PathBuf> {
    match &spec.system {
        Some(system) => vec![system.clone()],
        None => spec.systems.clone(),
    }
}

/// Reads the closure of everything the image's store holds: the systems,
/// `additionalPaths` and the channel. `$NIXDISK_CLOSURE_INFO`, when set, is
/// taken as that closure; else each system is read (a closureInfo directory
/// as it is, a store path by asking Nix) and the rest is asked of Nix.
pub fn read_closure(spec: &ImageSpec) -> Result<Closure, ClosureError> {
    if let Some(dir) = std::env::var_os(CLOSURE_INFO_ENV) {
        tracing::debug!(dir = ?dir, "closure from {CLOSURE_INFO_ENV}");
        return Closure::from_closure_info(Path::new(&dir));
    }
    let mut closures = systems(spec)
        .iter()
        .map(|system| Closure::from_system(system))
        .collect::<Result<Vec<_>, _>>()?;
    let mut extra: Vec<PathBuf> = spec.additional_paths.clone();
    if spec.copy_channel
        && let Some(channel) = &spec.channel_source
    {
        extra.push(channel.clone());
    }
    if !extra.is_empty() {
        closures.push(Closure::from_store_paths(&extra)?);
    }
    Closure::merge(closures)
}
