//! Closure input: a closureInfo directory or a store path asked of Nix, read into a `Closure`.
//!
//! A [`Closure`] is the set of store paths an image must hold, each with what
//! Nix's database knows of it ([`StorePathInfo`]). It comes from one of two
//! places: a directory made by nixpkgs' `closureInfo` (`store-paths` and
//! `registration`), or the local Nix store (`nix-store -qR`, `--dump-db`).
//! It goes out as registration text for `nix-store --load-db` and for the
//! `nix-path-registration` file a booted NixOS loads on first start.
//!
//! Parsing and checking are pure ([`registration`]); running `nix-store` is
//! the one effect and lives in the private `nix_store` module.

mod nix_store;
pub mod registration;
pub mod store_path;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub use registration::{normalise_nar_hash, parse_registration, render_registration};
pub use store_path::{STORE_DIR, is_store_path, parse_store_paths, store_path_problem};

/// The file of a closureInfo directory that lists the closure's paths.
pub const STORE_PATHS_FILE: &str = "store-paths";
/// The file of a closureInfo directory in `nix-store --load-db` format.
pub const REGISTRATION_FILE: &str = "registration";

/// What went wrong reading, checking or combining a closure.
#[derive(Debug, thiserror::Error)]
pub enum ClosureError {
    /// A file of a closureInfo directory could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The directory given as a closureInfo lacks one of its two files.
    #[error(
        "{dir} is not a closureInfo directory: it has no `{missing}`\n  hint: pass the output of nixpkgs' `closureInfo {{ rootPaths = [ ... ]; }}`, or a store path"
    )]
    NotClosureInfo {
        /// The directory.
        dir: PathBuf,
        /// The missing file's name.
        missing: &'static str,
    },
    /// A registration text is not in `nix-store --load-db` format.
    #[error("{file}:{line}: {problem}")]
    Malformed {
        /// The file (or the command whose output it was).
        file: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What was wrong and what was expected.
        problem: String,
    },
    /// A registration has no NAR hashes (the `--register-validity` format without `--hash-given`).
    #[error(
        "{file}:{line}: `{value}` stands where a NAR hash belongs: this registration has no hashes\n  hint: it looks like the `nix-store --register-validity` format; nixdisk needs the `--load-db` format nixpkgs' closureInfo writes (path, hash, size, deriver, references)"
    )]
    MissingHashes {
        /// The file.
        file: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What stood in the hash's place.
        value: String,
    },
    /// A path is registered twice within one registration.
    #[error("{file}:{line}: `{path}` is registered a second time")]
    Duplicate {
        /// The file.
        file: PathBuf,
        /// The 1-based line number of the second registration.
        line: usize,
        /// The path.
        path: PathBuf,
    },
    /// A path refers to a path outside the closure.
    #[error(
        "`{path}` refers to `{reference}`, which is not in the closure\n  hint: a closure must hold everything its paths refer to; regenerate it from its root paths"
    )]
    DanglingReference {
        /// The referring path.
        path: PathBuf,
        /// The missing reference.
        reference: PathBuf,
    },
    /// `store-paths` and `registration` of one closureInfo list different paths.
    #[error(
        "{dir}: `store-paths` and `registration` disagree: {} path(s) only in store-paths (first: {}), {} only in registration (first: {})",
        only_in_store_paths.len(),
        only_in_store_paths.first().map(|p| p.display().to_string()).unwrap_or_else(|| "-".into()),
        only_in_registration.len(),
        only_in_registration.first().map(|p| p.display().to_string()).unwrap_or_else(|| "-".into())
    )]
    StorePathsMismatch {
        /// The closureInfo directory.
        dir: PathBuf,
        /// Paths listed in `store-paths` but not registered.
        only_in_store_paths: Vec<PathBuf>,
        /// Paths registered but not listed in `store-paths`.
        only_in_registration: Vec<PathBuf>,
    },
    /// Two closures being merged describe one path differently.
    #[error(
        "`{path}` appears in two closures with different contents (NAR hash {first} vs {second})\n  hint: the closures come from different stores or builds; merge closures of one store"
    )]
    Conflict {
        /// The path.
        path: PathBuf,
        /// Its NAR hash in the first closure.
        first: String,
        /// Its NAR hash in the second.
        second: String,
    },
    /// The system path does not exist.
    #[error(
        "{path} does not exist\n  hint: `system` is a NixOS toplevel store path (such as ./result of nix-build) or a closureInfo directory"
    )]
    SystemMissing {
        /// The path given.
        path: PathBuf,
    },
    /// `nix-store` could not be started.
    #[error(
        "cannot run `{command}`: {source}\n  hint: nixdisk asks the installed Nix about store paths; is `nix-store` on PATH?"
    )]
    NixStoreSpawn {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// `nix-store` failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    NixStoreFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// One store path as Nix's database records it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StorePathInfo {
    /// The store path, e.g. `/nix/store/<hash>-hello-2.12`.
    pub path: PathBuf,
    /// The NAR hash, normalised to `sha256:<base16>`.
    pub nar_hash: String,
    /// The size of the path's NAR serialisation in bytes.
    pub nar_size: u64,
    /// The paths this one refers to (possibly itself), sorted.
    pub references: Vec<PathBuf>,
    /// The derivation that built it, when known.
    pub deriver: Option<PathBuf>,
}

/// A closed set of store paths, sorted by path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Closure {
    /// The paths, sorted by path, each once.
    pub paths: Vec<StorePathInfo>,
}

