//! The passes that make an image byte-reproducible after its file systems are
//! written: the times (and random generations) a kernel or mke2fs stamps into
//! ext4 inodes and FAT directory entries, the ext4 superblock's times and its
//! journal, all set to fixed values on the host.
//!
//! - [`ext4_inodes`]: reads the ext4 inode bitmaps (which inodes are in use,
//!   how much is free) and writes the debugfs script for store images.
//! - [`ext4_root`]: a full image's ext4 root after the builder VM is gone
//!   (inode times, checksums, an empty journal, superblock times).
//! - [`fat`]: a full image's FAT partitions (ESP, XBOOTLDR, /boot).

pub mod ext4_inodes;
pub mod ext4_root;
pub mod fat;

use std::path::{Path, PathBuf};

/// Why a reproducibility pass failed.
#[derive(Debug, thiserror::Error)]
pub enum TimesError {
    /// The ext file system just made could not be read back.
    #[error("could not read the ext file system in {image}: {reason}")]
    Ext4Read {
        /// The image.
        image: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A host-side file operation failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The fixed times of a deterministic full image's file systems could
    /// not be set.
    #[error("could not set the fixed times of the root file system: {detail}")]
    Times {
        /// What went wrong.
        detail: String,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TimesError {
    let path = path.to_owned();
    move |source| TimesError::Io { what, path, source }
}
