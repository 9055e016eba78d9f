//! The layouts of make-disk-image, planned to the byte.
//!
//! Each layout puts its partitions where make-disk-image's parted script puts
//! them, and keeps its partition numbers (the agent finds the ESP at
//! `/dev/vda1` as make-disk-image does). Where nixdisk differs, it is on
//! purpose:
//! - every partition starts and ends on a 1 MiB boundary: root ends at the
//!   last MiB boundary before the backup GPT (parted's `100%` ends at the last
//!   usable sector), and hybrid's BIOS boot partition is 1-2 MiB (parted's
//!   `0 1024KiB` gives sectors 34-2047);
//! - bootSize is rounded up to a whole MiB (make-disk-image's
//!   `round_to_nearest` adds a MiB even to a size that already is one);
//! - in legacy+gpt the root partition (number 2) gets rootGPUID
//!   (make-disk-image sets it on a partition 3 that does not exist);
//! - the disk GUID is a well-formed derived GUID (make-disk-image's literal
//!   has 11 digits in its last group);
//! - hybrid gets a real hybrid MBR (make-disk-image writes only a protective
//!   one): the 0xEE entry first, then the ESP (0xEF) and the active root (0x83).

use uuid::Uuid;

use super::guids::{
    BIOS_BOOT_TYPE, ESP_TYPE, IdSource, LINUX_FS_TYPE, MBR_FAT32_LBA, MBR_LINUX, MBR_UEFI_SYSTEM,
    XBOOTLDR_TYPE,
};
use super::{LayoutError, Partition, PartitionTable, Role, SECTOR_SIZE, TableKind};
use crate::spec::{ByteSize, FsType, ImageSpec, MIB, PartitionTableType};

/// What a GPT keeps at the end of the disk: 32 sectors of backup partition
/// entries and the backup header.
pub(super) const GPT_TAIL: u64 = 33 * SECTOR_SIZE;

/// The end of what an MBR entry can address: 2^32 sectors.
const MBR_LIMIT: u64 = (1 << 32) * SECTOR_SIZE;

/// Where the ESP starts in every EFI layout, as in make-disk-image.
const ESP_START: u64 = 8 * MIB;

/// Where the ESP ends and XBOOTLDR starts in efixbootldr.
const XBOOTLDR_START: u64 = 100 * MIB;

/// The smallest root partition nixdisk plans.
const MIN_ROOT: u64 = MIB;

