//! `contents`: host files placed into the image, resolved on the host.
//!
//! The rules are make-disk-image's (its rsync loop, then `chown -R` in the
//! installed system):
//! - A source containing `*` is a glob (bash syntax, `*`, `?`, `[...]`; a
//!   leading `.` must be matched literally, as bash does). The target is a
//!   directory and every match goes into it under its own name: a file as a
//!   file, a directory with everything below it, a symlink as a symlink.
//!   Matches are taken in byte order. A glob that matches nothing is an error.
//! - Any other source must exist. A directory's contents go *to* the target
//!   (the target becomes that directory); a file or symlink is placed at the
//!   target. A symlink source is copied as a symlink, except a symlink to a
//!   directory, whose directory is copied (rsync's `source/` does that, and a
//!   link into the host would not resolve inside the image).
//! - `mode` applies to every file and directory the entry places (rsync's
//!   `--chmod`), otherwise each keeps its source's mode. Symlinks have none.
//! - `user`/`group` become a recursive chown of the target, applied by the
//!   guest after copying (see [`ChownOp`]), names resolved by [`Accounts`].
//! - A target is absolute and stays inside the image; two entries placing
//!   the same path (other than merging directories of globs), or an entry
//!   whose non-glob target was already placed, are refused.
//!
//! Devices, sockets and FIFOs are refused: rsync `-a` without `-D` skips them
//! silently, and a skipped file should not go unnoticed.

mod walk;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use super::accounts::{Accounts, Lookup};
use super::image_root::{Entry, EntryKind, ImageRootError, ImageRootPlan};
use crate::spec::{ContentEntry, ROOT_TARGET_ALLOWED, target_problem};
use walk::Walker;

/// What went wrong resolving `contents`.
#[derive(Debug, thiserror::Error)]
pub enum ContentsError {
    /// A source does not exist.
    #[error(
        "contents[{index}].source `{source_path}` does not exist\n  hint: give an existing host path, or a glob with `*`"
    )]
    MissingSource {
        /// The entry's index.
        index: usize,
        /// The source as written.
        source_path: String,
    },
    /// A glob matched nothing.
    #[error("contents[{index}].source `{pattern}` matches nothing")]
    GlobMatchedNothing {
        /// The entry's index.
        index: usize,
        /// The pattern.
        pattern: String,
    },
    /// A glob is not valid glob syntax.
    #[error("contents[{index}].source `{pattern}` is not a valid glob: {reason}")]
    BadGlob {
        /// The entry's index.
        index: usize,
        /// The pattern.
        pattern: String,
        /// What the glob parser said.
        reason: String,
    },
    /// A target is not an absolute path inside the image.
    #[error("contents[{index}].target {target:?} is not allowed: expected {reason}")]
    BadTarget {
        /// The entry's index.
        index: usize,
        /// The target as written.
        target: String,
        /// What is allowed.
        reason: &'static str,
    },
    /// A mode is not octal permission bits.
    #[error(
        "contents[{index}].mode `{mode}` is not an octal mode (3 or 4 digits 0-7, such as \"0644\")"
    )]
    BadMode {
        /// The entry's index.
        index: usize,
        /// The mode as written.
        mode: String,
    },
    /// Two entries place the same path.
    #[error(
        "contents[{index}] places /{path}, which contents[{first}] already placed\n  hint: every contents target must be unique; merge the two entries or pick another target"
    )]
    DuplicateTarget {
        /// The later entry.
        index: usize,
        /// The earlier entry.
        first: usize,
        /// The path, relative to the image root.
        path: PathBuf,
    },
    /// A user or group name is not known to the installed system.
    #[error(
        "contents[{index}].{field} `{name}` {problem} in the installed system (looked in: {looked_in})\n  hint: use a name the system declares with a fixed id (users.users.<name>.uid, users.groups.<name>.gid), or a number"
    )]
    UnknownAccount {
        /// The entry's index.
        index: usize,
        /// `user` or `group`.
        field: &'static str,
        /// The name.
        name: String,
        /// `is unknown` or `gets its id only at activation`.
        problem: &'static str,
        /// The files consulted.
        looked_in: String,
    },
    /// A source holds a device, socket or FIFO.
    #[error(
        "contents[{index}]: {path} is a {kind}; only files, directories and symlinks can be placed"
    )]
    Unsupported {
        /// The entry's index.
        index: usize,
        /// The host path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// Reading a source failed.
    #[error("contents[{index}]: cannot read {path}: {source}")]
    Io {
        /// The entry's index.
        index: usize,
        /// The host path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One host object placed into the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The `contents` entry it comes from.
    pub index: usize,
    /// The host path it is copied from.
    pub source: PathBuf,
    /// Where it goes, relative to the image root.
    pub target: PathBuf,
    /// What it is.
    pub kind: PlacementKind,
    /// Permission bits (0 for symlinks).
    pub mode: u32,
}

/// The kind of a placed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementKind {
    /// A directory.
    Dir,
    /// A regular file (its bytes copied from the source).
    File,
    /// A symlink with this target.
    Symlink(PathBuf),
}

/// A recursive owner change the guest applies after copying: like
/// `chown -R uid:gid target`, symlinks changed themselves, never followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChownOp {
    /// The `contents` entry it comes from.
    pub index: usize,
    /// The path inside the image, absolute.
    pub target: PathBuf,
    /// The numeric user id.
    pub uid: u32,
    /// The numeric group id.
    pub gid: u32,
}

