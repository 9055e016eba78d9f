//! Writes a planned partition table onto a raw image or a block device.
//!
//! GPT tables go through gptman (primary and backup GPT, protective MBR);
//! plain and hybrid MBRs through mbrman. Only the table's own sectors are
//! written: the first MiB's table area and, for GPT, the disk's last 33 sectors.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use gptman::{GPT, GPTPartitionEntry};
use mbrman::{CHS, MBR, MBRPartitionEntry};

use super::guids::{MBR_GPT_PROTECTIVE, to_disk_bytes};
use super::plan::GPT_TAIL;
use super::{LayoutError, Partition, PartitionTable, SECTOR_SIZE, TableKind};

/// The GPT attribute bit "legacy BIOS bootable".
pub(super) const LEGACY_BIOS_BOOTABLE: u64 = 1 << 2;

/// Write `table` onto the existing file or block device at `path`, which must
/// be exactly `table.disk_size` bytes long.
pub fn write_table(table: &PartitionTable, path: &Path) -> Result<(), LayoutError> {
    let mut disk = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| io_error("open", path, source))?;
    write_table_to(table, &mut disk, path)?;
    disk.sync_all()
        .map_err(|source| io_error("sync", path, source))
}

/// Write `table` onto an open disk; `path` names it in errors.
pub fn write_table_to<D>(
    table: &PartitionTable,
    disk: &mut D,
    path: &Path,
) -> Result<(), LayoutError>
where
    D: Read + Write + Seek,
{
    let actual = disk
        .seek(SeekFrom::End(0))
        .map_err(|source| io_error("find the size of", path, source))?;
    if actual != table.disk_size {
        return Err(LayoutError::DiskSizeMismatch {
            path: path.to_owned(),
            expected: table.disk_size,
            actual,
        });
    }
    match table.kind {
        TableKind::None => {}
        TableKind::Mbr { disk_id } => {
            // A stale primary GPT header would make tools read the disk as GPT.
            zero(disk, SECTOR_SIZE, GPT_TAIL, path)?;
            write_mbr(disk, disk_id, &mbr_entries(table, false), path)?;
        }
        TableKind::Gpt { disk_guid } => {
            write_gpt(table, disk, disk_guid, path)?;
            GPT::write_protective_mbr_into(disk, SECTOR_SIZE)
                .map_err(|source| gpt_error(path, source))?;
        }
        TableKind::Hybrid { disk_guid, disk_id } => {
            write_gpt(table, disk, disk_guid, path)?;
            write_mbr(disk, disk_id, &mbr_entries(table, true), path)?;
        }
    }
    tracing::debug!(path = %path.display(), layout = table.layout.as_str(), "wrote the partition table");
    Ok(())
}

fn write_gpt<D>(
    table: &PartitionTable,
    disk: &mut D,
    disk_guid: uuid::Uuid,
    path: &Path,
) -> Result<(), LayoutError>
where
    D: Read + Write + Seek,
{
    let mut gpt = GPT::new_from(disk, SECTOR_SIZE, to_disk_bytes(disk_guid))
        .map_err(|source| gpt_error(path, source))?;
    for partition in &table.partitions {
        gpt[partition.number] = gpt_entry(partition);
    }
    gpt.write_into(disk)
        .map_err(|source| gpt_error(path, source))?;
    Ok(())
}

fn gpt_entry(partition: &Partition) -> GPTPartitionEntry {
    let (first, last) = lba_range(partition);
    GPTPartitionEntry {
        partition_type_guid: partition.gpt_type.map(to_disk_bytes).unwrap_or([0; 16]),
        unique_partition_guid: partition.guid.map(to_disk_bytes).unwrap_or([0; 16]),
        starting_lba: first,
        ending_lba: last,
        attribute_bits: if partition.legacy_bios_bootable {
            LEGACY_BIOS_BOOTABLE
        } else {
            0
        },
        partition_name: partition.name.as_str().into(),
    }
}

/// The MBR's entries with their slots (1-4): in a plain MBR each partition
/// in the slot of its number (the number is the device's, `/dev/vda2` is
/// slot 2); in a hybrid one the protective entry first, then the mirrored
/// partitions in number order (their numbers are the GPT's).
fn mbr_entries(table: &PartitionTable, hybrid: bool) -> Vec<(usize, MBRPartitionEntry)> {
    let mirrored: Vec<&Partition> = table
        .partitions
        .iter()
        .filter(|p| p.mbr_type.is_some())
        .collect();
    let mut entries = Vec::with_capacity(4);
    if hybrid {
        // The 0xEE entry covers the GPT from sector 1 up to the first mirrored
        // partition, as `sgdisk -h ...:EE` lays it; firmware and kernels look
        // for it at sector 1.
        let first = mirrored
            .iter()
            .map(|p| p.start / SECTOR_SIZE)
            .min()
            .unwrap_or(table.disk_size / SECTOR_SIZE);
        entries.push(mbr_entry(
            1,
            first.saturating_sub(1),
            MBR_GPT_PROTECTIVE,
            false,
        ));
    }
    for partition in mirrored {
        let (first, last) = lba_range(partition);
        let mbr_type = partition.mbr_type.unwrap_or_default();
        entries.push(mbr_entry(
            first,
            last - first + 1,
            mbr_type,
            partition.bootable,
        ));
    }
    let sequential = (1..).zip(entries.iter().cloned());
    if hybrid {
        return sequential.collect();
    }
    let numbers = table.partitions.iter().filter(|p| p.mbr_type.is_some());
    sequential
        .zip(numbers)
        .map(|((position, entry), partition)| {
            let slot = usize::try_from(partition.number)
                .ok()
                .filter(|n| (1..=4).contains(n))
                .unwrap_or(position);
            (slot, entry)
        })
        .collect()
}

