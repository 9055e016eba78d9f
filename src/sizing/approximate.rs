//! Upper-bound size models for btrfs, xfs, erofs and squashfs.
//!
//! These file systems lay themselves out with more freedom than ext4 (btrfs
//! and xfs allocate metadata dynamically; erofs and squashfs compress and
//! pack tails), so the models here are upper bounds with stated margins,
//! not block-exact plans:
//! - **btrfs** (btrfs-progs 6.x, single device, metadata DUP): data in whole
//!   sectors except files of 2048 bytes or less, which live inline in the
//!   metadata; metadata estimated per item, then doubled for half-full
//!   B-tree nodes and doubled again for DUP; plus 10% and 160 MiB for the
//!   system and first chunks and the global reserve; at least 256 MiB.
//! - **xfs** (xfsprogs 6.x): data in whole blocks, 512-byte inodes in
//!   chunks of 64, directory blocks with their hash index; plus 5%
//!   (per-AG reservations and free-space trees), a 64 MiB log and 16 MiB of
//!   AG headers; at least 300 MiB (mkfs.xfs refuses smaller).
//! - **erofs** (uncompressed upper bound; compression only shrinks it): full
//!   data blocks, 64-byte extended inodes each with its file's tail inline
//!   (each such record counted as the share of a block it takes when records
//!   of its size are packed), directory entries packed per block, symlink
//!   targets inline, the superblock; plus 1%.
//! - **squashfs** (uncompressed upper bound: mksquashfs stores a block
//!   uncompressed when compressing does not help): the data, inodes with
//!   their block lists, directory entries, fragment, id and export tables,
//!   8 KiB metadata block headers; padded to 4 KiB; plus 1%.
//!
//! All results are rounded up to whole MiB. Their `mkfs_options` are empty:
//! the models hold for each tool's defaults.

use super::{FsSize, SizeBreakdown, SizingError, TreeStats, round_up, round_up_mib};
use crate::spec::MIB;

/// mksquashfs's default block size.
pub const SQUASHFS_DEFAULT_BLOCK: u32 = 128 * 1024;

/// Files up to this size live inline in btrfs metadata (`max_inline`).
const BTRFS_MAX_INLINE: u64 = 2048;
/// A btrfs item header.
const BTRFS_ITEM: u64 = 25;

fn require_block_size(
    fs: &'static str,
    block_size: u32,
    allowed: &'static [u32],
    text: &'static str,
) -> Result<u64, SizingError> {
    if allowed.contains(&block_size) {
        Ok(u64::from(block_size))
    } else {
        Err(SizingError::BlockSize {
            fs,
            block_size,
            allowed: text,
        })
    }
}

fn all_names(stats: &TreeStats) -> impl Iterator<Item = u64> + '_ {
    stats
        .directories
        .iter()
        .flat_map(|d| d.name_lengths.iter().map(|&n| u64::from(n)))
}

/// Finishes a model: adds the margin and fixed part, rounds to MiB, keeps a minimum.
fn finish(
    mut breakdown: SizeBreakdown,
    margin_percent: u64,
    fixed: (&str, u64),
    minimum: u64,
    additional_space: u64,
) -> FsSize {
    let estimate = breakdown.total();
    breakdown.push(
        format!("margin ({margin_percent}% of the above)"),
        estimate * margin_percent / 100,
    );
    breakdown.push(fixed.0, fixed.1);
    breakdown.push("additional space", additional_space);
    let bytes = round_up_mib(breakdown.total()).max(minimum);
    let so_far = breakdown.total();
    breakdown.push("free: rounding to MiB and the minimum size", bytes - so_far);
    FsSize {
        bytes,
        breakdown,
        mkfs_options: Vec::new(),
    }
}

