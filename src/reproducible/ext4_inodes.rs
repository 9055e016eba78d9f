//! Fixed inode change and access times for deterministic ext4 store images.
//!
//! `mke2fs -d` copies each source file's ctime and atime into its inode, and
//! E2FSPROGS_FAKE_TIME does not reach those. They are the host's business
//! (staging's own hard links set the ctime to "now", reading sets the atime),
//! so two builds would differ. After mke2fs, nixdisk lists the inodes in use
//! from the inode bitmaps and has `debugfs -w` set both times of each;
//! debugfs recomputes the inode checksums. This module reads the few
//! superblock and group-descriptor fields that takes, and writes the script.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::TimesError;

const SUPERBLOCK_OFFSET: u64 = 1024;
const EXT4_MAGIC: u16 = 0xEF53;
const INCOMPAT_64BIT: u32 = 0x80;
const BG_INODE_UNINIT: u16 = 0x1;
const ROOT_INODE: u32 = 2;

/// The superblock fields the inode walk needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Block size in bytes.
    pub block_size: u64,
    /// Inodes in the file system.
    pub inodes_count: u32,
    /// Inodes per block group.
    pub inodes_per_group: u32,
    /// First non-reserved inode (lost+found).
    pub first_ino: u32,
    /// Block holding the first group descriptor.
    pub descriptor_block: u64,
    /// Size of one group descriptor.
    pub descriptor_size: u64,
}

impl Geometry {
    /// Reads the geometry from a superblock (the 1024 bytes at offset 1024).
    pub fn parse(superblock: &[u8]) -> Option<Geometry> {
        if superblock.len() < 1024 || le16(superblock, 0x38) != EXT4_MAGIC {
            return None;
        }
        let log_block_size = le32(superblock, 0x18);
        if log_block_size > 6 {
            return None;
        }
        let block_size = 1024u64 << log_block_size;
        let first_data_block = u64::from(le32(superblock, 0x14));
        let incompat = le32(superblock, 0x60);
        let descriptor_size = if incompat & INCOMPAT_64BIT != 0 {
            u64::from(le16(superblock, 0xFE)).max(32)
        } else {
            32
        };
        let inodes_per_group = le32(superblock, 0x28);
        if inodes_per_group == 0 {
            return None;
        }
        Some(Geometry {
            block_size,
            inodes_count: le32(superblock, 0x00),
            inodes_per_group,
            first_ino: le32(superblock, 0x54),
            descriptor_block: first_data_block + 1,
            descriptor_size,
        })
    }

    /// Number of block groups.
    pub fn groups(&self) -> u32 {
        self.inodes_count.div_ceil(self.inodes_per_group)
    }
}

/// The inodes in use that came from the source tree: the root and every
/// inode from `first_ino` on, read from the inode bitmaps of the file system
/// at `offset` in `image`.
pub fn used_inodes(image: &Path, offset: u64) -> Result<Vec<u32>, TimesError> {
    let bad = |reason: &str| TimesError::Ext4Read {
        image: image.to_owned(),
        reason: reason.to_owned(),
    };
    let file = File::open(image).map_err(|e| bad(&e.to_string()))?;
    let read = |at: u64, len: u64| -> Result<Vec<u8>, TimesError> {
        let mut buf = vec![0; len as usize];
        file.read_exact_at(&mut buf, offset + at)
            .map_err(|e| bad(&e.to_string()))?;
        Ok(buf)
    };
    let superblock = read(SUPERBLOCK_OFFSET, 1024)?;
    let geometry = Geometry::parse(&superblock).ok_or_else(|| bad("no ext2/3/4 superblock"))?;
    let descriptors = read(
        geometry.descriptor_block * geometry.block_size,
        u64::from(geometry.groups()) * geometry.descriptor_size,
    )?;
    let mut used = Vec::new();
    for group in 0..geometry.groups() {
        let descriptor = &descriptors[(u64::from(group) * geometry.descriptor_size) as usize..];
        if le16(descriptor, 0x12) & BG_INODE_UNINIT != 0 {
            continue;
        }
        let mut bitmap_block = u64::from(le32(descriptor, 0x04));
        if geometry.descriptor_size >= 64 {
            bitmap_block |= u64::from(le32(descriptor, 0x24)) << 32;
        }
        let bitmap = read(
            bitmap_block * geometry.block_size,
            u64::from(geometry.inodes_per_group).div_ceil(8),
        )?;
        used.extend(inodes_in_bitmap(&bitmap, group, &geometry));
    }
    Ok(used)
}

