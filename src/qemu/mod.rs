//! QEMU: the pure command-line builder, the supervised process, and QMP.
//!
//! [`cmdline`] turns a [`QemuConfig`] into argv with no I/O; [`process`]
//! runs a program as a supervised child (own process group, killed on drop)
//! inside a private run directory; [`qmp`] speaks QEMU's machine protocol for
//! status, powerdown, quit and events; [`console`] reads the serial log.

pub mod cmdline;
pub mod console;
pub mod process;
pub mod qmp;

pub use cmdline::{
    Accel, DirectBoot, Disk, DiskFormat, Firmware, HostShare, Machine, QemuConfig, TransportDevice,
};
pub use console::ConsoleLog;
pub use process::{RunDir, Supervised};
pub use qmp::{Qmp, VmEvent};

use std::path::PathBuf;

/// What went wrong while running QEMU or a helper daemon.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The run directory could not be created.
    #[error("cannot create the builder VM's run directory under {parent}: {source}")]
    RunDir {
        /// The directory it was to be created in.
        parent: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A program could not be started.
    #[error("cannot start {program}: {source}{hint}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The underlying error.
        source: std::io::Error,
        /// What to try, when known.
        hint: &'static str,
    },
    /// A program exited.
    #[error("{program} exited ({status}){}", stderr_suffix(.stderr))]
    Exited {
        /// The program.
        program: PathBuf,
        /// How it ended.
        status: String,
        /// The end of what it printed on stderr.
        stderr: String,
    },
    /// A program did not become ready in time.
    #[error("{what} did not appear within {seconds} s")]
    NotReady {
        /// What was awaited (a socket, ...).
        what: String,
        /// How long we waited.
        seconds: u64,
    },
    /// Talking QMP failed.
    #[error("QMP {action} failed: {message}")]
    Qmp {
        /// What we asked QEMU.
        action: &'static str,
        /// What went wrong.
        message: String,
    },
    /// Reading or writing a file of the run directory failed.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!(":\n{}", stderr.trim_end())
    }
}
