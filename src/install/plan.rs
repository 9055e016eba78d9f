//! The whole host-side installation plan of one image, from the spec.
//!
//! [`plan_install`] ties the steps together: the Nix database of the closure,
//! the image root (generations, channel, configuration file), and the
//! `contents` with their owners resolved in the default generation.

use std::path::{Path, PathBuf};

use super::accounts::{Accounts, AccountsError};
use super::contents::{ChownOp, ContentsError, resolve_contents};
use super::image_root::{
    ImageRootError, ImageRootInputs, ImageRootPlan, plan_image_root, resolve_channel,
};
use super::nix_db::{NixDbError, read_derivation_outputs, registration_time, render_nix_db};
use crate::closure::Closure;
use crate::spec::ImageSpec;

/// Any failure of planning an installation.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Writing the Nix database failed.
    #[error(transparent)]
    NixDb(#[from] NixDbError),
    /// The image root could not be planned.
    #[error(transparent)]
    ImageRoot(#[from] ImageRootError),
    /// The installed system's users and groups could not be read.
    #[error(transparent)]
    Accounts(#[from] AccountsError),
    /// `contents` could not be resolved.
    #[error(transparent)]
    Contents(#[from] ContentsError),
}

/// What the host hands the guest besides the store paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallPlan {
    /// Everything placed beside `/nix/store`: stage it with
    /// [`super::materialise`], then copy it onto the target root.
    pub root: ImageRootPlan,
    /// Owner changes for `contents`, applied by the guest after copying.
    pub chowns: Vec<ChownOp>,
}

/// The channel store path the spec asks for: `channelSource` resolved when
/// `copyChannel` is set, else none.
pub fn spec_channel(spec: &ImageSpec) -> Result<Option<PathBuf>, ImageRootError> {
    match (&spec.channel_source, spec.copy_channel) {
        (Some(source), true) => resolve_channel(source).map(Some),
        _ => Ok(None),
    }
}

/// The roots whose closure the image must hold, as make-disk-image counts
/// them: every generation's toplevel, the channel, and `additionalPaths`.
pub fn closure_roots(
    spec: &ImageSpec,
    toplevels: &[PathBuf],
) -> Result<Vec<PathBuf>, ImageRootError> {
    let mut roots = toplevels.to_vec();
    roots.extend(spec_channel(spec)?);
    roots.extend(spec.additional_paths.iter().cloned());
    Ok(roots)
}

/// The toplevels as the closure names them: a `./result`-style symlink is
/// followed to its store path. One that is in no way in the closure stays as
/// given, for [`plan_image_root`] to report.
fn store_paths_of(toplevels: &[PathBuf], closure: &Closure) -> Vec<PathBuf> {
    let in_closure = |path: &PathBuf| closure.contains(path);
    toplevels
        .iter()
        .map(|toplevel| {
            if in_closure(toplevel) {
                return toplevel.clone();
            }
            std::fs::canonicalize(toplevel)
                .ok()
                .filter(in_closure)
                .unwrap_or_else(|| toplevel.clone())
        })
        .collect()
}

/// Plans the installation of `closure` with the generations `toplevels`
/// (oldest first; store paths in the closure, or symlinks to them) for `spec`. Reads the host:
/// `.drv` files of the closure, the channel link, the default generation's
/// account files and the `contents` sources.
pub fn plan_install(
    spec: &ImageSpec,
    toplevels: &[PathBuf],
    closure: &Closure,
) -> Result<InstallPlan, InstallError> {
    let toplevels = store_paths_of(toplevels, closure);
    let outputs = read_derivation_outputs(closure)?;
    let nix_db = render_nix_db(closure, &outputs, registration_time(spec.deterministic))?;
    let inputs = ImageRootInputs {
        toplevels: toplevels.clone(),
        channel: spec_channel(spec)?,
        config_file: spec.config_file.clone(),
        partition_table_type: spec.partition_table_type,
        nix_db,
    };
    let mut root = plan_image_root(&inputs, closure)?;
    let accounts = match toplevels.last() {
        Some(toplevel) => Accounts::from_toplevel(Path::new(toplevel))?,
        None => Accounts::builtin(),
    };
    let contents = resolve_contents(&spec.contents, &accounts)?;
    contents.add_to(&mut root)?;
    tracing::debug!(
        entries = root.len(),
        chowns = contents.chowns.len(),
        "planned the installation"
    );
    Ok(InstallPlan {
        root,
        chowns: contents.chowns,
    })
}
