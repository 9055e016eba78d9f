//! The vfat size model: clusters for files and directories, two FATs, the
//! FAT type chosen by cluster count.
//!
//! The options of [`mkfs_vfat_options`] pin every layout choice mkfs.vfat
//! would otherwise make by itself: FAT type (`-F`), sector and cluster size
//! (`-S 512 -s`), reserved sectors (`-R`), FAT count (`-f 2`), root entries
//! for FAT12/16 (`-r`), and no alignment padding (`-a`). Counting is
//! conservative where mtools decides: every name is given long-name entries
//! (a short 8.3 entry plus one per 13 characters), although plain upper-case
//! 8.3 names need none. vfat has no hard links (each extra name is a copy),
//! no symlinks and no device nodes.

use super::{DirectoryStats, FsSize, SizeBreakdown, SizingError, TreeStats, round_up_mib};
use crate::spec::MIB;

/// Bytes per sector.
pub const SECTOR: u64 = 512;
/// Bytes per directory entry.
const DIR_ENTRY: u64 = 32;
/// Characters of a name one long-name entry holds.
const LFN_CHARS: u64 = 13;
/// Keep this many clusters away from the FAT type limits: mkfs.vfat refuses
/// a FAT16 with too many clusters and warns about a FAT32 with too few.
const LIMIT_MARGIN: u64 = 16;

/// A FAT type with its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatType {
    /// Up to 4084 clusters.
    Fat12,
    /// 4085 to 65524 clusters.
    Fat16,
    /// 65525 clusters or more.
    Fat32,
}

impl FatType {
    fn bits(self) -> u64 {
        match self {
            FatType::Fat12 => 12,
            FatType::Fat16 => 16,
            FatType::Fat32 => 32,
        }
    }

    fn clusters(self) -> (u64, u64) {
        match self {
            FatType::Fat12 => (1, 4084),
            FatType::Fat16 => (4085, 65524),
            FatType::Fat32 => (65525, 0x0FFF_FFF4),
        }
    }

    fn reserved_sectors(self) -> u64 {
        if self == FatType::Fat32 { 32 } else { 1 }
    }
}

/// The vfat layout a size was computed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VfatParams {
    /// FAT12, FAT16 or FAT32.
    pub fat: FatType,
    /// Bytes per cluster.
    pub cluster_size: u64,
    /// Root directory entries (FAT12/16; FAT32's root lives in clusters).
    pub root_entries: u64,
}

/// The mkfs.vfat options a size was computed for. Builders add their own
/// (`-n LABEL`, `-i VOLID`, `--invariant`) and the device or image file.
pub fn mkfs_vfat_options(params: &VfatParams) -> Vec<String> {
    let mut options = vec![
        "-F".to_owned(),
        params.fat.bits().to_string(),
        "-S".to_owned(),
        SECTOR.to_string(),
        "-s".to_owned(),
        (params.cluster_size / SECTOR).to_string(),
        "-R".to_owned(),
        params.fat.reserved_sectors().to_string(),
        "-f".to_owned(),
        "2".to_owned(),
        "-a".to_owned(),
    ];
    if params.fat != FatType::Fat32 {
        options.extend(["-r".to_owned(), params.root_entries.to_string()]);
    }
    options
}

/// Directory entries a name takes: the 8.3 entry and its long-name entries.
fn name_entries(length: u64) -> u64 {
    1 + length.div_ceil(LFN_CHARS)
}

/// The file system's layout at `sectors` sectors: its data clusters and FAT length.
fn clusters_at(fat: FatType, sectors: u64, cluster_sectors: u64, root_sectors: u64) -> (u64, u64) {
    let before_fats = fat.reserved_sectors() + root_sectors;
    let room = sectors.saturating_sub(before_fats);
    // The FAT sized for every cluster that could fit: never too short.
    let fat_sectors = ((room / cluster_sectors + 2) * fat.bits())
        .div_ceil(8)
        .div_ceil(SECTOR);
    let data = room.saturating_sub(2 * fat_sectors);
    (data / cluster_sectors, fat_sectors)
}

