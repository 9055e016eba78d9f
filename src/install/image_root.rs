//! The image root plan: what `nixos-install` leaves beside the store.
//!
//! An [`ImageRootPlan`] lists, in order, every directory, symlink and file the
//! guest places on the target root besides `/nix/store/*`: the Nix database,
//! the system profile with one link per generation, the root channel,
//! `/etc/NIXOS`, `/etc/nixos/configuration.nix`, the mount points, and the
//! `contents` of the spec ([`super::contents`]). The plan is data; it is
//! written into a staging directory by [`super::materialise`].
//!
//! The tree follows what `nixos-install` (through `nix-env --store ROOT`) and
//! make-disk-image leave on a fresh root: Nix's state directories as Nix
//! creates them (`profiles/per-user/root`, `gcroots/per-user/root`,
//! `gcroots/profiles`, `temproots`, `store/.links`), the standard top-level
//! directories nixos-install makes (`/tmp` 1777, `/root` 0700, ...), and
//! `/etc/nixos` which make-disk-image always creates.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use super::nix_db::{DB_DIR, NixDbFiles};
use crate::closure::Closure;
use crate::spec::PartitionTableType;

/// Where profiles live inside the image.
pub const PROFILES_DIR: &str = "nix/var/nix/profiles";
/// The system profile, as the bootloader installation and NixOS read it.
pub const SYSTEM_PROFILE: &str = "/nix/var/nix/profiles/system";
/// The root user's channels profile.
pub const ROOT_CHANNELS_PROFILE: &str = "/nix/var/nix/profiles/per-user/root/channels";

/// What went wrong planning the image root.
#[derive(Debug, thiserror::Error)]
pub enum ImageRootError {
    /// No generation was given.
    #[error(
        "no system to install: the image root needs at least one generation\n  hint: set `system`, or `systems` with the default last"
    )]
    NoGeneration,
    /// A toplevel or the channel is not a store path of the closure.
    #[error(
        "{what} `{path}` is not in the closure being installed\n  hint: its profile link would dangle; include it in the closure (it must be a store path, /nix/store/<hash>-<name>)"
    )]
    NotInClosure {
        /// Which input (e.g. `generation 2`, `the channel`).
        what: String,
        /// The path given.
        path: PathBuf,
    },
    /// The channel source could not be resolved to a store path.
    #[error(
        "`channelSource` {path} is not a store path: {reason}\n  hint: pass a store path (e.g. nixpkgs' channel sources derivation), or set copyChannel to false"
    )]
    ChannelNotInStore {
        /// The path given.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Two entries of the plan claim one path in incompatible ways.
    #[error(
        "two things are placed at /{path}: {first} and {second}\n  hint: give each `contents` entry a target of its own, away from what the installation writes"
    )]
    Collision {
        /// The path, relative to the image root.
        path: PathBuf,
        /// What was there first.
        first: String,
        /// What came second.
        second: String,
    },
}

/// What a plan entry makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A symlink with this target (written as is, often absolute inside the image).
    Symlink(PathBuf),
    /// A regular file with these bytes.
    Bytes(Vec<u8>),
    /// A regular file copied from this host file.
    HostFile(PathBuf),
}

/// One path of the image root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The path relative to the image root (no leading `/`).
    pub path: PathBuf,
    /// What is made there.
    pub kind: EntryKind,
    /// Permission bits (with setuid/setgid/sticky); ignored for symlinks.
    pub mode: u32,
    /// Who placed it, for error messages (e.g. `the Nix database`, `contents[2]`).
    pub origin: String,
}

/// Every entry of the image root, keyed by path; iterated parents first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageRootPlan {
    entries: BTreeMap<PathBuf, Entry>,
}

/// What the image root is planned from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRootInputs {
    /// The generations' toplevel store paths, oldest first; the last is the default.
    pub toplevels: Vec<PathBuf>,
    /// The channel store path when `copyChannel` is set and a source is given.
    pub channel: Option<PathBuf>,
    /// The host file installed as `/etc/nixos/configuration.nix`.
    pub config_file: Option<PathBuf>,
    /// The layout: `efixbootldr` adds the `/efi` mount point.
    pub partition_table_type: PartitionTableType,
    /// The database files from [`super::nix_db::render_nix_db`].
    pub nix_db: NixDbFiles,
}

