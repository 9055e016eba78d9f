//! Kernel module resolution: which `.ko` files to load, in which order, from
//! `modules.dep`, `modules.softdep`, `modules.alias` and `modules.builtin`
//! (what `modprobe` reads; the `kmod` crate does not build here).
//!
//! [`ModuleIndex::parse`] and [`ModuleIndex::resolve`] are pure; only
//! [`ModuleIndex::load`] reads files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::KernelError;
use crate::spec::FsType;

/// Every module the builder VM may need: virtio devices and console, the
/// host share (9p, virtiofs), vsock, the file systems nixdisk makes, EFI
/// variables, loop devices, and pvpanic so a guest panic reaches QEMU.
/// Prefer [`builder_module_names`]: loading xfs and btrfs costs about 10 s
/// under TCG here (measured: xfs 6.5 s, btrfs 3.5 s, ext4 1 s, the other 38
/// modules about 5 s together on a loaded 2-core host).
pub const BUILDER_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "9p",
    "9pnet_virtio",
    "virtiofs",
    "vmw_vsock_virtio_transport",
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
    "btrfs",
    "xfs",
    "efivarfs",
    "loop",
    "pvpanic_mmio",
    "pvpanic_pci",
];

/// Modules every builder VM loads, whatever it builds: devices, host share,
/// transports, the ESP's vfat, loop devices, pvpanic.
pub const BASE_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "9p",
    "9pnet_virtio",
    "virtiofs",
    "vmw_vsock_virtio_transport",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
    "loop",
    "pvpanic_mmio",
    "pvpanic_pci",
];

/// The modules a build needs: [`BASE_MODULES`], the root file system's
/// module, and `efivarfs` when the VM boots with UEFI (without UEFI it fails
/// to load with ENODEV).
pub fn builder_module_names(fs_type: FsType, uefi: bool) -> Vec<&'static str> {
    let mut names = BASE_MODULES.to_vec();
    let fs = match fs_type {
        FsType::Ext4 | FsType::Ext3 | FsType::Ext2 => Some("ext4"),
        FsType::Btrfs => Some("btrfs"),
        FsType::Xfs => Some("xfs"),
        FsType::Erofs => Some("erofs"),
        FsType::Squashfs => Some("squashfs"),
        FsType::Vfat => None,
    };
    names.extend(fs);
    if uefi {
        names.push("efivarfs");
    }
    names
}

/// A module to load.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Module {
    /// Its name (`-` normalized to `_`), e.g. `crc32c_intel`.
    pub name: String,
    /// Its file as `modules.dep` names it, relative to the modules directory
    /// (e.g. `kernel/fs/ext4/ext4.ko`).
    pub path: String,
}

/// The outcome of resolving a set of wanted modules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Every module to load, dependencies first, each once.
    pub load_order: Vec<Module>,
    /// Wanted modules that are built into the kernel (nothing to load).
    pub builtin: Vec<String>,
    /// Wanted modules this kernel has neither as module nor built in.
    pub missing: Vec<String>,
}

/// Soft dependencies of one module (`softdep m pre: a b post: c`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct SoftDeps {
    pre: Vec<String>,
    post: Vec<String>,
}

/// The module metadata of one kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleIndex {
    /// name -> (path, hard dependencies by name, in `modules.dep` order).
    modules: BTreeMap<String, (String, Vec<String>)>,
    softdeps: BTreeMap<String, SoftDeps>,
    /// alias -> module names.
    aliases: BTreeMap<String, BTreeSet<String>>,
    builtin: BTreeSet<String>,
}

/// The module name of a path such as `kernel/fs/nls/nls_iso8859-1.ko.xz`:
/// the file name without `.ko` and compression suffix, `-` as `_`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    normalize(stem)
}

/// Module names treat `-` and `_` alike; `_` is canonical.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

