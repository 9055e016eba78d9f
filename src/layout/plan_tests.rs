//! Golden tables for every layout, and the errors of plan.

use uuid::{Uuid, uuid};

use super::*;
use crate::spec::{ImageSpec, MIB};

/// The deterministic identifiers, pinned: a change here changes every image.
const DISK_GUID: Uuid = uuid!("994beea5-5dea-549a-8d78-8544eba46ca9");
const DISK_ID: u32 = 0xb27e6690;
const BIOS_BOOT_GUID: Uuid = uuid!("27ad7567-86be-551a-a940-b5c62428ef29");
const ESP_GUID: Uuid = uuid!("961c6415-fc37-50c7-9f0d-f4568586edd7");
const XBOOTLDR_GUID: Uuid = uuid!("aaa82731-4319-5520-93bb-d70be9195d76");
const ROOT_GUID: Uuid = uuid!("F222513B-DED1-49FA-B591-20CE86A2FE7F");

fn spec(layout: PartitionTableType) -> ImageSpec {
    ImageSpec {
        partition_table_type: layout,
        ..ImageSpec::default()
    }
}

/// A partition as the golden tables write it: start and end in MiB.
fn part(number: u32, role: Role, start_mib: u64, end_mib: u64) -> Partition {
    let (fs_type, mount_point) = match role {
        Role::BiosBoot => (None, None),
        Role::Root => (Some(FsType::Ext4), Some("/")),
        _ => (Some(FsType::Vfat), Some("/boot")),
    };
    Partition {
        number,
        role,
        start: start_mib * MIB,
        size: (end_mib - start_mib) * MIB,
        gpt_type: None,
        mbr_type: None,
        guid: None,
        name: String::new(),
        bootable: false,
        legacy_bios_bootable: false,
        fs_type,
        mount_point,
    }
}

fn gpt(mut p: Partition, gpt_type: Uuid, guid: Uuid, name: &str) -> Partition {
    p.gpt_type = Some(gpt_type);
    p.guid = Some(guid);
    p.name = name.to_owned();
    p
}

fn mbr(mut p: Partition, mbr_type: u8, bootable: bool) -> Partition {
    p.mbr_type = Some(mbr_type);
    p.bootable = bootable;
    p
}

fn table(
    layout: PartitionTableType,
    disk_size: u64,
    kind: TableKind,
    partitions: Vec<Partition>,
) -> PartitionTable {
    PartitionTable {
        layout,
        disk_size,
        kind,
        partitions,
    }
}

/// The golden table of each layout for bootSize `boot_mib` on a disk of
/// `disk` bytes whose MiB-aligned ends are `mbr_end` and `gpt_end` MiB.
fn golden(
    layout: PartitionTableType,
    disk: u64,
    boot: u64,
    mbr_end: u64,
    gpt_end: u64,
) -> PartitionTable {
    use PartitionTableType as T;
    use Role::*;
    let gpt_kind = TableKind::Gpt {
        disk_guid: DISK_GUID,
    };
    let mbr_kind = TableKind::Mbr { disk_id: DISK_ID };
    match layout {
        T::Legacy => table(
            layout,
            disk,
            mbr_kind,
            vec![mbr(part(1, Root, 1, mbr_end), 0x83, true)],
        ),
        T::LegacyBoot => table(
            layout,
            disk,
            mbr_kind,
            vec![
                mbr(part(1, Boot, 1, boot), 0x0c, true),
                mbr(part(2, Root, boot, mbr_end), 0x83, false),
            ],
        ),
        T::LegacyGpt => table(
            layout,
            disk,
            gpt_kind,
            vec![
                gpt(
                    part(1, BiosBoot, 1, 2),
                    BIOS_BOOT_TYPE,
                    BIOS_BOOT_GUID,
                    "no-fs",
                ),
                gpt(
                    part(2, Root, 2, gpt_end),
                    LINUX_FS_TYPE,
                    ROOT_GUID,
                    "primary",
                ),
            ],
        ),
        T::Efi => table(
            layout,
            disk,
            gpt_kind,
            vec![
                gpt(part(1, Esp, 8, boot), ESP_TYPE, ESP_GUID, "ESP"),
                gpt(
                    part(2, Root, boot, gpt_end),
                    LINUX_FS_TYPE,
                    ROOT_GUID,
                    "primary",
                ),
            ],
        ),
        T::EfiXbootldr => {
            let mut esp = gpt(part(1, Esp, 8, 100), ESP_TYPE, ESP_GUID, "ESP");
            esp.mount_point = Some("/efi");
            table(
                layout,
                disk,
                gpt_kind,
                vec![
                    esp,
                    gpt(
                        part(2, Xbootldr, 100, boot),
                        XBOOTLDR_TYPE,
                        XBOOTLDR_GUID,
                        "BOOT",
                    ),
                    gpt(
                        part(3, Root, boot, gpt_end),
                        LINUX_FS_TYPE,
                        ROOT_GUID,
                        "ROOT",
                    ),
                ],
            )
        }
        T::Hybrid => table(
            layout,
            disk,
            TableKind::Hybrid {
                disk_guid: DISK_GUID,
                disk_id: DISK_ID,
            },
            vec![
                mbr(
                    gpt(part(1, Esp, 8, boot), ESP_TYPE, ESP_GUID, "ESP"),
                    0xef,
                    false,
                ),
                gpt(
                    part(2, BiosBoot, 1, 2),
                    BIOS_BOOT_TYPE,
                    BIOS_BOOT_GUID,
                    "no-fs",
                ),
                mbr(
                    gpt(
                        part(3, Root, boot, gpt_end),
                        LINUX_FS_TYPE,
                        ROOT_GUID,
                        "primary",
                    ),
                    0x83,
                    true,
                ),
            ],
        ),
        T::None => {
            let mut root = part(0, Root, 0, 0);
            root.size = disk;
            table(layout, disk, TableKind::None, vec![root])
        }
    }
}

