//! The staged tree: the closure's store paths side by side in one directory,
//! as the file-system tools take it (`mke2fs -d`, `mkfs.erofs`, `mksquashfs`).
//!
//! Nothing is copied: directories are recreated, and files and symlinks are
//! hard links to the store's own inodes. Hard links inside the closure (Nix's
//! store optimisation) therefore stay one inode, which the tools keep as hard
//! links. Where a hard link is refused (another file system; or
//! `fs.protected_hardlinks` for a user who does not own the store) the file is
//! copied instead, and copies of one store inode are linked to each other.
//!
//! Hard links cost about as much kernel time as `mke2fs -d` itself on a big
//! closure. As root there is a cheaper way ([`StagingMode::BindMounts`]):
//! each store directory gets an empty mount point, and the tool runs in a
//! private mount namespace where the store paths are bind-mounted onto them
//! (see [`super::plan`]); nothing outside that namespace sees the mounts.
//!
//! The staged files *are* the store's files: this module never opens them for
//! writing nor changes their modes. Directories are its own; it makes them
//! writable again before removing the tree.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use super::StoreImageError;

/// Name of the registration file nixpkgs' make-ext4-fs puts at the root.
pub const REGISTRATION_FILE: &str = "nix-path-registration";

/// How store directories get into the staged tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StagingMode {
    /// Bind mounts where the process may make them (root), else hard links.
    Auto,
    /// Recreate directories and hard-link files (copy where refused).
    HardLinks,
    /// Empty mount points, bind-mounted in the tool's own mount namespace.
    BindMounts,
}

impl StagingMode {
    /// The mode `Auto` stands for in this process.
    pub fn resolve(self) -> StagingMode {
        match self {
            StagingMode::Auto if rustix::process::geteuid().is_root() => StagingMode::BindMounts,
            StagingMode::Auto => StagingMode::HardLinks,
            other => other,
        }
    }
}

/// A store directory to bind-mount onto its mount point in the staged tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// The store path.
    pub source: PathBuf,
    /// Its (empty) mount point in the staged tree.
    pub target: PathBuf,
}

/// The fstab that `mount -a -T` reads to make `binds`: one `none bind` line
/// each, with the octal escapes fstab uses for blanks and backslashes.
pub fn bind_fstab(binds: &[BindMount]) -> String {
    fn escape(path: &Path) -> String {
        let mut out = String::new();
        for c in path.to_string_lossy().chars() {
            match c {
                ' ' => out.push_str("\\040"),
                '\t' => out.push_str("\\011"),
                '\n' => out.push_str("\\012"),
                '\\' => out.push_str("\\134"),
                c => out.push(c),
            }
        }
        out
    }
    binds
        .iter()
        .map(|b| {
            format!(
                "{} {} none bind 0 0\n",
                escape(&b.source),
                escape(&b.target)
            )
        })
        .collect()
}

/// A staged closure; removed from disk when dropped.
#[derive(Debug)]
pub struct StagedTree {
    root: PathBuf,
    stats: StagingStats,
    binds: Vec<BindMount>,
}

/// What staging found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StagingStats {
    /// Store paths staged.
    pub store_paths: u64,
    /// Directories, files and symlinks in the tree (the root not counted).
    pub entries: u64,
    /// Entries that had to be copied because a hard link was refused.
    pub copied: u64,
    /// Store directories left to bind mounts.
    pub bind_mounts: u64,
}

impl StagedTree {
    /// The directory to hand to the file-system tool.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What staging found and did.
    pub fn stats(&self) -> StagingStats {
        self.stats
    }

    /// The bind mounts the tool's mount namespace needs (empty unless
    /// staged with [`StagingMode::BindMounts`]).
    pub fn binds(&self) -> &[BindMount] {
        &self.binds
    }
}

impl Drop for StagedTree {
    fn drop(&mut self) {
        // Store directories are read-only (0555); unless root, make ours
        // writable so that their entries can be unlinked. Only directories:
        // files are the store's own inodes.
        if !rustix::process::geteuid().is_root() {
            make_dirs_writable(&self.root);
        }
        // Unlinking waits on the file system journal far more than on the
        // CPU: several threads, one store path at a time, overlap the waits.
        let entries: Vec<PathBuf> = match fs::read_dir(&self.root) {
            Ok(entries) => entries.flatten().map(|entry| entry.path()).collect(),
            Err(_) => Vec::new(),
        };
        let removed = in_parallel(&entries, |path| {
            let result = if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
                fs::remove_dir_all(path)
            } else {
                fs::remove_file(path)
            };
            result.map_err(|e| io("could not remove", path, e))
        });
        if let Err(error) = removed.and_then(|()| {
            fs::remove_dir(&self.root).map_err(|e| io("could not remove", &self.root, e))
        }) {
            tracing::warn!(path = %self.root.display(), %error, "could not remove the staged tree");
        }
    }
}

