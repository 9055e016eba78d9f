//! Reads a partition table back from a disk into the shape [`plan`] gives.
//!
//! Used to check what was written, and to find the partitions of an existing
//! image. The table does not record the root's file system, so the caller
//! says which it is.
//!
//! [`plan`]: super::plan

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use gptman::{GPTHeader, GPTPartitionEntry};
use mbrman::{MBRHeader, MBRPartitionEntry};

use super::guids::{
    BIOS_BOOT_TYPE, ESP_TYPE, LINUX_FS_TYPE, MBR_FAT32_LBA, MBR_GPT_PROTECTIVE, MBR_LINUX,
    MBR_UEFI_SYSTEM, XBOOTLDR_TYPE, from_disk_bytes,
};
use super::plan::usage;
use super::write::LEGACY_BIOS_BOOTABLE;
use super::{LayoutError, Partition, PartitionTable, Role, SECTOR_SIZE, TableKind};
use crate::spec::{FsType, PartitionTableType};

/// Read the partition table of the image or block device at `path`, whose
/// root file system is `root_fs`. A disk with no MBR entries reads as the
/// `none` layout.
pub fn read_table(path: &Path, root_fs: FsType) -> Result<PartitionTable, LayoutError> {
    let mut disk = File::open(path).map_err(|source| LayoutError::Io {
        action: "open",
        path: path.to_owned(),
        source,
    })?;
    read_table_from(&mut disk, path, root_fs)
}

/// Read the partition table of an open disk; `path` names it in errors.
pub fn read_table_from<D: Read + Seek>(
    disk: &mut D,
    path: &Path,
    root_fs: FsType,
) -> Result<PartitionTable, LayoutError> {
    let disk_size = disk
        .seek(SeekFrom::End(0))
        .map_err(|source| LayoutError::Io {
            action: "find the size of",
            path: path.to_owned(),
            source,
        })?;
    let unknown = |reason: String| LayoutError::UnknownTable {
        path: path.to_owned(),
        reason,
    };
    let mbr_entries: Vec<(usize, MBRPartitionEntry)> = match MBRHeader::read_from(disk) {
        Ok(header) => header
            .iter()
            .filter(|(_, entry)| entry.is_used())
            .map(|(index, entry)| (index, entry.clone()))
            .collect(),
        // No boot signature, or bytes that are no partition entries (a file
        // system's boot sector): no table.
        Err(mbrman::Error::InvalidSignature | mbrman::Error::InvalidBootFlag) => Vec::new(),
        Err(source) => {
            return Err(LayoutError::Mbr {
                action: "read",
                path: path.to_owned(),
                source,
            });
        }
    };
    let disk_id = read_disk_id(disk, path)?;

    let (kind, mut partitions) = if mbr_entries.is_empty() {
        (TableKind::None, vec![whole_disk(disk_size)])
    } else if mbr_entries.iter().any(|(_, e)| e.sys == MBR_GPT_PROTECTIVE) {
        let (header, entries) = read_gpt(disk, disk_size).map_err(|problem| match problem {
            GptProblem::Gptman(source) => LayoutError::Gpt {
                action: "read",
                path: path.to_owned(),
                source,
            },
            GptProblem::Corrupt(reason) => unknown(reason),
        })?;
        let disk_guid = from_disk_bytes(header.disk_guid);
        let mut partitions = (1..)
            .zip(&entries)
            .filter(|(_, entry)| entry.is_used())
            .map(|(number, entry)| {
                let gpt_type = from_disk_bytes(entry.partition_type_guid);
                let role = gpt_role(gpt_type).ok_or_else(|| {
                    unknown(format!("partition {number} has the GPT type {gpt_type}"))
                })?;
                let mut partition = bare(number, role, entry.starting_lba, entry.ending_lba + 1);
                partition.gpt_type = Some(gpt_type);
                partition.guid = Some(from_disk_bytes(entry.unique_partition_guid));
                partition.name = entry.partition_name.as_str().to_owned();
                partition.legacy_bios_bootable = entry.attribute_bits & LEGACY_BIOS_BOOTABLE != 0;
                Ok(partition)
            })
            .collect::<Result<Vec<_>, LayoutError>>()?;
        let mirrored: Vec<_> = mbr_entries
            .iter()
            .filter(|(_, e)| e.sys != MBR_GPT_PROTECTIVE)
            .collect();
        for (index, entry) in &mirrored {
            let start = u64::from(entry.starting_lba) * SECTOR_SIZE;
            let size = u64::from(entry.sectors) * SECTOR_SIZE;
            let partition = partitions
                .iter_mut()
                .find(|p| p.start == start && p.size == size)
                .ok_or_else(|| {
                    unknown(format!("hybrid MBR entry {index} matches no GPT partition"))
                })?;
            partition.mbr_type = Some(entry.sys);
            partition.bootable = entry.is_active();
        }
        let kind = if mirrored.is_empty() {
            TableKind::Gpt { disk_guid }
        } else {
            TableKind::Hybrid { disk_guid, disk_id }
        };
        (kind, partitions)
    } else {
        let partitions = mbr_entries
            .iter()
            .map(|(index, entry)| {
                let role = mbr_role(entry.sys).ok_or_else(|| {
                    unknown(format!(
                        "MBR partition {index} has the type {:#04x}",
                        entry.sys
                    ))
                })?;
                let first = u64::from(entry.starting_lba);
                let end = first + u64::from(entry.sectors);
                let sectors = disk_size / SECTOR_SIZE;
                if first == 0 || end == first || end > sectors {
                    return Err(unknown(format!(
                        "MBR partition {index} runs from sector {first} for {} sectors, outside the disk's sectors 1 to {}",
                        entry.sectors,
                        sectors.saturating_sub(1)
                    )));
                }
                let mut partition =
                    bare(*index as u32, role, first, first + u64::from(entry.sectors));
                partition.mbr_type = Some(entry.sys);
                partition.bootable = entry.is_active();
                Ok(partition)
            })
            .collect::<Result<Vec<_>, LayoutError>>()?;
        (TableKind::Mbr { disk_id }, partitions)
    };

    partitions.sort_by_key(|p| p.number);
    let roles: Vec<Role> = partitions.iter().map(|p| p.role).collect();
    let layout = layout_of(kind, &roles).ok_or_else(|| {
        unknown(format!(
            "its partitions are {roles:?}, which match no layout"
        ))
    })?;
    for partition in &mut partitions {
        (partition.fs_type, partition.mount_point) = usage(partition.role, layout, root_fs);
    }
    Ok(PartitionTable {
        layout,
        disk_size,
        kind,
        partitions,
    })
}