#[test]
fn golden_tables_on_a_1_gib_disk_with_the_default_boot_size() {
    for layout in PartitionTableType::ALL {
        let planned = plan(&spec(layout), 1024 * MIB).unwrap();
        assert_eq!(
            planned,
            golden(layout, 1024 * MIB, 256, 1024, 1023),
            "{layout:?}"
        );
    }
}

#[test]
fn golden_tables_on_an_unaligned_disk_with_an_unaligned_boot_size() {
    // 2 GiB and 12345 bytes: fewer than the 33 sectors of the backup GPT, so
    // a GPT root ends one MiB earlier than an MBR one. bootSize rounds up.
    let disk = 2048 * MIB + 12345;
    for layout in PartitionTableType::ALL {
        let spec = ImageSpec {
            boot_size: ByteSize(300 * MIB + 1),
            ..spec(layout)
        };
        let planned = plan(&spec, disk).unwrap();
        assert_eq!(planned, golden(layout, disk, 301, 2048, 2047), "{layout:?}");
    }
}

#[test]
fn root_partition_is_the_root_in_every_layout() {
    for layout in PartitionTableType::ALL {
        let planned = plan(&spec(layout), 1024 * MIB).unwrap();
        assert_eq!(root_partition(&planned).role, Role::Root);
        assert_eq!(root_partition(&planned).mount_point, Some("/"));
    }
}

#[test]
fn root_gets_the_spec_fs_type_and_gpuid() {
    let spec = ImageSpec {
        fs_type: FsType::Btrfs,
        root_gpuid: "01234567-89AB-CDEF-0123-456789ABCDEF".to_owned(),
        ..spec(PartitionTableType::LegacyGpt)
    };
    let root = plan(&spec, 1024 * MIB).unwrap().root().clone();
    assert_eq!(root.number, 2);
    assert_eq!(root.fs_type, Some(FsType::Btrfs));
    assert_eq!(
        root.guid,
        Some(uuid!("01234567-89AB-CDEF-0123-456789ABCDEF"))
    );
}

#[test]
fn minimum_disk_sizes() {
    use PartitionTableType as T;
    let expected = [
        (T::Legacy, 2),
        (T::LegacyGpt, 4),
        (T::Efi, 258),
        (T::EfiXbootldr, 258),
        (T::Hybrid, 258),
        (T::LegacyBoot, 257),
        (T::None, 1),
    ];
    for (layout, mib) in expected {
        let spec = spec(layout);
        assert_eq!(minimum_disk_size(&spec), mib * MIB, "{layout:?}");
        assert!(plan(&spec, mib * MIB).is_ok(), "{layout:?}");
        let error = plan(&spec, mib * MIB - 1).unwrap_err();
        assert!(
            matches!(error, LayoutError::DiskTooSmall { minimum_bytes, .. } if minimum_bytes == mib * MIB),
            "{layout:?}: {error}"
        );
        assert!(
            error.to_string().contains(&format!("at least {mib}M")),
            "{error}"
        );
    }
}

