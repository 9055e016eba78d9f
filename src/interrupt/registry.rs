//! What a signal must clean up: the process groups nixdisk started and the
//! temporary directories it made, registered while they live.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static GROUPS: Mutex<BTreeMap<u64, i32>> = Mutex::new(BTreeMap::new());
static DIRS: Mutex<BTreeMap<u64, PathBuf>> = Mutex::new(BTreeMap::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps stay consistent whatever panicked while holding them.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A process group killed by [`super::cancel`] while this guard lives.
/// Drop it as soon as the group's leader is reaped: a signal in between
/// would hit the id of a group that is gone (harmless unless the id was
/// already reused, which the kernel does only after cycling through pids).
#[derive(Debug)]
pub struct GroupGuard {
    id: u64,
}

impl GroupGuard {
    /// Registers the group `pgid` (the pid of a child started with
    /// `process_group(0)`).
    pub fn register(pgid: u32) -> GroupGuard {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        lock(&GROUPS).insert(id, pgid as i32);
        GroupGuard { id }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        lock(&GROUPS).remove(&self.id);
    }
}

/// A directory removed by nixdisk after a signal if the interrupted work
/// did not remove it in time.
#[derive(Debug)]
pub struct DirGuard {
    id: u64,
}

impl DirGuard {
    /// Registers `dir`.
    pub fn register(dir: &Path) -> DirGuard {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        lock(&DIRS).insert(id, dir.to_owned());
        DirGuard { id }
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        lock(&DIRS).remove(&self.id);
    }
}

/// SIGKILLs every registered process group.
pub(super) fn kill_all_groups() {
    let groups = lock(&GROUPS);
    for pgid in groups.values() {
        if let Some(pid) = rustix::process::Pid::from_raw(*pgid) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

/// Removes every registered directory still there.
pub(super) fn remove_all_dirs() {
    let dirs = std::mem::take(&mut *lock(&DIRS));
    for dir in dirs.values() {
        if dir.exists()
            && let Err(e) = std::fs::remove_dir_all(dir)
        {
            tracing::warn!("could not remove {}: {e}", dir.display());
        }
    }
}

/// Runs `command` to its end like [`Command::output`] (stdin closed, stdout
/// and stderr captured), in its own process group that a signal kills: a
/// host tool never outlives an interrupted build. Refuses to start once the
/// build was cancelled.
pub fn run_output(command: &mut Command) -> std::io::Result<Output> {
    run(command, Stdio::piped())
}

/// [`run_output`] with stdout passed through to nixdisk's (postVM's output
/// is the user's to see); the returned `stdout` is empty.
pub fn run_output_inheriting_stdout(command: &mut Command) -> std::io::Result<Output> {
    run(command, Stdio::inherit())
}

fn run(command: &mut Command, stdout: Stdio) -> std::io::Result<Output> {
    if let Err(interrupted) = super::check() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Interrupted,
            interrupted,
        ));
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let guard = GroupGuard::register(child.id());
    // A signal between spawn and register: the child would be missed.
    if super::check().is_err() {
        kill_all_groups();
    }
    let output = child.wait_with_output();
    drop(guard);
    output
}
