//! Partition tables written by nixdisk, checked by the real tools: `sgdisk -v`
//! (GPT) and `sfdisk --verify` find no problem, `sfdisk --json` reads back every start, size, type, GUID
//! and name, `gdisk` and `fdisk -t dos` see the hybrid MBR, and nixdisk's own
//! reader gives back the planned table.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nixdisk::layout::{self, PartitionTable, Role, SECTOR_SIZE, TableKind};
use nixdisk::spec::{ByteSize, FsType, ImageSpec, MIB, PartitionTableType};
use serde_json::Value;

const TIB: u64 = 1024 * 1024 * MIB;

/// A sparse image file of `size` bytes in its own temporary directory.
struct Image {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Image {
    fn new(size: u64) -> Image {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("disk.img");
        File::create(&path)
            .and_then(|file| file.set_len(size))
            .expect("a sparse image file");
        Image { _dir: dir, path }
    }
}

/// Runs a tool and returns its stdout, failing the test if it fails.
fn run(program: &str, args: &[&str], image: &Path) -> String {
    let output = Command::new(program)
        .args(args)
        .arg(image)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {program}: {error}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn spec(layout: PartitionTableType, fs_type: FsType) -> ImageSpec {
    ImageSpec {
        partition_table_type: layout,
        fs_type,
        ..ImageSpec::default()
    }
}

/// Plans, writes and checks one layout on one disk size.
fn write_and_check(spec: &ImageSpec, disk_size: u64) -> (PartitionTable, Image) {
    let table = layout::plan(spec, disk_size).expect("a table for this disk");
    let image = Image::new(disk_size);
    layout::write_table(&table, &image.path).expect("the table is written");

    let read_back = layout::read_table(&image.path, spec.fs_type).expect("the table reads back");
    assert_eq!(read_back, table, "nixdisk's reader gives back the plan");

    if table.kind == TableKind::None {
        return (table, image);
    }
    if table.kind.has_gpt() {
        let verify = run("sgdisk", &["-v"], &image.path);
        assert!(verify.contains("No problems found"), "sgdisk -v: {verify}");
    }
    let verify = run("sfdisk", &["--verify"], &image.path);
    assert!(
        verify.contains("No errors detected"),
        "sfdisk --verify: {verify}"
    );
    check_with_sfdisk(&table, &image.path);
    check_mbr_kind_with_gdisk(&table, &image.path);
    (table, image)
}

/// `sfdisk --json` reads back the table exactly.
fn check_with_sfdisk(table: &PartitionTable, image: &Path) {
    let json: Value =
        serde_json::from_str(&run("sfdisk", &["--json"], image)).expect("sfdisk prints JSON");
    let read = &json["partitiontable"];
    assert_eq!(read["sectorsize"], 512);
    match table.kind {
        TableKind::Gpt { disk_guid } | TableKind::Hybrid { disk_guid, .. } => {
            assert_eq!(read["label"], "gpt");
            assert_eq!(read["id"], disk_guid.to_string().to_uppercase());
        }
        TableKind::Mbr { disk_id } => {
            assert_eq!(read["label"], "dos");
            assert_eq!(read["id"], format!("{disk_id:#010x}"));
        }
        TableKind::None => unreachable!("no table to read"),
    }
    let read_partitions = read["partitions"].as_array().expect("a partition list");
    assert_eq!(read_partitions.len(), table.partitions.len());
    for partition in &table.partitions {
        let node = format!("{}{}", image.display(), partition.number);
        let read = read_partitions
            .iter()
            .find(|p| p["node"] == node.as_str())
            .unwrap_or_else(|| panic!("sfdisk lists no {node}: {read_partitions:?}"));
        assert_eq!(read["start"], partition.start / SECTOR_SIZE, "{node}");
        assert_eq!(read["size"], partition.size / SECTOR_SIZE, "{node}");
        if table.kind.has_gpt() {
            let gpt_type = partition.gpt_type.expect("GPT partitions have a type");
            let guid = partition.guid.expect("GPT partitions have a GUID");
            assert_eq!(read["type"], gpt_type.to_string().to_uppercase(), "{node}");
            assert_eq!(read["uuid"], guid.to_string().to_uppercase(), "{node}");
            assert_eq!(read["name"], partition.name.as_str(), "{node}");
        } else {
            let mbr_type = partition.mbr_type.expect("MBR partitions have a type");
            assert_eq!(read["type"], format!("{mbr_type:x}"), "{node}");
            assert_eq!(
                read["bootable"].as_bool().unwrap_or(false),
                partition.bootable,
                "{node}"
            );
        }
    }
}

/// gdisk's partition table scan names the kind of MBR.
fn check_mbr_kind_with_gdisk(table: &PartitionTable, image: &Path) {
    let scan = run("gdisk", &["-l"], image);
    let expected = match table.kind {
        TableKind::Gpt { .. } => "MBR: protective",
        TableKind::Hybrid { .. } => "MBR: hybrid",
        TableKind::Mbr { .. } => "MBR: MBR only",
        TableKind::None => unreachable!("no table to scan"),
    };
    assert!(scan.contains(expected), "gdisk -l: {scan}");
}

#[test]
fn every_layout_on_a_1_gib_disk() {
    for layout in PartitionTableType::ALL {
        write_and_check(&spec(layout, FsType::Ext4), 1024 * MIB);
    }
}

#[test]
fn every_layout_at_its_minimum_size_with_another_boot_size() {
    for layout in PartitionTableType::ALL {
        let spec = ImageSpec {
            boot_size: ByteSize::mib(512),
            ..spec(layout, FsType::Xfs)
        };
        let (table, _image) = write_and_check(&spec, layout::minimum_disk_size(&spec));
        assert_eq!(table.root().size, MIB, "{layout:?}");
    }
}

#[test]
fn large_sparse_disks_use_64_bit_sector_numbers() {
    // 2 TiB is the most an MBR addresses; GPT goes past it.
    for layout in [PartitionTableType::Legacy, PartitionTableType::LegacyBoot] {
        write_and_check(&spec(layout, FsType::Ext4), 2 * TIB);
    }
    for layout in [PartitionTableType::Efi, PartitionTableType::EfiXbootldr] {
        let (table, image) = write_and_check(&spec(layout, FsType::Btrfs), 3 * TIB);
        assert_eq!(table.root().end(), 3 * TIB - MIB);
        // Only the table's sectors are written: the image stays sparse.
        let allocated = std::fs::metadata(&image.path).expect("the image").blocks() * 512;
        assert!(allocated <= MIB, "{allocated} bytes allocated");
    }
}

#[test]
fn the_hybrid_mbr_lists_the_protective_entry_then_esp_and_active_root() {
    let (table, image) =
        write_and_check(&spec(PartitionTableType::Hybrid, FsType::Ext4), 1024 * MIB);
    let listing = run("fdisk", &["-t", "dos", "-l"], &image.path);
    let entries: Vec<Vec<&str>> = listing
        .lines()
        .filter(|line| line.starts_with(&*image.path.to_string_lossy()))
        .map(|line| line.split_whitespace().collect())
        .collect();
    let esp = table.by_role(Role::Esp).expect("an ESP");
    let root = table.root();
    let sectors = |bytes: u64| (bytes / SECTOR_SIZE).to_string();
    // Device, Boot, Start, End, Sectors, Size, Id, Type...
    assert_eq!(entries.len(), 3, "{listing}");
    assert_eq!(
        entries[0][1..4],
        [
            "1",
            &sectors(esp.start - SECTOR_SIZE),
            &sectors(esp.start - SECTOR_SIZE)
        ][..],
        "{listing}"
    );
    assert_eq!(entries[0][5], "ee", "{listing}");
    assert_eq!(entries[1][1], sectors(esp.start), "{listing}");
    assert_eq!(entries[1][2], sectors(esp.end() - SECTOR_SIZE), "{listing}");
    assert_eq!(entries[1][5], "ef", "{listing}");
    assert_eq!(entries[2][1], "*", "{listing}");
    assert_eq!(entries[2][2], sectors(root.start), "{listing}");
    assert_eq!(entries[2][6], "83", "{listing}");
}

#[test]
fn an_image_of_the_wrong_size_is_refused() {
    let table =
        layout::plan(&spec(PartitionTableType::Efi, FsType::Ext4), 1024 * MIB).expect("a table");
    let image = Image::new(512 * MIB);
    let error = layout::write_table(&table, &image.path).expect_err("a size mismatch");
    assert!(error.to_string().contains("536870912 bytes"), "{error}");
}

#[test]
fn tables_made_by_sgdisk_like_make_disk_image_read_back_by_role() {
    // make-disk-image's hybrid: ESP 8-256 MiB, BIOS boot from sector 34 to
    // 1 MiB, root to the last usable sector, a protective MBR only.
    let image = Image::new(1024 * MIB);
    run(
        "sgdisk",
        &[
            "-o",
            "-a",
            "1",
            "-n",
            "1:16384:524287",
            "-t",
            "1:ef00",
            "-c",
            "1:ESP",
            "-n",
            "2:34:2047",
            "-t",
            "2:ef02",
            "-c",
            "2:no-fs",
            "-n",
            "3:524288:0",
            "-t",
            "3:8300",
            "-c",
            "3:primary",
        ],
        &image.path,
    );
    let table = layout::read_table(&image.path, FsType::Ext4).expect("a table nixdisk understands");
    assert_eq!(table.layout, PartitionTableType::Hybrid);
    assert!(matches!(table.kind, TableKind::Gpt { .. }));
    let bios_boot = table
        .by_role(Role::BiosBoot)
        .expect("a BIOS boot partition");
    assert_eq!(
        (bios_boot.number, bios_boot.start, bios_boot.size),
        (2, 34 * 512, 2014 * 512)
    );
    let root = table.root();
    assert_eq!((root.number, root.start), (3, 256 * MIB));
    assert_eq!(
        root.end(),
        1024 * MIB - 33 * 512,
        "root ends at the last usable sector"
    );
    assert_eq!(
        table.by_role(Role::Esp).and_then(|esp| esp.mount_point),
        Some("/boot")
    );
}

#[test]
fn a_table_nixdisk_does_not_write_is_named_in_the_error() {
    let image = Image::new(256 * MIB);
    run(
        "sgdisk",
        &["-o", "-n", "1:1M:+100M", "-t", "1:8200"],
        &image.path,
    );
    let error =
        layout::read_table(&image.path, FsType::Ext4).expect_err("a swap partition is no layout");
    let message = error.to_string();
    assert!(message.contains("disk.img"), "{message}");
    assert!(
        message.contains("0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"),
        "{message}"
    );
}

#[test]
fn a_whole_disk_file_system_reads_as_no_table() {
    // A FAT boot sector ends in the same 0x55AA signature as an MBR.
    let makers: [(&str, &[&str], FsType); 2] = [
        ("mkfs.vfat", &[], FsType::Vfat),
        ("mkfs.ext4", &["-q"], FsType::Ext4),
    ];
    for (mkfs, args, fs_type) in makers {
        let spec = spec(PartitionTableType::None, fs_type);
        let table = layout::plan(&spec, 64 * MIB).expect("a table");
        let image = Image::new(64 * MIB);
        layout::write_table(&table, &image.path).expect("nothing to write");
        run(mkfs, args, &image.path);
        let read = layout::read_table(&image.path, fs_type).expect("no table");
        assert_eq!(read, table, "{mkfs}");
    }
}
