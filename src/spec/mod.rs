//! The image spec: what image to build, in make-disk-image's own words.
//!
//! The JSON field names are the argument names of nixpkgs'
//! `nixos/lib/make-disk-image.nix`, so the Nix wrapper passes its arguments
//! through unchanged. CLI flags override the same fields. Parsing and
//! validation live in `parse` and `validate`, the host path check in `paths`;
//! this file holds the data and its defaults.

mod error;
mod parse;
mod paths;
mod size;
mod validate;

pub use error::SpecError;
pub use parse::{
    closest_name, known_content_fields, known_spec_fields, merge, parse_object, parse_spec,
    spec_from_object,
};
pub use paths::check_paths;
pub use size::{ByteSize, DiskSize, MIB, SizeError};
pub use validate::{
    MAX_MEM_SIZE, MIN_BOOT_PARTITION, MIN_MEM_SIZE, ROOT_TARGET_ALLOWED, TargetProblem,
    boot_partition_start, max_label_bytes, target_problem, validate,
};

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The GPT partition GUID make-disk-image gives the root partition by default.
pub const DEFAULT_ROOT_GPUID: &str = "F222513B-DED1-49FA-B591-20CE86A2FE7F";

/// Everything that describes one image. Field names follow make-disk-image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ImageSpec {
    /// The system to install: a NixOS toplevel store path, or a closureInfo
    /// directory (one holding `store-paths` and `registration`).
    pub system: Option<PathBuf>,
    /// Several systems, oldest first; the last becomes the default generation.
    /// Exclusive with `system`.
    pub systems: Vec<PathBuf>,
    /// Size of the whole disk: `"auto"` or a size.
    pub disk_size: DiskSize,
    /// Free space added on top of what the contents need when `diskSize` is auto.
    pub additional_space: ByteSize,
    /// Size of the ESP or /boot partition where the layout has one.
    pub boot_size: ByteSize,
    /// Which partition layout to write.
    pub partition_table_type: PartitionTableType,
    /// File system of the root (or store) partition.
    pub fs_type: FsType,
    /// File system label of the root partition; `nixos`, or `nix-store` when
    /// `onlyNixStore`.
    pub label: Option<String>,
    /// Output format of the image.
    pub format: ImageFormat,
    /// Files to place into the image.
    pub contents: Vec<ContentEntry>,
    /// Shell commands run on the host after the image is built, with `out`
    /// and `diskImage` in their environment.
    #[serde(rename = "postVM")]
    pub post_vm: String,
    /// Memory of the builder VM in MiB.
    pub mem_size: u64,
    /// Build a file system holding only the store paths, on the host, no VM.
    pub only_nix_store: bool,
    /// Store-only images: write the closure's registration as
    /// `nix-path-registration` at the file system's root, as nixpkgs'
    /// make-ext4-fs does, so a booted system can load it into its database.
    pub nix_path_registration: bool,
    /// Make the channel source the root user's `nixos` channel.
    pub copy_channel: bool,
    /// The channel source installed when `copyChannel` is set.
    pub channel_source: Option<PathBuf>,
    /// More store paths to copy into the image's store and register.
    pub additional_paths: Vec<PathBuf>,
    /// Run the system's bootloader installation. make-disk-image forbids it
    /// with `onlyNixStore`, so when a spec sets `onlyNixStore` and leaves this
    /// out, parsing turns it off; written as true there, validation refuses it.
    pub install_boot_loader: bool,
    /// Let the bootloader installation write EFI variables (builds on OVMF and
    /// writes `efi-vars.fd` beside the image).
    #[serde(rename = "touchEFIVars")]
    pub touch_efi_vars: bool,
    /// OVMF code image; discovered when unset.
    pub efi_firmware: Option<PathBuf>,
    /// OVMF variables template; discovered when unset.
    pub efi_variables: Option<PathBuf>,
    /// Fixed GUIDs, UUIDs, timestamps and seeds, so equal specs give equal bytes.
    pub deterministic: bool,
    /// GPT partition GUID of the root partition.
    #[serde(rename = "rootGPUID")]
    pub root_gpuid: String,
    /// File system UUID of the root partition; the root GPUID when unset.
    #[serde(rename = "rootFSUID")]
    pub root_fsuid: Option<String>,
    /// A file installed as `/etc/nixos/configuration.nix`.
    pub config_file: Option<PathBuf>,
    /// Name of the image derivation (used in messages and the Nix wrapper).
    pub name: String,
    /// Base name of the image file: `<baseName>.<extension>`.
    pub base_name: String,
}

