//! Fixed times in a deterministic full image's FAT partitions (ESP,
//! XBOOTLDR, /boot), set on the host after the builder VM is gone.
//!
//! The guest kernel stamps each directory entry with its clock (creation
//! time to 10 ms, access date, write time); this host has no vfat to mount,
//! so nixdisk walks the directory tree itself (FAT16 and FAT32, as
//! `mkfs.vfat` makes them for these sizes) and sets every time of every
//! entry to 1980-01-01 00:00, FAT's epoch.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::TimesError;

/// 1980-01-01 as a FAT date (day 1, month 1, year 0).
const FAT_EPOCH_DATE: u16 = (1 << 5) | 1;
const ENTRY: usize = 32;
const ATTR_LONG_NAME: u8 = 0x0F;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_VOLUME_ID: u8 = 0x08;

/// The geometry of a FAT file system, from its boot sector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    bytes_per_sector: u64,
    cluster_bytes: u64,
    fat_offset: u64,
    fat32: bool,
    root_dir: Option<(u64, u64)>,
    root_cluster: u32,
    data_offset: u64,
}

fn geometry(boot: &[u8]) -> Option<Geometry> {
    let le16 = |at: usize| u64::from(u16::from_le_bytes([boot[at], boot[at + 1]]));
    let le32 = |at: usize| {
        u64::from(u32::from_le_bytes([
            boot[at],
            boot[at + 1],
            boot[at + 2],
            boot[at + 3],
        ]))
    };
    if boot.len() < 512 || boot[510] != 0x55 || boot[511] != 0xAA {
        return None;
    }
    let bytes_per_sector = le16(11);
    let sectors_per_cluster = u64::from(boot[13]);
    let reserved = le16(14);
    let fats = u64::from(boot[16]);
    let root_entries = le16(17);
    let fat_sectors = match le16(22) {
        0 => le32(36),
        n => n,
    };
    let total_sectors = match le16(19) {
        0 => le32(32),
        n => n,
    };
    if bytes_per_sector == 0 || sectors_per_cluster == 0 {
        return None;
    }
    let root_sectors = (root_entries * 32).div_ceil(bytes_per_sector);
    let first_data = reserved + fats * fat_sectors + root_sectors;
    let clusters = total_sectors.checked_sub(first_data)? / sectors_per_cluster;
    if clusters < 4085 {
        return None; // FAT12: not made for these partitions
    }
    let fat32 = clusters >= 65525;
    Some(Geometry {
        bytes_per_sector,
        cluster_bytes: bytes_per_sector * sectors_per_cluster,
        fat_offset: reserved * bytes_per_sector,
        fat32,
        root_dir: (!fat32).then(|| {
            (
                (reserved + fats * fat_sectors) * bytes_per_sector,
                root_sectors * bytes_per_sector,
            )
        }),
        root_cluster: le32(44) as u32,
        data_offset: first_data * bytes_per_sector,
    })
}

/// Sets every time of every entry in the FAT file system at byte `offset`
/// of `raw` to the FAT epoch.
pub fn fix_fat_times(raw: &Path, offset: u64) -> Result<(), TimesError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(raw)
        .map_err(super::io("could not open", raw))?;
    let mut boot = [0u8; 512];
    file.read_exact_at(&mut boot, offset)
        .map_err(super::io("could not read", raw))?;
    let geometry = geometry(&boot).ok_or_else(|| TimesError::Times {
        detail: format!("no FAT16/FAT32 boot sector at byte {offset}"),
    })?;
    let fat = Fat {
        file: &file,
        raw,
        offset,
        geometry,
    };
    match geometry.root_dir {
        Some((start, len)) => fat.fix_region(start, len)?,
        None => fat.fix_chain(geometry.root_cluster, 0)?,
    }
    Ok(())
}

struct Fat<'a> {
    file: &'a File,
    raw: &'a Path,
    offset: u64,
    geometry: Geometry,
}

