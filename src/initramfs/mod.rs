//! The builder initramfs: a deterministic cpio newc archive with the agent as
//! `/init` and the kernel modules it needs.
//!
//! [`Initramfs`] is the plan: a sorted set of entries (directories, files,
//! symlinks, device nodes). [`Initramfs::write_to`] turns it into bytes with
//! our own newc writer ([`newc`]): every timestamp 0, owner root, inode
//! numbers in entry order, so the same inputs give the same bytes.
//! [`builder`] fills it for nixdisk's builder VM and caches the result.

pub mod builder;
pub mod newc;

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub use builder::{BuilderInitramfs, MODULES_LIST_PATH, build_cached, builder_initramfs};

/// Errors of building or writing an initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// A path inside the archive is not absolute or not normal.
    #[error(
        "invalid path `{path}` inside the initramfs: paths must be absolute, without `.`, `..` or empty parts"
    )]
    InvalidPath {
        /// The offending path.
        path: String,
    },
    /// Two different entries at one path.
    #[error("two different entries for `{path}` in the initramfs")]
    Conflict {
        /// The path.
        path: String,
    },
    /// A host file to include cannot be read.
    #[error("cannot read `{}` for the initramfs: {source}", path.display())]
    ReadHost {
        /// The host file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A host file changed size between planning and writing.
    #[error("`{}` changed while the initramfs was written (expected {expected} bytes); retry", path.display())]
    HostFileChanged {
        /// The host file.
        path: PathBuf,
        /// The size seen when it was added.
        expected: u64,
    },
    /// A field does not fit newc's 32-bit header fields.
    #[error("`{path}` is too large for a cpio newc archive ({size} bytes; at most 4 GiB - 1)")]
    TooLarge {
        /// The path inside the archive.
        path: String,
        /// Its size.
        size: u64,
    },
    /// Writing the archive failed.
    #[error("cannot write the initramfs: {0}")]
    Write(#[source] io::Error),
    /// Resolving or reading kernel modules failed.
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
}

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileData {
    /// Bytes held in memory.
    Bytes(Vec<u8>),
    /// A host file, read when the archive is written; `size` is its size
    /// when it was added (checked again while writing).
    Host {
        /// The host file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
}

impl FileData {
    /// The file's size in bytes.
    pub fn len(&self) -> u64 {
        match self {
            FileData::Bytes(b) => b.len() as u64,
            FileData::Host { size, .. } => *size,
        }
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file.
    File(FileData),
    /// A symbolic link to `target`.
    Symlink(String),
    /// A character device.
    CharDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    BlockDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
}

/// One entry: its kind and permission bits (`0o755`, ...; the file type bits
/// come from the kind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits (at most `0o7777`).
    pub mode: u32,
}

/// An initramfs plan: entries keyed by absolute path, kept sorted so the
/// archive lists parents before children in a fixed order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
}

impl Initramfs {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// The entries in archive order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(p, e)| (p.as_str(), e))
    }

    /// Adds an entry at `path`, creating missing parent directories (0755).
    /// Adding an identical entry twice is allowed; a different one is a
    /// [`InitramfsError::Conflict`].
    pub fn add(&mut self, path: &str, kind: EntryKind, mode: u32) -> Result<(), InitramfsError> {
        let path = normalize(path)?;
        let mut parent = String::new();
        let parts: Vec<&str> = path[1..].split('/').collect();
        for part in &parts[..parts.len() - 1] {
            parent.push('/');
            parent.push_str(part);
            self.insert(
                parent.clone(),
                Entry {
                    kind: EntryKind::Dir,
                    mode: 0o755,
                },
                true,
            )?;
        }
        self.insert(
            path,
            Entry {
                kind,
                mode: mode & 0o7777,
            },
            false,
        )
    }

    fn insert(
        &mut self,
        path: String,
        entry: Entry,
        implicit_dir: bool,
    ) -> Result<(), InitramfsError> {
        match self.entries.get(&path) {
            None => {
                self.entries.insert(path, entry);
                Ok(())
            }
            Some(existing) if existing == &entry => Ok(()),
            // An implicit parent never overrides an explicit directory's mode.
            Some(existing) if implicit_dir && existing.kind == EntryKind::Dir => Ok(()),
            Some(existing) if existing.kind == EntryKind::Dir && entry.kind == EntryKind::Dir => {
                self.entries.insert(path, entry);
                Ok(())
            }
            Some(_) => Err(InitramfsError::Conflict { path }),
        }
    }

    /// Adds a directory.
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<(), InitramfsError> {
        self.add(path, EntryKind::Dir, mode)
    }

    /// Adds a file with the given content.
    pub fn add_file(
        &mut self,
        path: &str,
        content: Vec<u8>,
        mode: u32,
    ) -> Result<(), InitramfsError> {
        self.add(path, EntryKind::File(FileData::Bytes(content)), mode)
    }

    /// Adds a file whose content is the host file `host` (read when written).
    pub fn add_host_file(
        &mut self,
        path: &str,
        host: &Path,
        mode: u32,
    ) -> Result<(), InitramfsError> {
        let meta = std::fs::metadata(host).map_err(|source| InitramfsError::ReadHost {
            path: host.to_path_buf(),
            source,
        })?;
        let data = FileData::Host {
            path: host.to_path_buf(),
            size: meta.len(),
        };
        self.add(path, EntryKind::File(data), mode)
    }

    /// Adds a symbolic link.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), InitramfsError> {
        self.add(path, EntryKind::Symlink(target.to_owned()), 0o777)
    }

    /// Adds a character device node (e.g. `/dev/console`, 5:1).
    pub fn add_char_device(
        &mut self,
        path: &str,
        major: u32,
        minor: u32,
        mode: u32,
    ) -> Result<(), InitramfsError> {
        self.add(path, EntryKind::CharDevice { major, minor }, mode)
    }

    /// Writes the archive (newc, ending with `TRAILER!!!`) to `out`.
    pub fn write_to<W: Write>(&self, out: W) -> Result<(), InitramfsError> {
        newc::write(self.entries(), out)
    }

    /// The archive as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, InitramfsError> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }
}

/// Checks that `path` is absolute and normal, and drops a trailing `/`.
fn normalize(path: &str) -> Result<String, InitramfsError> {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    let invalid = || InitramfsError::InvalidPath {
        path: path.to_owned(),
    };
    let rest = trimmed.strip_prefix('/').ok_or_else(invalid)?;
    if rest.is_empty()
        || rest
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
        || rest.contains('\0')
    {
        return Err(invalid());
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests;
