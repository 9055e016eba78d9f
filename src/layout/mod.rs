//! Partition layouts as data: a pure function from spec and disk size to a partition table.
//!
//! [`plan`] gives the table make-disk-image makes for each `partitionTableType`,
//! with every start, size, GUID and flag fixed up front; [`disk_size_for_root`]
//! turns a root file-system size into the smallest disk that holds it. The
//! effects sit apart: [`write_table`] writes a planned table onto a raw image
//! or block device (gptman for GPT and the protective MBR, mbrman for plain and
//! hybrid MBRs), and [`read_table`] reads one back into the same shape.

mod guids;
mod plan;
mod read;
mod write;

#[cfg(test)]
mod plan_props;
#[cfg(test)]
mod plan_tests;

use std::path::PathBuf;

use serde::Serialize;
use uuid::Uuid;

use crate::spec::{ByteSize, FsType, PartitionTableType};

pub use guids::{
    BIOS_BOOT_TYPE, ESP_TYPE, LINUX_FS_TYPE, MBR_FAT32_LBA, MBR_GPT_PROTECTIVE, MBR_LINUX,
    MBR_UEFI_SYSTEM, XBOOTLDR_TYPE,
};
pub use plan::{disk_size_for_root, minimum_disk_size, plan};
pub use read::{read_table, read_table_from};
pub use write::{write_table, write_table_to};

/// Bytes per logical sector. Images are written with 512-byte sectors, as
/// QEMU's virtio-blk and every cloud present them.
pub const SECTOR_SIZE: u64 = 512;

/// The partition table of one disk, as planned or as read back from one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionTable {
    /// The layout this table follows.
    pub layout: PartitionTableType,
    /// Size of the whole disk in bytes.
    pub disk_size: u64,
    /// Which kind of table, with its disk identifiers.
    pub kind: TableKind,
    /// The partitions, in partition-number order. For [`TableKind::None`],
    /// one pseudo-partition (number 0) covering the whole disk.
    pub partitions: Vec<Partition>,
}

/// The kind of partition table and its disk-wide identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum TableKind {
    /// GPT with a protective MBR.
    Gpt {
        /// The GPT disk GUID.
        disk_guid: Uuid,
    },
    /// A plain (DOS) MBR.
    Mbr {
        /// The MBR disk signature (what `blkid` shows as the PTUUID).
        disk_id: u32,
    },
    /// GPT plus a hybrid MBR: the protective 0xEE entry first, then MBR
    /// entries mirroring the GPT partitions that have an MBR type.
    Hybrid {
        /// The GPT disk GUID.
        disk_guid: Uuid,
        /// The MBR disk signature.
        disk_id: u32,
    },
    /// No table: the whole disk is one file system.
    None,
}

impl TableKind {
    /// Whether the disk carries a GPT (and so a backup GPT at its end).
    pub fn has_gpt(self) -> bool {
        matches!(self, TableKind::Gpt { .. } | TableKind::Hybrid { .. })
    }
}

/// What a partition is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    /// GRUB's BIOS boot partition (`bios_grub`): core.img, no file system.
    BiosBoot,
    /// The EFI system partition.
    Esp,
    /// The Boot Loader Specification's extended boot partition (XBOOTLDR).
    Xbootldr,
    /// A FAT /boot partition on an MBR disk (legacy+boot).
    Boot,
    /// The root file system.
    Root,
}

impl Role {
    /// A short stable name, used in messages and to derive GUIDs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::BiosBoot => "bios-boot",
            Role::Esp => "esp",
            Role::Xbootldr => "xbootldr",
            Role::Boot => "boot",
            Role::Root => "root",
        }
    }
}