impl Closure {
    /// Builds a closure from path infos: sorts them, and checks that each path
    /// appears once and that every reference is in the set.
    pub fn new(mut paths: Vec<StorePathInfo>) -> Result<Self, ClosureError> {
        paths.sort();
        for info in &mut paths {
            info.references.sort();
            info.references.dedup();
        }
        let closure = Closure { paths };
        closure.check_references()?;
        Ok(closure)
    }

    /// Reads a closureInfo directory (`store-paths` and `registration`, as
    /// nixpkgs' `closureInfo` writes them) and checks that both list the same
    /// paths and that the closure is closed.
    pub fn from_closure_info(dir: &Path) -> Result<Self, ClosureError> {
        let read = |name: &'static str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    ClosureError::NotClosureInfo {
                        dir: dir.to_owned(),
                        missing: name,
                    }
                } else {
                    ClosureError::Read { path, source }
                }
            })
        };
        let store_paths = read(STORE_PATHS_FILE)?;
        let store_paths = parse_store_paths(&store_paths, &dir.join(STORE_PATHS_FILE))?;
        let registration = read(REGISTRATION_FILE)?;
        let infos = parse_registration(&registration, &dir.join(REGISTRATION_FILE))?;
        let closure = Closure::new(infos)?;
        closure.check_store_paths(dir, store_paths)?;
        Ok(closure)
    }

    /// Reads the spec's `system`: a closureInfo directory (it holds
    /// `registration` and `store-paths`), or else a store path asked of Nix.
    pub fn from_system(path: &Path) -> Result<Self, ClosureError> {
        if std::fs::symlink_metadata(path).is_err() {
            return Err(ClosureError::SystemMissing {
                path: path.to_owned(),
            });
        }
        if path.join(REGISTRATION_FILE).is_file() && path.join(STORE_PATHS_FILE).is_file() {
            tracing::debug!(path = %path.display(), "reading a closureInfo directory");
            Self::from_closure_info(path)
        } else {
            tracing::debug!(path = %path.display(), "asking Nix for the closure");
            Self::from_store_path(path)
        }
    }

    /// Asks the installed Nix for the closure of `path` (a store path, or a
    /// symlink to one such as `./result`).
    pub fn from_store_path(path: &Path) -> Result<Self, ClosureError> {
        Self::from_store_paths(&[path.to_owned()])
    }

    /// Asks the installed Nix for the closure of several store paths together.
    pub fn from_store_paths(roots: &[PathBuf]) -> Result<Self, ClosureError> {
        let paths = nix_store::requisites(roots)?;
        let dump = nix_store::dump_db(&paths)?;
        Closure::new(parse_registration(&dump, Path::new("nix-store --dump-db"))?)
    }

    /// Merges closures (several systems, `additionalPaths`) into one, each path
    /// once. The same path must carry the same NAR hash everywhere.
    pub fn merge(closures: impl IntoIterator<Item = Closure>) -> Result<Self, ClosureError> {
        let mut merged: BTreeMap<PathBuf, StorePathInfo> = BTreeMap::new();
        for closure in closures {
            for info in closure.paths {
                match merged.get(&info.path) {
                    Some(seen) if seen.nar_hash != info.nar_hash => {
                        return Err(ClosureError::Conflict {
                            path: info.path,
                            first: seen.nar_hash.clone(),
                            second: info.nar_hash,
                        });
                    }
                    Some(_) => {}
                    None => {
                        merged.insert(info.path.clone(), info);
                    }
                }
            }
        }
        Closure::new(merged.into_values().collect())
    }

    /// The registration text of this closure (`nix-store --load-db` format,
    /// base16 hashes), for loading into a store and for `nix-path-registration`.
    pub fn registration_text(&self) -> String {
        render_registration(&self.paths)
    }

    /// The `store-paths` text of a closureInfo: one path a line.
    pub fn store_paths_text(&self) -> String {
        self.paths
            .iter()
            .map(|info| format!("{}\n", info.path.display()))
            .collect()
    }

    /// The store paths, sorted.
    pub fn store_paths(&self) -> impl Iterator<Item = &Path> {
        self.paths.iter().map(|info| info.path.as_path())
    }

    /// Whether `path` is in the closure.
    pub fn contains(&self, path: &Path) -> bool {
        self.get(path).is_some()
    }

    /// The info of `path`, if it is in the closure.
    pub fn get(&self, path: &Path) -> Option<&StorePathInfo> {
        self.paths
            .binary_search_by(|info| info.path.as_path().cmp(path))
            .ok()
            .map(|index| &self.paths[index])
    }

    /// The sum of the NAR sizes: a first idea of the closure's size.
    pub fn total_nar_size(&self) -> u64 {
        self.paths.iter().map(|info| info.nar_size).sum()
    }

    fn check_references(&self) -> Result<(), ClosureError> {
        for info in &self.paths {
            if let Some(missing) = info.references.iter().find(|r| !self.contains(r)) {
                return Err(ClosureError::DanglingReference {
                    path: info.path.clone(),
                    reference: missing.clone(),
                });
            }
        }
        Ok(())
    }

    fn check_store_paths(&self, dir: &Path, listed: Vec<PathBuf>) -> Result<(), ClosureError> {
        let listed: BTreeSet<PathBuf> = listed.into_iter().collect();
        let registered: BTreeSet<PathBuf> = self.store_paths().map(Path::to_owned).collect();
        if listed == registered {
            return Ok(());
        }
        Err(ClosureError::StorePathsMismatch {
            dir: dir.to_owned(),
            only_in_store_paths: listed.difference(&registered).cloned().collect(),
            only_in_registration: registered.difference(&listed).cloned().collect(),
        })
    }
}

#[cfg(test)]
mod tests;