impl Default for ImageSpec {
    fn default() -> Self {
        ImageSpec {
            system: None,
            systems: Vec::new(),
            disk_size: DiskSize::Auto,
            additional_space: ByteSize::mib(512),
            boot_size: ByteSize::mib(256),
            partition_table_type: PartitionTableType::Legacy,
            fs_type: FsType::Ext4,
            label: None,
            format: ImageFormat::Raw,
            contents: Vec::new(),
            post_vm: String::new(),
            mem_size: 1024,
            only_nix_store: false,
            nix_path_registration: false,
            copy_channel: true,
            channel_source: None,
            additional_paths: Vec::new(),
            install_boot_loader: true,
            touch_efi_vars: false,
            efi_firmware: None,
            efi_variables: None,
            deterministic: true,
            root_gpuid: DEFAULT_ROOT_GPUID.to_owned(),
            root_fsuid: None,
            config_file: None,
            name: "nixos-disk-image".to_owned(),
            base_name: "nixos".to_owned(),
        }
    }
}

impl ImageSpec {
    /// The root file system label: the spec's, else make-disk-image's default.
    pub fn effective_label(&self) -> &str {
        match &self.label {
            Some(label) => label,
            None if self.only_nix_store => "nix-store",
            None => "nixos",
        }
    }

    /// The root file system UUID: `rootFSUID`, else the root GPUID.
    pub fn effective_root_fsuid(&self) -> &str {
        self.root_fsuid.as_deref().unwrap_or(&self.root_gpuid)
    }
}

/// make-disk-image's `partitionTableType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
pub enum PartitionTableType {
    /// MBR, one bootable root partition (GRUB on BIOS).
    #[serde(rename = "legacy")]
    #[value(name = "legacy")]
    Legacy,
    /// GPT with a BIOS boot partition for GRUB, and root.
    #[serde(rename = "legacy+gpt")]
    #[value(name = "legacy+gpt")]
    LegacyGpt,
    /// GPT with an ESP mounted at /boot, and root.
    #[serde(rename = "efi")]
    #[value(name = "efi")]
    Efi,
    /// GPT with an ESP at /efi, an XBOOTLDR partition at /boot, and root.
    #[serde(rename = "efixbootldr")]
    #[value(name = "efixbootldr")]
    EfiXbootldr,
    /// GPT plus a hybrid MBR: boots on both BIOS (GRUB) and UEFI.
    #[serde(rename = "hybrid")]
    #[value(name = "hybrid")]
    Hybrid,
    /// MBR with a FAT /boot partition and root.
    #[serde(rename = "legacy+boot")]
    #[value(name = "legacy+boot")]
    LegacyBoot,
    /// No partition table: the whole disk is one file system.
    #[serde(rename = "none")]
    #[value(name = "none")]
    None,
}

impl PartitionTableType {
    /// Every layout, in the order the documentation lists them.
    pub const ALL: [PartitionTableType; 7] = [
        PartitionTableType::Legacy,
        PartitionTableType::LegacyGpt,
        PartitionTableType::Efi,
        PartitionTableType::EfiXbootldr,
        PartitionTableType::Hybrid,
        PartitionTableType::LegacyBoot,
        PartitionTableType::None,
    ];

