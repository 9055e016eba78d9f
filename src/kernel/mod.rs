//! The builder kernel: discovery of a kernel and its modules, and module
//! resolution from modules.dep.
//!
//! The kernel comes from a flag or the spec, else it is the newest
//! `/boot/vmlinuz-*` that has a matching `/lib/modules/<release>` (or the
//! running NixOS system's kernel). [`vmlinux`] finds or extracts the
//! uncompressed kernel for PVH boot, [`modules`] resolves the modules the
//! builder loads, [`cache`] keeps what was extracted or built.

pub mod cache;
pub mod modules;
pub mod signature;
pub mod vmlinux;

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use crate::spec::FsType;
use tracing::{debug, info};

pub use cache::{Cache, CacheError};
pub use modules::{
    BASE_MODULES, BUILDER_MODULES, Module, ModuleIndex, Resolution, builder_module_names,
};
pub use vmlinux::pvh_vmlinux;

/// Errors of kernel discovery, extraction and module resolution.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// No kernel with modules was found.
    #[error(
        "no builder kernel found; looked at:\n{}\nhint: install a kernel with its modules \
         (Debian: `apt install linux-image-amd64`) or pass --kernel PATH (and --kernel-modules DIR)",
        looked.iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
    )]
    NotFound {
        /// Each place looked and why it was passed over.
        looked: Vec<String>,
    },
    /// The explicitly given kernel does not exist.
    #[error("kernel `{}` does not exist or is not a file; hint: pass the path of a bzImage such as /boot/vmlinuz-<release>", path.display())]
    KernelMissing {
        /// The path given.
        path: PathBuf,
    },
    /// The release of a given kernel could not be determined.
    #[error("cannot tell the release of kernel `{}` (no version in its setup header or file name); hint: pass --kernel-modules /lib/modules/<release>", path.display())]
    UnknownRelease {
        /// The kernel.
        path: PathBuf,
    },
    /// The kernel's modules directory is missing.
    #[error("no modules for kernel {release}: `{}` has no modules.dep; hint: install the kernel's modules or pass --kernel-modules DIR", dir.display())]
    ModulesMissing {
        /// The kernel release.
        release: String,
        /// The directory looked at.
        dir: PathBuf,
    },
    /// A file could not be read.
    #[error("cannot read `{}`: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The kernel image is not a bzImage nixdisk can take apart.
    #[error("`{}` is not a usable bzImage: {why}", path.display())]
    NotBzImage {
        /// The kernel.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Decompressing the kernel payload or a module failed.
    #[error("cannot decompress `{}`: {source}", path.display())]
    Decompress {
        /// The compressed file.
        path: PathBuf,
        /// The decoder's error.
        source: std::io::Error,
    },
    /// A module is compressed in a format nixdisk cannot unpack.
    #[error("module `{}` is compressed in a format nixdisk cannot unpack (only .ko and .ko.xz); hint: install uncompressed modules", path.display())]
    UnsupportedModuleCompression {
        /// The module file.
        path: PathBuf,
    },
    /// The cache could not be written.
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// The kernel the builder VM boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuilderKernel {
    /// Kernel release, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// The bootable image (bzImage).
    pub image: PathBuf,
    /// The modules directory (`/lib/modules/<release>`), holding `modules.dep`.
    pub modules_dir: PathBuf,
}

/// Where to find the builder kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSearch {
    /// An explicit kernel image (flag or spec).
    pub kernel: Option<PathBuf>,
    /// An explicit modules directory (flag or spec).
    pub modules_dir: Option<PathBuf>,
    /// Where `vmlinuz-*` images are looked for.
    pub boot_dir: PathBuf,
    /// Where `<release>/modules.dep` is looked for.
    pub modules_root: PathBuf,
    /// A NixOS system (`/run/current-system`) whose `kernel` and
    /// `kernel-modules/lib/modules` are tried when `boot_dir` has none.
    pub nixos_system: Option<PathBuf>,
}

impl Default for KernelSearch {
    fn default() -> Self {
        Self {
            kernel: None,
            modules_dir: None,
            boot_dir: PathBuf::from("/boot"),
            modules_root: PathBuf::from("/lib/modules"),
            nixos_system: Some(PathBuf::from("/run/current-system")),
        }
    }
}

/// Orders kernel releases as versions: digit runs compare as numbers
/// (`6.10` after `6.9`), the rest as text.
pub fn compare_releases(a: &str, b: &str) -> Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    for (x, y) in chunks(a).into_iter().zip(chunks(b)) {
        let ord = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    a.len().cmp(&b.len())
}

fn has_modules(dir: &Path) -> bool {
    dir.join("modules.dep").is_file()
}