impl ImageRootPlan {
    /// The entries, parents before children, sorted by path.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// The entry at `path` (relative to the image root), if planned.
    pub fn get(&self, path: &Path) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the plan is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds an entry, making missing parent directories (0755). A directory
    /// may be added where a directory already is (the first one's mode
    /// stays); anything else at a taken path is a [`ImageRootError::Collision`].
    pub fn add(&mut self, entry: Entry) -> Result<(), ImageRootError> {
        let mut parent = PathBuf::new();
        let components: Vec<Component> = entry.path.components().collect();
        for component in components.iter().take(components.len().saturating_sub(1)) {
            parent.push(component);
            self.add_one(Entry {
                path: parent.clone(),
                kind: EntryKind::Dir,
                mode: 0o755,
                origin: entry.origin.clone(),
            })?;
        }
        self.add_one(entry)
    }

    fn add_one(&mut self, entry: Entry) -> Result<(), ImageRootError> {
        match self.entries.get(&entry.path) {
            None => {
                self.entries.insert(entry.path.clone(), entry);
                Ok(())
            }
            Some(seen) if seen.kind == EntryKind::Dir && entry.kind == EntryKind::Dir => Ok(()),
            Some(seen) => Err(ImageRootError::Collision {
                path: entry.path.clone(),
                first: format!("{} ({})", seen.origin, describe(&seen.kind)),
                second: format!("{} ({})", entry.origin, describe(&entry.kind)),
            }),
        }
    }

    /// Whether `path` is planned.
    pub fn contains(&self, path: &Path) -> bool {
        self.entries.contains_key(path)
    }

    /// One line per entry, `MODE KIND /PATH [-> TARGET | < SOURCE | (N bytes)]`:
    /// for logs and golden tests.
    pub fn listing(&self) -> String {
        let mut text = String::new();
        for entry in self.entries() {
            let path = entry.path.display();
            let line = match &entry.kind {
                EntryKind::Dir => format!("{:04o} d /{path}", entry.mode),
                EntryKind::Symlink(target) => format!("link l /{path} -> {}", target.display()),
                EntryKind::Bytes(bytes) => {
                    format!("{:04o} f /{path} ({} bytes)", entry.mode, bytes.len())
                }
                EntryKind::HostFile(source) => {
                    format!("{:04o} f /{path} < {}", entry.mode, source.display())
                }
            };
            text.push_str(&line);
            text.push('\n');
        }
        text
    }
}

fn describe(kind: &EntryKind) -> String {
    match kind {
        EntryKind::Dir => "a directory".into(),
        EntryKind::Symlink(target) => format!("a symlink to {}", target.display()),
        EntryKind::Bytes(_) => "a file".into(),
        EntryKind::HostFile(source) => format!("a copy of {}", source.display()),
    }
}

/// Plans the image root for `inputs`. `closure` is what the guest installs;
/// every toplevel and the channel must be in it.
pub fn plan_image_root(
    inputs: &ImageRootInputs,
    closure: &Closure,
) -> Result<ImageRootPlan, ImageRootError> {
    if inputs.toplevels.is_empty() {
        return Err(ImageRootError::NoGeneration);
    }
    for (index, toplevel) in inputs.toplevels.iter().enumerate() {
        require_in_closure(closure, &format!("generation {}", index + 1), toplevel)?;
    }
    if let Some(channel) = &inputs.channel {
        require_in_closure(closure, "the channel", channel)?;
    }
    let mut plan = ImageRootPlan::default();
    let install = "the installation";
    let dir = |path: &str, mode: u32| entry(path, EntryKind::Dir, mode, install);
    // nixos-install's top-level directories.
    for name in ["dev", "proc", "sys", "etc", "run", "home", "var", "boot"] {
        plan.add(dir(name, 0o755))?;
    }
    if inputs.partition_table_type == PartitionTableType::EfiXbootldr {
        plan.add(dir("efi", 0o755))?;
    }
    plan.add(dir("tmp", 0o1777))?;
    plan.add(dir("root", 0o700))?;
    plan.add(entry(
        "etc/NIXOS",
        EntryKind::Bytes(Vec::new()),
        0o644,
        install,
    ))?;
    plan.add(dir("etc/nixos", 0o755))?;
    if let Some(config) = &inputs.config_file {
        let kind = EntryKind::HostFile(config.clone());
        plan.add(entry(
            "etc/nixos/configuration.nix",
            kind,
            0o644,
            "configFile",
        ))?;
    }
    // What Nix makes when it opens a fresh store at ROOT.
    for name in [
        "nix/store",
        "nix/store/.links",
        "nix/var/nix/temproots",
        "nix/var/nix/gcroots/per-user/root",
        "nix/var/nix/profiles/per-user/root",
    ] {
        plan.add(dir(name, 0o755))?;
    }
    let profiles_link = EntryKind::Symlink(PathBuf::from("/nix/var/nix/profiles"));
    plan.add(entry(
        "nix/var/nix/gcroots/profiles",
        profiles_link,
        0o777,
        install,
    ))?;
    let db = "the Nix database";
    plan.add(entry(DB_DIR, EntryKind::Dir, 0o755, db))?;
    let db_file = |name: &str, bytes: &[u8]| {
        let kind = EntryKind::Bytes(bytes.to_vec());
        entry(&format!("{DB_DIR}/{name}"), kind, 0o644, db)
    };
    plan.add(db_file("db.sqlite", &inputs.nix_db.db_sqlite))?;
    plan.add(db_file("schema", &inputs.nix_db.schema))?;
    add_profile(&mut plan, PROFILES_DIR, "system", &inputs.toplevels)?;
    if let Some(channel) = &inputs.channel {
        let channels = [channel.clone()];
        add_profile(
            &mut plan,
            "nix/var/nix/profiles/per-user/root",
            "channels",
            &channels,
        )?;
        plan.add(dir("root/.nix-defexpr", 0o700))?;
        let link = EntryKind::Symlink(PathBuf::from(ROOT_CHANNELS_PROFILE));
        plan.add(entry(
            "root/.nix-defexpr/channels",
            link,
            0o777,
            "the channel",
        ))?;
    }
    Ok(plan)
}