/// An upper bound of a btrfs file system holding `stats`.
pub fn btrfs(
    stats: &TreeStats,
    additional_space: u64,
    block_size: u32,
) -> Result<FsSize, SizingError> {
    let bs = require_block_size("btrfs", block_size, &[4096], "4096 (the page size)")?;
    let mut data = 0;
    let mut metadata = 0;
    for &size in &stats.file_sizes {
        if size <= BTRFS_MAX_INLINE {
            metadata += BTRFS_ITEM + 21 + size;
        } else {
            data += round_up(size, bs);
            // One extent item per 128 MiB, the largest data extent.
            metadata += (BTRFS_ITEM + 53) * size.div_ceil(128 * MIB);
        }
    }
    // Every object: an inode item; every name: an inode ref, a dir item and a dir index.
    metadata += stats.inodes() * (BTRFS_ITEM + 160);
    metadata += all_names(stats)
        .map(|n| 3 * (BTRFS_ITEM + 30 + n))
        .sum::<u64>();
    metadata += stats
        .symlink_targets
        .iter()
        .map(|t| BTRFS_ITEM + 21 + t)
        .sum::<u64>();
    let mut breakdown = SizeBreakdown::default();
    breakdown.push(
        format!(
            "file data ({} files over 2 KiB, whole sectors)",
            stats
                .file_sizes
                .iter()
                .filter(|&&s| s > BTRFS_MAX_INLINE)
                .count()
        ),
        data,
    );
    breakdown.push(
        "metadata (items x2 for half-full nodes, x2 for DUP)",
        4 * metadata,
    );
    Ok(finish(
        breakdown,
        10,
        ("system and first chunks, global reserve", 160 * MIB),
        256 * MIB,
        additional_space,
    ))
}

/// An upper bound of an xfs file system holding `stats`.
pub fn xfs(
    stats: &TreeStats,
    additional_space: u64,
    block_size: u32,
) -> Result<FsSize, SizingError> {
    let bs = require_block_size("xfs", block_size, &[1024, 2048, 4096], "1024, 2048 or 4096")?;
    let data: u64 = stats.file_sizes.iter().map(|&s| round_up(s, bs)).sum();
    let inodes = round_up(stats.inodes(), 64) * 512;
    // Entries of 8-byte-aligned (12 + name) bytes, plus an 8-byte hash leaf
    // entry each; doubled for partly filled blocks; small directories would
    // fit in their inode, counted as a block anyway.
    let directories: u64 = stats
        .directories
        .iter()
        .map(|d| {
            let bytes: u64 = d
                .name_lengths
                .iter()
                .map(|&n| (12 + u64::from(n)).next_multiple_of(8) + 8)
                .sum();
            round_up(2 * bytes + 64, bs)
        })
        .sum();
    let symlinks: u64 = stats
        .symlink_targets
        .iter()
        .filter(|&&t| t > 300)
        .map(|&t| round_up(t, bs))
        .sum();
    let mut breakdown = SizeBreakdown::default();
    breakdown.push(
        format!("file data ({} files, whole blocks)", stats.file_sizes.len()),
        data,
    );
    breakdown.push("inodes (512 B, chunks of 64)", inodes);
    breakdown.push("directories", directories);
    breakdown.push("long symlinks", symlinks);
    Ok(finish(
        breakdown,
        5,
        ("log (64 MiB) and AG headers", 80 * MIB),
        300 * MIB,
        additional_space,
    ))
}

/// Bytes of an erofs extended inode.
const EROFS_INODE: u64 = 64;
/// erofs metadata is laid out in 32-byte slots.
const EROFS_SLOT: u64 = 32;

/// The share of a block an inode record (inode plus inline tail) of `record`
/// bytes takes, were all records that size: records do not cross blocks.
fn erofs_record_share(record: u64, block_size: u64) -> u64 {
    let record = record.next_multiple_of(EROFS_SLOT);
    block_size / (block_size / record)
}

