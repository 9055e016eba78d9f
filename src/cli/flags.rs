//! The flags that override spec fields, shared by `build` and `spec --check`.
//!
//! Each flag becomes the JSON value of its spec field and replaces that field
//! of the spec file, so flags and files go through the same checks and
//! produce the same messages. `--help` shows each field's default, taken from
//! `ImageSpec::default()` so the two cannot drift apart.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::flake::{FlakeError, SystemSource};
use crate::spec::{ByteSize, DiskSize, FsType, ImageFormat, ImageSpec, PartitionTableType};

/// Flags that override the spec's fields. Unset flags leave the spec alone.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Spec overrides")]
pub struct SpecFlags {
    /// System to install: a NixOS toplevel store path or a closureInfo
    /// directory. Repeat for several generations, oldest first (`systems`).
    #[arg(long, value_name = "PATH")]
    pub system: Vec<PathBuf>,

    /// Output format of the image.
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<ImageFormat>,

    /// Partition layout (`partitionTableType`).
    #[arg(long, value_name = "LAYOUT")]
    pub partition_table: Option<PartitionTableType>,

    /// Size of the whole disk: "auto", MiB (2048) or a size with a unit (8G).
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub disk_size: Option<DiskSize>,

    /// Free space added when the disk size is auto.
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub additional_space: Option<ByteSize>,

    /// Where the ESP or /boot partition ends, on layouts that have one.
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub boot_size: Option<ByteSize>,

    /// File system of the root (or store) partition.
    #[arg(long, value_name = "FS")]
    pub fs_type: Option<FsType>,

    /// File system label of the root partition.
    #[arg(long, value_name = "LABEL")]
    pub label: Option<String>,

    /// Name of the image (the Nix derivation's name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Base name of the image file: <out>/<BASE>.<extension>.
    #[arg(long, value_name = "BASE")]
    pub base_name: Option<String>,

    /// Memory of the builder VM, in MiB.
    #[arg(long, value_name = "MIB", allow_hyphen_values = true)]
    pub mem_size: Option<u64>,

    /// Build a file system holding only the store paths, on the host, with
    /// no VM. Turns the bootloader installation off.
    #[arg(long)]
    pub only_nix_store: bool,

    /// Do not install the bootloader (`installBootLoader` false).
    #[arg(long)]
    pub no_bootloader: bool,

    /// Let the bootloader installation write EFI variables (needs an EFI or
    /// GPT layout); writes efi-vars.fd beside the image.
    #[arg(long)]
    pub touch_efi_vars: bool,

    /// Shell commands run on the host after the build, with $out and
    /// $diskImage set.
    #[arg(long, value_name = "SCRIPT")]
    pub post_vm: Option<String>,

    /// Allow random GUIDs, UUIDs and timestamps (`deterministic` false).
    #[arg(long)]
    pub non_deterministic: bool,

    /// Store-only images: write the closure's registration as
    /// `nix-path-registration` at the root (`nixPathRegistration` true).
    #[arg(long)]
    pub nix_path_registration: bool,

    /// Do not install a nixos channel for root (`copyChannel` false).
    #[arg(long)]
    pub no_copy_channel: bool,

    /// The channel source installed when copyChannel is on.
    #[arg(long, value_name = "PATH")]
    pub channel_source: Option<PathBuf>,

    /// More store paths to copy into the image's store; repeatable. Replaces
    /// the spec's list.
    #[arg(long = "additional-path", value_name = "PATH")]
    pub additional_paths: Vec<PathBuf>,

    /// File installed as /etc/nixos/configuration.nix.
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,

    /// OVMF code image.
    #[arg(long, value_name = "FILE")]
    pub efi_firmware: Option<PathBuf>,

    /// OVMF variables template.
    #[arg(long, value_name = "FILE")]
    pub efi_variables: Option<PathBuf>,

    /// GPT partition GUID of the root partition (`rootGPUID`).
    #[arg(long, value_name = "UUID")]
    pub root_gpuid: Option<String>,

    /// File system UUID of the root partition (`rootFSUID`).
    #[arg(long, value_name = "UUID")]
    pub root_fsuid: Option<String>,
}