/// Stages `store_paths` into a new directory `root` (which must not exist).
///
/// `registration`, when given, becomes `nix-path-registration` (mode 0444) at
/// the root. `timestamp` (seconds since the epoch) is the modification time of
/// the root and of that file; store entries keep their own times (Nix sets
/// them to 1).
pub fn stage_closure(
    store_paths: &[PathBuf],
    registration: Option<&str>,
    root: &Path,
    timestamp: Option<u64>,
    mode: StagingMode,
) -> Result<StagedTree, StoreImageError> {
    let bind_dirs = mode.resolve() == StagingMode::BindMounts;
    let names = store_path_names(store_paths)?;
    fs::create_dir(root)
        .map_err(|source| io("could not create the staging directory", root, source))?;
    let mut tree = StagedTree {
        root: root.to_owned(),
        stats: StagingStats::default(),
        binds: Vec::new(),
    };
    let stager = Stager::default();
    let mut jobs: Vec<(&PathBuf, PathBuf)> = Vec::with_capacity(store_paths.len());
    for (path, name) in store_paths.iter().zip(&names) {
        let dest = root.join(name);
        if bind_dirs && fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
            fs::create_dir(&dest).map_err(|e| io("could not create", &dest, e))?;
            tree.binds.push(BindMount {
                source: path.clone(),
                target: dest,
            });
        } else {
            jobs.push((path, dest));
        }
    }
    // Like unlinking, linking mostly waits on the journal: overlap it.
    in_parallel(&jobs, |(path, dest)| stager.stage(path, dest))?;
    tree.stats = StagingStats {
        store_paths: names.len() as u64,
        entries: stager.entries.load(Ordering::Relaxed),
        copied: stager.copied.load(Ordering::Relaxed),
        bind_mounts: tree.binds.len() as u64,
    };
    if let Some(text) = registration {
        let file = root.join(REGISTRATION_FILE);
        fs::write(&file, text).map_err(|source| io("could not write", &file, source))?;
        set_mode(&file, 0o444)?;
        if let Some(seconds) = timestamp {
            set_mtime(&file, seconds)?;
        }
    }
    set_mode(root, 0o755)?;
    if let Some(seconds) = timestamp {
        set_mtime(root, seconds)?;
    }
    tracing::debug!(root = %root.display(), ?tree.stats, "closure staged");
    Ok(tree)
}

/// The names the store paths get at the root of the file system: their base
/// names (`<hash>-<name>`), checked to be distinct.
pub fn store_path_names(store_paths: &[PathBuf]) -> Result<Vec<String>, StoreImageError> {
    let mut seen = HashMap::new();
    let mut names = Vec::with_capacity(store_paths.len());
    for path in store_paths {
        let name = match (
            path.is_absolute(),
            path.file_name().and_then(|n| n.to_str()),
        ) {
            (true, Some(name)) if name != REGISTRATION_FILE => name.to_owned(),
            _ => return Err(StoreImageError::BadStorePath { path: path.clone() }),
        };
        if let Some(first) = seen.insert(name.clone(), path.clone()) {
            return Err(StoreImageError::DuplicateStorePath {
                first,
                second: path.clone(),
            });
        }
        names.push(name);
    }
    Ok(names)
}

/// Threads staging or removing store paths side by side.
const THREADS: usize = 8;

/// Runs `job` on every item, on up to [`THREADS`] threads; the first error wins.
fn in_parallel<T: Sync>(
    items: &[T],
    job: impl Fn(&T) -> Result<(), StoreImageError> + Sync,
) -> Result<(), StoreImageError> {
    let next = AtomicUsize::new(0);
    let worker = || -> Result<(), StoreImageError> {
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            match items.get(index) {
                Some(item) => job(item)?,
                None => return Ok(()),
            }
        }
    };
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS.min(items.len()))
            .map(|_| scope.spawn(worker))
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    })
}

/// Walks store paths and mirrors them into the staged tree; shared by the
/// staging threads.
#[derive(Default)]
struct Stager {
    entries: AtomicU64,
    copied: AtomicU64,
    /// Copies made so far of store inodes with several links, by (dev, ino),
    /// so that the next link to the same inode links to the copy.
    copies: Mutex<HashMap<(u64, u64), PathBuf>>,
}