/// The most GPT partition entries read: the usual 128, with room. A header
/// announcing more is corrupt (and reading it would allocate for each).
const MAX_GPT_ENTRIES: u32 = 1024;
/// The size of a GPT partition entry, the one size gptman reads.
const GPT_ENTRY_SIZE: u32 = 128;

/// Why a GPT could not be read.
enum GptProblem {
    /// gptman refused it (signature, revision, checksums, I/O).
    Gptman(gptman::Error),
    /// Its fields contradict each other or the disk.
    Corrupt(String),
}

/// The GPT header and entry array: the primary copy, else the backup in the
/// disk's last sector. Not `GPT::read_from`: it trusts the header's entry
/// count (allocating for up to 2^32 entries) and panics on a used entry that
/// starts at sector 0; here the header and every used entry are checked
/// against the disk first.
fn read_gpt<D: Read + Seek>(
    disk: &mut D,
    disk_size: u64,
) -> Result<(GPTHeader, Vec<GPTPartitionEntry>), GptProblem> {
    let sectors = disk_size / SECTOR_SIZE;
    read_gpt_at(disk, 1, sectors).or_else(|primary| match sectors.checked_sub(1) {
        Some(last) if last > 1 => read_gpt_at(disk, last, sectors).map_err(|_| primary),
        _ => Err(primary),
    })
}

