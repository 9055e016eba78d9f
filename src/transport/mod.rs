//! Host side of the host-guest channel: vsock (kernel or vhost-device-vsock)
//! or virtio-serial.
//!
//! [`choose`] picks a kind from what the host offers (pure);
//! [`Transport::prepare`] sets it up in a VM's run directory (starting
//! `vhost-device-vsock` when needed) and says which QEMU device and which
//! agent setting go with it; [`Transport::connect`] makes one attempt to
//! reach the agent and returns a byte stream.

pub mod cid;
mod vhost_user;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::qemu::{self, Supervised, TransportDevice};

/// The vsock port the agent listens on.
pub const AGENT_VSOCK_PORT: u32 = nixdisk_agent::boot_args::DEFAULT_VSOCK_PORT;
/// The virtio-serial port name the agent opens (`/dev/virtio-ports/<name>`).
pub const SERIAL_PORT_NAME: &str = nixdisk_agent::boot_args::DEFAULT_SERIAL_PORT;
/// The guest CID given to `vhost-device-vsock` (private to its socket).
const VHOST_USER_GUEST_CID: u32 = 3;

/// A connected, bidirectional byte stream to the agent.
pub trait AgentStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AgentStream for T {}

/// A boxed [`AgentStream`].
pub type BoxedStream = Box<dyn AgentStream>;

/// The kinds of channel nixdisk can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// vsock through the host kernel (`vhost-vsock-pci`, `/dev/vhost-vsock`).
    KernelVsock,
    /// vsock through the userspace `vhost-device-vsock` daemon.
    VhostUserVsock,
    /// virtio-serial over a Unix socket QEMU serves; needs no daemon.
    VirtioSerial,
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // pad: honours width and alignment in tables (the benchmark's).
        f.pad(match self {
            TransportKind::KernelVsock => "vsock",
            TransportKind::VhostUserVsock => "vhost-user-vsock",
            TransportKind::VirtioSerial => "serial",
        })
    }
}

/// What the user asked for (`--transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportChoice {
    /// The best the host offers: kernel vsock, then vhost-device-vsock, then
    /// virtio-serial.
    #[default]
    Auto,
    /// Exactly this kind.
    Only(TransportKind),
}

/// What the host offers, as found by [`HostCapabilities::detect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCapabilities {
    /// Whether `/dev/vhost-vsock` exists.
    pub kernel_vsock: bool,
    /// The `vhost-device-vsock` binary, if found.
    pub vhost_device_vsock: Option<PathBuf>,
}

impl HostCapabilities {
    /// Looks at `/dev/vhost-vsock`, then `$NIXDISK_VHOST_DEVICE_VSOCK`,
    /// `$PATH` and `~/.cargo/bin` for `vhost-device-vsock`.
    pub fn detect() -> HostCapabilities {
        let from_env = std::env::var_os("NIXDISK_VHOST_DEVICE_VSOCK").map(PathBuf::from);
        let on_path = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("vhost-device-vsock"))
                .find(|p| is_executable(p))
        });
        let in_cargo = std::env::var_os("HOME")
            .map(|home| Path::new(&home).join(".cargo/bin/vhost-device-vsock"))
            .filter(|p| is_executable(p));
        HostCapabilities {
            kernel_vsock: Path::new("/dev/vhost-vsock").exists(),
            vhost_device_vsock: from_env.or(on_path).or(in_cargo),
        }
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Picks the transport for `choice` on a host with `caps`.
pub fn choose(choice: TransportChoice, caps: &HostCapabilities) -> Result<TransportKind, Error> {
    match choice {
        TransportChoice::Auto if caps.kernel_vsock => Ok(TransportKind::KernelVsock),
        TransportChoice::Auto if caps.vhost_device_vsock.is_some() => {
            Ok(TransportKind::VhostUserVsock)
        }
        TransportChoice::Auto => Ok(TransportKind::VirtioSerial),
        TransportChoice::Only(TransportKind::KernelVsock) if !caps.kernel_vsock => {
            Err(Error::Unavailable {
                kind: TransportKind::KernelVsock,
                reason: "/dev/vhost-vsock does not exist",
                hint: "load the vhost_vsock module, or use --transport vhost-user-vsock or serial",
            })
        }
        TransportChoice::Only(TransportKind::VhostUserVsock)
            if caps.vhost_device_vsock.is_none() =>
        {
            Err(Error::Unavailable {
                kind: TransportKind::VhostUserVsock,
                reason: "vhost-device-vsock was not found on PATH, in ~/.cargo/bin or in $NIXDISK_VHOST_DEVICE_VSOCK",
                hint: "`cargo install vhost-device-vsock`, or use --transport serial",
            })
        }
        TransportChoice::Only(kind) => Ok(kind),
    }
}