    /// The name used in specs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionTableType::Legacy => "legacy",
            PartitionTableType::LegacyGpt => "legacy+gpt",
            PartitionTableType::Efi => "efi",
            PartitionTableType::EfiXbootldr => "efixbootldr",
            PartitionTableType::Hybrid => "hybrid",
            PartitionTableType::LegacyBoot => "legacy+boot",
            PartitionTableType::None => "none",
        }
    }

    /// Whether booting this layout's image needs UEFI firmware.
    pub fn needs_efi(self) -> bool {
        matches!(
            self,
            PartitionTableType::Efi | PartitionTableType::EfiXbootldr
        )
    }
}

/// File systems nixdisk can make. Any of them works on any layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
#[value(rename_all = "lowercase")]
pub enum FsType {
    Ext4,
    Ext3,
    Ext2,
    Btrfs,
    Xfs,
    Vfat,
    /// Read-only; store-only images.
    Erofs,
    /// Read-only; store-only images.
    Squashfs,
}

impl FsType {
    /// The name used in specs, `mkfs.<name>` and `mount -t`.
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Ext3 => "ext3",
            FsType::Ext2 => "ext2",
            FsType::Btrfs => "btrfs",
            FsType::Xfs => "xfs",
            FsType::Vfat => "vfat",
            FsType::Erofs => "erofs",
            FsType::Squashfs => "squashfs",
        }
    }

    /// Read-only file systems are made from a finished tree, in one go.
    pub fn is_read_only(self) -> bool {
        matches!(self, FsType::Erofs | FsType::Squashfs)
    }
}

/// make-disk-image's `format`, plus vmdk and vhdx.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
pub enum ImageFormat {
    #[serde(rename = "raw")]
    #[value(name = "raw")]
    Raw,
    #[serde(rename = "qcow2")]
    #[value(name = "qcow2")]
    Qcow2,
    /// qcow2 with zlib compression, as nixpkgs makes it.
    #[serde(rename = "qcow2-compressed")]
    #[value(name = "qcow2-compressed")]
    Qcow2Compressed,
    /// qcow2 with zstd compression: much faster to write than zlib.
    #[serde(rename = "qcow2-zstd")]
    #[value(name = "qcow2-zstd")]
    Qcow2Zstd,
    /// VirtualBox.
    #[serde(rename = "vdi")]
    #[value(name = "vdi")]
    Vdi,
    /// VHD, as Azure takes it.
    #[serde(rename = "vpc")]
    #[value(name = "vpc")]
    Vpc,
    /// VMware.
    #[serde(rename = "vmdk")]
    #[value(name = "vmdk")]
    Vmdk,
    /// Hyper-V.
    #[serde(rename = "vhdx")]
    #[value(name = "vhdx")]
    Vhdx,
}

impl ImageFormat {
    /// The image file's extension, as make-disk-image names it.
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Raw => "img",
            ImageFormat::Qcow2 | ImageFormat::Qcow2Compressed | ImageFormat::Qcow2Zstd => "qcow2",
            ImageFormat::Vdi => "vdi",
            ImageFormat::Vpc => "vhd",
            ImageFormat::Vmdk => "vmdk",
            ImageFormat::Vhdx => "vhdx",
        }
    }

    /// The `qemu-img -O` format name.
    pub fn qemu_img_format(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 | ImageFormat::Qcow2Compressed | ImageFormat::Qcow2Zstd => "qcow2",
            ImageFormat::Vdi => "vdi",
            ImageFormat::Vpc => "vpc",
            ImageFormat::Vmdk => "vmdk",
            ImageFormat::Vhdx => "vhdx",
        }
    }
}

/// One `contents` entry: a host file or directory placed into the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContentEntry {
    /// Host path; may be a glob, as in nixpkgs.
    pub source: String,
    /// Absolute path inside the image.
    pub target: String,
    /// Octal mode such as `"0644"`; kept from the source when unset.
    #[serde(default)]
    pub mode: Option<String>,
    /// Owner, resolved by name inside the installed system.
    #[serde(default)]
    pub user: Option<String>,
    /// Group, resolved by name inside the installed system.
    #[serde(default)]
    pub group: Option<String>,
}