/// Where the system comes from when Nix is to evaluate and build it: these
/// resolve to a toplevel store path that becomes the spec's `system`.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "System from Nix")]
pub struct SystemSourceFlags {
    /// Evaluate and build a flake's NixOS configuration,
    /// `REF#NAME` as nixos-rebuild takes it (`.#my-host`,
    /// `github:me/os#web`); its toplevel becomes `system`.
    #[arg(long, value_name = "REF#NAME", conflicts_with_all = ["system", "system_expr"])]
    pub flake: Option<String>,

    /// Evaluate and build a Nix expression giving a NixOS configuration
    /// (`import <nixpkgs/nixos> { configuration = ./configuration.nix; }`)
    /// or a toplevel derivation; it becomes `system`.
    #[arg(long, value_name = "EXPR", conflicts_with = "system")]
    pub system_expr: Option<String>,
}

impl SystemSourceFlags {
    /// The source these flags name, if any.
    pub fn source(&self) -> Result<Option<SystemSource>, FlakeError> {
        SystemSource::from_flags(self.flake.as_deref(), self.system_expr.as_deref())
    }
}

/// Each flag's argument id, the spec field it sets, and how to describe the
/// default when the field's default is null.
pub const FLAG_FIELDS: &[(&str, &str, &str)] = &[
    ("system", "system", "none; required"),
    ("format", "format", ""),
    ("partition_table", "partitionTableType", ""),
    ("disk_size", "diskSize", ""),
    ("additional_space", "additionalSpace", ""),
    ("boot_size", "bootSize", ""),
    ("fs_type", "fsType", ""),
    (
        "label",
        "label",
        "\"nixos\", \"nix-store\" with --only-nix-store",
    ),
    ("name", "name", ""),
    ("base_name", "baseName", ""),
    ("mem_size", "memSize", ""),
    ("only_nix_store", "onlyNixStore", ""),
    ("no_bootloader", "installBootLoader", ""),
    ("touch_efi_vars", "touchEFIVars", ""),
    ("post_vm", "postVM", ""),
    ("non_deterministic", "deterministic", ""),
    ("nix_path_registration", "nixPathRegistration", ""),
    ("no_copy_channel", "copyChannel", ""),
    ("channel_source", "channelSource", "none"),
    ("additional_paths", "additionalPaths", ""),
    ("config_file", "configFile", "none"),
    ("efi_firmware", "efiFirmware", "discovered"),
    ("efi_variables", "efiVariables", "discovered"),
    ("root_gpuid", "rootGPUID", ""),
    ("root_fsuid", "rootFSUID", "the root GPUID"),
];

impl SpecFlags {
    /// The spec fields these flags set, as JSON, ready to lay over a spec
    /// file with [`crate::spec::merge`].
    pub fn overrides(&self) -> Result<Map<String, Value>, serde_json::Error> {
        let mut map = Overrides::default();
        match self.system.as_slice() {
            [] => {}
            [one] => {
                map.set("system", one)?;
                map.set("systems", Vec::<PathBuf>::new())?;
            }
            several => {
                map.set("system", Value::Null)?;
                map.set("systems", several)?;
            }
        }
        map.set_some("format", &self.format)?;
        map.set_some("partitionTableType", &self.partition_table)?;
        map.set_some("diskSize", &self.disk_size)?;
        map.set_some("additionalSpace", &self.additional_space)?;
        map.set_some("bootSize", &self.boot_size)?;
        map.set_some("fsType", &self.fs_type)?;
        map.set_some("label", &self.label)?;
        map.set_some("name", &self.name)?;
        map.set_some("baseName", &self.base_name)?;
        map.set_some("memSize", &self.mem_size)?;
        if self.only_nix_store {
            map.set("onlyNixStore", true)?;
            map.set("installBootLoader", false)?;
        }
        if self.no_bootloader {
            map.set("installBootLoader", false)?;
        }
        if self.touch_efi_vars {
            map.set("touchEFIVars", true)?;
        }
        map.set_some("postVM", &self.post_vm)?;
        if self.non_deterministic {
            map.set("deterministic", false)?;
        }
        if self.nix_path_registration {
            map.set("nixPathRegistration", true)?;
        }
        if self.no_copy_channel {
            map.set("copyChannel", false)?;
        }
        map.set_some("channelSource", &self.channel_source)?;
        if !self.additional_paths.is_empty() {
            map.set("additionalPaths", &self.additional_paths)?;
        }
        map.set_some("configFile", &self.config_file)?;
        map.set_some("efiFirmware", &self.efi_firmware)?;
        map.set_some("efiVariables", &self.efi_variables)?;
        map.set_some("rootGPUID", &self.root_gpuid)?;
        map.set_some("rootFSUID", &self.root_fsuid)?;
        Ok(map.0)
    }
}