/// Finds the builder kernel (see the module documentation for the order).
pub fn discover(search: &KernelSearch) -> Result<BuilderKernel, KernelError> {
    if let Some(image) = &search.kernel {
        return explicit(search, image);
    }
    let mut looked = Vec::new();
    let mut releases: Vec<(String, PathBuf)> = match std::fs::read_dir(&search.boot_dir) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let release = name.strip_prefix("vmlinuz-")?.to_owned();
                Some((release, e.path()))
            })
            .collect(),
        Err(e) => {
            looked.push(format!("{}: {e}", search.boot_dir.display()));
            Vec::new()
        }
    };
    releases.sort_by(|a, b| compare_releases(&b.0, &a.0));
    if releases.is_empty() {
        looked.push(format!("{}: no vmlinuz-* files", search.boot_dir.display()));
    }
    for (release, image) in releases {
        let dir = search
            .modules_dir
            .clone()
            .unwrap_or_else(|| search.modules_root.join(&release));
        if has_modules(&dir) {
            info!(release, image = %image.display(), "builder kernel");
            return Ok(BuilderKernel {
                release,
                image,
                modules_dir: dir,
            });
        }
        looked.push(format!(
            "{}: no {}/modules.dep",
            image.display(),
            dir.display()
        ));
    }
    if let Some(system) = &search.nixos_system {
        let image = system.join("kernel");
        let root = system.join("kernel-modules/lib/modules");
        if image.is_file() {
            let release = release_of(&image)?.or_else(|| only_subdir(&root));
            if let Some(release) = release
                && has_modules(&root.join(&release))
            {
                return Ok(BuilderKernel {
                    modules_dir: root.join(&release),
                    release,
                    image,
                });
            }
        }
        looked.push(format!("{}: no kernel with modules", system.display()));
    }
    Err(KernelError::NotFound { looked })
}

/// The only subdirectory of `dir`, if there is exactly one.
fn only_subdir(dir: &Path) -> Option<String> {
    let mut subdirs = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.path().is_dir());
    let first = subdirs.next()?;
    subdirs
        .next()
        .is_none()
        .then(|| first.file_name().to_string_lossy().into_owned())
}

/// The release in a bzImage's setup header, if it has one.
fn release_of(image: &Path) -> Result<Option<String>, KernelError> {
    let bytes = std::fs::read(image).map_err(|source| KernelError::Read {
        path: image.to_path_buf(),
        source,
    })?;
    Ok(vmlinux::bzimage_release(&bytes))
}

fn explicit(search: &KernelSearch, image: &Path) -> Result<BuilderKernel, KernelError> {
    if !image.is_file() {
        return Err(KernelError::KernelMissing {
            path: image.to_path_buf(),
        });
    }
    let from_name = image
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .map(str::to_owned);
    let release = match release_of(image)?.or(from_name) {
        Some(release) => release,
        None => {
            let dir = search
                .modules_dir
                .as_ref()
                .ok_or_else(|| KernelError::UnknownRelease {
                    path: image.to_path_buf(),
                })?;
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| KernelError::UnknownRelease {
                    path: image.to_path_buf(),
                })?
        }
    };
    let dir = search
        .modules_dir
        .clone()
        .unwrap_or_else(|| search.modules_root.join(&release));
    if !has_modules(&dir) {
        return Err(KernelError::ModulesMissing { release, dir });
    }
    debug!(release, image = %image.display(), "explicit builder kernel");
    Ok(BuilderKernel {
        release,
        image: image.to_path_buf(),
        modules_dir: dir,
    })
}

impl BuilderKernel {
    /// Resolves [`BUILDER_MODULES`] (every module a builder may need)
    /// against this kernel's modules.
    pub fn builder_modules(&self) -> Result<Resolution, KernelError> {
        self.resolve_modules(BUILDER_MODULES)
    }

    /// Resolves the modules a build of a `root_fs` root needs
    /// ([`builder_module_names`]); `None`: every module a build may need.
    pub fn modules_for(
        &self,
        root_fs: Option<FsType>,
        uefi: bool,
    ) -> Result<Resolution, KernelError> {
        match root_fs {
            Some(fs) => self.resolve_modules(&builder_module_names(fs, uefi)),
            None => self.builder_modules(),
        }
    }

    /// Whether this kernel loads modules without their signatures when it
    /// boots without UEFI (see [`signature`]).
    pub fn loads_unsigned_modules(&self) -> bool {
        signature::loads_unsigned_modules(
            signature::kernel_config(&self.image, &self.release).as_deref(),
        )
    }

    /// Resolves `names` (e.g. from [`builder_module_names`]) against this
    /// kernel's modules; missing ones are logged and listed in the result.
    pub fn resolve_modules(&self, names: &[&str]) -> Result<Resolution, KernelError> {
        let resolution = ModuleIndex::load(&self.modules_dir)?.resolve(names);
        if !resolution.missing.is_empty() {
            info!(missing = ?resolution.missing, release = %self.release, "kernel lacks builder modules");
        }
        debug!(modules = resolution.load_order.len(), builtin = ?resolution.builtin, "modules resolved");
        Ok(resolution)
    }
}

#[cfg(test)]
mod tests;
