//! The size-independent content of an ext file system and its size-dependent layout.

use super::{
    FAST_SYMLINK_MAX, INODE_SIZE, MAX_EXTENT_BLOCKS, RESERVED_INODES, Variant,
    default_journal_blocks, directory_blocks, extent_tree_blocks, indirect_blocks,
    lost_and_found_blocks, mapping_blocks,
};
use crate::sizing::{SizingError, TreeStats};

/// The name `lost+found`, which mke2fs adds to the root directory.
const LOST_AND_FOUND_NAME: u64 = "lost+found".len() as u64;

/// Blocks and inodes the tree itself needs, whatever the file system's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Content {
    /// Data blocks of regular files.
    pub file_data: u64,
    /// Extent-tree or indirect blocks of regular files.
    pub file_mapping: u64,
    /// Directory blocks, their mapping included.
    pub directories: u64,
    /// Blocks of symlinks too long to live in the inode.
    pub symlinks: u64,
    /// Inodes used once the tree is in (reserved ones and lost+found included).
    pub inodes: u64,
}

impl Content {
    pub fn of(variant: Variant, block_size: u64, stats: &TreeStats) -> Self {
        let mut content = Content {
            file_data: 0,
            file_mapping: 0,
            directories: 0,
            symlinks: 0,
            // The root directory is one of the reserved inodes.
            inodes: RESERVED_INODES + stats.inodes().saturating_sub(1),
        };
        for &size in &stats.file_sizes {
            let blocks = size.div_ceil(block_size);
            content.file_data += blocks;
            content.file_mapping += mapping_blocks(variant, block_size, blocks);
        }
        for (index, directory) in stats.directories.iter().enumerate() {
            let names = directory.name_lengths.iter().map(|&n| u64::from(n));
            let extra = (index == 0).then_some(LOST_AND_FOUND_NAME);
            content.directories += directory_blocks(variant, block_size, names.chain(extra));
        }
        content.symlinks = stats
            .symlink_targets
            .iter()
            .filter(|&&len| len >= FAST_SYMLINK_MAX)
            .map(|len| len.div_ceil(block_size))
            .sum();
        content
    }

    /// All content blocks.
    pub fn blocks(&self) -> u64 {
        self.file_data + self.file_mapping + self.directories + self.symlinks
    }
}

/// What mke2fs lays out for a file system of a given block count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Layout {
    pub block_size: u64,
    /// Blocks the file system really has (mke2fs may drop a small last group).
    pub blocks: u64,
    pub groups: u64,
    pub inodes_per_group: u64,
    pub inode_tables: u64,
    pub bitmaps: u64,
    /// Groups holding a superblock copy.
    pub superblock_copies: u64,
    /// Superblock and descriptor blocks in all copies.
    pub superblocks: u64,
    /// Reserved GDT blocks in all copies.
    pub reserved_gdt: u64,
    pub journal: u64,
    pub journal_mapping: u64,
    /// lost+found, the resize inode's block, block 0 of 1 KiB-block systems.
    pub fixed: u64,
}

/// Whether group `group` holds a superblock copy (`sparse_super`): 0, 1 and powers of 3, 5, 7.
fn has_superblock(group: u64) -> bool {
    if group <= 1 {
        return true;
    }
    [3u64, 5, 7].iter().any(|&base| {
        let mut power = base;
        while power < group {
            power *= base;
        }
        power == group
    })
}

/// mke2fs's `calc_reserved_gdt_blocks`: descriptors for 1024 times the size, at most one block's worth.
fn reserved_gdt_blocks(
    block_size: u64,
    blocks: u64,
    first_data_block: u64,
    desc_per_block: u64,
    desc_blocks: u64,
) -> u64 {
    let mut max_blocks: u64 = 0xffff_ffff;
    if blocks < max_blocks / 1024 {
        max_blocks = blocks * 1024;
    }
    let reserve_groups = (max_blocks - first_data_block).div_ceil(8 * block_size);
    reserve_groups
        .div_ceil(desc_per_block)
        .saturating_sub(desc_blocks)
        .min(block_size / 4)
}

