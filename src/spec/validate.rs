//! The rules a spec must follow before any work starts: make-disk-image's
//! assertions, plus the limits of the file systems and layouts nixdisk makes.
//!
//! Pure: nothing here touches the file system (see `paths` for that). The
//! first broken rule is reported; the rules run in a fixed order.

mod contents;
mod names;
#[cfg(test)]
mod path_safety_tests;
#[cfg(test)]
mod tests;

pub use contents::{ROOT_TARGET_ALLOWED, TargetProblem, target_problem};
pub use names::max_label_bytes;

use std::path::Path;

use serde::Serialize;

use super::{ByteSize, DiskSize, ImageSpec, MIB, PartitionTableType, SpecError};
use contents::check_contents;
use names::{check_base_name, check_label, check_name, check_uuids};

/// Smallest builder VM memory accepted, in MiB (make-disk-image's default is
/// 1024); below it a kernel, the agent and an activation have little room.
pub const MIN_MEM_SIZE: u64 = 256;
/// Largest builder VM memory, in MiB (1 TiB): beyond it is surely a unit slip.
pub const MAX_MEM_SIZE: u64 = 1024 * 1024;
/// Smallest boot partition (ESP or XBOOTLDR) accepted: `mkfs.vfat -F 32`
/// still makes a FAT this small (with a warning). Kernels need more room;
/// that is for the user to size.
pub const MIN_BOOT_PARTITION: u64 = 8 * MIB;

/// Checks every rule; `Ok` means the spec can be handed to the build.
pub fn validate(spec: &ImageSpec) -> Result<(), SpecError> {
    check_systems(spec)?;
    check_host_paths(spec)?;
    check_disk_size(spec)?;
    check_boot_size(spec)?;
    check_fs_type(spec)?;
    check_label(spec)?;
    check_contents(spec)?;
    check_mem_size(spec)?;
    check_only_nix_store(spec)?;
    check_touch_efi_vars(spec)?;
    check_uuids(spec)?;
    check_name(spec)?;
    check_base_name(spec)
}

/// Where make-disk-image starts the partition that `bootSize` ends, on the
/// layouts that have one. `bootSize` is the end offset of that partition.
pub fn boot_partition_start(layout: PartitionTableType) -> Option<ByteSize> {
    match layout {
        PartitionTableType::Efi | PartitionTableType::Hybrid | PartitionTableType::LegacyBoot => {
            Some(ByteSize::mib(8))
        }
        // The ESP runs from 8 to 100 MiB; XBOOTLDR from 100 MiB to bootSize.
        PartitionTableType::EfiXbootldr => Some(ByteSize::mib(100)),
        PartitionTableType::Legacy | PartitionTableType::LegacyGpt | PartitionTableType::None => {
            None
        }
    }
}

fn check_systems(spec: &ImageSpec) -> Result<(), SpecError> {
    if spec.system.is_some() && !spec.systems.is_empty() {
        return Err(SpecError::Conflict {
            field: "systems".into(),
            value: json(&spec.systems),
            with: setting("system", json(&spec.system)),
            reason: "name one system with `system`, or several generations with `systems`",
            hint: Some("move `system` into `systems` as its last entry".into()),
        });
    }
    for (index, path) in spec.system.iter().chain(&spec.systems).enumerate() {
        if path.as_os_str().is_empty() {
            let field = match spec.system {
                Some(_) => "system".to_owned(),
                None => format!("systems[{index}]"),
            };
            return Err(invalid(
                &field,
                &path,
                "a store path or closureInfo directory, not an empty string",
                None,
            ));
        }
    }
    let has_system = spec.system.is_some() || !spec.systems.is_empty();
    // A store-only image may hold just `additionalPaths`; a full image needs
    // a system to install.
    let store_paths_only = spec.only_nix_store && !spec.additional_paths.is_empty();
    if !has_system && !store_paths_only {
        return Err(SpecError::MissingSystem);
    }
    Ok(())
}

/// Host paths go to Nix, `cp` and file names: a control character in one
/// (a newline, a NUL) is surely a mistake, and some tools would read it as
/// two paths or cut it short.
fn check_host_paths(spec: &ImageSpec) -> Result<(), SpecError> {
    let mut named: Vec<(String, &Path)> = Vec::new();
    let single = [
        ("system", &spec.system),
        ("channelSource", &spec.channel_source),
        ("configFile", &spec.config_file),
        ("efiFirmware", &spec.efi_firmware),
        ("efiVariables", &spec.efi_variables),
    ];
    for (field, path) in single {
        if let Some(path) = path {
            named.push((field.to_owned(), path));
        }
    }
    for (field, list) in [
        ("systems", &spec.systems),
        ("additionalPaths", &spec.additional_paths),
    ] {
        for (index, path) in list.iter().enumerate() {
            named.push((format!("{field}[{index}]"), path));
        }
    }
    for (index, entry) in spec.contents.iter().enumerate() {
        named.push((
            format!("contents[{index}].source"),
            Path::new(&entry.source),
        ));
    }
    for (field, path) in named {
        if path.to_string_lossy().chars().any(char::is_control) {
            return Err(invalid(
                &field,
                &path,
                "a path without control characters (newline, tab, NUL, ...)",
                None,
            ));
        }
    }
    Ok(())
}