/// The resolved `contents`: what to copy, and whom to give it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedContents {
    /// Every placed object, in entry order, parents before children.
    pub placements: Vec<Placement>,
    /// Owner changes, in entry order, applied after every copy.
    pub chowns: Vec<ChownOp>,
}

impl ResolvedContents {
    /// Adds the placements to an image root plan (after the installation's
    /// own entries, so those keep their modes where directories meet).
    pub fn add_to(&self, plan: &mut ImageRootPlan) -> Result<(), ImageRootError> {
        for placement in &self.placements {
            let kind = match &placement.kind {
                PlacementKind::Dir => EntryKind::Dir,
                PlacementKind::File => EntryKind::HostFile(placement.source.clone()),
                PlacementKind::Symlink(target) => EntryKind::Symlink(target.clone()),
            };
            plan.add(Entry {
                path: placement.target.clone(),
                kind,
                mode: placement.mode,
                origin: format!("contents[{}]", placement.index),
            })?;
        }
        Ok(())
    }
}

/// Resolves `entries` against the host file system and `accounts`.
pub fn resolve_contents(
    entries: &[ContentEntry],
    accounts: &Accounts,
) -> Result<ResolvedContents, ContentsError> {
    let mut resolved = ResolvedContents::default();
    // Path -> (entry index, is a directory), to find duplicates.
    let mut placed: BTreeMap<PathBuf, (usize, bool)> = BTreeMap::new();
    for (index, entry) in entries.iter().enumerate() {
        let target = normalise_target(index, &entry.target)?;
        let mode = entry
            .mode
            .as_deref()
            .map(|m| parse_mode(index, m))
            .transpose()?;
        let mut walker = Walker {
            index,
            mode,
            out: Vec::new(),
        };
        if entry.source.contains('*') {
            walker.glob(&entry.source, &target)?;
        } else {
            if target.as_os_str().is_empty() {
                return Err(ContentsError::BadTarget {
                    index,
                    target: entry.target.clone(),
                    reason: ROOT_TARGET_ALLOWED,
                });
            }
            // As make-disk-image: a plain target must not exist yet, not
            // even as a directory an earlier entry made.
            if let Some((first, _)) = placed.get(&target) {
                return Err(ContentsError::DuplicateTarget {
                    index,
                    first: *first,
                    path: target,
                });
            }
            walker.top(Path::new(&entry.source), &entry.source, &target)?;
        }
        for placement in &walker.out {
            let is_dir = placement.kind == PlacementKind::Dir;
            if let Some((first, was_dir)) = placed.get(&placement.target)
                && !(is_dir && *was_dir)
            {
                return Err(ContentsError::DuplicateTarget {
                    index,
                    first: *first,
                    path: placement.target.clone(),
                });
            }
            placed.insert(placement.target.clone(), (index, is_dir));
        }
        // The glob's directory, and the parents of every target, exist too.
        for ancestor in target.ancestors().filter(|a| !a.as_os_str().is_empty()) {
            placed.entry(ancestor.to_owned()).or_insert((index, true));
        }
        resolved.placements.extend(walker.out);
        if let (Some(user), Some(group)) = (&entry.user, &entry.group) {
            let uid = resolve_id(index, "user", user, accounts.user(user), accounts)?;
            let gid = resolve_id(index, "group", group, accounts.group(group), accounts)?;
            resolved.chowns.push(ChownOp {
                index,
                target: Path::new("/").join(&target),
                uid,
                gid,
            });
        }
    }
    Ok(resolved)
}

fn resolve_id(
    index: usize,
    field: &'static str,
    name: &str,
    lookup: Lookup,
    accounts: &Accounts,
) -> Result<u32, ContentsError> {
    let problem = match lookup {
        Lookup::Id(id) => return Ok(id),
        Lookup::Allocated => "gets its id only at activation",
        Lookup::Unknown => "is unknown",
    };
    let mut looked_in: Vec<String> = accounts
        .sources
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    looked_in.push("the built-in root user and group".into());
    Err(ContentsError::UnknownAccount {
        index,
        field,
        name: name.to_owned(),
        problem,
        looked_in: looked_in.join(", "),
    })
}

/// `/a//b/` -> `a/b`; refuses what [`target_problem`] refuses (relative
/// paths, `.`, `..`, control characters), as spec validation does.
pub fn normalise_target(index: usize, target: &str) -> Result<PathBuf, ContentsError> {
    if let Some(problem) = target_problem(target) {
        return Err(ContentsError::BadTarget {
            index,
            target: target.to_owned(),
            reason: problem.allowed(),
        });
    }
    // Only root and normal components remain: the checks above refused the rest.
    Ok(Path::new(target)
        .components()
        .filter_map(|component| match component {
            Component::Normal(part) => Some(part),
            _ => None,
        })
        .collect())
}

fn parse_mode(index: usize, mode: &str) -> Result<u32, ContentsError> {
    let valid = (3..=4).contains(&mode.len()) && mode.bytes().all(|b| (b'0'..=b'7').contains(&b));
    match valid.then(|| u32::from_str_radix(mode, 8)) {
        Some(Ok(bits)) => Ok(bits),
        _ => Err(ContentsError::BadMode {
            index,
            mode: mode.to_owned(),
        }),
    }
}

#[cfg(test)]
#[path = "contents_tests.rs"]
mod tests;
