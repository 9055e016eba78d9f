//! The errors of the builder VM, each saying what happened and, once the
//! guest has started, ending with the tail of its console.

use std::path::PathBuf;

use crate::qemu::Accel;

/// How many console lines an error shows.
pub const CONSOLE_TAIL_LINES: usize = 25;

/// What went wrong with the builder VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No agent binary was found.
    #[error(
        "the guest agent binary was not found; looked at:\n{}\n\
         hint: build it with `scripts/build-agent`, or pass --agent PATH or set NIXDISK_AGENT",
        list(.looked)
    )]
    AgentNotFound {
        /// Every place looked at.
        looked: Vec<PathBuf>,
    },
    /// The agent binary is not a static executable.
    #[error(
        "the guest agent {path} is not a statically linked x86-64 executable, so it cannot run \
         as /init; hint: build it with `scripts/build-agent`"
    )]
    AgentNotStatic {
        /// The file.
        path: PathBuf,
    },
    /// Firmware discovery failed.
    #[error(transparent)]
    Firmware(#[from] nixdisk_firmware::FirmwareError),
    /// An OVMF file has a format QEMU's pflash cannot take here.
    #[error("OVMF file {path} has format `{format}`; expected raw or qcow2")]
    FirmwareFormat {
        /// The file.
        path: PathBuf,
        /// Its format.
        format: String,
    },
    /// Finding or unpacking the builder kernel failed.
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
    /// Building the initramfs failed.
    #[error(transparent)]
    Initramfs(#[from] crate::initramfs::InitramfsError),
    /// No free kernel-vsock CID was found.
    #[error(
        "no free vsock CID after {tries} tries; hint: use --transport vhost-user-vsock or serial"
    )]
    NoFreeCid {
        /// How many CIDs were tried.
        tries: u32,
    },
    /// A task of nixdisk itself failed (a bug).
    #[error("internal error: {0}")]
    Internal(String),
    /// Starting or talking to QEMU failed.
    #[error(transparent)]
    Qemu(#[from] crate::qemu::Error),
    /// The transport could not be set up.
    #[error(transparent)]
    Transport(#[from] crate::transport::Error),
    /// The VM ended (QEMU exited) while we waited for the agent.
    #[error("the builder VM stopped: {what}{}", console(.console_tail))]
    VmStopped {
        /// What happened (QEMU's exit status and stderr, or its shutdown cause).
        what: String,
        /// The end of the guest console.
        console_tail: String,
    },
    /// The guest kernel panicked.
    #[error("the guest kernel panicked: {reason}{}", console(.console_tail))]
    GuestPanicked {
        /// The console line that says why.
        reason: String,
        /// The end of the guest console.
        console_tail: String,
    },
    /// The agent did not say hello in time.
    #[error(
        "the guest agent did not say hello within {seconds} s under {accel:?}{}",
        console(.console_tail)
    )]
    HelloTimeout {
        /// How long we waited.
        seconds: u64,
        /// The accelerator used.
        accel: Accel,
        /// The end of the guest console.
        console_tail: String,
    },
    /// The agent closed the connection while the VM kept running.
    #[error("the guest agent went away (crashed or closed the connection): {detail}{}", console(.console_tail))]
    AgentGone {
        /// What we saw.
        detail: String,
        /// The end of the guest console.
        console_tail: String,
    },
    /// The agent reported a failure of its own (startup or connection) and
    /// powers off.
    #[error("the guest agent failed: {message}{}", console(.console_tail))]
    AgentFailed {
        /// What it said.
        message: String,
        /// The end of the guest console.
        console_tail: String,
    },
    /// The guest agent (PID 1) died; the kernel then stops the VM.
    #[error("the guest agent (PID 1) crashed: {reason}{}", console(.console_tail))]
    AgentCrashed {
        /// The console line that says why.
        reason: String,
        /// The end of the guest console.
        console_tail: String,
    },
    /// The agent answered something we do not understand.
    #[error("protocol error talking to the guest agent: {0}")]
    Protocol(String),
    /// The agent reported a failure.
    #[error("the guest agent failed to {action}: {message}")]
    Agent {
        /// What we asked.
        action: String,
        /// What it said.
        message: String,
    },
    /// The agent did not answer in time.
    #[error("the guest agent did not answer {action} within {seconds} s{}", console(.console_tail))]
    Timeout {
        /// What we asked.
        action: String,
        /// How long we waited.
        seconds: u64,
        /// The end of the guest console.
        console_tail: String,
    },
    /// Reading or writing a host file failed.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| format!("  {}", p.display()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn console(tail: &str) -> String {
    if tail.is_empty() {
        "\n(the guest console is empty)".to_owned()
    } else {
        format!("\n--- last lines of the guest console ---\n{tail}")
    }
}