fn check_disk_size(spec: &ImageSpec) -> Result<(), SpecError> {
    let DiskSize::Fixed(size) = spec.disk_size else {
        return Ok(());
    };
    if size.bytes() == 0 {
        return Err(invalid(
            "diskSize",
            &spec.disk_size,
            "\"auto\" or a size above zero",
            Some("use \"auto\" to size the disk from its contents".into()),
        ));
    }
    if size.bytes() % MIB != 0 {
        return Err(invalid(
            "diskSize",
            &spec.disk_size,
            "a whole number of MiB: partitions are aligned to 1 MiB",
            Some(format!("use {}M", size.bytes().div_ceil(MIB))),
        ));
    }
    if let Some(start) = boot_partition_start(spec.partition_table_type)
        && size <= spec.boot_size.max(start)
    {
        return Err(SpecError::Conflict {
            field: "diskSize".into(),
            value: json(&spec.disk_size),
            with: setting("bootSize", json(&spec.boot_size)),
            reason: "the root partition starts where bootSize ends, so the disk must be larger",
            hint: Some("use \"auto\", or a diskSize well above bootSize".into()),
        });
    }
    Ok(())
}

fn check_boot_size(spec: &ImageSpec) -> Result<(), SpecError> {
    let Some(start) = boot_partition_start(spec.partition_table_type) else {
        return Ok(());
    };
    let minimum = ByteSize(start.bytes() + MIN_BOOT_PARTITION);
    if spec.boot_size < minimum {
        return Err(invalid(
            "bootSize",
            &spec.boot_size,
            &format!(
                "at least {minimum} with the `{}` layout: bootSize is where the boot partition ends, and it starts at {start}",
                spec.partition_table_type.as_str()
            ),
            Some("the default, \"256M\", fits a few kernels and initrds".into()),
        ));
    }
    if spec.boot_size.bytes() % MIB != 0 {
        return Err(invalid(
            "bootSize",
            &spec.boot_size,
            "a whole number of MiB: partitions are aligned to 1 MiB",
            Some(format!("use {}M", spec.boot_size.bytes().div_ceil(MIB))),
        ));
    }
    Ok(())
}

fn check_fs_type(spec: &ImageSpec) -> Result<(), SpecError> {
    if spec.fs_type.is_read_only() && !spec.only_nix_store {
        return Err(SpecError::Conflict {
            field: "fsType".into(),
            value: json(&spec.fs_type),
            with: setting("onlyNixStore", json(&spec.only_nix_store)),
            reason: "a read-only file system cannot receive a system installation",
            hint: Some("set \"onlyNixStore\": true for a store image, or use ext4".into()),
        });
    }
    Ok(())
}

fn check_mem_size(spec: &ImageSpec) -> Result<(), SpecError> {
    if !(MIN_MEM_SIZE..=MAX_MEM_SIZE).contains(&spec.mem_size) {
        return Err(invalid(
            "memSize",
            &spec.mem_size,
            &format!("a number of MiB from {MIN_MEM_SIZE} to {MAX_MEM_SIZE}"),
            Some("memSize counts MiB: 1024 is 1 GiB".into()),
        ));
    }
    Ok(())
}

fn check_only_nix_store(spec: &ImageSpec) -> Result<(), SpecError> {
    if !spec.only_nix_store {
        if spec.nix_path_registration {
            return Err(SpecError::Conflict {
                field: "nixPathRegistration".into(),
                value: "true".into(),
                with: setting("onlyNixStore", "false"),
                reason: "a full image registers its closure in the Nix database itself",
                hint: Some("drop `nixPathRegistration`, or set \"onlyNixStore\": true".into()),
            });
        }
        return Ok(());
    }
    let conflict = |other: &str, other_value: String, hint: &str| SpecError::Conflict {
        field: other.into(),
        value: other_value,
        with: setting("onlyNixStore", "true"),
        reason: "a store-only image holds store paths and nothing else",
        hint: Some(hint.into()),
    };
    if !spec.contents.is_empty() {
        return Err(conflict(
            "contents",
            format!("[{} entries]", spec.contents.len()),
            "drop `contents`, or build a full image",
        ));
    }
    if let Some(config) = &spec.config_file {
        return Err(conflict(
            "configFile",
            json(config),
            "drop `configFile`, or build a full image",
        ));
    }
    if spec.install_boot_loader {
        return Err(conflict(
            "installBootLoader",
            "true".into(),
            "set \"installBootLoader\": false, or leave it out: it is off for store-only images",
        ));
    }
    Ok(())
}

fn check_touch_efi_vars(spec: &ImageSpec) -> Result<(), SpecError> {
    use PartitionTableType::*;
    if spec.touch_efi_vars
        && !matches!(
            spec.partition_table_type,
            Efi | EfiXbootldr | Hybrid | LegacyGpt
        )
    {
        return Err(SpecError::Conflict {
            field: "touchEFIVars".into(),
            value: "true".into(),
            with: setting("partitionTableType", json(&spec.partition_table_type)),
            reason: "EFI variables need a GPT layout: efi, efixbootldr, hybrid or legacy+gpt",
            hint: Some("set \"partitionTableType\": \"efi\", or drop touchEFIVars".into()),
        });
    }
    Ok(())
}

fn invalid<T: Serialize + ?Sized>(
    field: &str,
    value: &T,
    allowed: &str,
    hint: Option<String>,
) -> SpecError {
    SpecError::Invalid {
        field: field.to_owned(),
        value: json(value),
        allowed: allowed.to_owned(),
        hint,
    }
}

/// Another setting, for conflicts: "`name` = value".
fn setting(name: &str, value: impl AsRef<str>) -> String {
    format!("`{name}` = {}", value.as_ref())
}

/// A value as it would be written in the spec.
fn json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "<unprintable>".to_owned())
}
