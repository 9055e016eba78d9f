//! Rules for `contents` entries: where they land, their mode and owner.
//!
//! The target rule ([`target_problem`]) is the one the contents step applies
//! too, so a spec that validates never fails later on its targets.

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
    if let Some(problem) = target_problem(target) {
        let hint = match problem {
            TargetProblem::Relative => {
                Some(format!("write \"/{}\"", target.trim_start_matches("./")))
            }
            _ => None,
        };
        return Err(invalid(
            &format!("{at}.target"),
            target,
            problem.allowed(),
            hint,
        ));
    }
    // A glob's matches go into its target; anything else becomes the target.
    if target.split('/').all(str::is_empty) && !entry.source.contains('*') {
        return Err(invalid(
            &format!("{at}.target"),
            target,
            ROOT_TARGET_ALLOWED,
            Some(
                "place a directory's contents into `/` with a glob source, such as \"dir/*\""
                    .into(),
            ),
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

/// What a non-glob source may have as its target instead of `/`.
pub const ROOT_TARGET_ALLOWED: &str =
    "a path below `/`: only a glob source may place into the image root";

/// Why a `contents` target cannot be used, as [`target_problem`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetProblem {
    /// It does not start with `/`.
    Relative,
    /// It holds a control character (newline, tab, NUL, ...).
    ControlCharacter,
    /// It has a `.` or `..` component.
    DotComponent,
}

impl TargetProblem {
    /// What is allowed instead, for error messages.
    pub fn allowed(self) -> &'static str {
        match self {
            TargetProblem::Relative => "an absolute path inside the image",
            TargetProblem::ControlCharacter => {
                "a path without control characters (newline, tab, NUL, ...)"
            }
            TargetProblem::DotComponent => {
                "a path without `.` or `..` components: contents stay inside the image"
            }
        }
    }
}

/// Why `target` is not a usable `contents` target: it must be absolute,
/// free of control characters, and have no `.` or `..` component (so it
/// cannot climb out of the image root, and names one path only).
pub fn target_problem(target: &str) -> Option<TargetProblem> {
    if !target.starts_with('/') {
        Some(TargetProblem::Relative)
    } else if target.chars().any(char::is_control) {
        Some(TargetProblem::ControlCharacter)
    } else if target.split('/').any(|part| part == "." || part == "..") {
        Some(TargetProblem::DotComponent)
    } else {
        None
    }
}

fn is_octal_mode(mode: &str) -> bool {
    (3..=4).contains(&mode.len()) && mode.chars().all(|c| ('0'..='7').contains(&c))
}
