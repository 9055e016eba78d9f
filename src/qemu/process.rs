//! Supervised child processes (QEMU, vhost-device-vsock) and the private run
//! directory that holds their sockets, logs and firmware vars.
//!
//! Each child runs in its own process group, so a Ctrl-C on the terminal
//! reaches nixdisk alone and nixdisk decides the order of cleanup; dropping
//! the [`Supervised`] handle kills the whole group at once, and so does a
//! signal to nixdisk (the group is registered with [`crate::interrupt`]).
//!
//! When nixdisk itself dies without cleaning up (SIGKILL, a crash), a
//! watchdog in the child's group kills it: a `sh` reading a pipe whose only
//! writer is nixdisk, which sees end-of-file when nixdisk's file descriptors
//! close, however it died, and then kills its whole group. Unlike
//! `PR_SET_PDEATHSIG`, this does not depend on which nixdisk thread spawned
//! the child (tokio's blocking threads come and go) and needs no `unsafe`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::Error;

/// A private temporary directory for one VM, removed on drop.
#[derive(Debug)]
pub struct RunDir {
    // Removes the directory after Ctrl-C even when the build thread does not
    // unwind in time; dropped after `dir` (declaration order).
    dir: tempfile::TempDir,
    _on_signal: crate::interrupt::DirGuard,
}

impl RunDir {
    /// Creates `nixdisk-vm-XXXXXX` under `parent`, or the system temp dir
    /// (`$TMPDIR`) when `None`.
    pub fn create(parent: Option<&Path>) -> Result<RunDir, Error> {
        let parent = parent.map_or_else(std::env::temp_dir, Path::to_owned);
        let dir = tempfile::Builder::new()
            .prefix("nixdisk-vm-")
            .tempdir_in(&parent)
            .map_err(|source| Error::RunDir { parent, source })?;
        let _on_signal = crate::interrupt::DirGuard::register(dir.path());
        Ok(RunDir { dir, _on_signal })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A file inside it.
    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The watchdog's script: wait for end-of-file on stdin (nixdisk gone),
/// then kill the process group it lives in (the supervised child's).
const WATCHDOG_SCRIPT: &str = "read -r _ignored; kill -KILL 0";

/// A running child process, killed (with its process group) on drop.
#[derive(Debug)]
pub struct Supervised {
    program: PathBuf,
    pid: u32,
    child: tokio::process::Child,
    stderr_path: PathBuf,
    // Cleared before the child is reaped (kill_now, try_exit, wait), so a
    // signal never kills a group id that may have been reused.
    on_signal: Option<crate::interrupt::GroupGuard>,
    watchdog: Option<Watchdog>,
}

/// The process that kills a supervised group if nixdisk dies.
#[derive(Debug)]
struct Watchdog {
    child: std::process::Child,
    // Held open for the child's lifetime: nixdisk's end of the pipe.
    _pipe: std::process::ChildStdin,
}

impl Watchdog {
    /// Starts the watchdog in the process group `pgid`.
    fn spawn(pgid: u32) -> std::io::Result<Watchdog> {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sh")
            .args(["-c", WATCHDOG_SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(pgid as i32)
            .spawn()?;
        // std opens the pipe close-on-exec: no other child inherits nixdisk's
        // end, so it closes exactly when nixdisk goes.
        let pipe = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("the watchdog's stdin was not piped"))?;
        Ok(Watchdog { child, _pipe: pipe })
    }
}

impl Supervised {
    /// Starts `program args` with stdin closed, stdout and stderr appended to
    /// `log`, in a new process group.
    pub fn spawn(program: &Path, args: &[OsString], log: &Path) -> Result<Supervised, Error> {
        let io_error = |source| Error::Io {
            path: log.to_owned(),
            source,
        };
        let out = std::fs::File::create(log).map_err(io_error)?;
        let err = out.try_clone().map_err(io_error)?;
        tracing::debug!(program = %program.display(), ?args, "spawning");
        let child = tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| Error::Spawn {
                program: program.to_owned(),
                hint: if source.kind() == std::io::ErrorKind::NotFound {
                    " (not found: install it or put it on PATH)"
                } else {
                    ""
                },
                source,
            })?;
        let pid = child.id().ok_or_else(|| Error::Exited {
            program: program.to_owned(),
            status: "unknown status".into(),
            stderr: String::new(),
        })?;
        let on_signal = Some(crate::interrupt::GroupGuard::register(pid));
        let mut supervised = Supervised {
            program: program.to_owned(),
            pid,
            child,
            stderr_path: log.to_owned(),
            on_signal,
            watchdog: None,
        };
        // Dropping `supervised` on failure kills the child.
        supervised.watchdog = Some(Watchdog::spawn(pid).map_err(|source| Error::Spawn {
            program: "sh".into(),
            hint: " (the watchdog of a supervised process)",
            source,
        })?);
        Ok(supervised)
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The program this runs.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The last lines the process printed.
    pub fn stderr_tail(&self, lines: usize) -> String {
        let text = std::fs::read(&self.stderr_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        super::console::last_lines(&text, lines)
    }

    /// How the process ended, if it has.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.try_wait().ok().flatten();
        if status.is_some() {
            // Reaped: its id may be reused, so a signal must not kill it.
            self.on_signal = None;
        }
        status
    }

    /// Waits for the process to end.
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let status = self.child.wait().await;
        self.on_signal = None;
        status
    }

    /// An [`Error::Exited`] describing how the process ended.
    pub fn exited_error(&self, status: std::process::ExitStatus) -> Error {
        Error::Exited {
            program: self.program.clone(),
            status: status.to_string(),
            stderr: self.stderr_tail(20),
        }
    }

    /// Waits until `path` exists (a socket the process creates), failing if
    /// the process exits first or `timeout` passes.
    pub async fn wait_for_path(&mut self, path: &Path, timeout: Duration) -> Result<(), Error> {
        let start = tokio::time::Instant::now();
        loop {
            if path.exists() {
                return Ok(());
            }
            if let Some(status) = self.try_exit() {
                return Err(self.exited_error(status));
            }
            if start.elapsed() > timeout {
                return Err(Error::NotReady {
                    what: path.display().to_string(),
                    seconds: timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the process group now (SIGKILL) and reaps the child when it
    /// dies within a moment; the tokio child (kill_on_drop) reaps it later
    /// otherwise.
    pub fn kill_now(&mut self) {
        self.kill_group();
        self.on_signal = None;
        if let Some(mut watchdog) = self.watchdog.take() {
            // Killed with the group (it lives in it); reap it.
            let _ = watchdog.child.kill();
            let _ = watchdog.child.wait();
        }
        for _ in 0..100 {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn kill_group(&self) {
        // The group id is the child's pid (process_group(0)); as long as we
        // have not reaped the child, that id cannot have been reused.
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32)
            && self.child.id().is_some()
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.kill_now();
    }
}
