//! Store-only images (`onlyNixStore`): the store paths at the root of one file system, built on the host.
//!
//! make-disk-image does this with cptofs; nixdisk needs no VM and no root:
//! - ext4 (ext2, ext3): `mke2fs -d` from a staged tree of hard links, written
//!   straight into its region of the image (`-E offset=`); deterministic builds
//!   fix the UUID, the directory hash seed and every timestamp (see
//!   [`crate::reproducible::ext4_inodes`] for the ctimes and atimes mke2fs copies from the host).
//! - erofs (`mkfs.erofs`) and squashfs (`mksquashfs`, which takes the store
//!   paths directly): built apart, then copied into the region.
//!
//! Optionally the closure's registration lands at the root as
//! `nix-path-registration`, as nixpkgs' make-ext4-fs does, so a booted system
//! can load it into its Nix database.
//!
//! [`plan::StoreFsPlan`] holds the pure part (what to run); [`run`] does it;
//! [`build_store_fs`] ties staging, plan and run together.

pub mod disk;
pub mod plan;
pub mod run;
pub mod staging;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use thiserror::Error;
use uuid::Uuid;

pub use disk::{StoreDiskReport, build_store_disk};
pub use plan::{FsSource, Region, Step, StoreFsPlan, ToolCommand};
pub use run::run_steps;
pub use staging::{
    BindMount, REGISTRATION_FILE, StagedTree, StagingMode, StagingStats, bind_fstab, stage_closure,
};

use crate::spec::FsType;

/// The time every file gets in a deterministic image: what Nix gives store files.
pub const DETERMINISTIC_TIMESTAMP: u64 = 1;

/// What went wrong while building a store file system.
#[derive(Debug, Error)]
pub enum StoreImageError {
    /// A closure entry is not an absolute store path with a name.
    #[error(
        "{path} is not a store path (expected an absolute path such as /nix/store/<hash>-<name>)"
    )]
    BadStorePath {
        /// The entry.
        path: PathBuf,
    },
    /// Two closure entries would land at the same name in the root.
    #[error("{first} and {second} have the same name; a store image holds each name once")]
    DuplicateStorePath {
        /// The first entry.
        first: PathBuf,
        /// The entry with the same base name.
        second: PathBuf,
    },
    /// The store holds something other than a directory, file or symlink.
    #[error(
        "{path} is neither a directory, a regular file nor a symlink; Nix stores hold nothing else"
    )]
    UnsupportedFileType {
        /// The entry.
        path: PathBuf,
    },
    /// The file system type cannot hold a store-only image.
    #[error(
        "fsType {} is not supported for store-only images\nhint: use ext4, ext3, ext2, erofs or squashfs",
        .fs_type.as_str()
    )]
    UnsupportedFsType {
        /// The requested type.
        fs_type: FsType,
    },
    /// The plan gave paths to a tool that only takes one directory.
    #[error("{} is made from one staged directory, not a list of paths", .fs_type.as_str())]
    NeedsStaging {
        /// The file system type.
        fs_type: FsType,
    },
    /// The region does not suit the file system.
    #[error("cannot place the file system at offset {} with size {}: {reason}", .region.offset, .region.size)]
    BadRegion {
        /// The region asked for.
        region: Region,
        /// Why it does not work.
        reason: &'static str,
    },
    /// The label is longer than the file system allows.
    #[error("label {label:?} is too long: at most {max} bytes are allowed")]
    LabelTooLong {
        /// The label.
        label: String,
        /// The limit.
        max: usize,
    },
    /// A deterministic build needs a fixed UUID.
    #[error(
        "a deterministic store image needs a fixed file system UUID\nhint: set rootFSUID, or deterministic = false"
    )]
    DeterministicWithoutUuid,
    /// A tool is not installed.
    #[error(
        "could not run `{program}`: {source}\nhint: install it (scripts/setup installs e2fsprogs, erofs-utils, squashfs-tools)"
    )]
    ToolMissing {
        /// The program.
        program: &'static str,
        /// The error from the operating system.
        source: std::io::Error,
    },
    /// A tool failed.
    #[error("`{command}` failed ({status}):\n{stderr}{}", space_hint(.stderr))]
    ToolFailed {
        /// The whole command line.
        command: String,
        /// How it ended.
        status: std::process::ExitStatus,
        /// The tail of its stderr.
        stderr: String,
    },
    /// The ext file system just made could not be read back for its fixed
    /// times.
    #[error(transparent)]
    Times(#[from] crate::reproducible::TimesError),
    /// The file system came out bigger than its region.
    #[error(
        "the file system needs {needed} bytes but its partition holds {} bytes\nhint: use diskSize = \"auto\" or a larger diskSize",
        .region.size
    )]
    TooSmall {
        /// Bytes the file system takes.
        needed: u64,
        /// The region it had to fit.
        region: Region,
    },
    /// The file system UUID is not a UUID.
    #[error(
        "rootFSUID {value:?} is not a UUID (expected e.g. F222513B-DED1-49FA-B591-20CE86A2FE7F)"
    )]
    BadUuid {
        /// The value given.
        value: String,
    },
    /// Auto sizing failed.
    #[error(transparent)]
    Sizing(#[from] crate::sizing::SizingError),
    /// The partition layout could not be made.
    #[error(transparent)]
    Layout(#[from] crate::layout::LayoutError),
    /// A file-system operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What nixdisk was doing.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The error from the operating system.
        source: std::io::Error,
    },
}

