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

/// The mode of the staging directory itself, which becomes the root
/// directory of the target file system when the guest copies `dir/.`.
pub const ROOT_MODE: u32 = 0o755;

/// Writes `plan` into `dir` (created if missing, else it must be empty). The
/// directory itself gets [`ROOT_MODE`], time and owner like every entry, so
/// copying `dir/.` onto the target gives its root canonical metadata too.
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
    let staged = entries.into_iter().rev().map(|entry| {
        let is_link = matches!(entry.kind, EntryKind::Symlink(_));
        (dir.join(&entry.path), is_link, entry.mode)
    });
    let root = (dir.to_owned(), false, ROOT_MODE);
    for (path, is_link, mode) in staged.chain(std::iter::once(root)) {
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
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(io("set the mode of", &path))?;
        }
        rustix::fs::utimensat(CWD, &path, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io("set the time of", &path)(e.into()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::install::image_root::Entry;

    fn entry(path: &str, kind: EntryKind, mode: u32) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode,
            origin: "test".into(),
        }
    }

    #[test]
    fn modes_times_and_links_are_canonical_even_under_a_read_only_directory() {
        let mut plan = ImageRootPlan::default();
        plan.add(entry("ro/tool", EntryKind::Bytes(b"#!".to_vec()), 0o4755))
            .unwrap();
        plan.add(entry("ro/link", EntryKind::Symlink("tool".into()), 0o777))
            .unwrap();
        plan.add(entry("ro", EntryKind::Dir, 0o555)).unwrap();
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("staging");
        materialise(&plan, &dir).unwrap();
        let meta = |p: &str| std::fs::symlink_metadata(dir.join(p)).unwrap();
        // `ro` was made by `add` as a parent (0755) before the explicit 0555:
        // the first entry for a directory keeps its mode.
        assert_eq!(meta("ro").mode() & 0o7777, 0o755);
        assert_eq!(meta("ro/tool").mode() & 0o7777, 0o4755);
        assert_eq!(
            std::fs::read_link(dir.join("ro/link")).unwrap(),
            Path::new("tool")
        );
        for path in ["", "ro", "ro/tool", "ro/link"] {
            assert_eq!(meta(path).mtime(), CANONICAL_MTIME, "{path:?}");
        }
        assert_eq!(meta("").mode() & 0o7777, ROOT_MODE);
        assert!(matches!(
            materialise(&plan, &dir),
            Err(MaterialiseError::NotEmpty { .. })
        ));
    }

    #[test]
    fn a_read_only_directory_gets_its_mode_after_its_children() {
        let mut plan = ImageRootPlan::default();
        plan.add(entry("ro", EntryKind::Dir, 0o555)).unwrap();
        plan.add(entry("ro/file", EntryKind::Bytes(b"x".to_vec()), 0o444))
            .unwrap();
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("staging");
        materialise(&plan, &dir).unwrap();
        let mode = std::fs::metadata(dir.join("ro")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o555);
        assert_eq!(std::fs::read(dir.join("ro/file")).unwrap(), b"x");
    }
}
