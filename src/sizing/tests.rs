//! Unit tests of tree measuring, the breakdown table and the vfat and approximate models.

use std::os::unix::fs::symlink;

use super::*;
use crate::spec::FsType;

#[test]
fn measuring_counts_hard_links_once_and_symlinks_by_target() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pkg");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::write(root.join("bin/tool"), vec![7u8; 5000]).unwrap();
    std::fs::hard_link(root.join("bin/tool"), root.join("bin/tool-again")).unwrap();
    symlink("tool", root.join("bin/link")).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();

    let stats = TreeStats::measure(&[&root]).unwrap();
    assert_eq!(stats.file_sizes.len(), 2);
    assert_eq!(stats.file_bytes(), 5000);
    assert_eq!(stats.hard_links, vec![5000]);
    assert_eq!(stats.symlink_targets, vec![4]);
    // root (holding "pkg"), pkg, pkg/bin
    assert_eq!(stats.directories.len(), 3);
    assert_eq!(stats.directories[0].name_lengths, vec![3]);
    assert_eq!(stats.entries(), 1 + 2 + 3);
    assert_eq!(stats.inodes(), 3 + 2 + 1);

    let same = TreeStats::measure_dir(dir.path()).unwrap();
    assert_eq!(same, stats);
}

#[test]
fn nesting_and_merging_add_directories() {
    let mut store = TreeStats::empty();
    store.directories[0].name_lengths = vec![40, 41];
    let nested = store.clone().nest_under(&["nix", "store"]);
    assert_eq!(nested.directories.len(), 3);
    assert_eq!(nested.directories[0].name_lengths, vec![3]);
    assert_eq!(nested.directories[1].name_lengths, vec![5]);
    assert_eq!(nested.directories[2].name_lengths, vec![40, 41]);

    let placed = TreeStats::empty().place_at(&["nix", "store"], store.clone());
    assert_eq!(placed, nested);

    let merged = nested.merge(store);
    assert_eq!(merged.directories[0].name_lengths, vec![3, 40, 41]);
    assert_eq!(merged.directories.len(), 3);
}

#[test]
fn a_missing_path_names_itself() {
    let err = TreeStats::measure(&["/nonexistent/nixdisk-test"]).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/nixdisk-test"),
        "{err}"
    );
}

#[test]
fn the_breakdown_renders_as_a_table_with_a_total() {
    let mut breakdown = SizeBreakdown::default();
    breakdown.push("file data", 3 * MIB);
    breakdown.push("journal", 4 * MIB);
    let text = breakdown.to_string();
    assert_eq!(
        text,
        "  file data         3145728      3.00 MiB\n  journal           4194304      4.00 MiB\n  total             7340032      7.00 MiB\n"
    );
    assert_eq!(human(1023), "1023 B");
    assert_eq!(human(1536), "1.50 KiB");
}

fn files(sizes: &[u64]) -> TreeStats {
    let mut stats = TreeStats::empty();
    stats.file_sizes = sizes.to_vec();
    stats.directories[0].name_lengths = vec![12; sizes.len()];
    stats
}

#[test]
fn vfat_picks_the_fat_type_by_clusters_and_pins_it() {
    let small = fs_size(FsType::Vfat, &files(&[1000; 10]), 0, 4096).unwrap();
    assert_eq!(small.bytes, MIB);
    assert_eq!(
        small.mkfs_options.join(" "),
        "-F 12 -S 512 -s 8 -R 1 -f 2 -a -r 512"
    );
    let middle = fs_size(FsType::Vfat, &files(&[MIB; 100]), 0, 4096).unwrap();
    assert!(middle.mkfs_options.join(" ").starts_with("-F 16 "));
    assert_eq!(middle.breakdown.total(), middle.bytes);
    let large = fs_size(FsType::Vfat, &files(&[MIB; 100]), 256 * MIB, 4096).unwrap();
    assert!(large.mkfs_options.join(" ").starts_with("-F 32 "));
    assert!(large.bytes >= 356 * MIB);
}

#[test]
fn vfat_refuses_symlinks() {
    let mut stats = files(&[1]);
    stats.symlink_targets.push(10);
    assert!(matches!(
        fs_size(FsType::Vfat, &stats, 0, 4096),
        Err(SizingError::Unsupported { fs: "vfat", .. })
    ));
}

#[test]
fn approximate_models_keep_their_minimums_and_add_up() {
    let stats = files(&[10 * MIB, 100, 5000]);
    for (fs, minimum) in [
        (FsType::Btrfs, 256 * MIB),
        (FsType::Xfs, 300 * MIB),
        (FsType::Erofs, 11 * MIB),
        (FsType::Squashfs, 11 * MIB),
    ] {
        let size = fs_size(fs, &stats, 0, default_block_size(fs)).unwrap();
        assert!(size.bytes >= minimum, "{fs:?}: {}", size.bytes);
        assert_eq!(size.bytes % MIB, 0);
        assert_eq!(size.breakdown.total(), size.bytes, "{fs:?}");
    }
}
