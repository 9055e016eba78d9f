//! The store file system as a plan: from what to build to the exact commands.
//!
//! [`StoreFsPlan::steps`] is pure: it returns the argv and environment of each
//! tool and the few file operations around them, which the tests compare
//! exactly and [`super::run`] carries out.

use std::ffi::OsString;
use std::path::PathBuf;

use uuid::Uuid;

use super::StoreImageError;
use crate::spec::FsType;

/// ext2/3/4 block size nixdisk uses, as make-disk-image does.
pub const EXT_BLOCK_SIZE: u64 = 4096;

/// Longest ext2/3/4 label, in bytes.
pub const EXT_LABEL_MAX: usize = 16;

/// The byte range of the image the file system occupies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Where the file system starts, in bytes from the start of the image.
    pub offset: u64,
    /// How many bytes it may use.
    pub size: u64,
}

impl Region {
    /// The region of a bare image (`partitionTableType = "none"`).
    pub fn whole(size: u64) -> Region {
        Region { offset: 0, size }
    }

    /// The first byte after the region.
    pub fn end(&self) -> u64 {
        self.offset + self.size
    }
}

/// What the file-system tool reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsSource {
    /// A staged directory whose entries become the file system's root entries.
    Tree(PathBuf),
    /// Paths placed at the root under their base names (mksquashfs takes
    /// several sources itself, so squashfs needs no staging).
    Paths(Vec<PathBuf>),
}

/// Everything that decides the bytes of a store file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFsPlan {
    /// ext4 (or ext2/ext3), erofs or squashfs.
    pub fs_type: FsType,
    /// What goes into it.
    pub source: FsSource,
    /// The image file (created or extended as needed; never shrunk).
    pub image: PathBuf,
    /// Where in the image the file system goes.
    pub region: Region,
    /// File system label (ext and erofs-utils with label support; squashfs has none).
    pub label: String,
    /// File system UUID (ext4, erofs); random when unset.
    pub uuid: Option<Uuid>,
    /// Every timestamp, when the build is deterministic.
    pub timestamp: Option<u64>,
    /// A file in a scratch directory on the image's file system, where
    /// erofs and squashfs are built before being copied into the region.
    pub scratch: PathBuf,
    /// An fstab of bind mounts the tool needs (a staged tree of mount
    /// points): the tool then runs in a private mount namespace that has them.
    pub bind_mounts: Option<PathBuf>,
    /// For ext: the mke2fs options auto sizing computed the size for (they
    /// replace nixdisk's `-F -t <type> -b 4096`); empty for mke2fs defaults.
    pub mkfs_options: Vec<String>,
}

/// What runs the tool inside its own mount namespace: `mount -a -T FSTAB`
/// makes the bind mounts, then the shell becomes the tool. The namespace,
/// and the mounts with it, end with the tool.
const MOUNT_THEN_EXEC: &str = "mount -a -T \"$1\"; shift; exec \"$@\"";

/// One command: program, arguments and extra environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCommand {
    /// The program, looked up in `PATH`.
    pub program: &'static str,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Environment variables set on top of nixdisk's own.
    pub env: Vec<(&'static str, String)>,
}

/// One step of building a store file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create the image if missing and extend it to at least `len` bytes.
    EnsureImageLength {
        /// The image.
        image: PathBuf,
        /// Its least length.
        len: u64,
    },
    /// Run a tool.
    Run(ToolCommand),
    /// Set the ctime and atime of every inode of the ext file system at `offset` to
    /// `timestamp` (see [`crate::reproducible::ext4_inodes`]).
    FixExt4Times {
        /// The image.
        image: PathBuf,
        /// The file system's offset in it.
        offset: u64,
        /// The time to set.
        timestamp: u64,
    },
    /// Read every file (one byte) and symlink under `roots` once, so that
    /// their access times stop moving while mksquashfs runs: it recognises
    /// an inode seen before by comparing whole `stat` results, atime
    /// included, and stats its sources twice; a read in between (after a
    /// recent ctime change, relatime updates the atime) adds a stray inode.
    SettleAccessTimes {
        /// Trees (or single files) to walk.
        roots: Vec<PathBuf>,
    },
    /// Copy a finished file system into its region; it must fit.
    CopyIntoRegion {
        /// The file system built apart.
        from: PathBuf,
        /// The image.
        image: PathBuf,
        /// Where it goes.
        region: Region,
    },
}

impl StoreFsPlan {
    /// `command`, run where the plan's bind mounts exist.
    fn in_mount_namespace(&self, command: ToolCommand) -> ToolCommand {
        let Some(fstab) = &self.bind_mounts else {
            return command;
        };
        let mut args: Vec<OsString> = [
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-e",
            "-c",
            MOUNT_THEN_EXEC,
            "sh",
        ]
        .map(OsString::from)
        .into();
        args.push(fstab.into());
        args.push(command.program.into());
        args.extend(command.args);
        ToolCommand {
            program: "unshare",
            args,
            env: command.env,
        }
    }

    /// The steps that build this file system, in order.
    pub fn steps(&self) -> Result<Vec<Step>, StoreImageError> {
        match self.fs_type {
            FsType::Ext2 | FsType::Ext3 | FsType::Ext4 => self.ext_steps(),
            FsType::Erofs => self.erofs_steps(),
            FsType::Squashfs => self.squashfs_steps(),
            other => Err(StoreImageError::UnsupportedFsType { fs_type: other }),
        }
    }

    fn tree(&self) -> Result<&PathBuf, StoreImageError> {
        match &self.source {
            FsSource::Tree(tree) => Ok(tree),
            FsSource::Paths(_) => Err(StoreImageError::NeedsStaging {
                fs_type: self.fs_type,
            }),
        }
    }

