//! The host's agent client: requests over the transport's byte stream,
//! decoded with the protocol's incremental [`Decoder`], with every wait
//! watching the VM so a dead VM, a panic or a vanished agent ends the wait
//! with an error that says which.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use nixdisk_agent::protocol::{
    self, AgentMessage, Decoder, End, ErrorReport, ExitStatus, FRAME_HEADER_LEN, Frame, FrameKind,
    Hello, HostMessage, LogLevel, MAX_DATA_CHUNK, PROTOCOL_VERSION, Run,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Instant;

use super::error::Error;
use super::watch::VmWatch;
use crate::transport::BoxedStream;

pub use nixdisk_agent::protocol::OutputStream;

/// How long after the connection drops we wait for QEMU to exit before
/// blaming the agent alone.
const DEATH_GRACE: Duration = Duration::from_secs(3);

/// The result of a bulk transfer, as both sides agreed on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes transferred.
    pub bytes: u64,
    /// Lowercase hex SHA-256 of them.
    pub sha256: String,
}

/// Why a handshake did not produce a client.
pub(crate) enum HandshakeError {
    /// The guest is not ready; connect again.
    Retry(String),
    /// Give up.
    Fatal(Error),
}

/// A connected agent.
pub struct AgentClient {
    reader: ReadHalf<BoxedStream>,
    writer: WriteHalf<BoxedStream>,
    decoder: Decoder<AgentMessage>,
    pending: VecDeque<Frame<AgentMessage>>,
    buffer: Vec<u8>,
    watch: Arc<VmWatch>,
    hello: Hello,
    next_id: u64,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("hello", &self.hello)
            .finish()
    }
}

impl AgentClient {
    /// Waits for the agent's hello on `stream` until `deadline`.
    pub(crate) async fn handshake(
        stream: BoxedStream,
        watch: Arc<VmWatch>,
        deadline: Instant,
    ) -> Result<AgentClient, HandshakeError> {
        let (reader, writer) = tokio::io::split(stream);
        let mut client = AgentClient {
            reader,
            writer,
            decoder: Decoder::new(),
            pending: VecDeque::new(),
            buffer: vec![0; MAX_DATA_CHUNK + FRAME_HEADER_LEN],
            watch,
            hello: Hello {
                protocol_version: 0,
                agent_version: String::new(),
                kernel_release: String::new(),
                transport: protocol::Transport::Stdio,
            },
            next_id: 1,
        };
        let first = match tokio::time::timeout_at(deadline, client.fill()).await {
            Err(_) => return Err(HandshakeError::Retry("no hello yet".into())),
            // The connection closed before hello: the vsock daemon does this
            // while nothing listens; a serial port while the guest boots.
            Ok(Err(Error::AgentGone { .. })) => {
                return Err(HandshakeError::Retry("closed before hello".into()));
            }
            Ok(Err(e)) => return Err(HandshakeError::Fatal(e)),
            Ok(Ok(())) => client.pending.pop_front(),
        };
        match first {
            Some(Frame::Control(AgentMessage::Hello(hello))) => {
                if hello.protocol_version != PROTOCOL_VERSION {
                    return Err(HandshakeError::Fatal(Error::Protocol(format!(
                        "the agent speaks protocol version {}, this nixdisk speaks {}; \
                         hint: use the agent built from the same nixdisk",
                        hello.protocol_version, PROTOCOL_VERSION
                    ))));
                }
                tracing::debug!(?hello, "agent hello");
                client.hello = hello;
            }
            other => {
                return Err(HandshakeError::Fatal(Error::Protocol(format!(
                    "expected hello, got {other:?}"
                ))));
            }
        }
        // Startup reports come between hello and ready: surface a fatal one
        // now rather than at the first request.
        loop {
            client.take_agent_failure().map_err(HandshakeError::Fatal)?;
            if let Some(at) = client
                .pending
                .iter()
                .position(|frame| matches!(frame, Frame::Control(AgentMessage::Ready)))
            {
                client.pending.remove(at);
                return Ok(client);
            }
            match tokio::time::timeout_at(deadline, client.fill()).await {
                Err(_) => {
                    return Err(HandshakeError::Fatal(Error::Protocol(
                        "the agent said hello but never that it was ready".into(),
                    )));
                }
                Ok(result) => result.map_err(HandshakeError::Fatal)?,
            }
        }
    }

