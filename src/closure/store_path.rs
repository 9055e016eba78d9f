//! Store path names, checked strictly: every path of a closure ends up as a
//! file name under the image's `/nix/store`, as an argument of the guest's
//! `cp`, and as a line of the lists nixdisk hands to tools, so only what Nix
//! itself allows gets through (`/nix/store/<32 base32 characters>-<name>`,
//! the name of A-Z a-z 0-9 and `+-._?=`). No `..`, no second component, no
//! blank, quote, newline or other character a shell or a line-based list
//! would read differently.

use std::path::{Path, PathBuf};

use super::ClosureError;

/// The store directory of the images nixdisk builds (and of the host store
/// they are copied from).
pub const STORE_DIR: &str = "/nix/store";
/// Length of the hash part of a store path's base name.
const HASH_CHARS: usize = 32;
/// The characters of Nix's base32 alphabet.
const NIX_BASE32_CHARS: &str = "0123456789abcdfghijklmnpqrsvwxyz";
/// Nix's limit on the length of a store path's name (after `<hash>-`).
const MAX_NAME_CHARS: usize = 211;

/// Why `text` is not a store path, or `None` when it is one.
pub fn store_path_problem(text: &str) -> Option<String> {
    let Some(base) = text
        .strip_prefix(STORE_DIR)
        .and_then(|rest| rest.strip_prefix('/'))
    else {
        return Some(format!("it is not in {STORE_DIR}"));
    };
    if base.contains('/') {
        return Some(format!(
            "it is not directly in {STORE_DIR} (one name after {STORE_DIR}/)"
        ));
    }
    let Some((hash, name)) = base.split_at_checked(HASH_CHARS) else {
        return Some("its base name is shorter than a 32-character hash".into());
    };
    if !hash.chars().all(|c| NIX_BASE32_CHARS.contains(c)) {
        return Some("its hash part is not 32 Nix base32 characters".into());
    }
    let Some(name) = name.strip_prefix('-') else {
        return Some("its hash part is not followed by `-`".into());
    };
    if name.is_empty() {
        return Some("its name is empty".into());
    }
    if name.len() > MAX_NAME_CHARS {
        return Some(format!(
            "its name is longer than {MAX_NAME_CHARS} characters"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "+-._?=".contains(*c)))
    {
        return Some(format!(
            "its name has the character {bad:?}; Nix allows A-Z a-z 0-9 + - . _ ? ="
        ));
    }
    None
}

/// Whether `text` is a store path by [`store_path_problem`]'s rules.
pub fn is_store_path(text: &str) -> bool {
    store_path_problem(text).is_none()
}

/// `text` as a store path; else a [`ClosureError::Malformed`] at `file:line`
/// saying what was `expected` and why `text` is not one.
pub(super) fn store_path(
    file: &Path,
    line: usize,
    text: &str,
    expected: &str,
) -> Result<PathBuf, ClosureError> {
    match store_path_problem(text) {
        None => Ok(PathBuf::from(text)),
        Some(problem) => Err(ClosureError::Malformed {
            file: file.to_owned(),
            line,
            problem: format!(
                "`{}` is not {expected}: {problem} (expected {STORE_DIR}/<32-char hash>-<name>)",
                text.escape_debug()
            ),
        }),
    }
}

/// Reads a closureInfo `store-paths` file: one store path a line, blank
/// lines and surrounding blanks ignored. `file` names it in errors.
pub fn parse_store_paths(text: &str, file: &Path) -> Result<Vec<PathBuf>, ClosureError> {
    text.lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty())
        .map(|(line, path)| store_path(file, line, path, "a store path"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0ysj00x31q08vxsznqd9pmvwa0rrzza8";

    #[test]
    fn store_paths_are_one_nix_name_directly_in_the_store() {
        assert_eq!(
            store_path_problem(&format!("/nix/store/{HASH}-hello-2.12")),
            None
        );
        assert_eq!(
            store_path_problem(&format!("/nix/store/{HASH}-a+b_c?d=e.drv")),
            None
        );
        for (text, why) in [
            (format!("/nix/store/../../etc/{HASH}-x"), "not directly in"),
            (
                format!("/nix/store/{HASH}-x/../../../etc"),
                "not directly in",
            ),
            (format!("/nix/store/{HASH}-x/bin"), "not directly in"),
            (format!("/nix/store/{HASH}-x/"), "not directly in"),
            (format!("/tmp/{HASH}-x"), "not in /nix/store"),
            (format!("nix/store/{HASH}-x"), "not in /nix/store"),
            (format!("/nix/storeX/{HASH}-x"), "not in /nix/store"),
            ("/nix/store/short-x".to_owned(), "shorter than"),
            (
                format!("/nix/store/{}-x", "e".repeat(32)),
                "not 32 Nix base32",
            ),
            (format!("/nix/store/{HASH}x"), "not followed by `-`"),
            (format!("/nix/store/{HASH}-"), "name is empty"),
            (
                format!("/nix/store/{HASH}-{}", "x".repeat(212)),
                "longer than 211",
            ),
            (format!("/nix/store/{HASH}-a b"), "character ' '"),
            (format!("/nix/store/{HASH}-a'b"), "character '\\''"),
            (format!("/nix/store/{HASH}-$(id)"), "character '$'"),
            (format!("/nix/store/{HASH}-a\tb"), "character '\\t'"),
            (format!("/nix/store/{HASH}-é"), "character 'é'"),
        ] {
            let problem = store_path_problem(&text).unwrap_or_else(|| panic!("{text:?} passed"));
            assert!(problem.contains(why), "{text:?}: {problem}");
        }
    }

    #[test]
    fn store_paths_files_name_the_bad_line() {
        let file = Path::new("store-paths");
        let good = format!("/nix/store/{HASH}-a");
        let paths = parse_store_paths(&format!("\n  {good}  \n\n{good}-b\n"), file).unwrap();
        assert_eq!(
            paths,
            [PathBuf::from(&good), PathBuf::from(format!("{good}-b"))]
        );
        let text = format!("{good}\n{good} extra\n");
        match parse_store_paths(&text, file) {
            Err(ClosureError::Malformed { line, problem, .. }) => {
                assert_eq!(line, 2);
                assert!(problem.contains("character ' '"), "{problem}");
            }
            other => panic!("expected a malformed line, got {other:?}"),
        }
    }
}