/// Free bytes of the ext file system at `offset` in `image` (its free block
/// count times the block size, from the superblock).
pub fn free_bytes(image: &Path, offset: u64) -> Result<u64, TimesError> {
    let bad = |reason: &str| TimesError::Ext4Read {
        image: image.to_owned(),
        reason: reason.to_owned(),
    };
    let file = File::open(image).map_err(|e| bad(&e.to_string()))?;
    let mut superblock = vec![0; 1024];
    file.read_exact_at(&mut superblock, offset + SUPERBLOCK_OFFSET)
        .map_err(|e| bad(&e.to_string()))?;
    let geometry = Geometry::parse(&superblock).ok_or_else(|| bad("no ext2/3/4 superblock"))?;
    let mut free = u64::from(le32(&superblock, 0x0C));
    if le32(&superblock, 0x60) & INCOMPAT_64BIT != 0 {
        free |= u64::from(le32(&superblock, 0x158)) << 32;
    }
    Ok(free * geometry.block_size)
}

/// The inodes of one group's bitmap that are in use and from the tree.
fn inodes_in_bitmap(bitmap: &[u8], group: u32, geometry: &Geometry) -> Vec<u32> {
    (0..geometry.inodes_per_group)
        .filter(|bit| bitmap[(bit / 8) as usize] & (1 << (bit % 8)) != 0)
        .map(|bit| group * geometry.inodes_per_group + bit + 1)
        .filter(|&inode| inode == ROOT_INODE || inode >= geometry.first_ino)
        .collect()
}

/// The debugfs script setting the ctime and atime of `inodes` to `timestamp`.
pub fn times_script(inodes: &[u32], timestamp: u64) -> String {
    let mut script = String::with_capacity(inodes.len() * 48);
    for inode in inodes {
        script.push_str(&format!(
            "sif <{inode}> ctime @{timestamp}\nsif <{inode}> atime @{timestamp}\n"
        ));
    }
    script
}

fn le16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn superblock(log_block_size: u32, incompat: u32, desc_size: u16) -> Vec<u8> {
        let mut sb = vec![0u8; 1024];
        sb[0x00..0x04].copy_from_slice(&40960u32.to_le_bytes());
        sb[0x14..0x18].copy_from_slice(&0u32.to_le_bytes());
        sb[0x18..0x1C].copy_from_slice(&log_block_size.to_le_bytes());
        sb[0x28..0x2C].copy_from_slice(&8192u32.to_le_bytes());
        sb[0x38..0x3A].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
        sb[0x54..0x58].copy_from_slice(&11u32.to_le_bytes());
        sb[0x60..0x64].copy_from_slice(&incompat.to_le_bytes());
        sb[0xFE..0x100].copy_from_slice(&desc_size.to_le_bytes());
        sb
    }

    #[test]
    fn geometry_of_a_64bit_file_system() {
        let geometry = Geometry::parse(&superblock(2, INCOMPAT_64BIT, 64)).unwrap();
        assert_eq!(
            geometry,
            Geometry {
                block_size: 4096,
                inodes_count: 40960,
                inodes_per_group: 8192,
                first_ino: 11,
                descriptor_block: 1,
                descriptor_size: 64,
            }
        );
        assert_eq!(geometry.groups(), 5);
    }

    #[test]
    fn descriptors_are_32_bytes_without_64bit() {
        assert_eq!(
            Geometry::parse(&superblock(2, 0, 64))
                .unwrap()
                .descriptor_size,
            32
        );
    }

    #[test]
    fn not_ext4_is_refused() {
        assert_eq!(Geometry::parse(&[0u8; 1024]), None);
    }

    #[test]
    fn bitmap_bits_become_inode_numbers_without_reserved_ones() {
        let geometry = Geometry::parse(&superblock(2, INCOMPAT_64BIT, 64)).unwrap();
        let mut bitmap = vec![0u8; 1024];
        // Inodes 1..=12 in use (reserved ones, lost+found, one file), and 20.
        bitmap[0] = 0xFF;
        bitmap[1] = 0x0F;
        bitmap[2] = 0x08;
        assert_eq!(inodes_in_bitmap(&bitmap, 0, &geometry), [2, 11, 12, 20]);
        let group_one: Vec<u32> = (8193..=8204).chain([8212]).collect();
        assert_eq!(inodes_in_bitmap(&bitmap, 1, &geometry), group_one);
    }

    #[test]
    fn script_sets_each_ctime_and_atime() {
        assert_eq!(
            times_script(&[2, 11], 1),
            "sif <2> ctime @1\nsif <2> atime @1\nsif <11> ctime @1\nsif <11> atime @1\n"
        );
    }
}