    /// The agent's hello.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Runs `argv` in the chroot of the host share, passing its output to
    /// `on_output` as it comes; returns its exit code (128 + signal when a
    /// signal killed it).
    pub async fn run<S: AsRef<str>>(
        &mut self,
        argv: &[S],
        on_output: impl FnMut(OutputStream, &[u8]),
    ) -> Result<i32, Error> {
        let status = self.run_status(argv, on_output).await?;
        Ok(match status {
            ExitStatus::Code(code) => code,
            ExitStatus::Signal(signal) => 128 + signal,
        })
    }

    /// Like [`AgentClient::run`], returning the agent's [`ExitStatus`].
    pub async fn run_status<S: AsRef<str>>(
        &mut self,
        argv: &[S],
        mut on_output: impl FnMut(OutputStream, &[u8]),
    ) -> Result<ExitStatus, Error> {
        let argv: Vec<String> = argv.iter().map(|a| a.as_ref().to_owned()).collect();
        let action = format!("run {argv:?}");
        let id = self.fresh_id();
        let path = std::env::var("PATH").unwrap_or_else(|_| {
            "/run/current-system/sw/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
                .to_owned()
        });
        self.send(&HostMessage::Run(Run {
            id,
            argv,
            env: vec![("PATH".into(), path), ("LC_ALL".into(), "C.UTF-8".into())],
            cwd: None,
            chroot: true,
            stdin: false,
        }))
        .await?;
        loop {
            match self.next_message(id, &action).await? {
                AgentMessage::Output(output) if output.id == id => {
                    on_output(output.stream, &output.data)
                }
                AgentMessage::Exited { id: done, status } if done == id => return Ok(status),
                other => return Err(unexpected(&action, &other)),
            }
        }
    }

    /// Writes `source` to `guest_path` in the agent's root (the host share is
    /// read-only under `/host`; `/tmp` and the disks are writable), with
    /// permission bits `mode`. Both sides check the SHA-256.
    pub async fn write_file(
        &mut self,
        guest_path: &str,
        mode: u32,
        mut source: impl AsyncRead + Unpin,
    ) -> Result<Transfer, Error> {
        let action = format!("write {guest_path}");
        let id = self.fresh_id();
        self.send(&HostMessage::WriteFile {
            id,
            path: guest_path.to_owned(),
            mode,
        })
        .await?;
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        let mut chunk = vec![0u8; FRAME_HEADER_LEN + MAX_DATA_CHUNK];
        loop {
            let n = read_some(&mut source, &mut chunk[FRAME_HEADER_LEN..])
                .await
                .map_err(|e| Error::Agent {
                    action: action.clone(),
                    message: format!("reading the host data failed: {e}"),
                })?;
            if n == 0 {
                break;
            }
            hasher.update(&chunk[FRAME_HEADER_LEN..FRAME_HEADER_LEN + n]);
            bytes += n as u64;
            chunk[..4].copy_from_slice(&(n as u32).to_le_bytes());
            chunk[4] = FrameKind::Data as u8;
            self.send_raw(&chunk[..FRAME_HEADER_LEN + n]).await?;
        }
        let sha256 = protocol::sha256_hex(hasher);
        self.send(&HostMessage::End(End {
            id,
            bytes,
            sha256: sha256.clone(),
        }))
        .await?;
        match self.next_message(id, &action).await? {
            AgentMessage::Written {
                id: done,
                bytes: got,
                sha256: got_sha,
            } if done == id => {
                if got != bytes || got_sha != sha256 {
                    return Err(Error::Agent {
                        action,
                        message: format!(
                            "checksum mismatch: sent {bytes} bytes sha256 {sha256}, \
                             the agent wrote {got} bytes sha256 {got_sha}"
                        ),
                    });
                }
                Ok(Transfer { bytes, sha256 })
            }
            other => Err(unexpected(&action, &other)),
        }
    }

