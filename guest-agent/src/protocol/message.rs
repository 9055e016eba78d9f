//! The messages carried in control frames, one enum per direction.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The protocol version; the host refuses an agent that speaks another one.
pub const PROTOCOL_VERSION: u32 = 2;

/// How the agent talks to the host. Written on the kernel command line as
/// `nixdisk.transport=<this>` and echoed back in [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Transport {
    /// AF_VSOCK: the agent listens on this port (any CID); the host connects.
    Vsock {
        /// The vsock port.
        port: u32,
    },
    /// A virtio-serial port, `/dev/virtio-ports/<name>`.
    Serial {
        /// The port's name (QEMU's `virtserialport,name=`).
        name: String,
    },
    /// The agent's stdin and stdout: only for tests on the host.
    Stdio,
}

/// A transport setting that is not `vsock:<port>`, `serial:<name>` or `stdio`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid transport {value:?}: {reason}; expected `vsock:<port>` (port 1..=4294967294), \
     `serial:<name>` or `stdio`"
)]
pub struct TransportParseError {
    /// The text that was given.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FromStr for Transport {
    type Err = TransportParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let fail = |reason| TransportParseError {
            value: value.to_owned(),
            reason,
        };
        if value == "stdio" {
            return Ok(Transport::Stdio);
        }
        let (kind, arg) = value.split_once(':').ok_or_else(|| fail("no `:`"))?;
        match kind {
            "vsock" => {
                let port: u32 = arg.parse().map_err(|_| fail("the port is not a number"))?;
                // VMADDR_PORT_ANY (u32::MAX) and 0 cannot be listened on by a fixed port.
                if port == 0 || port == u32::MAX {
                    return Err(fail("the port is out of range"));
                }
                Ok(Transport::Vsock { port })
            }
            "serial" => {
                if arg.is_empty() || arg.contains('/') || arg.chars().any(char::is_whitespace) {
                    return Err(fail("the port name is empty or holds `/` or blanks"));
                }
                Ok(Transport::Serial {
                    name: arg.to_owned(),
                })
            }
            _ => Err(fail("unknown kind")),
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Vsock { port } => write!(f, "vsock:{port}"),
            Transport::Serial { name } => write!(f, "serial:{name}"),
            Transport::Stdio => f.write_str("stdio"),
        }
    }
}

/// The agent's first message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the agent.
    pub protocol_version: u32,
    /// The agent's crate version.
    pub agent_version: String,
    /// `uname -r` of the builder kernel.
    pub kernel_release: String,
    /// The transport the agent is speaking on.
    pub transport: Transport,
}

/// Run a command, its output streamed back. Final reply: [`AgentMessage::Exited`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// Request id.
    pub id: u64,
    /// Program and arguments; the program is looked up in `PATH` when it holds no `/`.
    pub argv: Vec<String>,
    /// The whole environment of the command (nothing is inherited from the
    /// agent; `PATH` gets a default when missing).
    pub env: Vec<(String, String)>,
    /// Working directory (inside the chroot when `chroot`); `/` when absent.
    pub cwd: Option<String>,
    /// Run inside the chroot of the host share (`/host`) rather than the agent's root.
    pub chroot: bool,
    /// When true the host streams the command's stdin as data frames closed by
    /// [`HostMessage::End`]; otherwise stdin is `/dev/null`.
    pub stdin: bool,
}

/// Which output stream of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A piece of a running command's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// The `Run` request's id.
    pub id: u64,
    /// Which stream.
    pub stream: OutputStream,
    /// The bytes, base64 in JSON.
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl ExitStatus {
    /// Whether the command exited with code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal(signal) => write!(f, "killed by signal {signal}"),
        }
    }
}

/// The end of a bulk stream, in either direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    /// The request the stream belongs to.
    pub id: u64,
    /// Bytes sent in the stream's data frames.
    pub bytes: u64,
    /// Lowercase hex SHA-256 of those bytes.
    pub sha256: String,
}

/// Severity of a [`AgentMessage::Log`] event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    /// Details for `-v`.
    Debug,
    /// Normal progress notes.
    Info,
    /// Something went wrong but the agent carries on.
    Warn,
}

/// Progress of a long step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The request doing the work.
    pub id: u64,
    /// What is being done, e.g. `copy store paths`.
    pub step: String,
    /// Units done so far.
    pub done: u64,
    /// Units in all, when known.
    pub total: Option<u64>,
}

/// A failure, final reply of a request (or of the agent, when `id` is `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReport {
    /// The failed request; `None` for a failure of the agent itself (it then powers off).
    pub id: Option<u64>,
    /// What failed.
    pub message: String,
    /// What the agent was doing, outermost first.
    pub context: Vec<String>,
    /// The last lines of the failing command's stderr, when a command failed.
    pub stderr_tail: Option<String>,
}

/// Everything the host sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostMessage {
    /// Run a command.
    Run(Run),
    /// Write a file in the agent's root from the data frames that follow, then
    /// an `End`. Final reply: [`AgentMessage::Written`].
    WriteFile {
        /// Request id.
        id: u64,
        /// Absolute path in the agent's root (the chroot is under `/host`).
        path: String,
        /// Permission bits of a newly created file.
        mode: u32,
    },
    /// Read a file of the agent's root: data frames, then [`AgentMessage::End`].
    ReadFile {
        /// Request id.
        id: u64,
        /// Absolute path in the agent's root.
        path: String,
    },
    /// Closes the host's bulk stream (file data or a command's stdin).
    End(End),
    /// Sync and power off. Reply: [`AgentMessage::Done`], then the VM stops.
    PowerOff {
        /// Request id.
        id: u64,
    },
}

impl HostMessage {
    /// The request id this message belongs to.
    pub fn id(&self) -> u64 {
        match self {
            HostMessage::Run(run) => run.id,
            HostMessage::WriteFile { id, .. }
            | HostMessage::ReadFile { id, .. }
            | HostMessage::PowerOff { id } => *id,
            HostMessage::End(end) => end.id,
        }
    }
}

/// Everything the agent sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// The first message of the agent.
    Hello(Hello),
    /// The agent started: every startup report (warnings, a failure) came
    /// between [`AgentMessage::Hello`] and this. Requests may follow.
    Ready,
    /// Output of a running command.
    Output(Output),
    /// A command ended.
    Exited {
        /// The `Run` request's id.
        id: u64,
        /// How it ended.
        status: ExitStatus,
    },
    /// A `WriteFile` completed and its checksum matched.
    Written {
        /// Request id.
        id: u64,
        /// Bytes written.
        bytes: u64,
        /// Lowercase hex SHA-256 of the written bytes.
        sha256: String,
    },
    /// Closes the agent's bulk stream (`ReadFile`).
    End(End),
    /// A request that has nothing else to say completed.
    Done {
        /// Request id.
        id: u64,
    },
    /// Progress of a long step.
    Progress(Progress),
    /// A note from the agent for the host's log.
    Log {
        /// Severity.
        level: LogLevel,
        /// The text.
        message: String,
    },
    /// A request or the agent failed.
    Error(ErrorReport),
}

/// Lowercase hex SHA-256 of a finished hasher, the form used in [`End`].
pub fn sha256_hex(hasher: Sha256) -> String {
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Bytes as base64 text: JSON number arrays would quadruple command output.
mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}
