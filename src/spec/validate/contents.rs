//! Rules for `contents` entries: where they land, their mode and owner.

use super::{invalid, json, setting};
use crate::spec::{ContentEntry, ImageSpec, SpecError};

pub(super) fn check_contents(spec: &ImageSpec) -> Result<(), SpecError> {
    for (index, entry) in spec.contents.iter().enumerate() {
        check_content_entry(&format!("contents[{index}]"), entry)?;
    }
    Ok(())
}

fn check_content_entry(at: &str, entry: &ContentEntry) -> Result<(), SpecError> {
    if entry.source.is_empty() {
        return Err(invalid(
            &format!("{at}.source"),
            &entry.source,
            "a host path or glob",
            None,
        ));
    }
    let target = &entry.target;
    if !target.starts_with('/') {
        return Err(invalid(
            &format!("{at}.target"),
            target,
            "an absolute path inside the image",
            Some(format!("write \"/{}\"", target.trim_start_matches("./"))),
        ));
    }
    if target.split('/').any(|part| part == "..") || target.contains('\0') {
        return Err(invalid(
            &format!("{at}.target"),
            target,
            "a path without `..` components: contents stay inside the image",
            None,
        ));
    }
    if let Some(mode) = &entry.mode
        && !is_octal_mode(mode)
    {
        return Err(invalid(
            &format!("{at}.mode"),
            mode,
            "an octal mode of 3 or 4 digits 0-7, such as \"0644\" or \"755\"",
            None,
        ));
    }
    let half_owner = |field: &str, value: &String, other: &str| SpecError::Conflict {
        field: format!("{at}.{field}"),
        value: json(value),
        with: setting(&format!("{at}.{other}"), "null"),
        reason: "set both `user` and `group`, or neither (as make-disk-image requires)",
        hint: Some(format!(
            "add \"{other}\": \"root\", or the {other} you mean"
        )),
    };
    match (&entry.user, &entry.group) {
        (Some(user), None) => Err(half_owner("user", user, "group")),
        (None, Some(group)) => Err(half_owner("group", group, "user")),
        (Some(user), Some(_)) if user.is_empty() => {
            Err(invalid(&format!("{at}.user"), user, "a user name", None))
        }
        (Some(_), Some(group)) if group.is_empty() => {
            Err(invalid(&format!("{at}.group"), group, "a group name", None))
        }
        _ => Ok(()),
    }
}

fn is_octal_mode(mode: &str) -> bool {
    (3..=4).contains(&mode.len()) && mode.chars().all(|c| ('0'..='7').contains(&c))
}