    /// Reads `guest_path` of the agent's root into `sink`, checking the
    /// agent's SHA-256 against what arrived.
    pub async fn read_file(
        &mut self,
        guest_path: &str,
        mut sink: impl AsyncWrite + Unpin,
    ) -> Result<Transfer, Error> {
        let action = format!("read {guest_path}");
        let id = self.fresh_id();
        self.send(&HostMessage::ReadFile {
            id,
            path: guest_path.to_owned(),
        })
        .await?;
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        loop {
            match self.next_frame(id, &action).await? {
                Frame::Data(data) => {
                    hasher.update(&data);
                    bytes += data.len() as u64;
                    sink.write_all(&data).await.map_err(|e| Error::Agent {
                        action: action.clone(),
                        message: format!("writing the host copy failed: {e}"),
                    })?;
                }
                Frame::Control(AgentMessage::End(end)) if end.id == id => {
                    sink.flush().await.map_err(|e| Error::Agent {
                        action: action.clone(),
                        message: format!("writing the host copy failed: {e}"),
                    })?;
                    let sha256 = protocol::sha256_hex(hasher);
                    if end.bytes != bytes || end.sha256 != sha256 {
                        return Err(Error::Agent {
                            action,
                            message: format!(
                                "checksum mismatch: the agent sent {} bytes sha256 {}, \
                                 {bytes} bytes sha256 {sha256} arrived",
                                end.bytes, end.sha256
                            ),
                        });
                    }
                    return Ok(Transfer { bytes, sha256 });
                }
                Frame::Control(other) => return Err(unexpected(&action, &other)),
            }
        }
    }

