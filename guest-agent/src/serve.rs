//! The request loop: reads the host's frames, hands each request to its handler, replies.
//!
//! It works on any byte stream, so the same loop serves vsock or virtio-serial
//! in the VM and stdin/stdout in the host-side tests (`--serve-stdio`).

use std::io::{BufReader, Read, Write};
use std::sync::{Arc, Mutex};

use nixdisk_agent::protocol::{
    AgentMessage, ErrorReport, Frame, Hello, HostMessage, LogLevel, MAX_DATA_CHUNK, ProtocolError,
    read_frame, write_data, write_message,
};

use nixdisk_agent::boot_args::Fault;

use crate::files;
use crate::run::{self, RunConfig};

/// Why the loop ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The host asked to power off (and got its reply).
    PowerOff,
    /// The host closed the connection.
    HostGone,
    /// The agent could not start properly; it told the host why.
    Failed,
}

/// What happened while the agent started, told to the host right after hello.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Startup {
    /// Problems the agent works around (e.g. a module that did not load).
    pub warnings: Vec<String>,
    /// A problem that leaves the agent unusable, with what it was doing.
    pub fatal: Option<(String, Vec<String>)>,
    /// A failure to cause after hello, for fault-injection tests.
    pub fault: Option<Fault>,
}

/// The connection broke or the host broke the protocol: the loop ends.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Framing, decoding or transport i/o failed.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The host sent something that is valid alone but wrong at this point.
    #[error("protocol violation: {0}")]
    Unexpected(String),
}

/// The sending half of the connection, shared by the threads that stream output.
#[derive(Clone)]
pub struct Sender {
    writer: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl Sender {
    /// Wraps the writing half of the connection.
    pub fn new(writer: Box<dyn Write + Send>) -> Self {
        Sender {
            writer: Arc::new(Mutex::new(writer)),
        }
    }

    /// Sends one message.
    pub fn send(&self, message: &AgentMessage) -> Result<(), ProtocolError> {
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        write_message(&mut *writer, message)
    }

    /// Sends one data frame.
    pub fn send_data(&self, bytes: &[u8]) -> Result<(), ProtocolError> {
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        write_data(&mut *writer, bytes)
    }

    /// Sends the final error reply of request `id`.
    pub fn send_error(
        &self,
        id: Option<u64>,
        message: String,
        context: Vec<String>,
        stderr_tail: Option<String>,
    ) -> Result<(), ProtocolError> {
        tracing::warn!(?id, %message, "request failed");
        self.send(&AgentMessage::Error(ErrorReport {
            id,
            message,
            context,
            stderr_tail,
        }))
    }
}

/// The receiving half of the connection.
pub struct Receiver {
    reader: Box<dyn Read + Send>,
}

impl Receiver {
    /// Wraps the reading half of the connection.
    pub fn new(reader: Box<dyn Read + Send>) -> Self {
        // Buffered: a frame header and its payload then take one read.
        Receiver {
            reader: Box::new(BufReader::with_capacity(MAX_DATA_CHUNK + 4096, reader)),
        }
    }

    /// The next frame; `None` when the host closed the connection.
    pub fn next(&mut self) -> Result<Option<Frame<HostMessage>>, ProtocolError> {
        read_frame(&mut self.reader)
    }
}

/// Receives a bulk stream's data frames, passing each to `sink`, until its
/// `End`, which is returned. The stream must belong to request `id`.
pub fn receive_stream(
    receiver: &mut Receiver,
    id: u64,
    mut sink: impl FnMut(&[u8]),
) -> Result<nixdisk_agent::protocol::End, ServeError> {
    loop {
        match receiver.next()? {
            Some(Frame::Data(bytes)) => sink(&bytes),
            Some(Frame::Control(HostMessage::End(end))) if end.id == id => return Ok(end),
            Some(Frame::Control(other)) => {
                return Err(ServeError::Unexpected(format!(
                    "expected data or the end of request {id}'s stream, got {other:?}"
                )));
            }
            None => {
                return Err(ServeError::Unexpected(format!(
                    "connection closed during request {id}'s stream"
                )));
            }
        }
    }
}

/// Sends `hello`, the startup problems and, when none was fatal, `ready`;
/// then serves requests until the host powers off or goes away.
pub fn serve(
    mut receiver: Receiver,
    sender: Sender,
    hello: Hello,
    startup: Startup,
    config: &RunConfig,
) -> Result<Outcome, ServeError> {
    sender.send(&AgentMessage::Hello(hello))?;
    for message in startup.warnings {
        sender.send(&AgentMessage::Log {
            level: LogLevel::Warn,
            message,
        })?;
    }
    if let Some((message, context)) = startup.fatal {
        sender.send_error(None, message, context, None)?;
        return Ok(Outcome::Failed);
    }
    match startup.fault {
        None => {}
        Some(Fault::Panic) => panic!("fault injected by nixdisk.fault=panic"),
        Some(Fault::Exit) => {
            tracing::error!("exiting on purpose (nixdisk.fault=exit)");
            std::process::exit(1);
        }
    }
    sender.send(&AgentMessage::Ready)?;
    loop {
        let request = match receiver.next()? {
            None => return Ok(Outcome::HostGone),
            Some(Frame::Control(request)) => request,
            Some(Frame::Data(_)) => {
                return Err(ServeError::Unexpected(
                    "a data frame outside of any stream".to_owned(),
                ));
            }
        };
        tracing::debug!(?request, "request");
        match request {
            HostMessage::Run(request) => run::run(&mut receiver, &sender, request, config)?,
            HostMessage::WriteFile { id, path, mode } => {
                files::write_file(&mut receiver, &sender, id, &path, mode)?
            }
            HostMessage::ReadFile { id, path } => files::read_file(&sender, id, &path)?,
            HostMessage::PowerOff { id } => {
                sender.send(&AgentMessage::Done { id })?;
                return Ok(Outcome::PowerOff);
            }
            HostMessage::End(end) => {
                return Err(ServeError::Unexpected(format!(
                    "an end of stream for request {} with no stream open",
                    end.id
                )));
            }
        }
    }
}