/// A hint for tool failures that mean "the disk is too small" or "a store
/// path is gone".
fn space_hint(stderr: &str) -> &'static str {
    let full = [
        "No space left",
        "Could not allocate",
        "Not enough space",
        "too small",
    ];
    if full.iter().any(|needle| stderr.contains(needle)) {
        "\nhint: the closure does not fit (did it change after planning?); use diskSize = \"auto\" or a larger diskSize"
    } else if stderr.contains("/nix/store/")
        && (stderr.contains("does not exist") || stderr.contains("No such file"))
    {
        // mount's bind of a store directory, or the tool's own read.
        "\nhint: a store path of the closure vanished from the host's store after planning \
         (garbage-collected?): keep the system alive with a GC root while the image builds"
    } else {
        ""
    }
}

/// What a store file system should be, apart from where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreImageOptions {
    /// ext4 (or ext2/ext3), erofs or squashfs.
    pub fs_type: FsType,
    /// File system label (`nix-store` by default in the spec).
    pub label: String,
    /// File system UUID; needed when `deterministic`.
    pub uuid: Option<Uuid>,
    /// Fixed UUID, hash seed and timestamps: equal inputs give equal bytes.
    pub deterministic: bool,
    /// The closure's registration, written as `nix-path-registration` when set.
    pub registration: Option<String>,
    /// How the closure is staged for ext and erofs (squashfs reads the store
    /// directly); `Auto` picks bind mounts as root, hard links otherwise.
    pub staging: StagingMode,
    /// mkfs options the file system's size was computed for
    /// ([`crate::sizing::FsSize::mkfs_options`]); empty for the defaults.
    pub mkfs_options: Vec<String>,
    /// A staged image root (ext only): the file system holds it, with the
    /// store paths under its `nix/store` (a full image's root), instead of
    /// the store paths at its root.
    pub image_root: Option<PathBuf>,
}

/// What was built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFsReport {
    /// Where the file system went.
    pub region: Region,
    /// Bytes the file system itself takes (the region for ext; the tool's
    /// output for read-only file systems).
    pub fs_bytes: u64,
    /// What staging did (none for squashfs, which reads the store directly).
    pub staging: Option<StagingStats>,
}

