//! Every syscall of the agent that std does not wrap: mounts, modules, the
//! chroot of commands, reaping, power off, vsock, the console.
//!
//! Soundness: the only `unsafe` here is (1) `pre_exec`, whose closure runs in
//! the forked child before exec and only calls the async-signal-safe `chroot`
//! and `chdir` syscalls through rustix (no allocation: the paths are turned
//! into C strings before the fork), and (2) the `SocketAddrArg` impl for
//! `sockaddr_vm`, which hands the kernel a pointer to a `#[repr(C)]` value laid
//! out as `struct sockaddr_vm` that lives for the duration of the call.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rustix::io::Errno;
use rustix::mount::{MountFlags, MountPropagationFlags};
use rustix::net::addr::{SocketAddrArg, SocketAddrLen, SocketAddrOpaque};
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use rustix::process::{WaitId, WaitIdOptions, WaitOptions};

/// A syscall that failed, with what it was doing.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {errno}")]
pub struct SystemError {
    /// The operation and its arguments, e.g. `mount proc on /proc`.
    pub what: String,
    /// The kernel's answer, or what it means for this call.
    #[source]
    pub errno: std::io::Error,
}

fn failed(what: impl Into<String>) -> impl FnOnce(Errno) -> SystemError {
    let what = what.into();
    move |errno| SystemError {
        what,
        errno: errno.into(),
    }
}

fn io_failed(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SystemError {
    let what = what.into();
    move |errno| SystemError { what, errno }
}

/// Mounts a file system, creating the mount point if needed.
pub fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MountFlags,
    data: &str,
) -> Result<(), SystemError> {
    let what = format!("mount {fstype} {source} on {target} ({data})");
    if !Path::new(target).is_dir() {
        fs::create_dir_all(target).map_err(io_failed(format!("create {target}")))?;
    }
    let data = CString::new(data).map_err(|_| SystemError {
        what: what.clone(),
        errno: Errno::INVAL.into(),
    })?;
    rustix::mount::mount(source, target, fstype, flags, Some(data.as_c_str())).map_err(failed(what))
}

/// Bind-mounts `source` (recursively) on the existing directory `target`.
pub fn bind_recursive(source: &str, target: &str) -> Result<(), SystemError> {
    rustix::mount::mount_bind_recursive(source, target)
        .map_err(failed(format!("bind-mount {source} on {target}")))
}

/// Makes the mount at `target` shared, so mounts below it appear in its bind mounts too.
pub fn make_shared(target: &str) -> Result<(), SystemError> {
    rustix::mount::mount_change(target, MountPropagationFlags::SHARED)
        .map_err(failed(format!("make {target} a shared mount")))
}

/// Loads a kernel module from its `.ko` file. An already loaded module is fine.
pub fn load_module(path: &Path) -> Result<(), SystemError> {
    let file = File::open(path).map_err(io_failed(format!("open module {}", path.display())))?;
    match rustix::system::finit_module(file.as_fd(), c"", 0) {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        // ENOENT from finit_module means unresolved symbols, not a missing file.
        Err(Errno::NOENT) => Err(SystemError {
            what: format!("load module {}", path.display()),
            errno: std::io::Error::other(
                "unknown symbols: a module it depends on is not loaded before it (the kernel log \
                 on the console names the symbols)",
            ),
        }),
        Err(errno) => Err(failed(format!("load module {}", path.display()))(errno)),
    }
}

/// Makes `/dev/console` the agent's stdin, stdout and stderr (the kernel does
/// this only when the initramfs holds `/dev/console`).
pub fn attach_console() -> Result<(), SystemError> {
    let console = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
        .map_err(io_failed("open /dev/console"))?;
    rustix::stdio::dup2_stdin(&console).map_err(failed("attach the console to stdin"))?;
    rustix::stdio::dup2_stdout(&console).map_err(failed("attach the console to stdout"))?;
    rustix::stdio::dup2_stderr(&console).map_err(failed("attach the console to stderr"))?;
    Ok(())
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned()
}

/// Serializes spawning-and-waiting with the orphan reaper: while a command
/// runs, only its owner may wait for it, else the reaper could take its exit
/// status (and std panics when a failed exec's child is already reaped).
static CHILDREN: Mutex<()> = Mutex::new(());