/// The fewest blocks mke2fs keeps in a partial last group
/// (`ext2fs_initialize`): its bitmaps and inode table, plus the superblock
/// copy, descriptors and reserved GDT blocks only if it holds a copy, plus
/// 50 blocks. A shorter tail is dropped (or, as the only group, refused).
fn last_group_floor(groups: u64, table_blocks: u64, desc_blocks: u64, reserved_gdt: u64) -> u64 {
    let backup = if has_superblock(groups - 1) {
        1 + desc_blocks + reserved_gdt
    } else {
        0
    };
    2 + table_blocks + backup + 50
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl Layout {
    /// The layout of a file system of `requested` blocks with `inodes`
    /// inodes, as mke2fs computes it. `Ok(Err(n))`: mke2fs would refuse or
    /// rearrange; ask for at least `n` blocks.
    pub fn new(
        variant: Variant,
        block_size: u64,
        requested: u64,
        inodes: u64,
    ) -> Result<Result<Layout, u64>, SizingError> {
        let limit = if variant == Variant::Ext4 {
            1u64 << 48
        } else {
            0xffff_ffff
        };
        if requested > limit {
            return Err(SizingError::TooLarge {
                fs: variant.as_str(),
                what: format!("{requested} blocks of {block_size} bytes (at most {limit})"),
            });
        }
        let first_data_block = u64::from(block_size == 1024);
        let per_group = 8 * block_size;
        let max_inodes_per_group = 8 * block_size;
        let desc_per_block = block_size / variant.descriptor_bytes();
        let mut blocks = requested;
        loop {
            let groups = (blocks - first_data_block).div_ceil(per_group);
            if inodes.div_ceil(groups) > max_inodes_per_group {
                // Each group's inode bitmap is one block: more inodes need more groups.
                let groups = inodes.div_ceil(max_inodes_per_group);
                return Ok(Err(first_data_block + groups * per_group));
            }
            // mke2fs fills whole inode table blocks, then rounds down to a
            // multiple of 8, which can leave fewer inodes than asked for
            // with 1 KiB blocks. Round up to both instead; the count passed
            // as `-N` is then this per-group count times the groups, which
            // mke2fs keeps as it is.
            let per_block = block_size / INODE_SIZE;
            let unit = if per_block % 8 == 0 {
                per_block
            } else {
                8 * per_block / gcd(8, per_block)
            };
            let inodes_per_group = inodes.div_ceil(groups).max(8).next_multiple_of(unit);
            let table_blocks = inodes_per_group * INODE_SIZE / block_size;
            let desc_blocks = groups.div_ceil(desc_per_block);
            let reserved = reserved_gdt_blocks(
                block_size,
                blocks,
                first_data_block,
                desc_per_block,
                desc_blocks,
            );
            let floor = last_group_floor(groups, table_blocks, desc_blocks, reserved);
            let remainder = (blocks - first_data_block) % per_group;
            if remainder != 0 && remainder < floor {
                if groups == 1 {
                    return Ok(Err(blocks + floor - remainder));
                }
                // mke2fs drops a last group too small to be worth it.
                blocks -= remainder;
                continue;
            }
            let copies = (0..groups).filter(|&g| has_superblock(g)).count() as u64;
            let journal = if variant.journal() {
                default_journal_blocks(blocks)
            } else {
                0
            };
            let journal_mapping = if variant == Variant::Ext4 {
                extent_tree_blocks(block_size, journal.div_ceil(MAX_EXTENT_BLOCKS))
            } else {
                indirect_blocks(block_size, journal)
            };
            let resize_inode = u64::from(reserved > 0);
            return Ok(Ok(Layout {
                block_size,
                blocks,
                groups,
                inodes_per_group,
                inode_tables: groups * table_blocks,
                bitmaps: 2 * groups,
                superblock_copies: copies,
                superblocks: copies * (1 + desc_blocks),
                reserved_gdt: copies * reserved,
                journal,
                journal_mapping,
                fixed: lost_and_found_blocks(block_size) + resize_inode + first_data_block,
            }));
        }
    }

    /// The inode count to pass as `-N`: mke2fs keeps it exactly.
    pub fn inodes(&self) -> u64 {
        self.inodes_per_group * self.groups
    }

    pub fn journal_total(&self) -> u64 {
        self.journal + self.journal_mapping
    }

    /// Blocks mke2fs uses before the tree is copied in.
    pub fn overhead(&self) -> u64 {
        self.inode_tables
            + self.bitmaps
            + self.superblocks
            + self.reserved_gdt
            + self.journal_total()
            + self.fixed
    }
}