impl ModuleIndex {
    /// Builds the index from the text of `modules.dep`, `modules.softdep`,
    /// `modules.alias` and `modules.builtin` (any may be empty).
    pub fn parse(dep: &str, softdep: &str, alias: &str, builtin: &str) -> Self {
        let mut index = Self::default();
        for line in dep.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let deps = deps.split_whitespace().map(module_name).collect();
            index
                .modules
                .insert(module_name(path), (path.trim().to_owned(), deps));
        }
        for line in softdep.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(module) = words.next() else { continue };
            let entry = index.softdeps.entry(normalize(module)).or_default();
            let mut post = false;
            for word in words {
                match word {
                    "pre:" => post = false,
                    "post:" => post = true,
                    dep if post => entry.post.push(dep.to_owned()),
                    dep => entry.pre.push(dep.to_owned()),
                }
            }
        }
        for line in alias.lines() {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(name), Some(module)) =
                (words.next(), words.next(), words.next())
            {
                index
                    .aliases
                    .entry(name.to_owned())
                    .or_default()
                    .insert(normalize(module));
            }
        }
        index.builtin = builtin
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(module_name)
            .collect();
        index
    }

    /// Reads the index files of `dir` (a `/lib/modules/<release>`);
    /// `modules.dep` is required, the others are optional.
    pub fn load(dir: &Path) -> Result<Self, KernelError> {
        let read = |name: &str, required: bool| -> Result<String, KernelError> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => Ok(text),
                Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                    Ok(String::new())
                }
                Err(source) => Err(KernelError::Read { path, source }),
            }
        };
        Ok(Self::parse(
            &read("modules.dep", true)?,
            &read("modules.softdep", false)?,
            &read("modules.alias", false)?,
            &read("modules.builtin", false)?,
        ))
    }

    /// The modules a name stands for: the module itself, else every module
    /// with that alias (sorted by name), else none.
    fn lookup(&self, name: &str) -> Vec<String> {
        let normalized = normalize(name);
        if self.modules.contains_key(&normalized) {
            return vec![normalized];
        }
        let by_alias = self
            .aliases
            .get(name)
            .or_else(|| self.aliases.get(&normalized));
        by_alias
            .map(|mods| {
                mods.iter()
                    .filter(|m| self.modules.contains_key(*m))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether `name` is built into the kernel.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize(name))
    }

    /// Resolves `wanted` into a load order: for each module its `pre`
    /// softdeps, then its dependencies (in the order `modprobe` loads them:
    /// the last listed first), then itself, then its `post` softdeps; each
    /// module once, at its first place. Deterministic for a given input.
    pub fn resolve(&self, wanted: &[&str]) -> Resolution {
        let mut resolution = Resolution::default();
        let mut seen = BTreeSet::new();
        for name in wanted {
            let found = self.lookup(name);
            if found.is_empty() {
                if self.is_builtin(name) {
                    resolution.builtin.push((*name).to_owned());
                } else {
                    resolution.missing.push((*name).to_owned());
                }
            }
            for module in found {
                self.visit(&module, &mut seen, &mut resolution.load_order);
            }
        }
        resolution
    }

    fn visit(&self, name: &str, seen: &mut BTreeSet<String>, order: &mut Vec<Module>) {
        if !seen.insert(name.to_owned()) {
            return;
        }
        let Some((path, deps)) = self.modules.get(name) else {
            return;
        };
        let soft = self.softdeps.get(name);
        // Soft dependencies that resolve to nothing are built in or absent:
        // modprobe skips them too.
        for pre in soft.map(|s| s.pre.as_slice()).unwrap_or_default() {
            for m in self.lookup(pre) {
                self.visit(&m, seen, order);
            }
        }
        for dep in deps.iter().rev() {
            self.visit(dep, seen, order);
        }
        order.push(Module {
            name: name.to_owned(),
            path: path.clone(),
        });
        for post in soft.map(|s| s.post.as_slice()).unwrap_or_default() {
            for m in self.lookup(post) {
                self.visit(&m, seen, order);
            }
        }
    }
}