/// Held while a command of the agent runs, from spawn to wait.
pub fn lock_children() -> MutexGuard<'static, ()> {
    CHILDREN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// PID 1's duty: collect the exit status of every orphan that ends up with us.
/// Runs forever on its own thread.
pub fn reap_orphans_forever() {
    loop {
        // Wait without reaping until some child has exited, then reap under the lock.
        match rustix::process::waitid(WaitId::All, WaitIdOptions::EXITED | WaitIdOptions::NOWAIT) {
            Ok(_) => {
                let _children = lock_children();
                while let Ok(Some(_)) = rustix::process::waitpid(None, WaitOptions::NOHANG) {}
            }
            // No children at all (ECHILD) or an interruption: look again shortly.
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Makes `command` run chrooted in `root`, in the directory `cwd` of the new root.
pub fn chroot_command(command: &mut Command, root: &str, cwd: &str) -> Result<(), SystemError> {
    let invalid = |what: &str| SystemError {
        what: format!("chroot {root}, cd {cwd}: {what} holds a NUL byte"),
        errno: Errno::INVAL.into(),
    };
    let root = CString::new(root).map_err(|_| invalid("the root"))?;
    let cwd = CString::new(cwd).map_err(|_| invalid("the directory"))?;
    // SAFETY: the closure runs between fork and exec; it allocates nothing and
    // only makes the chroot and chdir syscalls on C strings prepared above.
    unsafe {
        command.pre_exec(move || {
            rustix::process::chroot(root.as_c_str())?;
            rustix::process::chdir(cwd.as_c_str())?;
            Ok(())
        });
    }
    Ok(())
}

/// Flushes every file system and powers the machine off. Does not return.
pub fn power_off() -> ! {
    rustix::fs::sync();
    if let Err(errno) = rustix::system::reboot(rustix::system::RebootCommand::PowerOff) {
        eprintln!("nixdisk-agent: power off failed: {errno}");
    }
    // PID 1 must not exit (the kernel panics); wait for the power to go.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// `struct sockaddr_vm` of `<linux/vm_sockets.h>`.
#[repr(C)]
struct SockaddrVm {
    family: u16,
    reserved1: u16,
    port: u32,
    cid: u32,
    flags: u8,
    zero: [u8; 3],
}

/// `VMADDR_CID_ANY`: accept connections to any of our CIDs.
const VMADDR_CID_ANY: u32 = u32::MAX;

// SAFETY: `with_sockaddr` passes a pointer to a live, fully initialized
// `sockaddr_vm` and its exact size; the pointer is valid during the call.
unsafe impl SocketAddrArg for SockaddrVm {
    unsafe fn with_sockaddr<R>(
        &self,
        f: impl FnOnce(*const SocketAddrOpaque, SocketAddrLen) -> R,
    ) -> R {
        f(
            (self as *const SockaddrVm).cast(),
            size_of::<SockaddrVm>() as SocketAddrLen,
        )
    }
}

/// Listens on vsock `port` (any CID) and returns the first connection.
pub fn vsock_accept(port: u32) -> Result<OwnedFd, SystemError> {
    let socket = rustix::net::socket_with(
        AddressFamily::VSOCK,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(failed(
        "create an AF_VSOCK socket (is vmw_vsock_virtio_transport loaded?)",
    ))?;
    let address = SockaddrVm {
        family: AddressFamily::VSOCK.as_raw(),
        reserved1: 0,
        port,
        cid: VMADDR_CID_ANY,
        flags: 0,
        zero: [0; 3],
    };
    rustix::net::bind(&socket, &address).map_err(failed(format!("bind vsock port {port}")))?;
    rustix::net::listen(&socket, 1).map_err(failed(format!("listen on vsock port {port}")))?;
    rustix::net::accept_with(&socket, SocketFlags::CLOEXEC)
        .map_err(failed(format!("accept on vsock port {port}")))
}

/// Reads a small text file of procfs or sysfs.
pub fn read_text(path: &str) -> Result<String, SystemError> {
    fs::read_to_string(path).map_err(io_failed(format!("read {path}")))
}