/// Full blocks and the inline record of an object of `size` bytes: the tail
/// is stored after the inode when both fit in one block, else in a block.
fn erofs_object(size: u64, block_size: u64) -> (u64, u64) {
    let (full, tail) = (size / block_size, size % block_size);
    if EROFS_INODE + tail <= block_size {
        (
            full * block_size,
            erofs_record_share(EROFS_INODE + tail, block_size),
        )
    } else {
        (
            (full + 1) * block_size,
            erofs_record_share(EROFS_INODE, block_size),
        )
    }
}

/// An upper bound of an erofs image of `stats`, uncompressed (erofs-utils 1.5:
/// extended inodes, tails inline, directory entries of 12 bytes plus the name
/// packed per block).
pub fn erofs(
    stats: &TreeStats,
    additional_space: u64,
    block_size: u32,
) -> Result<FsSize, SizingError> {
    let bs = require_block_size("erofs", block_size, &[4096], "4096")?;
    let (mut data, mut records) = (0, 0);
    for &size in &stats.file_sizes {
        let (blocks, record) = erofs_object(size, bs);
        data += blocks;
        records += record;
    }
    let mut directories = 0;
    for dir in &stats.directories {
        // `.` and `..`, then every entry; an entry never crosses a block.
        let (mut full, mut used) = (0, 2 * 12 + 3);
        for &name in &dir.name_lengths {
            let entry = 12 + u64::from(name);
            if used + entry > bs {
                full += 1;
                used = 0;
            }
            used += entry;
        }
        let (blocks, record) = erofs_object(used, bs);
        directories += full * bs + blocks + record;
    }
    for &target in &stats.symlink_targets {
        records += erofs_record_share(EROFS_INODE + target, bs);
    }
    records += stats.special_files * erofs_record_share(EROFS_INODE, bs);
    let mut breakdown = SizeBreakdown::default();
    breakdown.push(
        format!(
            "file data ({} files, whole blocks; tails inline)",
            stats.file_sizes.len()
        ),
        data,
    );
    breakdown.push("inodes with inline tails and symlink targets", records);
    breakdown.push("directories", directories);
    Ok(finish(
        breakdown,
        1,
        ("superblock", bs),
        MIB,
        additional_space,
    ))
}

/// An upper bound of a squashfs image of `stats`, uncompressed.
pub fn squashfs(
    stats: &TreeStats,
    additional_space: u64,
    block_size: u32,
) -> Result<FsSize, SizingError> {
    let bs = u64::from(block_size);
    if !block_size.is_power_of_two() || !(4096..=1024 * 1024).contains(&block_size) {
        return Err(SizingError::BlockSize {
            fs: "squashfs",
            block_size,
            allowed: "a power of two from 4096 to 1048576",
        });
    }
    let data = stats.file_bytes();
    // Inodes up to 56 bytes, 4 bytes per data block, 8 in the export table.
    let inodes: u64 = stats.inodes() * (56 + 8)
        + stats
            .file_sizes
            .iter()
            .map(|&s| 4 * s.div_ceil(bs))
            .sum::<u64>();
    // An 8-byte entry plus the name; a 12-byte header per directory (and per 256 entries).
    let directories: u64 = stats
        .directories
        .iter()
        .map(|d| {
            let names: u64 = d.name_lengths.iter().map(|&n| 8 + u64::from(n)).sum();
            names + 12 * (1 + d.name_lengths.len() as u64 / 256)
        })
        .sum();
    let symlinks: u64 = stats.symlink_targets.iter().sum();
    // One 16-byte fragment entry per file at worst; ids; the superblock.
    let tables = 16 * stats.file_sizes.len() as u64 + 4096;
    let metadata = inodes + directories + symlinks + tables;
    let mut breakdown = SizeBreakdown::default();
    breakdown.push(
        format!("file data ({} files, uncompressed)", stats.file_sizes.len()),
        data,
    );
    breakdown.push(
        "inodes, directories, tables (with 2 B per 8 KiB header)",
        metadata + 2 * metadata.div_ceil(8192),
    );
    Ok(finish(
        breakdown,
        1,
        ("padding to 4 KiB", 4096),
        MIB,
        additional_space,
    ))
}