/// The flag that sets a spec field, for messages such as "set by --mem-size".
pub fn flag_for_field(field: &str) -> Option<String> {
    let top = field.split(['.', '[']).next().unwrap_or(field);
    let top = if top == "systems" { "system" } else { top };
    FLAG_FIELDS
        .iter()
        .find(|(_, key, _)| *key == top)
        .map(|(id, _, _)| match *id {
            "additional_paths" => "--additional-path".to_owned(),
            id => format!("--{}", id.replace('_', "-")),
        })
}

/// Appends "[spec default: ...]" to the help of every override flag.
pub fn with_defaults(command: clap::Command) -> clap::Command {
    let defaults = serde_json::to_value(ImageSpec::default()).unwrap_or(Value::Null);
    FLAG_FIELDS
        .iter()
        .fold(command, |command, (id, key, when_null)| {
            let shown = match defaults.get(key) {
                Some(Value::Null) | None => (*when_null).to_owned(),
                Some(Value::Array(items)) if items.is_empty() => "none".to_owned(),
                Some(Value::String(text)) if text.is_empty() => "none".to_owned(),
                Some(value) => value.to_string(),
            };
            command.mut_arg(*id, |arg| {
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                arg.help(format!("{help} [spec {key}; default: {shown}]"))
            })
        })
}

#[derive(Default)]
struct Overrides(Map<String, Value>);

impl Overrides {
    fn set(&mut self, key: &str, value: impl Serialize) -> Result<(), serde_json::Error> {
        self.0.insert(key.to_owned(), serde_json::to_value(value)?);
        Ok(())
    }

    fn set_some<T: Serialize>(
        &mut self,
        key: &str,
        value: &Option<T>,
    ) -> Result<(), serde_json::Error> {
        match value {
            Some(value) => self.set(key, value),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::known_spec_fields;

    #[test]
    fn every_flag_names_a_real_field() {
        let known = known_spec_fields();
        for (_, key, _) in FLAG_FIELDS {
            assert!(known.iter().any(|k| k == key), "{key}");
        }
    }

    #[test]
    fn no_flags_no_overrides() {
        assert!(SpecFlags::default().overrides().unwrap().is_empty());
    }

    #[test]
    fn flags_become_spec_values() {
        let flags = SpecFlags {
            system: vec!["/a".into(), "/b".into()],
            disk_size: Some(DiskSize::Fixed(ByteSize::mib(300))),
            only_nix_store: true,
            non_deterministic: true,
            mem_size: Some(2048),
            ..SpecFlags::default()
        };
        let map = flags.overrides().unwrap();
        assert_eq!(map["system"], Value::Null);
        assert_eq!(map["systems"], serde_json::json!(["/a", "/b"]));
        assert_eq!(map["diskSize"], "300M");
        assert_eq!(map["onlyNixStore"], true);
        assert_eq!(map["installBootLoader"], false);
        assert_eq!(map["deterministic"], false);
        assert_eq!(map["memSize"], 2048);
    }

    #[test]
    fn fields_map_back_to_flags() {
        assert_eq!(flag_for_field("memSize").as_deref(), Some("--mem-size"));
        assert_eq!(flag_for_field("systems[1]").as_deref(), Some("--system"));
        assert_eq!(
            flag_for_field("additionalPaths[0]").as_deref(),
            Some("--additional-path")
        );
        assert_eq!(flag_for_field("contents[0].mode"), None);
    }
}