fn read_gpt_at<D: Read + Seek>(
    disk: &mut D,
    lba: u64,
    sectors: u64,
) -> Result<(GPTHeader, Vec<GPTPartitionEntry>), GptProblem> {
    disk.seek(SeekFrom::Start(lba * SECTOR_SIZE))
        .map_err(|e| GptProblem::Gptman(e.into()))?;
    let header = GPTHeader::read_from(disk).map_err(GptProblem::Gptman)?;
    let count = header.number_of_partition_entries;
    if count > MAX_GPT_ENTRIES || header.size_of_partition_entry != GPT_ENTRY_SIZE {
        return Err(GptProblem::Corrupt(format!(
            "its GPT header announces {count} entries of {} bytes (expected at most {MAX_GPT_ENTRIES} of {GPT_ENTRY_SIZE})",
            header.size_of_partition_entry
        )));
    }
    let array_sectors = (u64::from(count) * u64::from(GPT_ENTRY_SIZE)).div_ceil(SECTOR_SIZE);
    if header
        .partition_entry_lba
        .checked_add(array_sectors)
        .is_none_or(|end| end > sectors)
    {
        return Err(GptProblem::Corrupt(format!(
            "its GPT entry array at sector {} lies beyond the disk's {sectors} sectors",
            header.partition_entry_lba
        )));
    }
    let entries = header
        .read_partitions(disk, SECTOR_SIZE)
        .map_err(GptProblem::Gptman)?;
    let usable = header.first_usable_lba..=header.last_usable_lba.min(sectors.saturating_sub(1));
    for (number, entry) in (1..).zip(&entries).filter(|(_, e)| e.is_used()) {
        if entry.starting_lba > entry.ending_lba
            || !usable.contains(&entry.starting_lba)
            || !usable.contains(&entry.ending_lba)
        {
            return Err(GptProblem::Corrupt(format!(
                "GPT partition {number} runs from sector {} to {}, outside the usable sectors {} to {}",
                entry.starting_lba,
                entry.ending_lba,
                usable.start(),
                usable.end()
            )));
        }
    }
    Ok((header, entries))
}

/// The layout whose table has this kind and these roles, in number order.
fn layout_of(kind: TableKind, roles: &[Role]) -> Option<PartitionTableType> {
    use Role::*;
    Some(match (kind, roles) {
        (TableKind::None, [Root]) => PartitionTableType::None,
        (TableKind::Mbr { .. }, [Root]) => PartitionTableType::Legacy,
        (TableKind::Mbr { .. }, [Boot, Root]) => PartitionTableType::LegacyBoot,
        (TableKind::Gpt { .. }, [BiosBoot, Root]) => PartitionTableType::LegacyGpt,
        (TableKind::Gpt { .. }, [Esp, Root]) => PartitionTableType::Efi,
        (TableKind::Gpt { .. }, [Esp, Xbootldr, Root]) => PartitionTableType::EfiXbootldr,
        // make-disk-image's own hybrid images carry only a protective MBR.
        (TableKind::Gpt { .. } | TableKind::Hybrid { .. }, [Esp, BiosBoot, Root]) => {
            PartitionTableType::Hybrid
        }
        _ => return None,
    })
}

fn gpt_role(gpt_type: uuid::Uuid) -> Option<Role> {
    match gpt_type {
        t if t == BIOS_BOOT_TYPE => Some(Role::BiosBoot),
        t if t == ESP_TYPE => Some(Role::Esp),
        t if t == XBOOTLDR_TYPE => Some(Role::Xbootldr),
        t if t == LINUX_FS_TYPE => Some(Role::Root),
        _ => None,
    }
}

fn mbr_role(mbr_type: u8) -> Option<Role> {
    match mbr_type {
        MBR_LINUX => Some(Role::Root),
        // FAT12, FAT16, FAT32 (CHS and LBA) and ESP: a FAT /boot.
        0x01 | 0x04 | 0x06 | 0x0b | 0x0e | MBR_FAT32_LBA | MBR_UEFI_SYSTEM => Some(Role::Boot),
        _ => None,
    }
}

/// The MBR disk signature, bytes 440-443, little-endian as blkid shows it.
fn read_disk_id<D: Read + Seek>(disk: &mut D, path: &Path) -> Result<u32, LayoutError> {
    let mut bytes = [0; 4];
    disk.seek(SeekFrom::Start(440))
        .and_then(|_| disk.read_exact(&mut bytes))
        .map(|()| u32::from_le_bytes(bytes))
        .or_else(|source| match source.kind() {
            // A disk shorter than one sector has no signature.
            std::io::ErrorKind::UnexpectedEof => Ok(0),
            _ => Err(LayoutError::Io {
                action: "read",
                path: path.to_owned(),
                source,
            }),
        })
}

fn whole_disk(disk_size: u64) -> Partition {
    Partition {
        start: 0,
        size: disk_size,
        ..bare(0, Role::Root, 0, 0)
    }
}

/// A partition from its first sector and the sector after its last one.
fn bare(number: u32, role: Role, first: u64, end: u64) -> Partition {
    Partition {
        number,
        role,
        start: first * SECTOR_SIZE,
        size: end.saturating_sub(first) * SECTOR_SIZE,
        gpt_type: None,
        mbr_type: None,
        guid: None,
        name: String::new(),
        bootable: false,
        legacy_bios_bootable: false,
        fs_type: None,
        mount_point: None,
    }
}

#[cfg(test)]
#[path = "read_tests.rs"]
mod tests;