/// `NAME-1-link` ... `NAME-N-link` to the targets, and `NAME` to the last one,
/// as `nix-env --set` leaves a profile after N generations.
fn add_profile(
    plan: &mut ImageRootPlan,
    dir: &str,
    name: &str,
    targets: &[PathBuf],
) -> Result<(), ImageRootError> {
    for link in profile_links(dir, name, 1, targets) {
        plan.add(link)?;
    }
    Ok(())
}

/// The links of profile `dir/name` for generations `first`, `first + 1`, ...
/// pointing at `targets`, then `name` pointing at the last of them. With
/// `first` 1 this is a fresh profile; with `first` N + 1 it adds generations
/// to a profile that has N (what `add-generation` needs). Empty when
/// `targets` is.
pub fn profile_links(dir: &str, name: &str, first: usize, targets: &[PathBuf]) -> Vec<Entry> {
    let origin = format!("the {name} profile");
    let link_name = |number: usize| format!("{name}-{number}-link");
    let mut links: Vec<Entry> = targets
        .iter()
        .enumerate()
        .map(|(offset, target)| {
            let path = format!("{dir}/{}", link_name(first + offset));
            entry(&path, EntryKind::Symlink(target.clone()), 0o777, &origin)
        })
        .collect();
    if !targets.is_empty() {
        let current = PathBuf::from(link_name(first + targets.len() - 1));
        let path = format!("{dir}/{name}");
        links.push(entry(&path, EntryKind::Symlink(current), 0o777, &origin));
    }
    links
}

fn entry(path: &str, kind: EntryKind, mode: u32, origin: &str) -> Entry {
    Entry {
        path: PathBuf::from(path),
        kind,
        mode,
        origin: origin.to_owned(),
    }
}

fn require_in_closure(closure: &Closure, what: &str, path: &Path) -> Result<(), ImageRootError> {
    if closure.contains(path) {
        Ok(())
    } else {
        Err(ImageRootError::NotInClosure {
            what: what.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// Resolves `channelSource` to the store path it is or points to (`./result`
/// style symlinks are followed), for [`ImageRootInputs::channel`].
pub fn resolve_channel(source: &Path) -> Result<PathBuf, ImageRootError> {
    let not_in_store = |reason: String| ImageRootError::ChannelNotInStore {
        path: source.to_owned(),
        reason,
    };
    let resolved = std::fs::canonicalize(source).map_err(|e| not_in_store(e.to_string()))?;
    let in_store = resolved
        .strip_prefix("/nix/store")
        .is_ok_and(|rest| rest.components().count() == 1);
    if in_store {
        Ok(resolved)
    } else {
        Err(not_in_store(format!(
            "it resolves to {}, outside /nix/store",
            resolved.display()
        )))
    }
}

#[cfg(test)]
#[path = "image_root_tests.rs"]
mod tests;
