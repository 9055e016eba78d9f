//! Exact unit tests of the ext model against mke2fs's rules.

use proptest::prelude::*;

use super::layout::{Content, Layout};
use super::*;
use crate::sizing::{DirectoryStats, TreeStats};

#[test]
fn journal_size_follows_mke2fs() {
    assert_eq!(default_journal_blocks(2047), 0);
    assert_eq!(default_journal_blocks(2048), 1024);
    assert_eq!(default_journal_blocks(32767), 1024);
    assert_eq!(default_journal_blocks(32768), 4096);
    assert_eq!(default_journal_blocks(262_144), 8192);
    assert_eq!(default_journal_blocks(524_288), 16384);
    assert_eq!(default_journal_blocks(4_194_304), 32768);
    assert_eq!(default_journal_blocks(1 << 40), 262_144);
}

#[test]
fn mapping_blocks_count_extent_trees_and_indirect_blocks() {
    assert_eq!(extent_tree_blocks(4096, 4), 0);
    assert_eq!(extent_tree_blocks(4096, 5), 1);
    assert_eq!(extent_tree_blocks(4096, 340), 1);
    assert_eq!(extent_tree_blocks(4096, 341), 2);
    assert_eq!(extent_tree_blocks(4096, 340 * 5), 5 + 1);
    assert_eq!(indirect_blocks(4096, 12), 0);
    assert_eq!(indirect_blocks(4096, 13), 1);
    assert_eq!(indirect_blocks(4096, 12 + 1024), 1);
    assert_eq!(indirect_blocks(4096, 12 + 1025), 1 + 2);
    assert_eq!(
        indirect_blocks(1024, 12 + 256 + 256 * 256 + 1),
        1 + (1 + 256) + 3
    );
    // A 1 GiB file in 4 KiB blocks: 8 extents at worst 17, one leaf block.
    assert_eq!(mapping_blocks(Variant::Ext4, 4096, 262_144), 1);
    assert_eq!(mapping_blocks(Variant::Ext4, 4096, 32768), 0);
}

#[test]
fn directories_pack_entries_into_blocks() {
    assert_eq!(directory_blocks(Variant::Ext4, 4096, std::iter::empty()), 1);
    // 4084 usable bytes: 24 for the dots, then 255 records of 16 bytes fill it.
    assert_eq!(
        directory_blocks(Variant::Ext4, 4096, std::iter::repeat_n(8, 253)),
        1
    );
    assert_eq!(
        directory_blocks(Variant::Ext4, 4096, std::iter::repeat_n(8, 254)),
        2
    );
    // Without the checksum tail (ext3) 256 fit.
    assert_eq!(
        directory_blocks(Variant::Ext3, 4096, std::iter::repeat_n(8, 254)),
        1
    );
}

#[test]
fn lost_and_found_is_16_kib_within_direct_blocks() {
    assert_eq!(lost_and_found_blocks(4096), 4);
    assert_eq!(lost_and_found_blocks(2048), 8);
    assert_eq!(lost_and_found_blocks(1024), 12);
}

#[test]
fn an_empty_64_mib_ext4_matches_mke2fs() {
    // mke2fs -t ext4 -b 4096 -N 1000 on 64 MiB: 1008 inodes, 7 reserved GDT
    // blocks, 15280 of 16384 blocks free (measured with dumpe2fs).
    let layout = Layout::new(Variant::Ext4, 4096, 16384, 1000)
        .unwrap()
        .unwrap();
    assert_eq!(layout.inodes_per_group, 1008);
    assert_eq!(layout.reserved_gdt, 7);
    let content = Content::of(Variant::Ext4, 4096, &TreeStats::empty());
    assert_eq!(content.blocks(), 1);
    assert_eq!(16384 - layout.overhead() - content.blocks(), 15280);
}

#[test]
fn a_small_last_group_is_dropped() {
    // 32768 + 100 blocks: the 100-block tail cannot hold a group's metadata.
    let layout = Layout::new(Variant::Ext4, 4096, 32768 + 100, 20000)
        .unwrap()
        .unwrap();
    assert_eq!(layout.blocks, 32768);
    assert_eq!(layout.groups, 1);
}

/// Free blocks of an empty file system of this layout (the root directory takes one).
fn empty_free_blocks(layout: &Layout) -> u64 {
    layout.blocks - layout.overhead() - 1
}

#[test]
fn a_last_group_without_a_backup_is_kept_from_its_bitmaps_table_and_50_blocks() {
    // mke2fs -t ext4 -b 4096 -N 205936 -J size=64 (the model's options for
    // the saved proptest case): group 60 holds no superblock copy, so a tail
    // of 2 + 211 + 50 = 263 blocks is kept, 262 dropped (measured with
    // dumpe2fs: 1966343 blocks, 1928302 free; 1966080 blocks).
    let full = 60 * 32768;
    let kept = Layout::new(Variant::Ext4, 4096, full + 263, 205_936)
        .unwrap()
        .unwrap();
    assert_eq!(
        (kept.blocks, kept.groups, kept.inodes()),
        (full + 263, 61, 205_936)
    );
    assert_eq!(empty_free_blocks(&kept), 1_928_302);
    let dropped = Layout::new(Variant::Ext4, 4096, full + 262, 205_936)
        .unwrap()
        .unwrap();
    assert_eq!((dropped.blocks, dropped.groups), (full, 60));
    // -N 26000, 27 groups: group 26 has no copy either, 2 + 61 + 50 = 113
    // (measured: 852081 blocks, 831064 free).
    let kept = Layout::new(Variant::Ext4, 4096, 26 * 32768 + 113, 26000)
        .unwrap()
        .unwrap();
    assert_eq!((kept.blocks, kept.groups), (26 * 32768 + 113, 27));
    assert_eq!(empty_free_blocks(&kept), 831_064);
    let dropped = Layout::new(Variant::Ext4, 4096, 26 * 32768 + 112, 26000)
        .unwrap()
        .unwrap();
    assert_eq!(dropped.blocks, 26 * 32768);
}