impl Stager {
    fn stage(&self, source: &Path, dest: &Path) -> Result<(), StoreImageError> {
        let meta = fs::symlink_metadata(source)
            .map_err(|source_error| io("could not read", source, source_error))?;
        self.entries.fetch_add(1, Ordering::Relaxed);
        let kind = meta.file_type();
        if kind.is_dir() {
            fs::create_dir(dest).map_err(|e| io("could not create", dest, e))?;
            let mut children: Vec<_> = fs::read_dir(source)
                .map_err(|e| io("could not list", source, e))?
                .map(|entry| entry.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(|e| io("could not list", source, e))?;
            // A fixed order keeps staging (and copy fallbacks) repeatable.
            children.sort();
            for child in children {
                self.stage(&source.join(&child), &dest.join(&child))?;
            }
            // Times after the entries (adding them changed the mtime), then
            // the mode (a read-only directory takes no more entries).
            set_times_from(dest, &meta)?;
            set_mode(dest, meta.mode() & 0o7777)
        } else if kind.is_file() || kind.is_symlink() {
            match fs::hard_link(source, dest) {
                Ok(()) => Ok(()),
                Err(error) if link_refused(&error) => {
                    self.copied.fetch_add(1, Ordering::Relaxed);
                    self.copy(source, dest, &meta)
                }
                Err(error) => Err(io(
                    "could not hard-link into the staging directory",
                    source,
                    error,
                )),
            }
        } else {
            Err(StoreImageError::UnsupportedFileType {
                path: source.to_owned(),
            })
        }
    }

    /// The fallback when the store's inode cannot be linked.
    fn copy(&self, source: &Path, dest: &Path, meta: &fs::Metadata) -> Result<(), StoreImageError> {
        if meta.file_type().is_symlink() {
            let target =
                fs::read_link(source).map_err(|e| io("could not read the symlink", source, e))?;
            return std::os::unix::fs::symlink(&target, dest)
                .map_err(|e| io("could not create the symlink", dest, e));
        }
        if meta.nlink() == 1 {
            return copy_file(source, dest, meta);
        }
        // Held across the copy: two threads must not both copy one inode.
        let mut copies = self
            .copies
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = (meta.dev(), meta.ino());
        if let Some(first) = copies.get(&key) {
            return fs::hard_link(first, dest).map_err(|e| io("could not hard-link", first, e));
        }
        copy_file(source, dest, meta)?;
        copies.insert(key, dest.to_owned());
        Ok(())
    }
}

/// Copies a store file with its mode and times.
fn copy_file(source: &Path, dest: &Path, meta: &fs::Metadata) -> Result<(), StoreImageError> {
    fs::copy(source, dest)
        .map_err(|e| io("could not copy into the staging directory", source, e))?;
    set_times_from(dest, meta)?;
    set_mode(dest, meta.mode() & 0o7777)
}

/// Whether a hard link failed for a reason a copy works around.
fn link_refused(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::CrossesDevices | std::io::ErrorKind::PermissionDenied
    ) || error.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), StoreImageError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| io("could not set the mode of", path, e))
}

fn set_mtime(path: &Path, seconds: u64) -> Result<(), StoreImageError> {
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(seconds);
    let times = fs::FileTimes::new().set_accessed(time).set_modified(time);
    fs::File::open(path)
        .and_then(|file| file.set_times(times))
        .map_err(|e| io("could not set the times of", path, e))
}

fn set_times_from(path: &Path, meta: &fs::Metadata) -> Result<(), StoreImageError> {
    let modified = meta
        .modified()
        .map_err(|e| io("could not read the times of", path, e))?;
    let accessed = meta.accessed().unwrap_or(modified);
    let times = fs::FileTimes::new()
        .set_accessed(accessed)
        .set_modified(modified);
    fs::File::open(path)
        .and_then(|file| file.set_times(times))
        .map_err(|e| io("could not set the times of", path, e))
}

/// Adds the owner's write and execute bits to every directory under `root`.
fn make_dirs_writable(root: &Path) {
    let Ok(meta) = fs::symlink_metadata(root) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let _ = fs::set_permissions(
        root,
        fs::Permissions::from_mode((meta.mode() & 0o7777) | 0o700),
    );
    if let Ok(entries) = fs::read_dir(root) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                make_dirs_writable(&entry.path());
            }
        }
    }
}

fn io(action: &'static str, path: &Path, source: std::io::Error) -> StoreImageError {
    StoreImageError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstab_escapes_blanks() {
        let binds = [
            BindMount {
                source: "/nix/store/aaa-one".into(),
                target: "/tmp/x/aaa-one".into(),
            },
            BindMount {
                source: "/nix/store/bbb-two".into(),
                target: "/tmp/my dir\\x/bbb-two".into(),
            },
        ];
        assert_eq!(
            bind_fstab(&binds),
            "/nix/store/aaa-one /tmp/x/aaa-one none bind 0 0\n\
             /nix/store/bbb-two /tmp/my\\040dir\\134x/bbb-two none bind 0 0\n"
        );
    }

    #[test]
    fn names_are_base_names() {
        let paths = [
            PathBuf::from("/nix/store/aaa-one"),
            PathBuf::from("/nix/store/bbb-two"),
        ];
        assert_eq!(store_path_names(&paths).unwrap(), ["aaa-one", "bbb-two"]);
    }

    #[test]
    fn duplicate_and_relative_paths_are_refused() {
        let dup = [
            PathBuf::from("/nix/store/aaa-one"),
            PathBuf::from("/other/store/aaa-one"),
        ];
        assert!(matches!(
            store_path_names(&dup),
            Err(StoreImageError::DuplicateStorePath { .. })
        ));
        for bad in ["relative-path", "/", "/nix/store/nix-path-registration"] {
            assert!(
                matches!(
                    store_path_names(&[PathBuf::from(bad)]),
                    Err(StoreImageError::BadStorePath { .. })
                ),
                "{bad}"
            );
        }
    }
}
