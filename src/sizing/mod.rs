//! Auto sizing: how big a file system must be to hold a tree, with the breakdown.
//!
//! Sizing is a plan: [`TreeStats::measure`] reads a tree once (the only
//! effect), and [`fs_size`] computes, purely, the size of a file system of
//! the chosen type that holds that tree plus `additional_space` free bytes,
//! with the file system's real overheads (for ext4: inode tables, bitmaps,
//! group descriptors, journal, resize reserve; see [`ext4`]). Overheads grow
//! with the size, so each model iterates to a fixed point. The result carries
//! the `mkfs` options the size was computed for: builders must make the file
//! system with exactly those ([`FsSize::mkfs_options`]).
//!
//! The layout adds partitions and alignment on top (`layout::disk_size_for_root`).

pub mod approximate;
pub mod ext4;
mod tree;
pub mod vfat;

use std::fmt;
use std::path::PathBuf;

pub use tree::{DirectoryStats, TreeStats};

use crate::spec::{FsType, MIB};

/// What went wrong while sizing.
#[derive(Debug, thiserror::Error)]
pub enum SizingError {
    /// A path of the tree could not be read.
    #[error("cannot read {path} while measuring the tree: {source}")]
    Walk {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A path to measure has no base name (`/` or `..`).
    #[error(
        "{path} has no name to place it under in the image\n  hint: pass store paths or directories, not `/` or `..`"
    )]
    NoName {
        /// The path.
        path: PathBuf,
    },
    /// The block size is not one the file system supports.
    #[error("block size {block_size} is not supported for {fs}: use one of {allowed}")]
    BlockSize {
        /// The file system.
        fs: &'static str,
        /// The block size asked for.
        block_size: u32,
        /// The sizes allowed.
        allowed: &'static str,
    },
    /// The tree holds something the file system cannot store.
    #[error("{fs} cannot hold {what}\n  hint: {hint}")]
    Unsupported {
        /// The file system.
        fs: &'static str,
        /// What it cannot hold, with a count.
        what: String,
        /// What to do instead.
        hint: &'static str,
    },
    /// The tree is beyond the limits of the file system.
    #[error("{fs} cannot be made that large: {what}")]
    TooLarge {
        /// The file system.
        fs: &'static str,
        /// Which limit was hit.
        what: String,
    },
}

/// A table of where the bytes of a file system go; the CLI prints it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SizeBreakdown {
    /// One line per item: what it is, and its bytes. They sum to the size.
    pub items: Vec<(String, u64)>,
}

impl SizeBreakdown {
    /// Adds a line.
    pub fn push(&mut self, what: impl Into<String>, bytes: u64) {
        self.items.push((what.into(), bytes));
    }

    /// The sum of all lines.
    pub fn total(&self) -> u64 {
        self.items.iter().map(|(_, bytes)| bytes).sum()
    }
}

impl fmt::Display for SizeBreakdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .items
            .iter()
            .map(|(what, _)| what.len())
            .chain(std::iter::once("total".len()))
            .max()
            .unwrap_or(0);
        for (what, bytes) in &self.items {
            writeln!(f, "  {what:<width$}  {:>14}  {:>12}", bytes, human(*bytes))?;
        }
        let total = self.total();
        writeln!(
            f,
            "  {:<width$}  {:>14}  {:>12}",
            "total",
            total,
            human(total)
        )
    }
}

/// A byte count for people: `512 B`, `3.5 KiB`, `1.25 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

/// The size of a file system that holds a tree, and how it was reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsSize {
    /// The file system's size in bytes, a whole number of MiB.
    pub bytes: u64,
    /// Where the bytes go; the lines sum to `bytes`.
    pub breakdown: SizeBreakdown,
    /// The `mkfs.<type>` options the size holds for (block size, inode
    /// count, journal size, ...). Builders pass them, then their own options
    /// (label, UUID, `-d` tree) and the device; see each model's docs.
    pub mkfs_options: Vec<String>,
}

/// Computes the size of an `fs` file system that holds `stats` and still has
/// `additional_space` bytes free, for the given block size (ext*: 1024, 2048
/// or 4096; vfat: the cluster size; others: see [`approximate`]).
pub fn fs_size(
    fs: FsType,
    stats: &TreeStats,
    additional_space: u64,
    block_size: u32,
) -> Result<FsSize, SizingError> {
    let size = match fs {
        FsType::Ext4 => ext4::size(ext4::Variant::Ext4, stats, additional_space, block_size)?,
        FsType::Ext3 => ext4::size(ext4::Variant::Ext3, stats, additional_space, block_size)?,
        FsType::Ext2 => ext4::size(ext4::Variant::Ext2, stats, additional_space, block_size)?,
        FsType::Vfat => vfat::size(stats, additional_space, block_size)?,
        FsType::Btrfs => approximate::btrfs(stats, additional_space, block_size)?,
        FsType::Xfs => approximate::xfs(stats, additional_space, block_size)?,
        FsType::Erofs => approximate::erofs(stats, additional_space, block_size)?,
        FsType::Squashfs => approximate::squashfs(stats, additional_space, block_size)?,
    };
    tracing::debug!(fs = fs.as_str(), bytes = size.bytes, "file system sized");
    Ok(size)
}

/// The block size nixdisk uses for `fs` unless told otherwise.
pub fn default_block_size(fs: FsType) -> u32 {
    match fs {
        FsType::Squashfs => approximate::SQUASHFS_DEFAULT_BLOCK,
        _ => 4096,
    }
}

/// `value` rounded up to a multiple of `unit`.
pub(crate) fn round_up(value: u64, unit: u64) -> u64 {
    value.div_ceil(unit) * unit
}

/// `bytes` rounded up to whole MiB.
pub(crate) fn round_up_mib(bytes: u64) -> u64 {
    round_up(bytes, MIB)
}

#[cfg(test)]
mod tests;
