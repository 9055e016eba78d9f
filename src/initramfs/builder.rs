//! The builder VM's initramfs: the static agent as `/init`, the resolved
//! kernel modules under `/lib/modules/<release>/`, their load order in
//! [`MODULES_LIST_PATH`], `/dev/console` and the mount points the agent uses.
//! Built archives are cached by the hash of everything they hold.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tracing::{debug, info};

use super::{Initramfs, InitramfsError};
use crate::kernel::cache::{Cache, CacheError, hex};
use crate::kernel::{KernelError, Module};

/// The file listing the modules to load, absolute paths inside the
/// initramfs, one per line, in load order. The agent loads each with
/// `finit_module`.
pub const MODULES_LIST_PATH: &str = "/etc/nixdisk/modules";

/// Directories the agent mounts on or works in.
const MOUNT_POINTS: &[&str] = &["/dev", "/proc", "/sys", "/tmp", "/run", "/mnt"];

/// What goes into the builder initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuilderInitramfs {
    /// The static agent binary, installed as `/init`.
    pub agent: PathBuf,
    /// Kernel release (names `/lib/modules/<release>`).
    pub release: String,
    /// The host modules directory the module paths are relative to.
    pub modules_dir: PathBuf,
    /// Modules in load order (from [`crate::kernel::Resolution`]).
    pub modules: Vec<Module>,
    /// Store the modules without their appended signatures, which the guest
    /// kernel checks slowly under emulation; only for a kernel that does not
    /// enforce them (see [`crate::kernel::signature`]).
    pub strip_signatures: bool,
}

/// How a module file is stored on the host.
fn module_source(host: &Path) -> Result<ModuleSource, KernelError> {
    let name = host.to_string_lossy();
    if name.ends_with(".ko") {
        Ok(ModuleSource::Plain)
    } else if name.ends_with(".ko.xz") {
        Ok(ModuleSource::Xz)
    } else {
        Err(KernelError::UnsupportedModuleCompression {
            path: host.to_path_buf(),
        })
    }
}

enum ModuleSource {
    Plain,
    Xz,
}

/// The path of a module inside the initramfs: under `/lib/modules/<release>/`,
/// always uncompressed (`.ko`), since `finit_module` of a compressed module
/// needs `CONFIG_MODULE_DECOMPRESS`, which e.g. Debian's kernel lacks.
pub fn module_target(release: &str, module: &Module) -> String {
    let relative = module.path.trim_start_matches('/');
    let relative = relative.strip_suffix(".xz").unwrap_or(relative);
    format!("/lib/modules/{release}/{relative}")
}

/// Plans the builder initramfs. Plain modules are read when the archive is
/// written; compressed ones are decompressed here.
pub fn builder_initramfs(plan: &BuilderInitramfs) -> Result<Initramfs, InitramfsError> {
    let mut archive = Initramfs::new();
    for dir in MOUNT_POINTS {
        archive.add_dir(dir, 0o755)?;
    }
    archive.add_char_device("/dev/console", 5, 1, 0o600)?;
    archive.add_host_file("/init", &plan.agent, 0o755)?;
    let mut list = String::new();
    for module in &plan.modules {
        let host = plan.modules_dir.join(module.path.trim_start_matches('/'));
        let target = module_target(&plan.release, module);
        match (module_source(&host)?, plan.strip_signatures) {
            (ModuleSource::Plain, false) => archive.add_host_file(&target, &host, 0o644)?,
            (ModuleSource::Plain, true) => {
                let bytes = std::fs::read(&host).map_err(|source| InitramfsError::ReadHost {
                    path: host.clone(),
                    source,
                })?;
                archive.add_file(&target, unsigned(bytes), 0o644)?
            }
            (ModuleSource::Xz, strip) => {
                let bytes = decompress_xz(&host)?;
                let bytes = if strip { unsigned(bytes) } else { bytes };
                archive.add_file(&target, bytes, 0o644)?
            }
        }
        list.push_str(&target);
        list.push('\n');
    }
    archive.add_file(MODULES_LIST_PATH, list.into_bytes(), 0o644)?;
    Ok(archive)
}

fn unsigned(mut module: Vec<u8>) -> Vec<u8> {
    let len = crate::kernel::signature::strip_module_signature(&module).len();
    module.truncate(len);
    module
}

fn decompress_xz(path: &Path) -> Result<Vec<u8>, KernelError> {
    let file = std::fs::File::open(path).map_err(|source| KernelError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    xz2::read::XzDecoder::new(file)
        .read_to_end(&mut out)
        .map_err(|source| KernelError::Decompress {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(out)
}

/// The cache key of a plan: SHA-256 over the kernel release, the agent's
/// content, and each module's target path and content. Any change to what
/// the archive would hold changes the key.
pub fn cache_key(plan: &BuilderInitramfs) -> Result<String, InitramfsError> {
    let mut hasher = Sha256::new();
    let mut hash_file = |label: &str, path: &Path| -> Result<(), InitramfsError> {
        let bytes = std::fs::read(path).map_err(|source| InitramfsError::ReadHost {
            path: path.to_path_buf(),
            source,
        })?;
        hasher.update(format!("{label}\0{}\0", bytes.len()).as_bytes());
        hasher.update(&bytes);
        Ok(())
    };
    hash_file("agent", &plan.agent)?;
    for module in &plan.modules {
        hash_file(
            &module_target(&plan.release, module),
            &plan.modules_dir.join(module.path.trim_start_matches('/')),
        )?;
    }
    hasher.update(
        format!(
            "release\0{}\0format\0{}\0unsigned\0{}",
            plan.release, FORMAT_VERSION, plan.strip_signatures
        )
        .as_bytes(),
    );
    Ok(hex(&hasher.finalize()))
}

/// Bumped whenever the archive layout changes, so old cache entries are not reused.
const FORMAT_VERSION: u32 = 1;

/// The builder initramfs as a file in `cache`, built unless an archive with
/// the same content key is already there.
pub fn build_cached(plan: &BuilderInitramfs, cache: &Cache) -> Result<PathBuf, InitramfsError> {
    let name = format!("initramfs-{}.cpio", cache_key(plan)?);
    if let Some(path) = cache.get(&name) {
        debug!(path = %path.display(), "cached initramfs");
        return Ok(path);
    }
    let archive = builder_initramfs(plan)?;
    let path = cache.put::<InitramfsError>(&name, |out| archive.write_to(out))?;
    info!(path = %path.display(), modules = plan.modules.len(), "built initramfs");
    Ok(path)
}

impl From<CacheError> for InitramfsError {
    fn from(e: CacheError) -> Self {
        InitramfsError::Kernel(KernelError::Cache(e))
    }
}