    fn ext_steps(&self) -> Result<Vec<Step>, StoreImageError> {
        let tree = self.tree()?;
        if self.region.size == 0
            || self.region.size % EXT_BLOCK_SIZE != 0
            || self.region.offset % 512 != 0
        {
            return Err(StoreImageError::BadRegion {
                region: self.region,
                reason: "ext file systems need a size that is a non-zero multiple of 4 KiB, at an offset that is a multiple of 512 bytes",
            });
        }
        if self.label.len() > EXT_LABEL_MAX {
            return Err(StoreImageError::LabelTooLong {
                label: self.label.clone(),
                max: EXT_LABEL_MAX,
            });
        }
        let mut extended = format!("offset={},root_owner=0:0", self.region.offset);
        let mut env = Vec::new();
        if let Some(timestamp) = self.timestamp {
            // The directory hash seed is random unless fixed; the UUID serves,
            // as it is fixed too.
            let uuid = self.uuid.ok_or(StoreImageError::DeterministicWithoutUuid)?;
            extended.push_str(&format!(",hash_seed={uuid}"));
            // mke2fs 1.47.0 takes its "now" (superblock times, lost+found,
            // root) from E2FSPROGS_FAKE_TIME; SOURCE_DATE_EPOCH only from 1.47.1.
            env.push(("E2FSPROGS_FAKE_TIME", timestamp.to_string()));
        }
        let mut args: Vec<OsString> = vec!["-q".into()];
        if self.mkfs_options.is_empty() {
            args.extend(
                [
                    "-F",
                    "-t",
                    self.fs_type.as_str(),
                    "-b",
                    &EXT_BLOCK_SIZE.to_string(),
                ]
                .map(OsString::from),
            );
        } else {
            args.extend(self.mkfs_options.iter().map(OsString::from));
        }
        args.extend(["-L".into(), self.label.clone().into()]);
        if let Some(uuid) = self.uuid {
            args.extend(["-U".into(), uuid.to_string().into()]);
        }
        args.extend(["-E".into(), extended.into(), "-d".into(), tree.into()]);
        args.push(self.image.clone().into());
        args.push(format!("{}k", self.region.size / 1024).into());
        let mut steps = vec![
            Step::EnsureImageLength {
                image: self.image.clone(),
                len: self.region.end(),
            },
            Step::Run(self.in_mount_namespace(ToolCommand {
                program: "mke2fs",
                args,
                env,
            })),
        ];
        if let Some(timestamp) = self.timestamp {
            steps.push(Step::FixExt4Times {
                image: self.image.clone(),
                offset: self.region.offset,
                timestamp,
            });
        }
        Ok(steps)
    }

    fn erofs_steps(&self) -> Result<Vec<Step>, StoreImageError> {
        let tree = self.tree()?;
        // Xattrs off: store files carry none, and host ones (SELinux labels)
        // would make the image depend on the build host.
        let mut args: Vec<OsString> = vec![
            "--quiet".into(),
            "-x".into(),
            "-1".into(),
            "--all-root".into(),
        ];
        if let Some(timestamp) = self.timestamp {
            args.push(format!("-T{timestamp}").into());
        }
        if let Some(uuid) = self.uuid {
            args.push(format!("-U{uuid}").into());
        } else if self.timestamp.is_some() {
            return Err(StoreImageError::DeterministicWithoutUuid);
        }
        args.push(self.scratch.clone().into());
        args.push(tree.into());
        Ok(self.read_only_steps(self.in_mount_namespace(ToolCommand {
            program: "mkfs.erofs",
            args,
            env: Vec::new(),
        })))
    }

    fn squashfs_steps(&self) -> Result<Vec<Step>, StoreImageError> {
        let mut args: Vec<OsString> = match &self.source {
            FsSource::Tree(tree) => vec![tree.into()],
            FsSource::Paths(paths) => paths.iter().map(OsString::from).collect(),
        };
        let single_tree = matches!(self.source, FsSource::Tree(_));
        let roots = match &self.source {
            FsSource::Tree(tree) => vec![tree.clone()],
            FsSource::Paths(paths) => paths.clone(),
        };
        args.push(self.scratch.clone().into());
        args.extend(
            [
                "-noappend",
                "-quiet",
                "-no-progress",
                "-no-xattrs",
                "-all-root",
                "-root-mode",
                "0755",
                "-comp",
                "zstd",
            ]
            .map(OsString::from),
        );
        if !single_tree {
            // One source directory alone would otherwise become the root.
            args.push("-keep-as-directory".into());
        }
        match self.timestamp {
            Some(timestamp) => {
                let timestamp = timestamp.to_string();
                for flag in [
                    "-reproducible",
                    "-mkfs-time",
                    &timestamp,
                    "-all-time",
                    &timestamp,
                ] {
                    args.push(flag.into());
                }
            }
            None => args.push("-not-reproducible".into()),
        }
        let mut steps = vec![Step::SettleAccessTimes { roots }];
        steps.extend(self.read_only_steps(ToolCommand {
            program: "mksquashfs",
            args,
            env: Vec::new(),
        }));
        Ok(steps)
    }

    /// Read-only file systems are built apart (the tools cannot write at an
    /// offset, or truncate the image after it) and then copied into place.
    fn read_only_steps(&self, command: ToolCommand) -> Vec<Step> {
        vec![
            Step::Run(command),
            Step::EnsureImageLength {
                image: self.image.clone(),
                len: self.region.end(),
            },
            Step::CopyIntoRegion {
                from: self.scratch.clone(),
                image: self.image.clone(),
                region: self.region,
            },
        ]
    }
}