/// The partition table make-disk-image makes for `spec` on a disk of
/// `disk_size` bytes, with every identifier fixed.
///
/// Fails when bootSize does not fit the layout, the disk is smaller than
/// [`minimum_disk_size`], an MBR layout's disk is over 2 TiB, or rootGPUID is
/// not a GUID. Pure but for the random GUIDs of a non-`deterministic` spec.
pub fn plan(spec: &ImageSpec, disk_size: u64) -> Result<PartitionTable, LayoutError> {
    let layout = spec.partition_table_type;
    let boot_end = checked_boot_end(spec)?;
    let root_guid = parse_root_gpuid(&spec.root_gpuid)?;
    let minimum = minimum_disk_size(spec);
    if disk_size < minimum {
        return Err(LayoutError::DiskTooSmall {
            layout: layout.as_str(),
            disk_size: ByteSize(disk_size),
            boot_size: spec.boot_size,
            minimum: ByteSize(minimum),
            minimum_bytes: minimum,
        });
    }
    let ids = IdSource::new(spec.deterministic);
    let root_end = usable_end(layout, disk_size);
    if has_mbr_entries(layout) && root_end > MBR_LIMIT {
        return Err(LayoutError::TooLargeForMbr {
            layout: layout.as_str(),
            disk_size: ByteSize(disk_size),
        });
    }
    let root_start = root_start(layout, boot_end);
    let new = |number, role, start, end| new_partition(number, role, start, end, layout, spec);
    let gpt = |number, role, start, end, name: &str| {
        let mut partition = new(number, role, start, end);
        partition.gpt_type = Some(gpt_type(role));
        partition.guid = Some(match role {
            Role::Root => root_guid,
            _ => ids.partition_guid(role),
        });
        partition.name = name.to_owned();
        partition
    };
    let mbr = |number, role, start, end, mbr_type, bootable| {
        let mut partition = new(number, role, start, end);
        partition.mbr_type = Some(mbr_type);
        partition.bootable = bootable;
        partition
    };

    let (kind, partitions) = match layout {
        PartitionTableType::Legacy => (
            TableKind::Mbr {
                disk_id: ids.disk_id(),
            },
            vec![mbr(1, Role::Root, MIB, root_end, MBR_LINUX, true)],
        ),
        PartitionTableType::LegacyBoot => (
            TableKind::Mbr {
                disk_id: ids.disk_id(),
            },
            vec![
                mbr(1, Role::Boot, MIB, boot_end, MBR_FAT32_LBA, true),
                mbr(2, Role::Root, root_start, root_end, MBR_LINUX, false),
            ],
        ),
        PartitionTableType::LegacyGpt => (
            TableKind::Gpt {
                disk_guid: ids.disk_guid(),
            },
            vec![
                gpt(1, Role::BiosBoot, MIB, 2 * MIB, "no-fs"),
                gpt(2, Role::Root, root_start, root_end, "primary"),
            ],
        ),
        PartitionTableType::Efi => (
            TableKind::Gpt {
                disk_guid: ids.disk_guid(),
            },
            vec![
                gpt(1, Role::Esp, ESP_START, boot_end, "ESP"),
                gpt(2, Role::Root, root_start, root_end, "primary"),
            ],
        ),
        PartitionTableType::EfiXbootldr => (
            TableKind::Gpt {
                disk_guid: ids.disk_guid(),
            },
            vec![
                gpt(1, Role::Esp, ESP_START, XBOOTLDR_START, "ESP"),
                gpt(2, Role::Xbootldr, XBOOTLDR_START, boot_end, "BOOT"),
                gpt(3, Role::Root, root_start, root_end, "ROOT"),
            ],
        ),
        PartitionTableType::Hybrid => {
            let mut esp = gpt(1, Role::Esp, ESP_START, boot_end, "ESP");
            esp.mbr_type = Some(MBR_UEFI_SYSTEM);
            let mut root = gpt(3, Role::Root, root_start, root_end, "primary");
            root.mbr_type = Some(MBR_LINUX);
            root.bootable = true;
            (
                TableKind::Hybrid {
                    disk_guid: ids.disk_guid(),
                    disk_id: ids.disk_id(),
                },
                vec![esp, gpt(2, Role::BiosBoot, MIB, 2 * MIB, "no-fs"), root],
            )
        }
        PartitionTableType::None => (TableKind::None, vec![new(0, Role::Root, 0, disk_size)]),
    };
    tracing::debug!(
        layout = layout.as_str(),
        disk_size,
        "planned the partition table"
    );
    Ok(PartitionTable {
        layout,
        disk_size,
        kind,
        partitions,
    })
}

/// The smallest disk, a whole number of MiB, whose root partition holds
/// `root_fs_bytes` under `spec`'s layout: the boot partitions and alignment
/// before root, and the backup GPT after it, included.
pub fn disk_size_for_root(spec: &ImageSpec, root_fs_bytes: u64) -> u64 {
    let layout = spec.partition_table_type;
    let root = ceil_mib(root_fs_bytes).max(MIN_ROOT);
    let start = root_start(layout, ceil_mib(spec.boot_size.bytes()));
    // The backup GPT needs 33 sectors after root; root ends on a MiB boundary
    // and so does the disk, so it takes the whole next MiB.
    let tail = if is_gpt(layout) { MIB } else { 0 };
    start.saturating_add(root).saturating_add(tail)
}

/// The smallest disk `spec`'s layout fits on: one with a 1 MiB root partition.
pub fn minimum_disk_size(spec: &ImageSpec) -> u64 {
    disk_size_for_root(spec, MIN_ROOT)
}

