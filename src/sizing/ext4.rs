//! The ext2/3/4 size model: mke2fs's own layout rules, block by block.
//!
//! The model follows what `mke2fs -d TREE` of e2fsprogs 1.47 does with the
//! options of [`mke2fs_options`] (features pinned, so a distribution's
//! `mke2fs.conf` cannot change the layout):
//! - content: each regular file takes its size in whole blocks (no inline
//!   data), plus extent-tree (ext4) or indirect (ext2/3) blocks when large;
//!   each directory the blocks its entries pack into (8 bytes + name, padded
//!   to 4; a 12-byte checksum tail per block with `metadata_csum`), plus
//!   extent blocks when it spans many; symlinks of 60 bytes or more a block;
//! - layout, which depends on the size: block groups of `8 * block_size`
//!   blocks, a block and an inode bitmap and an inode table per group, the
//!   superblock and group descriptors in groups 0, 1 and powers of 3, 5, 7
//!   (`sparse_super`), the reserved GDT blocks that let the file system grow
//!   1024-fold online (`resize_inode`), the journal by mke2fs's size rule,
//!   `lost+found`, and mke2fs dropping a last group too small to be useful;
//! - inodes: exactly what the tree needs, plus one per 16 KiB of
//!   `additional_space`, passed as `-N` (mke2fs rounds up to fill whole
//!   inode table blocks);
//! - no blocks reserved for root (`-m 0`).
//!
//! Extended attributes of the source tree are not counted (store paths have none).

use super::{FsSize, SizeBreakdown, SizingError, TreeStats, round_up_mib};
use crate::spec::MIB;

/// Bytes per inode.
pub const INODE_SIZE: u64 = 256;
/// One spare inode per this many bytes of `additional_space` (mke2fs's default ratio).
pub const SPARE_INODE_RATIO: u64 = 16384;
/// Block groups per flexible group (`-G`), mke2fs's default.
pub const FLEX_BG_SIZE: u64 = 16;
/// The ext4 features, pinned (mke2fs's defaults for ext4, without `orphan_file`).
pub const EXT4_FEATURES: &str = "has_journal,ext_attr,resize_inode,dir_index,filetype,extent,flex_bg,sparse_super,large_file,huge_file,dir_nlink,extra_isize,metadata_csum,64bit";
/// The ext3 features, pinned.
pub const EXT3_FEATURES: &str =
    "has_journal,ext_attr,resize_inode,dir_index,filetype,sparse_super,large_file";
/// The ext2 features, pinned.
pub const EXT2_FEATURES: &str = "ext_attr,resize_inode,dir_index,filetype,sparse_super,large_file";
/// The smallest file system the model makes: mke2fs refuses a journal of
/// more than half the free blocks, and makes none below 2048 blocks.
pub const MIN_BYTES: u64 = 16 * MIB;

/// Inodes 1 to 10 are reserved (the root is inode 2); `lost+found` is 11.
const RESERVED_INODES: u64 = 11;
/// Symlink targets shorter than this live in the inode (`i_block`).
const FAST_SYMLINK_MAX: u64 = 60;
/// The longest initialised extent, in blocks.
const MAX_EXTENT_BLOCKS: u64 = 32768;
/// Extents held in the inode itself.
const INODE_EXTENTS: u64 = 4;
/// Direct block pointers in an ext2/3 inode.
const DIRECT_BLOCKS: u64 = 12;
/// `.` and `..` at the start of a directory's first block.
const DOT_ENTRIES_BYTES: u64 = 24;
/// The checksum tail of each directory block with `metadata_csum`.
const DIR_TAIL_BYTES: u64 = 12;

/// Which member of the ext family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// ext4: extents, flex_bg, 64bit, metadata_csum, journal.
    Ext4,
    /// ext3: indirect blocks, journal.
    Ext3,
    /// ext2: indirect blocks, no journal.
    Ext2,
}

impl Variant {
    /// The name for `mke2fs -t`.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Ext4 => "ext4",
            Variant::Ext3 => "ext3",
            Variant::Ext2 => "ext2",
        }
    }

    fn features(self) -> &'static str {
        match self {
            Variant::Ext4 => EXT4_FEATURES,
            Variant::Ext3 => EXT3_FEATURES,
            Variant::Ext2 => EXT2_FEATURES,
        }
    }

    fn extents(self) -> bool {
        self == Variant::Ext4
    }

    fn journal(self) -> bool {
        self != Variant::Ext2
    }

    fn descriptor_bytes(self) -> u64 {
        if self == Variant::Ext4 { 64 } else { 32 }
    }

    fn dir_tail(self) -> u64 {
        if self == Variant::Ext4 {
            DIR_TAIL_BYTES
        } else {
            0
        }
    }
}

