//! Writes an [`ImageRootPlan`] into a staging directory, with canonical
//! metadata: the planned modes, modification time 1 (as Nix gives store
//! files) on every entry, and owner 0:0 when running as root.
//!
//! The staging directory is what the builder VM copies onto the target root
//! next to the store. When not running as root the entries stay owned by the
//! caller; the guest copies them as root with owner 0:0 either way, and then
//! applies the `contents` owners ([`super::contents::ChownOp`]).

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, Timespec, Timestamps};

use super::image_root::{EntryKind, ImageRootPlan};

/// The modification time of every staged entry (seconds since the epoch).
pub const CANONICAL_MTIME: i64 = 1;

/// What went wrong writing the staging directory.
#[derive(Debug, thiserror::Error)]
pub enum MaterialiseError {
    /// The staging directory exists and holds something.
    #[error(
        "the staging directory {dir} is not empty\n  hint: give a fresh directory; nixdisk does not write over existing files"
    )]
    NotEmpty {
        /// The directory.
        dir: PathBuf,
    },
    /// A file system operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done (`create`, `copy ... to`, `set the mode of`...).
        action: String,
        /// The path acted on.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn io(action: impl Into<String>, path: &Path) -> impl FnOnce(std::io::Error) -> MaterialiseError {
    let action = action.into();
    let path = path.to_owned();
    move |source| MaterialiseError::Io {
        action,
        path,
        source,
    }
}

/// Writes `plan` into `dir` (created if missing, else it must be empty).
pub fn materialise(plan: &ImageRootPlan, dir: &Path) -> Result<(), MaterialiseError> {
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let mut listing = std::fs::read_dir(dir).map_err(io("read", dir))?;
    if listing.next().is_some() {
        return Err(MaterialiseError::NotEmpty {
            dir: dir.to_owned(),
        });
    }
    tracing::debug!(dir = %dir.display(), entries = plan.len(), "staging the image root");
    // Directories stay writable until every child is in; modes come after.
    for entry in plan.entries() {
        let path = dir.join(&entry.path);
        match &entry.kind {
            EntryKind::Dir => std::fs::create_dir(&path).map_err(io("create", &path))?,
            EntryKind::Symlink(target) => symlink(target, &path).map_err(io("create", &path))?,
            EntryKind::Bytes(bytes) => std::fs::write(&path, bytes).map_err(io("write", &path))?,
            EntryKind::HostFile(source) => {
                std::fs::copy(source, &path)
                    .map_err(io(format!("copy {} to", source.display()), &path))?;
            }
        }
    }
    let as_root = rustix::process::geteuid().is_root();
    let canonical = Timespec {
        tv_sec: CANONICAL_MTIME,
        tv_nsec: 0,
    };
    let times = Timestamps {
        last_access: canonical,
        last_modification: canonical,
    };
    // Children before parents, so setting a child's metadata leaves its
    // parent's mtime alone and a read-only parent is changed last.
    let entries: Vec<_> = plan.entries().collect();
    for entry in entries.into_iter().rev() {
        let path = dir.join(&entry.path);
        let is_link = matches!(entry.kind, EntryKind::Symlink(_));
        if as_root {
            rustix::fs::chownat(
                CWD,
                &path,
                Some(rustix::fs::Uid::ROOT),
                Some(rustix::fs::Gid::ROOT),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io("set the owner of", &path)(e.into()))?;
        }
        if !is_link {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(entry.mode))
                .map_err(io("set the mode of", &path))?;
        }
        rustix::fs::utimensat(CWD, &path, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io("set the time of", &path)(e.into()))?;
    }
    Ok(())
}