/// An MBR entry; `plan` keeps every MBR partition within 2 TiB, so its
/// sectors fit 32 bits.
fn mbr_entry(first_lba: u64, sectors: u64, sys: u8, bootable: bool) -> MBRPartitionEntry {
    let first = u32::try_from(first_lba).unwrap_or(u32::MAX);
    let sectors = u32::try_from(sectors).unwrap_or(u32::MAX);
    MBRPartitionEntry {
        boot: if bootable {
            mbrman::BOOT_ACTIVE
        } else {
            mbrman::BOOT_INACTIVE
        },
        first_chs: chs(u64::from(first)),
        sys,
        last_chs: chs(u64::from(first) + u64::from(sectors) - 1),
        starting_lba: first,
        sectors,
    }
}

/// The CHS address of a sector in the 255-head, 63-sector geometry fdisk and
/// sgdisk use, or the 1023/254/63 marker past what CHS can address.
fn chs(lba: u64) -> CHS {
    const HEADS: u64 = 255;
    const SECTORS: u64 = 63;
    let cylinder = lba / (HEADS * SECTORS);
    if cylinder > 1023 {
        return CHS::new(1023, 254, 63);
    }
    let head = (lba / SECTORS) % HEADS;
    let sector = lba % SECTORS + 1;
    // All three are bounded above (1023, 254, 63), so the casts are exact.
    CHS::new(cylinder as u16, head as u8, sector as u8)
}

fn write_mbr<D>(
    disk: &mut D,
    disk_id: u32,
    entries: &[(usize, MBRPartitionEntry)],
    path: &Path,
) -> Result<(), LayoutError>
where
    D: Read + Write + Seek,
{
    let mut mbr = MBR::new_from(disk, SECTOR_SIZE as u32, disk_id.to_le_bytes())
        .map_err(|source| mbr_error(path, source))?;
    for (slot, entry) in entries {
        mbr[*slot] = entry.clone();
    }
    mbr.write_into(disk)
        .map_err(|source| mbr_error(path, source))
}

fn zero<D: Write + Seek>(
    disk: &mut D,
    offset: u64,
    length: u64,
    path: &Path,
) -> Result<(), LayoutError> {
    let zeros = vec![0; usize::try_from(length).unwrap_or(0)];
    disk.seek(SeekFrom::Start(offset))
        .and_then(|_| disk.write_all(&zeros))
        .map_err(|source| io_error("write to", path, source))
}

/// First and last sector of a partition.
fn lba_range(partition: &Partition) -> (u64, u64) {
    (
        partition.start / SECTOR_SIZE,
        partition.end() / SECTOR_SIZE - 1,
    )
}

fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> LayoutError {
    LayoutError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn gpt_error(path: &Path, source: gptman::Error) -> LayoutError {
    LayoutError::Gpt {
        action: "write",
        path: path.to_owned(),
        source,
    }
}

fn mbr_error(path: &Path, source: mbrman::Error) -> LayoutError {
    LayoutError::Mbr {
        action: "write",
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing the reader: a plain MBR with its partitions in
    /// slots 2 and 3 read back as 1 and 2 once rewritten, because the writer
    /// filled slots in order. Each partition now goes to its number's slot.
    #[test]
    fn mbr_partitions_keep_their_slot_numbers() {
        use crate::layout::{plan, read_table_from};
        use crate::spec::{FsType, ImageSpec, MIB, PartitionTableType};
        let spec = ImageSpec {
            partition_table_type: PartitionTableType::LegacyBoot,
            ..ImageSpec::default()
        };
        let mut table = plan(&spec, 700 * MIB).unwrap();
        table.partitions[0].number = 2;
        table.partitions[1].number = 3;
        let mut disk = std::io::Cursor::new(vec![0; 700 * MIB as usize]);
        write_table_to(&table, &mut disk, Path::new("t")).unwrap();
        let read = read_table_from(&mut disk, Path::new("t"), FsType::Ext4).unwrap();
        assert_eq!(read, table);
        // Slot 2's type byte (slot 1 stays empty).
        assert_eq!(disk.get_ref()[446 + 16 + 4], crate::layout::MBR_FAT32_LBA);
        assert_eq!(disk.get_ref()[446 + 4], 0);
    }

    #[test]
    fn chs_follows_the_255_63_geometry() {
        assert_eq!(chs(0), CHS::new(0, 0, 1));
        assert_eq!(chs(2048), CHS::new(0, 32, 33));
        assert_eq!(chs(16_450_559), CHS::new(1023, 254, 63));
        assert_eq!(chs(1 << 31), CHS::new(1023, 254, 63));
    }
}