/// The ESP's, XBOOTLDR's or /boot's end (bootSize rounded up to a MiB),
/// checked against what the layout puts before it.
fn checked_boot_end(spec: &ImageSpec) -> Result<u64, LayoutError> {
    let layout = spec.partition_table_type;
    let boot_end = ceil_mib(spec.boot_size.bytes());
    let (minimum, reason) = match layout {
        PartitionTableType::Efi | PartitionTableType::Hybrid => (
            ESP_START + MIB,
            "the ESP starts at 8 MiB and ends at bootSize",
        ),
        PartitionTableType::EfiXbootldr => (
            XBOOTLDR_START + MIB,
            "the ESP takes 8-100 MiB and the XBOOTLDR partition ends at bootSize",
        ),
        PartitionTableType::LegacyBoot => (
            2 * MIB,
            "the /boot partition starts at 1 MiB and ends at bootSize",
        ),
        _ => return Ok(boot_end),
    };
    if boot_end < minimum {
        return Err(LayoutError::BootSizeTooSmall {
            layout: layout.as_str(),
            boot_size: spec.boot_size,
            minimum: ByteSize(minimum),
            reason,
        });
    }
    Ok(boot_end)
}

fn parse_root_gpuid(value: &str) -> Result<Uuid, LayoutError> {
    Uuid::try_parse(value).map_err(|source| LayoutError::InvalidRootGpuid {
        value: value.to_owned(),
        source,
    })
}

/// Where the root partition starts.
fn root_start(layout: PartitionTableType, boot_end: u64) -> u64 {
    match layout {
        PartitionTableType::Legacy => MIB,
        PartitionTableType::LegacyGpt => 2 * MIB,
        PartitionTableType::Efi
        | PartitionTableType::EfiXbootldr
        | PartitionTableType::Hybrid
        | PartitionTableType::LegacyBoot => boot_end,
        PartitionTableType::None => 0,
    }
}

/// Where the root partition ends: the last MiB boundary before the backup GPT,
/// or before the end of the disk.
fn usable_end(layout: PartitionTableType, disk_size: u64) -> u64 {
    match layout {
        PartitionTableType::None => disk_size,
        _ if is_gpt(layout) => floor_mib(disk_size.saturating_sub(GPT_TAIL)),
        _ => floor_mib(disk_size),
    }
}

pub(super) fn is_gpt(layout: PartitionTableType) -> bool {
    matches!(
        layout,
        PartitionTableType::LegacyGpt
            | PartitionTableType::Efi
            | PartitionTableType::EfiXbootldr
            | PartitionTableType::Hybrid
    )
}

/// Whether the layout writes MBR entries that must address its root.
fn has_mbr_entries(layout: PartitionTableType) -> bool {
    matches!(
        layout,
        PartitionTableType::Legacy | PartitionTableType::LegacyBoot | PartitionTableType::Hybrid
    )
}

fn gpt_type(role: Role) -> Uuid {
    match role {
        Role::BiosBoot => BIOS_BOOT_TYPE,
        Role::Esp => ESP_TYPE,
        Role::Xbootldr => XBOOTLDR_TYPE,
        Role::Boot | Role::Root => LINUX_FS_TYPE,
    }
}

fn new_partition(
    number: u32,
    role: Role,
    start: u64,
    end: u64,
    layout: PartitionTableType,
    spec: &ImageSpec,
) -> Partition {
    let (fs_type, mount_point) = usage(role, layout, spec.fs_type);
    Partition {
        number,
        role,
        start,
        size: end - start,
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

/// The file system a partition gets and where the system mounts it.
pub(super) fn usage(
    role: Role,
    layout: PartitionTableType,
    root_fs: FsType,
) -> (Option<FsType>, Option<&'static str>) {
    match role {
        Role::BiosBoot => (None, None),
        // With an XBOOTLDR partition, that one is /boot and the ESP is /efi.
        Role::Esp if layout == PartitionTableType::EfiXbootldr => {
            (Some(FsType::Vfat), Some("/efi"))
        }
        Role::Esp | Role::Xbootldr | Role::Boot => (Some(FsType::Vfat), Some("/boot")),
        Role::Root => (Some(root_fs), Some("/")),
    }
}

fn ceil_mib(bytes: u64) -> u64 {
    bytes.div_ceil(MIB).saturating_mul(MIB)
}

fn floor_mib(bytes: u64) -> u64 {
    bytes / MIB * MIB
}
