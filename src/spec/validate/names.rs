//! Rules for the names and identifiers a spec gives: the file system label,
//! the root GUID and file system UUID, the image's name and file base name.

use super::{invalid, json};
use crate::spec::{FsType, ImageSpec, SpecError};

/// The longest file name Linux file systems take, in bytes.
const MAX_FILE_NAME: usize = 255;

/// The longest label, in bytes, each file system takes; `None`: no label.
pub fn max_label_bytes(fs: FsType) -> Option<usize> {
    match fs {
        FsType::Ext4 | FsType::Ext3 | FsType::Ext2 => Some(16),
        FsType::Vfat => Some(11),
        FsType::Xfs => Some(12),
        FsType::Btrfs => Some(255),
        // mkfs.erofs keeps a NUL in its 16-byte volume name.
        FsType::Erofs => Some(15),
        FsType::Squashfs => None,
    }
}

pub(super) fn check_label(spec: &ImageSpec) -> Result<(), SpecError> {
    let Some(label) = &spec.label else {
        return Ok(());
    };
    if label.is_empty() {
        return Err(invalid(
            "label",
            label,
            "a non-empty label",
            Some(
                "remove `label` to get the default, \"nixos\" (\"nix-store\" with onlyNixStore)"
                    .into(),
            ),
        ));
    }
    if label.chars().any(char::is_control) || label.contains('/') {
        return Err(invalid(
            "label",
            label,
            "printable characters other than `/`",
            None,
        ));
    }
    if let Some(max) = max_label_bytes(spec.fs_type)
        && label.len() > max
    {
        return Err(invalid(
            "label",
            label,
            &format!(
                "at most {max} bytes on {} (this one has {})",
                spec.fs_type.as_str(),
                label.len()
            ),
            Some(format!(
                "shorten it, e.g. {}",
                json(&truncate_to(label, max))
            )),
        ));
    }
    Ok(())
}

pub(super) fn check_uuids(spec: &ImageSpec) -> Result<(), SpecError> {
    check_uuid("rootGPUID", &spec.root_gpuid)?;
    match (&spec.root_fsuid, spec.fs_type) {
        // FAT has a 32-bit volume ID, written XXXX-XXXX.
        (Some(id), FsType::Vfat) if is_fat_volume_id(id) => Ok(()),
        (Some(id), _) => check_uuid("rootFSUID", id),
        (None, _) => Ok(()),
    }
}

fn check_uuid(field: &str, text: &str) -> Result<(), SpecError> {
    let hint = Some("generate one with `uuidgen`".to_owned());
    match uuid::Uuid::try_parse(text) {
        Ok(id) if id.is_nil() => Err(invalid(
            field,
            &text,
            "a UUID other than all zeros (GPT reads it as an unused entry)",
            hint,
        )),
        Ok(_) if text.len() == 36 => Ok(()),
        _ => Err(invalid(
            field,
            &text,
            "a UUID written as 8-4-4-4-12 hex digits, such as \"F222513B-DED1-49FA-B591-20CE86A2FE7F\"",
            hint,
        )),
    }
}

pub(super) fn check_name(spec: &ImageSpec) -> Result<(), SpecError> {
    let name = &spec.name;
    // The Nix store's rules for names, as the wrapper makes a derivation of it.
    let valid = !name.is_empty()
        && name.len() <= 211
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-._?=".contains(c));
    if !valid {
        return Err(invalid(
            "name",
            name,
            "a Nix store name: 1 to 211 of A-Z a-z 0-9 + - . _ ? =, not starting with `.`",
            None,
        ));
    }
    Ok(())
}

pub(super) fn check_base_name(spec: &ImageSpec) -> Result<(), SpecError> {
    let base = &spec.base_name;
    let hint =
        || Some("the image is written as <out>/<baseName>.<extension>, e.g. nixos.qcow2".into());
    if base.is_empty()
        || base.contains('/')
        || base.starts_with('.')
        || base.chars().any(char::is_control)
    {
        return Err(invalid(
            "baseName",
            base,
            "a plain file name: not empty, no `/`, not starting with `.`, no control characters",
            hint(),
        ));
    }
    // The file name, with its extension, must fit a directory entry.
    let extension = spec.format.extension();
    if base.len() + 1 + extension.len() > MAX_FILE_NAME {
        return Err(invalid(
            "baseName",
            base,
            &format!(
                "at most {} bytes, so that <baseName>.{extension} fits a file name",
                MAX_FILE_NAME - 1 - extension.len()
            ),
            hint(),
        ));
    }
    Ok(())
}

fn is_fat_volume_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    bytes.len() == 9
        && bytes[4] == b'-'
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| i == 4 || b.is_ascii_hexdigit())
}

fn truncate_to(text: &str, max: usize) -> String {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