/// The parameters a sized ext file system must be made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ext4Params {
    /// ext2, ext3 or ext4.
    pub variant: Variant,
    /// Bytes per block.
    pub block_size: u64,
    /// The inode count to ask for (`-N`).
    pub inodes: u64,
    /// Journal blocks (0 for ext2).
    pub journal_blocks: u64,
}

/// The mke2fs options a size was computed for: features, block and inode
/// size, inode count, journal size, no reserved blocks. Builders add their
/// own (`-L`, `-U`, `-E hash_seed=...`, `-d TREE`), then the device or image
/// file, whose size must be the computed one.
pub fn mke2fs_options(params: &Ext4Params) -> Vec<String> {
    let mut options: Vec<String> = [
        "-F",
        "-t",
        params.variant.as_str(),
        "-b",
        &params.block_size.to_string(),
        "-I",
        &INODE_SIZE.to_string(),
        "-N",
        &params.inodes.to_string(),
        "-m",
        "0",
        "-O",
        &format!("none,{}", params.variant.features()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if params.variant.extents() {
        options.extend(["-G".to_owned(), FLEX_BG_SIZE.to_string()]);
    }
    if params.journal_blocks > 0 {
        let mib = params.journal_blocks * params.block_size / MIB;
        options.extend(["-J".to_owned(), format!("size={mib}")]);
    }
    options
}

/// The journal size mke2fs picks for a file system of `blocks` blocks
/// (`ext2fs_default_journal_size`), in blocks.
pub fn default_journal_blocks(blocks: u64) -> u64 {
    match blocks {
        0..2048 => 0,
        2048..32768 => 1024,
        32768..262_144 => 4096,
        262_144..524_288 => 8192,
        524_288..4_194_304 => 16384,
        4_194_304..8_388_608 => 32768,
        8_388_608..16_777_216 => 65536,
        16_777_216..33_554_432 => 131_072,
        _ => 262_144,
    }
}

/// Blocks that map `blocks` data blocks beyond the inode: extent-tree leaves
/// and indexes for ext4, indirect blocks for ext2/3.
fn mapping_blocks(variant: Variant, block_size: u64, blocks: u64) -> u64 {
    if variant.extents() {
        // Extents break at their maximum length and, at worst, at each
        // group's metadata in between: count twice the minimum, plus one.
        let extents = if blocks == 0 {
            0
        } else {
            2 * blocks.div_ceil(MAX_EXTENT_BLOCKS) + 1
        };
        extent_tree_blocks(block_size, extents)
    } else {
        indirect_blocks(block_size, blocks)
    }
}

/// Blocks of an extent tree holding `extents` extents.
fn extent_tree_blocks(block_size: u64, extents: u64) -> u64 {
    // A tree block holds (block_size - 12 header - 4 tail) / 12 entries.
    let per_block = (block_size - 16) / 12;
    let mut total = 0;
    let mut level = extents;
    while level > INODE_EXTENTS {
        level = level.div_ceil(per_block);
        total += level;
    }
    total
}

/// Indirect, double and triple indirect blocks for `blocks` data blocks.
fn indirect_blocks(block_size: u64, blocks: u64) -> u64 {
    let per_block = block_size / 4;
    let mut rest = blocks.saturating_sub(DIRECT_BLOCKS);
    let mut total = 0;
    // Single, double, triple: each level maps per_block^depth blocks.
    let mut span = per_block;
    for depth in 1..=3u32 {
        if rest == 0 {
            break;
        }
        let here = rest.min(span);
        // Blocks at each level of this tree, from the leaves' parents up.
        let mut level = here;
        for _ in 0..depth {
            level = level.div_ceil(per_block);
            total += level;
        }
        rest -= here;
        span = span.saturating_mul(per_block);
    }
    total
}

/// Blocks a directory with these entry names packs into, and their mapping.
fn directory_blocks(variant: Variant, block_size: u64, names: impl Iterator<Item = u64>) -> u64 {
    let capacity = block_size - variant.dir_tail();
    let mut blocks = 1;
    let mut used = DOT_ENTRIES_BYTES;
    for name in names {
        let record = (8 + name).next_multiple_of(4);
        if used + record > capacity {
            blocks += 1;
            used = 0;
        }
        used += record;
    }
    // Directory blocks are added one at a time between files: at worst each
    // is its own extent.
    let mapping = if variant.extents() {
        extent_tree_blocks(block_size, blocks)
    } else {
        indirect_blocks(block_size, blocks)
    };
    blocks + mapping
}

/// Blocks mke2fs gives `lost+found`: it grows it to 16 KiB, within the direct blocks.
fn lost_and_found_blocks(block_size: u64) -> u64 {
    let mut blocks = 1;
    let mut size = 0;
    for _ in 1..DIRECT_BLOCKS {
        size += block_size;
        if size >= 16 * 1024 && size >= 2 * block_size {
            break;
        }
        blocks += 1;
    }
    blocks
}

mod layout;

use layout::{Content, Layout};

/// Sizes an ext2/3/4 file system for `stats` with `additional_space` free.
pub fn size(
    variant: Variant,
    stats: &TreeStats,
    additional_space: u64,
    block_size: u32,
) -> Result<FsSize, SizingError> {
    if ![1024, 2048, 4096].contains(&block_size) {
        return Err(SizingError::BlockSize {
            fs: variant.as_str(),
            block_size,
            allowed: "1024, 2048 or 4096",
        });
    }
    let bs = u64::from(block_size);
    let content = Content::of(variant, bs, stats);
    let inodes = content.inodes + additional_space.div_ceil(SPARE_INODE_RATIO);
    let additional_blocks = additional_space.div_ceil(bs);
    let mib_blocks = MIB / bs;

    // Start below the answer: overheads only grow with the size.
    let mut blocks =
        (round_up_mib((content.blocks() + additional_blocks) * bs) / bs).max(MIN_BYTES / bs);
    let layout = loop {
        let layout = match Layout::new(variant, bs, blocks, inodes)? {
            Ok(layout) => layout,
            Err(min_blocks) => {
                blocks = min_blocks.next_multiple_of(mib_blocks);
                continue;
            }
        };
        let needed = layout.overhead() + content.blocks() + additional_blocks;
        if needed <= layout.blocks {
            // mke2fs dropped a small last group: when what is left is whole
            // MiB, make the file system exactly that.
            if layout.blocks < blocks && layout.blocks % mib_blocks == 0 {
                blocks = layout.blocks;
            }
            break layout;
        }
        // Below `needed` nothing fits: overheads only grow with the size.
        blocks = needed.max(blocks + 1).next_multiple_of(mib_blocks);
    };

    let params = Ext4Params {
        variant,
        block_size: bs,
        inodes: layout.inodes(),
        journal_blocks: layout.journal,
    };
    let dropped_tail = blocks - layout.blocks;
    let breakdown = breakdown(&content, &layout, dropped_tail, additional_space, stats);
    Ok(FsSize {
        bytes: blocks * bs,
        breakdown,
        mkfs_options: mke2fs_options(&params),
    })
}

fn breakdown(
    content: &Content,
    layout: &Layout,
    dropped_tail: u64,
    additional_space: u64,
    stats: &TreeStats,
) -> SizeBreakdown {
    let bs = layout.block_size;
    let total = (layout.blocks + dropped_tail) * bs;
    let mut breakdown = SizeBreakdown::default();
    breakdown.push(
        format!(
            "file data ({} files, {} bytes, whole blocks)",
            stats.file_sizes.len(),
            stats.file_bytes()
        ),
        content.file_data * bs,
    );
    breakdown.push(
        "extent/indirect blocks of large files",
        content.file_mapping * bs,
    );
    breakdown.push(
        format!(
            "directories ({}, {} entries)",
            stats.directories.len(),
            stats.entries()
        ),
        content.directories * bs,
    );
    breakdown.push(
        format!(
            "symlinks ({}, targets of 60+ bytes take a block)",
            stats.symlink_targets.len()
        ),
        content.symlinks * bs,
    );
    breakdown.push(
        format!(
            "inode tables ({} inodes of {INODE_SIZE} B, {} in use)",
            layout.inodes_per_group * layout.groups,
            content.inodes
        ),
        layout.inode_tables * bs,
    );
    breakdown.push(
        format!("block and inode bitmaps (block groups: {})", layout.groups),
        layout.bitmaps * bs,
    );
    breakdown.push(
        format!(
            "superblocks and group descriptors ({} copies)",
            layout.superblock_copies
        ),
        layout.superblocks * bs,
    );
    breakdown.push(
        "reserved GDT blocks for online growth (resize_inode)",
        layout.reserved_gdt * bs,
    );
    breakdown.push("journal", layout.journal_total() * bs);
    breakdown.push("lost+found, resize inode, boot block", layout.fixed * bs);
    breakdown.push("additional space", additional_space);
    breakdown.push("reserved for root: none (mke2fs -m 0)", 0);
    breakdown.push("last group mke2fs leaves unused", dropped_tail * bs);
    let so_far = breakdown.total();
    breakdown.push(
        "free: rounding to whole blocks and MiB",
        total.saturating_sub(so_far),
    );
    breakdown
}

#[cfg(test)]
mod tests;
