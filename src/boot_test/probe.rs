//! What an image is before it is booted: its format, from
//! `qemu-img info --output=json`, and which boot partitions its first sectors
//! declare, which decides `--firmware auto`.

use uuid::Uuid;

use crate::layout::{BIOS_BOOT_TYPE, ESP_TYPE, MBR_GPT_PROTECTIVE, MBR_UEFI_SYSTEM};

/// How many leading bytes [`boot_partitions`] needs: the MBR, the GPT header
/// and 128 entries of 128 bytes start well within it.
pub const HEAD_BYTES: usize = 64 * 1024;

/// The image formats nixdisk writes, and so the ones `nixdisk boot` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// Raw.
    Raw,
    /// QEMU's qcow2.
    Qcow2,
    /// VirtualBox.
    Vdi,
    /// VHD (Azure).
    Vpc,
    /// VMware.
    Vmdk,
    /// Hyper-V.
    Vhdx,
}

impl ImageFormat {
    /// Every accepted format, for error messages.
    pub const ALL: [ImageFormat; 6] = [
        ImageFormat::Raw,
        ImageFormat::Qcow2,
        ImageFormat::Vdi,
        ImageFormat::Vpc,
        ImageFormat::Vmdk,
        ImageFormat::Vhdx,
    ];

    /// QEMU's name for the format.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Vdi => "vdi",
            ImageFormat::Vpc => "vpc",
            ImageFormat::Vmdk => "vmdk",
            ImageFormat::Vhdx => "vhdx",
        }
    }

    /// Parses QEMU's format name.
    pub fn from_name(name: &str) -> Option<ImageFormat> {
        ImageFormat::ALL.into_iter().find(|f| f.as_str() == name)
    }
}

/// The `format` field of `qemu-img info --output=json`, or a description of
/// why the output has none.
pub fn format_from_info(json: &str) -> Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("output is not JSON: {e}"))?;
    value
        .get("format")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| "output has no `format` field".to_owned())
}

/// The boot partitions a disk declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BootPartitions {
    /// An EFI system partition (GPT type or MBR type 0xEF).
    pub esp: bool,
    /// A GRUB BIOS boot partition (GPT).
    pub bios_boot: bool,
}

impl BootPartitions {
    /// The firmware `--firmware auto` picks: OVMF when the disk has an ESP
    /// (someone put a UEFI bootloader there; hybrid disks boot either way),
    /// SeaBIOS otherwise (MBR disks, BIOS-boot GPT disks, bare file systems).
    pub fn wants_uefi(self) -> bool {
        self.esp
    }
}

/// Reads the partition types from the first bytes of a disk (at least the
/// sectors up to the GPT entries; see [`HEAD_BYTES`]). Entries beyond `head`
/// are not looked at; a disk with no table has no boot partitions.
pub fn boot_partitions(head: &[u8]) -> BootPartitions {
    let mut found = BootPartitions::default();
    let Some(mbr_types) = mbr_types(head) else {
        return found;
    };
    found.esp = mbr_types.contains(&MBR_UEFI_SYSTEM);
    for entry in gpt_entries(head) {
        found.esp |= entry.type_guid == ESP_TYPE;
        found.bios_boot |= entry.type_guid == BIOS_BOOT_TYPE;
    }
    found
}

/// One used GPT partition entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GptEntry {
    /// The partition type GUID.
    pub type_guid: Uuid,
    /// Offset of the partition's first byte.
    pub start: u64,
    /// Its size in bytes.
    pub size: u64,
}

/// The type bytes of the four MBR entries, if `head` has a boot signature.
fn mbr_types(head: &[u8]) -> Option<[u8; 4]> {
    if head.len() < 512 || head[510..512] != [0x55, 0xaa] {
        return None;
    }
    Some([0, 1, 2, 3].map(|i| head[446 + 16 * i + 4]))
}

