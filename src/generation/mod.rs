//! Changing the generations of an existing image, as `nixos-rebuild boot`
//! and `nix-collect-garbage` change a running machine's: add a system as the
//! next generation, choose the default, remove generations and collect the
//! store paths no generation needs any more.
//!
//! The flow: a raw working copy beside the image ([`image`]); the builder VM
//! mounts it and lists its profile links and GC roots, and hands over its Nix
//! database; the host plans the change ([`plan`]), edits the database
//! ([`store_db`]); the builder copies the new store paths from the host's
//! store, updates the links and the database, deletes what is collected and
//! reruns the default generation's bootloader installation ([`scripts`]);
//! the copy is converted back and renamed over the image. Any failure
//! leaves the image as it was.

pub mod image;
pub mod plan;
pub mod scripts;
pub mod store_db;
mod vm;

use std::path::{Path, PathBuf};

use crate::interrupt::{self, Interrupted, Phase};

pub use plan::Request;

/// Why the generations of an image could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    /// The file is no disk image nixdisk writes.
    #[error(
        "{} is not a disk image nixdisk understands: {reason}\n  hint: pass an image `nixdisk build` wrote (raw, qcow2, vdi, vpc, vmdk or vhdx)",
        path.display()
    )]
    NotAnImage {
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The image's root is no NixOS root.
    #[error(
        "{} has no NixOS root: {detail}\n  hint: the image must hold a system installed by `nixdisk build` (a Nix database and /nix/var/nix/profiles/system)",
        path.display()
    )]
    NoNixosRoot {
        /// The image.
        path: PathBuf,
        /// What the builder found.
        detail: String,
    },
    /// The image's system profile has no generation.
    #[error(
        "the image's system profile has no generations (no /nix/var/nix/profiles/system-N-link)\n  hint: build the image with `nixdisk build --system ...` first"
    )]
    NoGenerations,
    /// A generation named by the request does not exist.
    #[error("generation {generation} does not exist; the image has generations {existing}")]
    NoSuchGeneration {
        /// The number given.
        generation: u32,
        /// The image's generations, comma separated.
        existing: String,
    },
    /// The request removes the generation that boots by default.
    #[error(
        "generation {generation} is the default and cannot be removed\n  hint: pick another default first (--set-default N), in the same command or before"
    )]
    RemovingDefault {
        /// The generation.
        generation: u32,
    },
    /// The system given is no NixOS toplevel.
    #[error(
        "`{}` is not a NixOS system: --system needs a toplevel store path (with bin/switch-to-configuration)\n  hint: pass config.system.build.toplevel, e.g. the `result` of `nixos-rebuild build`",
        path.display()
    )]
    NotAToplevel {
        /// The path given.
        path: PathBuf,
    },
    /// Ctrl-C or SIGTERM stopped the run; the image is unchanged.
    #[error(transparent)]
    Interrupted(#[from] crate::interrupt::Interrupted),
    /// Nothing to do.
    #[error("nothing to change: give --system PATH, --set-default N or --remove N")]
    NothingToDo,
    /// The closure of the new system could not be read.
    #[error("could not read the closure of the new system")]
    Closure(#[from] crate::closure::ClosureError),
    /// The derivations of the new closure could not be read.
    #[error("could not read the derivations of the new closure")]
    NixDb(#[from] crate::install::NixDbError),
    /// The image's Nix database could not be read or changed.
    #[error("the image's Nix database ({}): could not {what}", db.display())]
    Database {
        /// The host copy of the database.
        db: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// A reference of a new path is registered nowhere.
    #[error(
        "{} is neither valid in the image nor part of the new closure (database copy {})",
        path.display(),
        db.display()
    )]
    Unregistered {
        /// The host copy of the database.
        db: PathBuf,
        /// The path.
        path: PathBuf,
    },
    /// The image's database names a path nixdisk will not delete.
    #[error(
        "the image's Nix database lists `{}`, which is no plain store path; refusing to collect it",
        path.display()
    )]
    UnsafePath {
        /// The path.
        path: PathBuf,
    },
    /// A host tool failed.
    #[error("could not {what}: {command}: {detail}")]
    Tool {
        /// What it was for.
        what: &'static str,
        /// The command.
        command: String,
        /// How it failed.
        detail: String,
    },
    /// A host file operation failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A step in the builder VM failed.
    #[error(transparent)]
    Step(#[from] crate::pipeline::FullImageError),
    /// The builder VM failed.
    #[error("the builder VM failed")]
    Vm(#[from] crate::builder_vm::Error),
    /// The image could not be converted back to its format.
    #[error("could not convert the changed image back")]
    Convert(#[from] crate::convert::ConvertError),
}

/// What changed, for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The generations the image holds now, ascending.
    pub generations: Vec<u32>,
    /// The one that boots by default.
    pub default: u32,
    /// Store paths copied in.
    pub added_paths: usize,
    /// Store paths collected.
    pub removed_paths: usize,
}

/// How the builder VM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuilderSettings {
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// KVM, TCG, or KVM with TCG as the fallback.
    pub accel: crate::builder_vm::AccelChoice,
}

/// Changes the generations of `image` as `request` says; the image is
/// replaced only when every step succeeded.
pub fn run(
    image: &Path,
    request: &Request,
    builder: BuilderSettings,
) -> Result<Outcome, GenerationError> {
    if request.add.is_none() && request.set_default.is_none() && request.remove.is_empty() {
        return Err(GenerationError::NothingToDo);
    }
    let request = Request {
        add: request.add.as_deref().map(toplevel).transpose()?,
        ..request.clone()
    };
    interrupt::enter(Phase::Staging)?;
    let copy = image::WorkingCopy::create(image)?;
    let table = crate::layout::read_table(copy.raw(), crate::spec::FsType::Ext4).map_err(|e| {
        // The error names the working copy, which is gone when the user reads it.
        let reason = e.to_string().replace(
            &copy.raw().display().to_string(),
            &image.display().to_string(),
        );
        GenerationError::NotAnImage {
            path: image.to_owned(),
            reason: format!("its partition table cannot be read: {reason}"),
        }
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| GenerationError::Io {
            what: "could not start the async runtime for",
            path: image.to_owned(),
            source,
        })?;
    interrupt::enter(Phase::Vm)?;
    let outcome = runtime.block_on(async {
        // Dropping the change's future on a signal kills the builder VM; the
        // working copy's directory goes when `copy` drops.
        tokio::select! {
            result = vm::change(image, &copy, &table, &request, builder) => result,
            signal = interrupt::cancelled() => Err(Interrupted { signal, phase: Phase::Vm }.into()),
        }
    })?;
    interrupt::enter(Phase::Conversion)?;
    copy.replace_original()?;
    Ok(outcome)
}

/// `path` resolved to a toplevel store path, or why it is none.
fn toplevel(path: &Path) -> Result<PathBuf, GenerationError> {
    let not_a_toplevel = || GenerationError::NotAToplevel {
        path: path.to_owned(),
    };
    let resolved = std::fs::canonicalize(path).map_err(|_| not_a_toplevel())?;
    let in_store = plan::store_path_of(&resolved).is_some_and(|p| p == resolved);
    if in_store && resolved.join("bin/switch-to-configuration").is_file() {
        Ok(resolved)
    } else {
        Err(not_a_toplevel())
    }
}
