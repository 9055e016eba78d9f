//! The host's root file system in the guest: mounted read-only at `/host`,
//! and made a usable chroot (kernel file systems, writable /tmp, /run, /mnt).

use std::path::Path;
use std::time::{Duration, Instant};

use nixdisk_agent::boot_args::{SHARE_MOUNT_POINT, Share};
use rustix::mount::MountFlags;

use crate::system::{self, SystemError};

/// How long to retry mounting the share while its virtio device is probed.
const SHARE_MOUNT_TIMEOUT: Duration = Duration::from_secs(5);

/// Mounts the host's root read-only at [`SHARE_MOUNT_POINT`], retrying while the device appears.
pub fn mount_share(share: &Share) -> Result<(), SystemError> {
    let (tag, fstype, data) = match share {
        // cache=loose: the guest only reads, and the store paths and inputs it
        // reads do not change during a build, so revalidating every lookup
        // with the host would only cost time.
        Share::NineP { tag } => (
            tag,
            "9p",
            "trans=virtio,version=9p2000.L,msize=512000,cache=loose",
        ),
        Share::Virtiofs { tag } => (tag, "virtiofs", ""),
    };
    let started = Instant::now();
    loop {
        match system::mount(tag, SHARE_MOUNT_POINT, fstype, MountFlags::RDONLY, data) {
            Ok(()) => {
                tracing::info!(%share, "mounted the host share on {SHARE_MOUNT_POINT}");
                return Ok(());
            }
            Err(error) if started.elapsed() > SHARE_MOUNT_TIMEOUT => return Err(error),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Gives the chroot of the share what commands expect: the kernel file
/// systems, a writable /tmp and /run, and /mnt shared with the agent's /mnt
/// (a tmpfs), so a target disk mounted on either shows in both.
pub fn prepare_chroot(warnings: &mut Vec<String>) -> Result<(), SystemError> {
    let inside = |dir: &str| format!("{SHARE_MOUNT_POINT}{dir}");
    for dir in ["/dev", "/proc", "/sys"] {
        system::bind_recursive(dir, &inside(dir))?;
    }
    let nosuid = MountFlags::NOSUID | MountFlags::NODEV;
    system::mount("tmpfs", &inside("/tmp"), "tmpfs", nosuid, "mode=1777")?;
    // A NixOS host's /run holds the links to its system (current-system, whose
    // sw/bin is on the default PATH): keep them on the fresh /run.
    let run_links = symlinks_in(&inside("/run"));
    system::mount("tmpfs", &inside("/run"), "tmpfs", nosuid, "mode=0755")?;
    for (name, target) in run_links {
        let link = Path::new(&inside("/run")).join(&name);
        if let Err(error) = std::os::unix::fs::symlink(&target, &link) {
            warnings.push(format!("recreate {}: {error}", link.display()));
        }
    }
    system::mount("tmpfs", "/mnt", "tmpfs", MountFlags::empty(), "mode=0755")?;
    system::make_shared("/mnt")?;
    if let Err(error) = system::bind_recursive("/mnt", &inside("/mnt")) {
        warnings.push(format!("{error}: /mnt is only outside the chroot"));
    }
    check_chroot()
}

/// The symbolic links directly in `dir`, with their targets.
fn symlinks_in(dir: &str) -> Vec<(std::ffi::OsString, std::path::PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let target = std::fs::read_link(entry.path()).ok()?;
            Some((entry.file_name(), target))
        })
        .collect()
}

/// Checks that each mount in the chroot shows what was mounted. A 9p export
/// spanning several host file systems without `multidevs=remap` gives their
/// root directories one inode, and the guest then sees one mount on all of them.
fn check_chroot() -> Result<(), SystemError> {
    let probes = [
        ("/proc", "/proc/self/mountinfo"),
        ("/sys", "/sys/kernel"),
        ("/dev", "/dev/null"),
    ];
    for (dir, probe) in probes {
        let inside = format!("{SHARE_MOUNT_POINT}{probe}");
        if !Path::new(&inside).exists() {
            return Err(SystemError {
                what: format!("check {dir} in the chroot of the host share"),
                errno: std::io::Error::other(format!(
                    "{inside} is missing although {dir} was mounted there; with 9p, QEMU needs \
                     `multidevs=remap` on the -virtfs/-fsdev of a share spanning several file \
                     systems"
                )),
            });
        }
    }
    Ok(())
}