    /// Asks the agent to sync and power off; returns once it acknowledged
    /// (or the VM is already going down).
    pub async fn power_off(&mut self) -> Result<(), Error> {
        let action = "power off".to_owned();
        let id = self.fresh_id();
        self.send(&HostMessage::PowerOff { id }).await?;
        match self.next_message(id, &action).await {
            Ok(AgentMessage::Done { id: done }) if done == id => Ok(()),
            Ok(other) => Err(unexpected(&action, &other)),
            // Powering off: the connection or the VM ending is the point.
            Err(Error::AgentGone { .. } | Error::VmStopped { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    async fn send(&mut self, message: &HostMessage) -> Result<(), Error> {
        let bytes = protocol::encode_frame(&Frame::Control(message))
            .map_err(|e| Error::Protocol(e.to_string()))?;
        self.send_raw(&bytes).await
    }

    async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let watch = self.watch.clone();
        let result = tokio::select! {
            r = self.writer.write_all(bytes) => r,
            end = watch.ended() => return Err(watch.error(end)),
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) => Err(self.connection_lost(format!("sending failed: {e}")).await),
        }
    }

    /// The next message of request `id`; logs and progress go to tracing.
    async fn next_message(&mut self, id: u64, action: &str) -> Result<AgentMessage, Error> {
        match self.next_frame(id, action).await? {
            Frame::Control(message) => Ok(message),
            Frame::Data(_) => Err(Error::Protocol(format!(
                "a data frame while waiting for the reply to {action}"
            ))),
        }
    }

    /// The next frame for request `id`: errors of the request or of the
    /// agent become [`Error::Agent`]; logs and progress are logged here.
    async fn next_frame(&mut self, id: u64, action: &str) -> Result<Frame<AgentMessage>, Error> {
        loop {
            while let Some(frame) = self.pending.pop_front() {
                match frame {
                    Frame::Control(AgentMessage::Log { level, message }) => log(level, &message),
                    Frame::Control(AgentMessage::Progress(p)) => {
                        tracing::debug!(target: "nixdisk::agent", step = %p.step, done = p.done, total = ?p.total, "progress");
                    }
                    Frame::Control(AgentMessage::Error(report)) if report.id == Some(id) => {
                        return Err(Error::Agent {
                            action: action.to_owned(),
                            message: describe(&report),
                        });
                    }
                    Frame::Control(AgentMessage::Error(report)) if report.id.is_none() => {
                        return Err(self.agent_failed(&report).await);
                    }
                    other => return Ok(other),
                }
            }
            self.fill().await?;
        }
    }

    /// Reads more frames into `pending`, watching the VM while waiting.
    async fn fill(&mut self) -> Result<(), Error> {
        let watch = self.watch.clone();
        let read = tokio::select! {
            r = self.reader.read(&mut self.buffer) => r,
            end = watch.ended() => return Err(watch.error(end)),
        };
        let n = match read {
            Ok(0) => return Err(self.connection_lost("the connection closed".into()).await),
            Ok(n) => n,
            Err(e) => return Err(self.connection_lost(format!("reading failed: {e}")).await),
        };
        let frames = self
            .decoder
            .feed(&self.buffer[..n])
            .map_err(|e| Error::Protocol(e.to_string()))?;
        self.pending.extend(frames);
        Ok(())
    }

    /// An error for a failure the agent reported about itself (it powers off).
    fn take_agent_failure(&mut self) -> Result<(), Error> {
        let position = self.pending.iter().position(|f| {
            matches!(
                f,
                Frame::Control(AgentMessage::Error(ErrorReport { id: None, .. }))
            )
        });
        if let Some(Frame::Control(AgentMessage::Error(report))) =
            position.and_then(|p| self.pending.remove(p))
        {
            return Err(Error::AgentFailed {
                message: describe(&report),
                console_tail: self.watch.console_tail(),
            });
        }
        for frame in std::mem::take(&mut self.pending) {
            match frame {
                Frame::Control(AgentMessage::Log { level, message }) => log(level, &message),
                other => self.pending.push_back(other),
            }
        }
        Ok(())
    }

    async fn agent_failed(&self, report: &ErrorReport) -> Error {
        // The agent powers off after reporting: let the console catch up.
        let _ = self.watch.ended_within(Duration::from_secs(1)).await;
        Error::AgentFailed {
            message: describe(report),
            console_tail: self.watch.console_tail(),
        }
    }

    /// The connection broke: find out whether the VM died with it.
    async fn connection_lost(&self, detail: String) -> Error {
        match self.watch.ended_within(DEATH_GRACE).await {
            Some(end) => self.watch.error(end),
            None => {
                let console_tail = self.watch.console_tail();
                Error::AgentGone {
                    detail,
                    console_tail,
                }
            }
        }
    }
}

fn log(level: LogLevel, message: &str) {
    match level {
        LogLevel::Debug => tracing::debug!(target: "nixdisk::agent", "{message}"),
        LogLevel::Info => tracing::info!(target: "nixdisk::agent", "{message}"),
        LogLevel::Warn => tracing::warn!(target: "nixdisk::agent", "{message}"),
    }
}

/// An agent error report as one message: what failed, while doing what, and
/// the failing command's stderr.
fn describe(report: &ErrorReport) -> String {
    let mut text = report.message.clone();
    if !report.context.is_empty() {
        text.push_str(&format!(" (while trying to {})", report.context.join(": ")));
    }
    if let Some(stderr) = &report.stderr_tail {
        text.push_str(&format!("\n--- stderr ---\n{}", stderr.trim_end()));
    }
    text
}

fn unexpected(action: &str, message: &AgentMessage) -> Error {
    Error::Protocol(format!("unexpected reply to {action}: {message:?}"))
}

/// Reads until `buf` is full or the source ends: bigger frames, fewer writes.
async fn read_some(
    source: &mut (impl AsyncRead + Unpin),
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read(&mut buf[filled..]).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}