/// One partition, with everything needed to write it and to use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Partition {
    /// Partition number as the kernel counts it (`/dev/vdaN`); 0 for the
    /// whole disk of a [`TableKind::None`] table.
    pub number: u32,
    /// What the partition is for.
    pub role: Role,
    /// Offset of its first byte on the disk; a multiple of 1 MiB.
    pub start: u64,
    /// Its size in bytes; a multiple of 1 MiB.
    pub size: u64,
    /// GPT partition type GUID (GPT and hybrid tables).
    pub gpt_type: Option<Uuid>,
    /// MBR partition type byte (MBR tables, and the partitions a hybrid MBR
    /// mirrors).
    pub mbr_type: Option<u8>,
    /// GPT unique partition GUID (the PARTUUID).
    pub guid: Option<Uuid>,
    /// GPT partition name; empty on MBR.
    pub name: String,
    /// The MBR active ("boot") flag, for BIOSes that boot only a disk with an
    /// active partition.
    pub bootable: bool,
    /// The GPT "legacy BIOS bootable" attribute (bit 2).
    pub legacy_bios_bootable: bool,
    /// The file system made on it; none for the BIOS boot partition.
    pub fs_type: Option<FsType>,
    /// Where the installed system mounts it.
    pub mount_point: Option<&'static str>,
}

impl Partition {
    /// Offset of the byte after its last one.
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

impl PartitionTable {
    /// The root partition of the table.
    pub fn root(&self) -> &Partition {
        root_partition(self)
    }

    /// The partition with a given role, if the layout has one.
    pub fn by_role(&self, role: Role) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.role == role)
    }
}

/// The root partition of a table. Every layout has exactly one, which
/// [`plan`] and [`read_table`] guarantee.
///
/// # Panics
///
/// On a hand-made table without a root partition.
pub fn root_partition(table: &PartitionTable) -> &Partition {
    table
        .partitions
        .iter()
        .find(|p| p.role == Role::Root)
        .expect("every planned or read-back partition table has a root partition")
}

/// What went wrong planning, writing or reading a partition table.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The disk cannot hold the layout's partitions and a minimal root.
    #[error(
        "diskSize {disk_size} is too small for the `{layout}` layout with bootSize {boot_size}: \
         it needs at least {minimum} ({minimum_bytes} bytes) for its partitions and a 1 MiB root partition\n\
         hint: raise diskSize, or set it to \"auto\""
    )]
    DiskTooSmall {
        layout: &'static str,
        disk_size: ByteSize,
        boot_size: ByteSize,
        minimum: ByteSize,
        minimum_bytes: u64,
    },
    /// bootSize leaves no room for the layout's boot partitions.
    #[error(
        "bootSize {boot_size} is too small for the `{layout}` layout: {reason}, so it must be at least {minimum}"
    )]
    BootSizeTooSmall {
        layout: &'static str,
        boot_size: ByteSize,
        minimum: ByteSize,
        reason: &'static str,
    },
    /// An MBR layout on a disk past what MBR entries address.
    #[error(
        "diskSize {disk_size} is too large for the `{layout}` layout: an MBR addresses at most 2 TiB\n\
         hint: use a GPT layout (legacy+gpt, efi, efixbootldr) for larger disks"
    )]
    TooLargeForMbr {
        layout: &'static str,
        disk_size: ByteSize,
    },
    /// rootGPUID does not parse as a GUID.
    #[error(
        "rootGPUID `{value}` is not a GUID: write 32 hex digits as 8-4-4-4-12, like F222513B-DED1-49FA-B591-20CE86A2FE7F"
    )]
    InvalidRootGpuid {
        value: String,
        #[source]
        source: uuid::Error,
    },
    /// Opening, sizing, reading or writing the disk failed.
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The disk is not the size the table was planned for.
    #[error(
        "{path} holds {actual} bytes, but the partition table was planned for a disk of {expected} bytes"
    )]
    DiskSizeMismatch {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    /// gptman could not read or write the GPT.
    #[error("cannot {action} the GPT of {path}")]
    Gpt {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: gptman::Error,
    },
    /// mbrman could not read or write the MBR.
    #[error("cannot {action} the MBR of {path}")]
    Mbr {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: mbrman::Error,
    },
    /// The disk's table matches none of the layouts.
    #[error("the partition table of {path} is not one nixdisk writes: {reason}")]
    UnknownTable { path: PathBuf, reason: String },
}