/// What went wrong with the host-guest channel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The requested transport cannot work on this host.
    #[error("transport {kind} is not available: {reason}; {hint}")]
    Unavailable {
        /// The transport.
        kind: TransportKind,
        /// Why not.
        reason: &'static str,
        /// What to try.
        hint: &'static str,
    },
    /// Starting or supervising the vsock daemon failed.
    #[error("vhost-device-vsock: {0}")]
    Daemon(#[from] qemu::Error),
    /// No kernel-vsock CID could be claimed.
    #[error(transparent)]
    Cid(#[from] cid::CidError),
    /// The agent is not reachable (yet); callers retry until a deadline.
    #[error("cannot reach the agent over {kind} at {address}: {reason}")]
    NotReachable {
        /// The transport.
        kind: TransportKind,
        /// The socket or vsock address.
        address: String,
        /// What happened.
        reason: String,
    },
}

/// A transport set up for one VM.
#[derive(Debug)]
pub enum Transport {
    /// Kernel vsock to the claimed CID.
    KernelVsock {
        /// The guest's CID, held while this lives.
        claim: cid::CidClaim,
        /// The CIDs to try, in order; the claim is one of them.
        candidates: Vec<u32>,
    },
    /// vsock through a supervised `vhost-device-vsock`.
    VhostUserVsock {
        /// The daemon, killed on drop, until [`Transport::take_daemon`].
        daemon: Option<Box<Supervised>>,
        /// Its vhost-user socket, for QEMU.
        vhost_socket: PathBuf,
        /// Its host-side socket, for us.
        uds_path: PathBuf,
    },
    /// virtio-serial on QEMU's socket.
    VirtioSerial {
        /// The socket QEMU serves.
        socket: PathBuf,
    },
}

impl Transport {
    /// Sets up `kind` in the directory `run_dir`; for vhost-user vsock this starts the
    /// daemon and waits for its socket, so QEMU can connect at once.
    pub async fn prepare(
        kind: TransportKind,
        caps: &HostCapabilities,
        run_dir: &Path,
    ) -> Result<Transport, Error> {
        match kind {
            TransportKind::KernelVsock => {
                let candidates = cid::candidates(cid_seed(), CID_CANDIDATES);
                let claim = cid::claim(&cid::lock_dir(), &candidates)?;
                Ok(Transport::KernelVsock { claim, candidates })
            }
            TransportKind::VirtioSerial => Ok(Transport::VirtioSerial {
                socket: run_dir.join("agent.sock"),
            }),
            TransportKind::VhostUserVsock => {
                let binary = caps.vhost_device_vsock.clone().ok_or(Error::Unavailable {
                    kind,
                    reason: "vhost-device-vsock was not found",
                    hint: "`cargo install vhost-device-vsock`, or use --transport serial",
                })?;
                let vhost_socket = run_dir.join("vhost.sock");
                let uds_path = run_dir.join("vsock.sock");
                let args = vhost_user::daemon_args(VHOST_USER_GUEST_CID, &vhost_socket, &uds_path);
                let mut daemon =
                    Supervised::spawn(&binary, &args, &run_dir.join("vhost-device-vsock.log"))?;
                daemon
                    .wait_for_path(&vhost_socket, Duration::from_secs(10))
                    .await?;
                Ok(Transport::VhostUserVsock {
                    daemon: Some(Box::new(daemon)),
                    vhost_socket,
                    uds_path,
                })
            }
        }
    }

    /// Which kind this is.
    pub fn kind(&self) -> TransportKind {
        match self {
            Transport::KernelVsock { .. } => TransportKind::KernelVsock,
            Transport::VhostUserVsock { .. } => TransportKind::VhostUserVsock,
            Transport::VirtioSerial { .. } => TransportKind::VirtioSerial,
        }
    }

    /// The QEMU device for this transport.
    pub fn device(&self) -> TransportDevice {
        match self {
            Transport::KernelVsock { claim, .. } => TransportDevice::KernelVsock {
                guest_cid: claim.cid(),
            },
            Transport::VhostUserVsock { vhost_socket, .. } => TransportDevice::VhostUserVsock {
                socket: vhost_socket.clone(),
            },
            Transport::VirtioSerial { socket } => TransportDevice::VirtioSerial {
                socket: socket.clone(),
                name: SERIAL_PORT_NAME.into(),
            },
        }
    }

    /// The agent's `nixdisk.transport=` value for the kernel command line.
    pub fn agent_setting(&self) -> String {
        agent_setting(self.kind())
    }

    /// Claims the next candidate CID for kernel vsock (after QEMU reported
    /// the current one in use by a VM that is not nixdisk's).
    pub fn repick_cid(&mut self) -> Result<(), Error> {
        if let Transport::KernelVsock { claim, candidates } = self {
            let used = claim.cid();
            let rest = match candidates.iter().position(|c| *c == used) {
                Some(index) => &candidates[index + 1..],
                None => &candidates[..],
            };
            *claim = cid::claim(&cid::lock_dir(), rest)?;
        }
        Ok(())
    }

    /// Hands over the supervised daemon, if this transport has one, so
    /// that whoever watches the VM also watches it.
    pub fn take_daemon(&mut self) -> Option<Supervised> {
        match self {
            Transport::VhostUserVsock { daemon, .. } => daemon.take().map(|d| *d),
            _ => None,
        }
    }

    /// One attempt to reach the agent.
    pub async fn connect(&self) -> Result<BoxedStream, Error> {
        match self {
            Transport::KernelVsock { claim, .. } => {
                let cid = claim.cid();
                let addr = tokio_vsock::VsockAddr::new(cid, AGENT_VSOCK_PORT);
                tokio_vsock::VsockStream::connect(addr)
                    .await
                    .map(|s| Box::new(s) as BoxedStream)
                    .map_err(|e| Error::NotReachable {
                        kind: TransportKind::KernelVsock,
                        address: format!("vsock {cid}:{AGENT_VSOCK_PORT}"),
                        reason: e.to_string(),
                    })
            }
            Transport::VhostUserVsock { uds_path, .. } => {
                vhost_user::connect(uds_path, AGENT_VSOCK_PORT).await
            }
            Transport::VirtioSerial { socket } => tokio::net::UnixStream::connect(socket)
                .await
                .map(|s| Box::new(s) as BoxedStream)
                .map_err(|e| Error::NotReachable {
                    kind: TransportKind::VirtioSerial,
                    address: socket.display().to_string(),
                    reason: e.to_string(),
                }),
        }
    }
}

/// The agent's `nixdisk.transport=` value for `kind`.
pub fn agent_setting(kind: TransportKind) -> String {
    use nixdisk_agent::protocol::Transport as Agent;
    match kind {
        TransportKind::KernelVsock | TransportKind::VhostUserVsock => Agent::Vsock {
            port: AGENT_VSOCK_PORT,
        },
        TransportKind::VirtioSerial => Agent::Serial {
            name: SERIAL_PORT_NAME.to_owned(),
        },
    }
    .to_string()
}

/// How many CIDs a run may try before giving up.
const CID_CANDIDATES: usize = 16;

/// A seed that differs between runs: the pid and the time.
fn cid_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (u64::from(std::process::id()) << 32) ^ nanos
}

#[cfg(test)]
mod tests;
