//! The builder's boot files: the kernel (an uncompressed PVH vmlinux when no
//! EFI is needed, since it boots in half the time under TCG; the bzImage with
//! OVMF) and the initramfs with the agent and modules, both cached by content.

use std::path::{Path, PathBuf};

use super::Error;
use crate::initramfs::{BuilderInitramfs, build_cached};
use crate::kernel::{Cache, KernelSearch, discover, pvh_vmlinux};
use crate::spec::FsType;

/// The kernel and initramfs QEMU boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    /// The kernel image.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
}

/// Finds the kernel, builds (or reuses) the initramfs with `agent` as
/// `/init`. The cache is `$XDG_CACHE_HOME/nixdisk` (or `~/.cache/nixdisk`);
/// without a home, the run directory serves as a cache for this run only.
pub async fn prepare(
    kernel: Option<&Path>,
    agent: &Path,
    efi: bool,
    root_fs: Option<FsType>,
    run_dir: &Path,
) -> Result<BootFiles, Error> {
    let kernel = kernel.map(Path::to_owned);
    let agent = agent.to_owned();
    let fallback_cache = run_dir.join("cache");
    let task = tokio::task::spawn_blocking(move || {
        let found = discover(&KernelSearch {
            kernel,
            ..KernelSearch::default()
        })?;
        let cache = Cache::from_env(None).unwrap_or_else(|_| Cache::at(fallback_cache));
        let image = if efi {
            found.image.clone()
        } else {
            // The PVH vmlinux only makes the boot faster: if extracting it
            // fails, the bzImage still boots.
            match pvh_vmlinux(&found.image, &found.release, &cache) {
                Ok(vmlinux) => vmlinux.unwrap_or(found.image.clone()),
                Err(e) => {
                    tracing::warn!("booting the compressed kernel: no PVH vmlinux ({e})");
                    found.image.clone()
                }
            }
        };
        let modules = found.modules_for(root_fs, efi)?;
        // Without UEFI there is no Secure Boot lockdown: a kernel that does
        // not force signatures loads the modules faster without them.
        let strip_signatures = !efi && found.loads_unsigned_modules();
        let initrd = build_cached(
            &BuilderInitramfs {
                agent,
                release: found.release.clone(),
                modules_dir: found.modules_dir.clone(),
                modules: modules.load_order,
                strip_signatures,
            },
            &cache,
        )?;
        tracing::debug!(kernel = %image.display(), initrd = %initrd.display(), "boot files");
        Ok::<_, Error>(BootFiles {
            kernel: image,
            initrd,
        })
    });
    task.await
        .map_err(|e| Error::Internal(format!("preparing the boot files stopped: {e}")))?
}
