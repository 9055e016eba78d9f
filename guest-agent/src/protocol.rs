//! The host-guest protocol: versioned hello, length-prefixed frames, requests, responses, events, bulk streams.
//!
//! Both sides speak it over one byte stream (vsock, virtio-serial, or a pipe
//! in tests). The stream is a sequence of [`Frame`]s: a control frame
//! carries one JSON-encoded message, a data frame carries raw
//! bytes of the bulk stream in progress.
//!
//! The conversation:
//! 1. The agent sends [`Hello`] first. The host checks
//!    [`Hello::protocol_version`] against [`PROTOCOL_VERSION`]. Startup
//!    reports follow ([`AgentMessage::Log`] warnings; a failure as an
//!    [`AgentMessage::Error`] without `id`, after which the agent powers off),
//!    then [`AgentMessage::Ready`]: the host waits for it instead of guessing
//!    when the reports are over.
//! 2. The host sends requests ([`HostMessage`]), each with a fresh `id`
//!    (non-zero, never reused). The agent handles them one at a time, in order.
//! 3. Each request ends with exactly one final reply carrying its `id`:
//!    [`AgentMessage::Exited`] (after any [`AgentMessage::Output`]) for `Run`,
//!    [`AgentMessage::Written`] for `WriteFile`, [`AgentMessage::End`] (after
//!    data frames) for `ReadFile`, [`AgentMessage::Done`] for `PowerOff`, or
//!    [`AgentMessage::Error`] for any of them.
//! 4. Bulk streams: after `WriteFile`, and after `Run` with `stdin: true`, the
//!    host sends data frames and then [`HostMessage::End`] with the stream's
//!    SHA-256; after `ReadFile` the agent sends data frames, then its own `End`.
//!    Only one bulk stream flows in each direction at a time, so data frames
//!    carry no id.
//!
//! Malformed input never panics: it yields a [`ProtocolError`], after which
//! the reader closes the connection.

mod frame;
mod message;

pub use frame::{
    Decoder, FRAME_HEADER_LEN, Frame, FrameKind, MAX_DATA_CHUNK, MAX_FRAME_PAYLOAD, ProtocolError,
    encode_frame, read_frame, write_data, write_frame, write_message,
};
pub use message::{
    AgentMessage, End, ErrorReport, ExitStatus, Hello, HostMessage, LogLevel, Output, OutputStream,
    PROTOCOL_VERSION, Progress, Run, Transport, TransportParseError, sha256_hex,
};

#[cfg(test)]
mod tests;