/// Sizes a vfat file system for `stats` with `additional_space` free;
/// `cluster_size` is a power of two from 512 to 65536.
pub fn size(
    stats: &TreeStats,
    additional_space: u64,
    cluster_size: u32,
) -> Result<FsSize, SizingError> {
    let cs = u64::from(cluster_size);
    if !cluster_size.is_power_of_two() || !(512..=65536).contains(&cluster_size) {
        return Err(SizingError::BlockSize {
            fs: "vfat",
            block_size: cluster_size,
            allowed: "a power of two from 512 to 65536",
        });
    }
    if !stats.symlink_targets.is_empty() || stats.special_files > 0 {
        return Err(SizingError::Unsupported {
            fs: "vfat",
            what: format!(
                "symlinks or device nodes ({} symlinks, {} others)",
                stats.symlink_targets.len(),
                stats.special_files
            ),
            hint: "use ext4 (or another Linux file system) for trees with symlinks, such as a Nix store",
        });
    }
    let file_clusters: u64 = stats
        .file_sizes
        .iter()
        .chain(&stats.hard_links)
        .map(|size| size.div_ceil(cs))
        .sum();
    static EMPTY_ROOT: DirectoryStats = DirectoryStats {
        name_lengths: Vec::new(),
    };
    let (root, subdirs) = stats
        .directories
        .split_first()
        .unwrap_or((&EMPTY_ROOT, &[]));
    let dir_clusters: u64 = subdirs
        .iter()
        .map(|dir| {
            let entries = 2 + dir
                .name_lengths
                .iter()
                .map(|&n| name_entries(u64::from(n)))
                .sum::<u64>();
            (entries * DIR_ENTRY).div_ceil(cs)
        })
        .sum();
    // The volume label takes one root entry.
    let root_entries = 1 + root
        .name_lengths
        .iter()
        .map(|&n| name_entries(u64::from(n)))
        .sum::<u64>();
    let additional_clusters = additional_space.div_ceil(cs);
    let cluster_sectors = cs / SECTOR;

    let mut best: Option<(u64, VfatParams, u64, u64, u64)> = None;
    for fat in [FatType::Fat12, FatType::Fat16, FatType::Fat32] {
        let (root_region_entries, root_clusters) = if fat == FatType::Fat32 {
            (0, (root_entries * DIR_ENTRY).div_ceil(cs).max(1))
        } else {
            (
                root_entries.max(512).next_multiple_of(SECTOR / DIR_ENTRY),
                0,
            )
        };
        let root_sectors = root_region_entries * DIR_ENTRY / SECTOR;
        let needed = file_clusters + dir_clusters + root_clusters + additional_clusters;
        let (min, max) = fat.clusters();
        let wanted = needed.max(min + LIMIT_MARGIN);
        if wanted + LIMIT_MARGIN > max {
            continue;
        }
        let mut sectors = round_up_mib(
            (wanted * cluster_sectors + fat.reserved_sectors() + root_sectors) * SECTOR,
        ) / SECTOR;
        loop {
            let (clusters, fat_sectors) = clusters_at(fat, sectors, cluster_sectors, root_sectors);
            if clusters >= wanted {
                if clusters + LIMIT_MARGIN <= max
                    && best.is_none_or(|(bytes, ..)| sectors * SECTOR < bytes)
                {
                    let params = VfatParams {
                        fat,
                        cluster_size: cs,
                        root_entries: root_region_entries,
                    };
                    let metadata =
                        (fat.reserved_sectors() + root_sectors + 2 * fat_sectors) * SECTOR;
                    best = Some((
                        sectors * SECTOR,
                        params,
                        metadata,
                        needed - additional_clusters,
                        clusters,
                    ));
                }
                break;
            }
            sectors += (wanted - clusters) * cluster_sectors;
            sectors = round_up_mib(sectors * SECTOR) / SECTOR;
        }
    }
    let Some((bytes, params, metadata, content_clusters, _)) = best else {
        return Err(SizingError::TooLarge {
            fs: "vfat",
            what: format!("more clusters than FAT32 allows at {} bytes each", cs),
        });
    };
    let mut breakdown = SizeBreakdown::default();
    breakdown.push(
        format!(
            "files ({} incl. hard-link copies, whole clusters)",
            stats.file_sizes.len() + stats.hard_links.len()
        ),
        file_clusters * cs,
    );
    breakdown.push(
        format!(
            "directories ({} , long names counted)",
            stats.directories.len()
        ),
        (content_clusters - file_clusters) * cs,
    );
    breakdown.push(
        format!("boot sector, two FATs ({:?}), root region", params.fat),
        metadata,
    );
    breakdown.push("additional space", additional_space);
    let so_far = breakdown.total();
    breakdown.push(
        "free: rounding to clusters and MiB",
        bytes.saturating_sub(so_far),
    );
    debug_assert!(bytes % MIB == 0);
    Ok(FsSize {
        bytes,
        breakdown,
        mkfs_options: mkfs_vfat_options(&params),
    })
}
