//! Partition type identifiers, and the GUIDs and MBR disk id of a table.
//!
//! With `deterministic`, every identifier but the root's GPUID (which the spec
//! gives) is a UUIDv5 of a fixed namespace and the role, so equal specs give
//! equal tables. Without it, the namespace itself is random.

use uuid::{Uuid, uuid};

use super::Role;

/// GPT type of GRUB's BIOS boot partition (parted's `bios_grub`).
pub const BIOS_BOOT_TYPE: Uuid = uuid!("21686148-6449-6E6F-744E-656564454649");
/// GPT type of the EFI system partition (parted's `boot`/`esp` on GPT).
pub const ESP_TYPE: Uuid = uuid!("C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
/// GPT type of the extended boot partition (parted's `bls_boot`).
pub const XBOOTLDR_TYPE: Uuid = uuid!("BC13C2FF-59E6-4262-A352-B275FD6F7172");
/// GPT type "Linux filesystem data", what parted gives an `ext4` partition.
pub const LINUX_FS_TYPE: Uuid = uuid!("0FC63DAF-8483-4772-8E79-3D69D8477DE4");

/// MBR type of a Linux partition.
pub const MBR_LINUX: u8 = 0x83;
/// MBR type FAT32 with LBA addressing, what parted gives a `fat32` partition.
pub const MBR_FAT32_LBA: u8 = 0x0c;
/// MBR type of an EFI system partition, for the hybrid MBR's ESP entry.
pub const MBR_UEFI_SYSTEM: u8 = 0xef;
/// MBR type of the GPT protective entry.
pub const MBR_GPT_PROTECTIVE: u8 = 0xee;

/// The fixed namespace of deterministic identifiers (itself a UUIDv5 of
/// nixdisk's name in the URL namespace, so it is reproducible from its source).
fn deterministic_namespace() -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_URL, b"https://github.com/nixdisk/layout")
}

/// Where a table's identifiers come from.
#[derive(Debug, Clone, Copy)]
pub(super) struct IdSource {
    namespace: Uuid,
}

impl IdSource {
    /// Deterministic identifiers when asked, random ones otherwise.
    pub(super) fn new(deterministic: bool) -> Self {
        let namespace = if deterministic {
            deterministic_namespace()
        } else {
            Uuid::new_v4()
        };
        IdSource { namespace }
    }

    fn derive(&self, name: &str) -> Uuid {
        Uuid::new_v5(&self.namespace, name.as_bytes())
    }

    /// The GPT disk GUID.
    pub(super) fn disk_guid(&self) -> Uuid {
        self.derive("disk-guid")
    }

    /// The MBR disk signature: the first four bytes of a derived UUID. Never
    /// zero, which some tools read as "no signature".
    pub(super) fn disk_id(&self) -> u32 {
        let bytes = self.derive("mbr-disk-id").into_bytes();
        let id = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if id == 0 { 1 } else { id }
    }

    /// The partition GUID of a partition other than root.
    pub(super) fn partition_guid(&self, role: Role) -> Uuid {
        self.derive(&format!("partition/{}", role.as_str()))
    }
}

/// A GUID in GPT's on-disk byte order (the first three fields little-endian).
pub(super) fn to_disk_bytes(guid: Uuid) -> [u8; 16] {
    guid.to_bytes_le()
}

/// A GUID from GPT's on-disk byte order.
pub(super) fn from_disk_bytes(bytes: [u8; 16]) -> Uuid {
    Uuid::from_bytes_le(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_ids_are_stable_and_distinct() {
        let a = IdSource::new(true);
        let b = IdSource::new(true);
        assert_eq!(a.disk_guid(), b.disk_guid());
        assert_eq!(a.disk_id(), b.disk_id());
        assert_eq!(a.partition_guid(Role::Esp), b.partition_guid(Role::Esp));
        assert_ne!(
            a.partition_guid(Role::Esp),
            a.partition_guid(Role::BiosBoot)
        );
        assert_ne!(a.partition_guid(Role::Esp), a.disk_guid());
    }

    #[test]
    fn random_ids_differ_between_tables() {
        assert_ne!(
            IdSource::new(false).disk_guid(),
            IdSource::new(false).disk_guid()
        );
    }

    #[test]
    fn disk_byte_order_is_mixed_endian() {
        // The ESP type as it appears in a GPT entry (UEFI spec, table 5.7).
        let on_disk = [
            0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
            0xc9, 0x3b,
        ];
        assert_eq!(to_disk_bytes(ESP_TYPE), on_disk);
        assert_eq!(from_disk_bytes(on_disk), ESP_TYPE);
    }
}