/// The used entries of the GPT whose header and entries lie within `head`
/// (none without a protective MBR and a GPT header).
pub fn gpt_entries(head: &[u8]) -> Vec<GptEntry> {
    let mut entries = Vec::new();
    if !mbr_types(head).is_some_and(|t| t.contains(&MBR_GPT_PROTECTIVE)) {
        return entries;
    }
    let Some(header) = head.get(512..512 + 92) else {
        return entries;
    };
    if &header[..8] != b"EFI PART" {
        return entries;
    }
    let entries_lba = le_u64(&header[72..80]);
    let count = u64::from(le_u32(&header[80..84]));
    let size = u64::from(le_u32(&header[84..88]));
    if size < 48 {
        return entries;
    }
    for index in 0..count {
        let start = entries_lba
            .checked_mul(512)
            .and_then(|s| s.checked_add(index.checked_mul(size)?));
        let Some(entry) = start
            .and_then(|s| usize::try_from(s).ok())
            .and_then(|s| head.get(s..s.checked_add(48)?))
        else {
            break;
        };
        let type_bytes: [u8; 16] = entry[..16].try_into().unwrap_or([0; 16]);
        let type_guid = Uuid::from_bytes_le(type_bytes);
        if type_guid.is_nil() {
            continue;
        }
        let first = le_u64(&entry[32..40]);
        let last = le_u64(&entry[40..48]);
        let (Some(start), Some(size)) = (
            first.checked_mul(512),
            last.checked_sub(first)
                .and_then(|n| n.checked_add(1))
                .and_then(|n| n.checked_mul(512)),
        ) else {
            continue;
        };
        entries.push(GptEntry {
            type_guid,
            start,
            size,
        });
    }
    entries
}

fn le_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]))
}

fn le_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes.try_into().unwrap_or([0; 4]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ImageSpec;

    /// The first bytes of a disk with `layout`'s table, as nixdisk writes it.
    fn head_of(layout: &str) -> Vec<u8> {
        let spec: ImageSpec = crate::spec::parse_spec(
            &format!(r#"{{"partitionTableType": "{layout}", "diskSize": "256M", "bootSize": "128M", "format": "raw"}}"#),
            "test",
        )
        .expect("spec");
        let table = crate::layout::plan(&spec, 256 << 20).expect("plan");
        let mut disk = std::io::Cursor::new(vec![0u8; 256 << 20]);
        crate::layout::write_table_to(&table, &mut disk, std::path::Path::new("mem"))
            .expect("write");
        disk.into_inner()[..HEAD_BYTES].to_vec()
    }

    #[test]
    fn every_layout_picks_the_firmware_it_is_made_for() {
        for (layout, esp, bios_boot) in [
            ("efi", true, false),
            ("efixbootldr", true, false),
            ("hybrid", true, true),
            ("legacy", false, false),
            ("legacy+gpt", false, true),
            ("legacy+boot", false, false),
            ("none", false, false),
        ] {
            let found = boot_partitions(&head_of(layout));
            assert_eq!(found, BootPartitions { esp, bios_boot }, "{layout}");
            assert_eq!(found.wants_uefi(), esp, "{layout}");
        }
    }

    #[test]
    fn gpt_entries_give_the_planned_extents() {
        let spec: ImageSpec = crate::spec::parse_spec(
            r#"{"partitionTableType": "efi", "diskSize": "256M", "bootSize": "128M", "format": "raw"}"#,
            "test",
        )
        .expect("spec");
        let table = crate::layout::plan(&spec, 256 << 20).expect("plan");
        let entries = gpt_entries(&head_of("efi"));
        let expected: Vec<GptEntry> = table
            .partitions
            .iter()
            .map(|p| GptEntry {
                type_guid: p.gpt_type.expect("gpt type"),
                start: p.start,
                size: p.size,
            })
            .collect();
        assert_eq!(entries, expected);
        assert!(gpt_entries(&head_of("legacy")).is_empty());
    }

    #[test]
    fn short_or_garbage_heads_have_no_boot_partitions() {
        assert_eq!(boot_partitions(&[]), BootPartitions::default());
        assert_eq!(boot_partitions(&[0xff; 4096]), BootPartitions::default());
        // A protective MBR whose GPT header lies beyond the bytes read.
        let mut head = head_of("efi");
        head.truncate(600);
        assert_eq!(boot_partitions(&head), BootPartitions::default());
        // A header claiming entries far away is read no further.
        let mut head = head_of("efi");
        head[512 + 72..512 + 80].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(boot_partitions(&head), BootPartitions::default());
    }

    #[test]
    fn formats_from_qemu_img_info() {
        let json = r#"{"virtual-size": 67108864, "filename": "a.qcow2", "format": "qcow2"}"#;
        assert_eq!(format_from_info(json).as_deref(), Ok("qcow2"));
        assert_eq!(ImageFormat::from_name("vpc"), Some(ImageFormat::Vpc));
        assert_eq!(ImageFormat::from_name("luks"), None);
        assert!(format_from_info("{}").is_err());
        assert!(format_from_info("nope").is_err());
        for format in ImageFormat::ALL {
            assert_eq!(ImageFormat::from_name(format.as_str()), Some(format));
        }
    }
}