/// Builds a store file system holding `store_paths` into `region` of `image`.
///
/// `image` is created if missing and extended to the region's end if shorter;
/// its bytes outside the region are left alone (a partition table written
/// before stays). Scratch files live in a directory beside `image`, removed
/// at the end whatever happens.
pub fn build_store_fs(
    store_paths: &[PathBuf],
    options: &StoreImageOptions,
    image: &Path,
    region: Region,
) -> Result<StoreFsReport, StoreImageError> {
    let parent = match image.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let scratch = tempfile::Builder::new()
        .prefix(".nixdisk-store-")
        .tempdir_in(parent)
        .map_err(|e| io("could not create a scratch directory in", parent, e))?;
    let timestamp = options.deterministic.then_some(DETERMINISTIC_TIMESTAMP);
    tracing::info!(
        fs = options.fs_type.as_str(),
        paths = store_paths.len(),
        offset = region.offset,
        size = region.size,
        "building the store file system"
    );
    let (source, staged) = if options.fs_type == FsType::Squashfs {
        staging::store_path_names(store_paths)?;
        let mut paths = store_paths.to_vec();
        if let Some(text) = &options.registration {
            paths.push(write_registration(scratch.path(), text)?);
        }
        (FsSource::Paths(paths), None)
    } else {
        let (store_dir, planned) = match &options.image_root {
            Some(root) => set_aside_planned_store(root)?,
            None => (scratch.path().join("tree"), None),
        };
        let tree = stage_closure(
            store_paths,
            options.registration.as_deref(),
            &store_dir,
            timestamp,
            options.staging,
        )?;
        if let Some(planned) = planned {
            merge_planned_store(&planned, &store_dir)?;
        }
        let source = options.image_root.clone().unwrap_or(tree.root().to_owned());
        (FsSource::Tree(source), Some(tree))
    };
    if options.fs_type == FsType::Erofs && !options.label.is_empty() {
        // erofs-utils 1.5 (Debian 12) has no -L; the label is left out.
        tracing::warn!(label = %options.label, "mkfs.erofs here cannot set a label; the erofs image has none");
    }
    let bind_mounts = match &staged {
        Some(tree) if !tree.binds().is_empty() => {
            let fstab = scratch.path().join("fstab");
            fs::write(&fstab, bind_fstab(tree.binds()))
                .map_err(|e| io("could not write", &fstab, e))?;
            Some(fstab)
        }
        _ => None,
    };
    let plan = StoreFsPlan {
        fs_type: options.fs_type,
        source,
        image: image.to_owned(),
        region,
        label: options.label.clone(),
        uuid: options.uuid,
        timestamp,
        scratch: scratch.path().join("fs.img"),
        bind_mounts,
        mkfs_options: options.mkfs_options.clone(),
    };
    run_steps(&plan.steps()?)?;
    let fs_bytes = match fs::metadata(&plan.scratch) {
        Ok(meta) => meta.len(),
        Err(_) => region.size,
    };
    Ok(StoreFsReport {
        region,
        fs_bytes,
        staging: staged.as_ref().map(StagedTree::stats),
    })
}

/// `root/nix/store` made ready for staging the closure into: `nix` exists,
/// `nix/store` not. What the image root's plan put there (`.links`) is
/// moved aside; its directory is returned to merge back afterwards.
fn set_aside_planned_store(root: &Path) -> Result<(PathBuf, Option<PathBuf>), StoreImageError> {
    let nix = root.join("nix");
    fs::create_dir_all(&nix).map_err(|e| io("could not create", &nix, e))?;
    let store = nix.join("store");
    if !store.exists() {
        return Ok((store, None));
    }
    let aside = nix.join(".store-planned");
    fs::rename(&store, &aside).map_err(|e| io("could not move aside", &store, e))?;
    Ok((store, Some(aside)))
}

/// Moves the planned entries back into the staged store, which then takes
/// the planned directory's mode and times, so the image does not depend on
/// when it was staged.
fn merge_planned_store(planned: &Path, store: &Path) -> Result<(), StoreImageError> {
    for entry in fs::read_dir(planned).map_err(|e| io("could not list", planned, e))? {
        let entry = entry.map_err(|e| io("could not list", planned, e))?;
        let dest = store.join(entry.file_name());
        fs::rename(entry.path(), &dest).map_err(|e| io("could not move", &dest, e))?;
    }
    let meta = fs::metadata(planned).map_err(|e| io("could not read", planned, e))?;
    fs::set_permissions(store, meta.permissions())
        .map_err(|e| io("could not set the mode of", store, e))?;
    let times = fs::FileTimes::new()
        .set_accessed(
            meta.accessed()
                .map_err(|e| io("could not read", planned, e))?,
        )
        .set_modified(
            meta.modified()
                .map_err(|e| io("could not read", planned, e))?,
        );
    fs::File::open(store)
        .and_then(|dir| dir.set_times(times))
        .map_err(|e| io("could not set the times of", store, e))?;
    fs::remove_dir(planned).map_err(|e| io("could not remove", planned, e))
}

/// Writes the registration as `<dir>/reg/nix-path-registration` for tools
/// that take paths; returns its path.
fn write_registration(dir: &Path, text: &str) -> Result<PathBuf, StoreImageError> {
    let reg_dir = dir.join("reg");
    fs::create_dir(&reg_dir).map_err(|e| io("could not create", &reg_dir, e))?;
    let file = reg_dir.join(REGISTRATION_FILE);
    fs::write(&file, text).map_err(|e| io("could not write", &file, e))?;
    fs::set_permissions(&file, fs::Permissions::from_mode(0o444))
        .map_err(|e| io("could not set the mode of", &file, e))?;
    Ok(file)
}

fn io(action: &'static str, path: &Path, source: std::io::Error) -> StoreImageError {
    StoreImageError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests;
