//! The reader on corrupt GPTs: what fuzzing the reader found (gptman's own
//! reader panics on used entries that all start at sector 0) and what the
//! checks added for it refuse. Each ends in a clear error, never a panic.

use std::io::{Cursor, Seek, SeekFrom, Write};

use super::*;
use crate::layout::{plan, write_table_to};
use crate::spec::{ImageSpec, MIB};

const DISK: u64 = 130 * MIB;

/// A 130 MiB disk with nixdisk's `efi` table.
fn efi_disk() -> Cursor<Vec<u8>> {
    let spec = ImageSpec {
        partition_table_type: PartitionTableType::Efi,
        boot_size: crate::spec::ByteSize::mib(64),
        ..ImageSpec::default()
    };
    let table = plan(&spec, DISK).unwrap();
    let mut disk = Cursor::new(vec![0; DISK as usize]);
    write_table_to(&table, &mut disk, Path::new("t")).unwrap();
    disk
}

/// Changes the primary GPT's entries (checksums made valid again) and
/// wipes the backup header, so the reader has only the changed copy.
fn corrupt(disk: &mut Cursor<Vec<u8>>, change: impl FnOnce(&mut [GPTPartitionEntry])) {
    disk.seek(SeekFrom::Start(SECTOR_SIZE)).unwrap();
    let mut header = GPTHeader::read_from(disk).unwrap();
    let mut entries = header.read_partitions(disk, SECTOR_SIZE).unwrap();
    change(&mut entries);
    header.write_into(disk, SECTOR_SIZE, &entries).unwrap();
    disk.seek(SeekFrom::End(-(SECTOR_SIZE as i64))).unwrap();
    disk.write_all(&[0; SECTOR_SIZE as usize]).unwrap();
}

#[track_caller]
fn refused(disk: &mut Cursor<Vec<u8>>, expected: &str) {
    match read_table_from(disk, Path::new("disk.img"), FsType::Ext4) {
        Err(LayoutError::UnknownTable { reason, .. }) => {
            assert!(reason.contains(expected), "{reason}")
        }
        other => panic!("expected an unknown table, got {other:?}"),
    }
}

#[test]
fn used_entries_starting_at_sector_0_are_refused_not_a_panic() {
    // The fuzz crash: every used entry starting at sector 0.
    let mut disk = efi_disk();
    corrupt(&mut disk, |entries| {
        for entry in entries.iter_mut().filter(|e| e.is_used()) {
            entry.starting_lba = 0;
        }
    });
    refused(&mut disk, "GPT partition 1 runs from sector 0 to");
}

#[test]
fn entries_beyond_the_disk_or_reversed_are_refused() {
    let mut disk = efi_disk();
    corrupt(&mut disk, |entries| entries[1].ending_lba = u64::MAX);
    refused(&mut disk, "GPT partition 2 runs from sector");
    let mut disk = efi_disk();
    corrupt(&mut disk, |entries| {
        (entries[0].starting_lba, entries[0].ending_lba) =
            (entries[0].ending_lba, entries[0].starting_lba)
    });
    refused(&mut disk, "GPT partition 1 runs from sector");
}

#[test]
fn a_header_announcing_four_billion_entries_is_refused() {
    let mut disk = efi_disk();
    disk.seek(SeekFrom::Start(SECTOR_SIZE)).unwrap();
    let mut header = GPTHeader::read_from(&mut disk).unwrap();
    header.number_of_partition_entries = u32::MAX;
    header.update_crc32_checksum();
    let sector = SECTOR_SIZE as usize;
    let bytes = disk.get_mut();
    bytes[sector + 80..sector + 84].copy_from_slice(&u32::MAX.to_le_bytes());
    bytes[sector + 16..sector + 20].copy_from_slice(&header.crc32_checksum.to_le_bytes());
    let len = bytes.len();
    bytes[len - sector..].fill(0);
    refused(&mut disk, "announces 4294967295 entries");
}

#[test]
fn a_damaged_primary_gpt_falls_back_to_the_backup() {
    let mut disk = efi_disk();
    let expected = read_table_from(&mut disk, Path::new("t"), FsType::Ext4).unwrap();
    let sector = SECTOR_SIZE as usize;
    disk.get_mut()[sector..2 * sector].fill(0);
    assert_eq!(
        read_table_from(&mut disk, Path::new("t"), FsType::Ext4).unwrap(),
        expected
    );
}

/// Found by fuzzing: an MBR entry of 0 sectors at sector 0 read as a
/// partition, and writing that table back underflowed. Entries that are
/// empty, start on the MBR itself or run past the disk are refused.
#[test]
fn mbr_entries_outside_the_disk_are_refused() {
    for (start, sectors, expected) in [
        (
            0u32,
            0u32,
            "MBR partition 1 runs from sector 0 for 0 sectors",
        ),
        (
            0,
            2048,
            "MBR partition 1 runs from sector 0 for 2048 sectors",
        ),
        (
            2048,
            0,
            "MBR partition 1 runs from sector 2048 for 0 sectors",
        ),
        (2048, u32::MAX, "outside the disk's sectors 1 to"),
    ] {
        let mut disk = Cursor::new(vec![0u8; 4 * MIB as usize]);
        let bytes = disk.get_mut();
        let entry = &mut bytes[446..462];
        entry[4] = crate::layout::MBR_LINUX;
        entry[8..12].copy_from_slice(&start.to_le_bytes());
        entry[12..16].copy_from_slice(&sectors.to_le_bytes());
        bytes[510..512].copy_from_slice(&[0x55, 0xAA]);
        refused(&mut disk, expected);
    }
}