#[test]
fn a_last_group_with_a_backup_must_also_hold_its_copy() {
    // -N 26000, 26 groups: group 25 = 5^2 holds a superblock copy, so the
    // tail must hold 2 + 63 + 1 + 1 descriptor + 400 reserved GDT + 50 = 517
    // blocks (measured: 819717 blocks, 798823 free; 516 gives 819200).
    let kept = Layout::new(Variant::Ext4, 4096, 25 * 32768 + 517, 26000)
        .unwrap()
        .unwrap();
    assert_eq!((kept.blocks, kept.groups), (25 * 32768 + 517, 26));
    assert_eq!(empty_free_blocks(&kept), 798_823);
    let dropped = Layout::new(Variant::Ext4, 4096, 25 * 32768 + 516, 26000)
        .unwrap()
        .unwrap();
    assert_eq!(dropped.blocks, 25 * 32768);
}

#[test]
fn too_many_inodes_ask_for_more_groups() {
    let asked = Layout::new(Variant::Ext4, 4096, 8192, 40000).unwrap();
    assert_eq!(asked, Err(2 * 32768));
}

#[test]
fn the_options_pin_what_the_size_assumes() {
    let size = size(Variant::Ext4, &TreeStats::empty(), 0, 4096).unwrap();
    assert_eq!(size.bytes, MIN_BYTES);
    assert_eq!(
        size.mkfs_options.join(" "),
        format!("-F -t ext4 -b 4096 -I 256 -N 16 -m 0 -O none,{EXT4_FEATURES} -G 16 -J size=4")
    );
    let ext2 = super::size(Variant::Ext2, &TreeStats::empty(), 0, 1024).unwrap();
    assert_eq!(
        ext2.mkfs_options.join(" "),
        format!("-F -t ext2 -b 1024 -I 256 -N 16 -m 0 -O none,{EXT2_FEATURES}")
    );
    assert!(super::size(Variant::Ext4, &TreeStats::empty(), 0, 8192).is_err());
}

/// `sparse_super`, stated apart from the model: groups 0, 1 and powers of 3, 5, 7.
fn holds_superblock_copy(group: u64) -> bool {
    group <= 1
        || [3, 5, 7].iter().any(|&base| {
            let mut rest = group;
            while rest % base == 0 {
                rest /= base;
            }
            rest == 1
        })
}

fn stats_strategy() -> impl Strategy<Value = TreeStats> {
    (
        proptest::collection::vec(0u64..300_000_000, 0..200),
        proptest::collection::vec(proptest::collection::vec(1u16..255, 0..600), 0..20),
        proptest::collection::vec(1u64..4000, 0..50),
    )
        .prop_map(|(file_sizes, dirs, symlink_targets)| {
            let mut directories = vec![DirectoryStats::default()];
            directories.extend(
                dirs.into_iter()
                    .map(|name_lengths| DirectoryStats { name_lengths }),
            );
            TreeStats {
                file_sizes,
                directories,
                symlink_targets,
                hard_links: vec![],
                special_files: 0,
            }
        })
}

// proptest's default of 256 cases; `PROPTEST_CASES` raises it (an explicit
// `with_cases` would ignore the variable).
proptest! {
    #[test]
    fn sizes_hold_the_tree_and_add_up(
        stats in stats_strategy(),
        additional in 0u64..(1 << 32),
        block_size in prop::sample::select(vec![1024u32, 4096]),
    ) {
        let sized = size(Variant::Ext4, &stats, additional, block_size).unwrap();
        prop_assert_eq!(sized.bytes % MIB, 0);
        prop_assert_eq!(sized.breakdown.total(), sized.bytes);
        let bs = u64::from(block_size);
        let content = Content::of(Variant::Ext4, bs, &stats);
        let inodes = content.inodes + additional.div_ceil(SPARE_INODE_RATIO);
        let layout = Layout::new(Variant::Ext4, bs, sized.bytes / bs, inodes).unwrap().unwrap();
        prop_assert!(layout.overhead() + content.blocks() + additional.div_ceil(bs) <= layout.blocks);
        // Little is left over: under a MiB of rounding, what the per-group
        // inode rounding may add (one more group can mean up to a table
        // block fewer per group, so a size a MiB smaller may need more),
        // and the partial last group mke2fs keeps only from its floor: its
        // bitmaps, inode table and 50 blocks, plus its superblock copy,
        // descriptors and reserved GDT blocks if it holds one.
        let slack = layout.blocks - (layout.overhead() + content.blocks() + additional.div_ceil(bs));
        let copies = layout.superblock_copies;
        let backup = if holds_superblock_copy(layout.groups - 1) {
            (layout.superblocks + layout.reserved_gdt) / copies
        } else {
            0
        };
        let floor = 2 + layout.inode_tables / layout.groups + backup + 50;
        prop_assert!(
            slack < MIB / bs + 2 * layout.groups + floor,
            "slack {} blocks in {:?}", slack, layout
        );
        prop_assert!(layout.inodes() >= inodes);
    }
}