#[test]
fn boot_sizes_that_leave_no_boot_partition_are_refused() {
    use PartitionTableType as T;
    for (layout, minimum_mib) in [
        (T::Efi, 9),
        (T::Hybrid, 9),
        (T::EfiXbootldr, 101),
        (T::LegacyBoot, 2),
    ] {
        let too_small = ImageSpec {
            boot_size: ByteSize::mib(minimum_mib - 1),
            ..spec(layout)
        };
        let error = plan(&too_small, 1024 * MIB).unwrap_err();
        assert!(
            matches!(error, LayoutError::BootSizeTooSmall { .. }),
            "{layout:?}: {error}"
        );
        assert!(
            error
                .to_string()
                .contains(&format!("at least {minimum_mib}M")),
            "{error}"
        );
        let enough = ImageSpec {
            boot_size: ByteSize::mib(minimum_mib),
            ..spec(layout)
        };
        assert!(plan(&enough, 1024 * MIB).is_ok(), "{layout:?}");
    }
    // Layouts without a boot partition ignore bootSize.
    let tiny = ImageSpec {
        boot_size: ByteSize(0),
        ..spec(T::Legacy)
    };
    assert!(plan(&tiny, 1024 * MIB).is_ok());
}

#[test]
fn mbr_layouts_stop_at_2_tib() {
    const TIB: u64 = 1024 * 1024 * MIB;
    for layout in [
        PartitionTableType::Legacy,
        PartitionTableType::LegacyBoot,
        PartitionTableType::Hybrid,
    ] {
        let error = plan(&spec(layout), 3 * TIB).unwrap_err();
        assert!(
            matches!(error, LayoutError::TooLargeForMbr { .. }),
            "{layout:?}: {error}"
        );
    }
    assert!(plan(&spec(PartitionTableType::Legacy), 2 * TIB).is_ok());
    assert_eq!(
        plan(&spec(PartitionTableType::Efi), 3 * TIB)
            .unwrap()
            .root()
            .end(),
        3 * TIB - MIB
    );
}

#[test]
fn a_root_gpuid_that_is_no_guid_is_refused() {
    let spec = ImageSpec {
        root_gpuid: "97FD5997-D90B-4AA3-8D16-C1723AEA73C".to_owned(),
        ..spec(PartitionTableType::Efi)
    };
    let error = plan(&spec, 1024 * MIB).unwrap_err();
    assert!(
        matches!(error, LayoutError::InvalidRootGpuid { .. }),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("97FD5997-D90B-4AA3-8D16-C1723AEA73C")
    );
}

#[test]
fn without_deterministic_the_ids_are_random_but_root_keeps_its_gpuid() {
    let spec = ImageSpec {
        deterministic: false,
        ..spec(PartitionTableType::Hybrid)
    };
    let a = plan(&spec, 1024 * MIB).unwrap();
    let b = plan(&spec, 1024 * MIB).unwrap();
    assert_ne!(a.kind, b.kind);
    assert_ne!(a.partitions[0].guid, b.partitions[0].guid);
    assert_eq!(a.root().guid, Some(ROOT_GUID));
    assert_eq!(a.root().guid, b.root().guid);
}

#[test]
fn disk_size_for_root_examples() {
    use PartitionTableType as T;
    let cases = [
        (T::Legacy, 1 + 100),
        (T::LegacyBoot, 256 + 100),
        (T::LegacyGpt, 2 + 100 + 1),
        (T::Efi, 256 + 100 + 1),
        (T::EfiXbootldr, 256 + 100 + 1),
        (T::Hybrid, 256 + 100 + 1),
        (T::None, 100),
    ];
    for (layout, mib) in cases {
        // 100 MiB less one byte still needs the whole 100th MiB.
        assert_eq!(
            disk_size_for_root(&spec(layout), 100 * MIB - 1),
            mib * MIB,
            "{layout:?}"
        );
        assert_eq!(
            disk_size_for_root(&spec(layout), 100 * MIB),
            mib * MIB,
            "{layout:?}"
        );
    }
}