impl Fat<'_> {
    fn read(&self, at: u64, buf: &mut [u8]) -> Result<(), TimesError> {
        self.file
            .read_exact_at(buf, self.offset + at)
            .map_err(super::io("could not read", self.raw))
    }

    fn next_cluster(&self, cluster: u32) -> Result<Option<u32>, TimesError> {
        let g = &self.geometry;
        let next = if g.fat32 {
            let mut b = [0u8; 4];
            self.read(g.fat_offset + u64::from(cluster) * 4, &mut b)?;
            u32::from_le_bytes(b) & 0x0FFF_FFFF
        } else {
            let mut b = [0u8; 2];
            self.read(g.fat_offset + u64::from(cluster) * 2, &mut b)?;
            let n = u32::from(u16::from_le_bytes(b));
            if n >= 0xFFF8 { 0x0FFF_FFFF } else { n }
        };
        Ok((2..0x0FFF_FFF7).contains(&next).then_some(next))
    }

    fn fix_chain(&self, first: u32, depth: u32) -> Result<(), TimesError> {
        if depth > 64 {
            return Err(TimesError::Times {
                detail: "FAT directories nest deeper than 64 levels".into(),
            });
        }
        let g = self.geometry;
        let mut cluster = Some(first);
        let mut seen = 0u64;
        while let Some(c) = cluster.filter(|c| *c >= 2) {
            let start = g.data_offset + u64::from(c - 2) * g.cluster_bytes;
            if !self.fix_entries(start, g.cluster_bytes, depth)? {
                return Ok(());
            }
            cluster = self.next_cluster(c)?;
            seen += 1;
            if seen > 1 << 22 {
                return Err(TimesError::Times {
                    detail: "a FAT cluster chain loops".into(),
                });
            }
        }
        Ok(())
    }

    fn fix_region(&self, start: u64, len: u64) -> Result<(), TimesError> {
        self.fix_entries(start, len, 0).map(|_| ())
    }

    /// Fixes the entries in `len` bytes at `start`; false at the end marker.
    fn fix_entries(&self, start: u64, len: u64, depth: u32) -> Result<bool, TimesError> {
        let mut buf = vec![0u8; len as usize];
        self.read(start, &mut buf)?;
        let mut more = true;
        let mut subdirs = Vec::new();
        for entry in buf.chunks_exact_mut(ENTRY) {
            if entry[0] == 0x00 {
                more = false;
                break;
            }
            let attr = entry[11];
            if attr == ATTR_LONG_NAME {
                continue;
            }
            // Deleted entries (0xE5) keep their bytes: fix their times too.
            let deleted = entry[0] == 0xE5;
            // Creation time (10 ms, time, date), access date, write time and date.
            entry[13] = 0;
            entry[14..16].copy_from_slice(&0u16.to_le_bytes());
            entry[16..18].copy_from_slice(&FAT_EPOCH_DATE.to_le_bytes());
            entry[18..20].copy_from_slice(&FAT_EPOCH_DATE.to_le_bytes());
            entry[22..24].copy_from_slice(&0u16.to_le_bytes());
            entry[24..26].copy_from_slice(&FAT_EPOCH_DATE.to_le_bytes());
            let dot = entry[0] == b'.';
            if attr & ATTR_DIRECTORY != 0 && attr & ATTR_VOLUME_ID == 0 && !dot && !deleted {
                let hi = u32::from(u16::from_le_bytes([entry[20], entry[21]]));
                let lo = u32::from(u16::from_le_bytes([entry[26], entry[27]]));
                subdirs.push((hi << 16) | lo);
            }
        }
        self.file
            .write_all_at(&buf, self.offset + start)
            .map_err(super::io("could not write", self.raw))?;
        for dir in subdirs {
            self.fix_chain(dir, depth + 1)?;
        }
        Ok(more)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fat_geometry_from_mkfs_vfat() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("fat.img");
        let f = File::create(&image).unwrap();
        f.set_len(64 << 20).unwrap();
        drop(f);
        let status = std::process::Command::new("mkfs.vfat")
            .arg(&image)
            .output()
            .unwrap();
        assert!(status.status.success());
        let mut boot = [0u8; 512];
        File::open(&image)
            .unwrap()
            .read_exact_at(&mut boot, 0)
            .unwrap();
        let g = geometry(&boot).unwrap();
        assert!(!g.fat32);
        assert_eq!(g.bytes_per_sector, 512);
        fix_fat_times(&image, 0).unwrap();
    }
}
