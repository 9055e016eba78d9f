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
use std::process::{Child, Command};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use rustix::io::Errno;
use rustix::mount::{MountFlags, MountPropagationFlags};
use rustix::net::addr::{SocketAddrArg, SocketAddrLen, SocketAddrOpaque};
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use rustix::process::{WaitId, WaitIdOptions, WaitOptions, WaitStatus};

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

/// The agent's children: the command it runs, and its exit status once reaped.
struct Children {
    /// The pid of the command being run, if any.
    running: Option<u32>,
    /// Its wait status, once the reaper collected it.
    finished: Option<WaitStatus>,
}

/// Held by the reaper while it reaps and by [`spawn`] while it forks, so a
/// child is never reaped before its pid is known (std itself waits for a child
/// whose exec failed and would find it gone).
static CHILDREN: Mutex<Children> = Mutex::new(Children {
    running: None,
    finished: None,
});
/// Signalled when the running command's status arrives.
static FINISHED: Condvar = Condvar::new();
/// Signalled when a command starts, to wake a reaper with no children.
static SPAWNED: Condvar = Condvar::new();

fn children() -> MutexGuard<'static, Children> {
    CHILDREN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts `command`; its exit status comes from [`wait`]. Needs the reaper
/// ([`reap_children_forever`]) running, which also collects orphans (PID 1's duty).
pub fn spawn(command: &mut Command) -> std::io::Result<Child> {
    let mut children = children();
    let child = command.spawn()?;
    children.running = Some(child.id());
    children.finished = None;
    SPAWNED.notify_all();
    Ok(child)
}

/// Waits until the reaper has collected `child`, the command last spawned.
pub fn wait(child: &Child) -> WaitStatus {
    let mut children = children();
    loop {
        if children.running == Some(child.id())
            && let Some(status) = children.finished.take()
        {
            children.running = None;
            return status;
        }
        children = FINISHED
            .wait(children)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
    }
}

/// Reaps every child that exits, handing the running command's status to
/// [`wait`] and dropping the orphans'. Runs forever on its own thread.
pub fn reap_children_forever() {
    loop {
        // Sleep in the kernel until some child has exited, without reaping it yet.
        let peek =
            rustix::process::waitid(WaitId::All, WaitIdOptions::EXITED | WaitIdOptions::NOWAIT);
        let mut children = children();
        if matches!(peek, Err(Errno::CHILD)) {
            // No children at all: nothing can exit before the next spawn.
            let _children = SPAWNED
                .wait_timeout(children, Duration::from_secs(1))
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            continue;
        }
        while let Ok(Some((pid, status))) = rustix::process::waitpid(None, WaitOptions::NOHANG) {
            if children.running == Some(pid.as_raw_nonzero().get() as u32) {
                children.finished = Some(status);
                FINISHED.notify_all();
            }
        }
    }
}

/// Makes orphans of our commands our children, as they are for PID 1, so the
/// host-side tests see the same reaping as the VM.
pub fn become_subreaper() -> Result<(), SystemError> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(failed("become a child subreaper"))
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
