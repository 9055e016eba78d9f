//! Frames on the wire: `u32` little-endian payload length, one type byte, payload.
//!
//! [`Decoder`] takes bytes as they arrive (for the async host); [`read_frame`]
//! and the `write_*` functions work on blocking `Read`/`Write` (for the agent).

use std::io::{self, Read, Write};
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bytes before the payload: length (4) and type (1).
pub const FRAME_HEADER_LEN: usize = 5;

/// The largest payload a frame may carry. A bigger length is refused before
/// anything is allocated, so a corrupt header cannot exhaust memory.
pub const MAX_FRAME_PAYLOAD: usize = 1 << 20;

/// The payload size senders use for bulk data: large enough for throughput,
/// small enough to interleave with control messages.
pub const MAX_DATA_CHUNK: usize = 256 * 1024;

/// The type byte of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// The payload is one JSON message.
    Control = 1,
    /// The payload is raw bytes of the current bulk stream.
    Data = 2,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Result<Self, ProtocolError> {
        match byte {
            1 => Ok(FrameKind::Control),
            2 => Ok(FrameKind::Data),
            other => Err(ProtocolError::UnknownFrameKind(other)),
        }
    }
}

/// One frame: a message of type `M` or a piece of a bulk stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<M> {
    /// A control message.
    Control(M),
    /// Raw bulk bytes.
    Data(Vec<u8>),
}

/// What can go wrong reading or writing frames. After any of these the
/// connection is in an unknown state and should be closed.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// A header announced a payload over [`MAX_FRAME_PAYLOAD`], or a sender tried to send one.
    #[error(
        "frame payload of {len} bytes exceeds the limit of {MAX_FRAME_PAYLOAD} bytes \
         (corrupt stream, or a peer speaking another protocol)"
    )]
    FrameTooLarge {
        /// The announced or attempted payload length.
        len: usize,
    },
    /// The type byte is neither control nor data.
    #[error("unknown frame type {0:#04x} (corrupt stream, or a peer speaking another protocol)")]
    UnknownFrameKind(u8),
    /// A control frame's payload is not a valid message.
    #[error("control frame is not a valid message: {source}")]
    BadMessage {
        /// What serde_json said.
        #[source]
        source: serde_json::Error,
    },
    /// A message could not be serialized.
    #[error("could not encode a message: {source}")]
    Encode {
        /// What serde_json said.
        #[source]
        source: serde_json::Error,
    },
    /// The stream ended inside a frame.
    #[error("connection closed in the middle of a frame ({buffered} bytes of it received)")]
    Truncated {
        /// How many bytes of the unfinished frame had arrived.
        buffered: usize,
    },
    /// The decoder already failed; it does not resynchronize.
    #[error("the frame decoder already failed on earlier input")]
    DecoderFailed,
    /// Reading or writing the connection failed.
    #[error("connection i/o failed: {0}")]
    Io(#[from] io::Error),
}

/// Parses a header into the frame kind and payload length.
fn parse_header(header: [u8; FRAME_HEADER_LEN]) -> Result<(FrameKind, usize), ProtocolError> {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > MAX_FRAME_PAYLOAD {
        return Err(ProtocolError::FrameTooLarge { len });
    }
    Ok((FrameKind::from_byte(header[4])?, len))
}

fn header(kind: FrameKind, len: usize) -> Result<[u8; FRAME_HEADER_LEN], ProtocolError> {
    if len > MAX_FRAME_PAYLOAD {
        return Err(ProtocolError::FrameTooLarge { len });
    }
    let mut header = [0; FRAME_HEADER_LEN];
    header[..4].copy_from_slice(&(len as u32).to_le_bytes());
    header[4] = kind as u8;
    Ok(header)
}

fn decode_payload<M: DeserializeOwned>(
    kind: FrameKind,
    payload: Vec<u8>,
) -> Result<Frame<M>, ProtocolError> {
    match kind {
        FrameKind::Data => Ok(Frame::Data(payload)),
        FrameKind::Control => serde_json::from_slice(&payload)
            .map(Frame::Control)
            .map_err(|source| ProtocolError::BadMessage { source }),
    }
}

/// The bytes of one frame, header included.
pub fn encode_frame<M: Serialize>(frame: &Frame<M>) -> Result<Vec<u8>, ProtocolError> {
    let (kind, payload) = match frame {
        Frame::Control(message) => (
            FrameKind::Control,
            serde_json::to_vec(message).map_err(|source| ProtocolError::Encode { source })?,
        ),
        Frame::Data(bytes) => (FrameKind::Data, bytes.clone()),
    };
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&header(kind, payload.len())?);
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Writes one frame and flushes.
pub fn write_frame<M: Serialize, W: Write + ?Sized>(
    writer: &mut W,
    frame: &Frame<M>,
) -> Result<(), ProtocolError> {
    match frame {
        Frame::Control(message) => write_message(writer, message),
        Frame::Data(bytes) => write_data(writer, bytes),
    }
}

/// Writes one control frame holding `message` and flushes.
pub fn write_message<M: Serialize, W: Write + ?Sized>(
    writer: &mut W,
    message: &M,
) -> Result<(), ProtocolError> {
    let payload = serde_json::to_vec(message).map_err(|source| ProtocolError::Encode { source })?;
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&header(FrameKind::Control, payload.len())?);
    out.extend_from_slice(&payload);
    writer.write_all(&out)?;
    writer.flush()?;
    Ok(())
}

/// Writes one data frame (at most [`MAX_FRAME_PAYLOAD`] bytes) and flushes.
pub fn write_data<W: Write + ?Sized>(writer: &mut W, bytes: &[u8]) -> Result<(), ProtocolError> {
    writer.write_all(&header(FrameKind::Data, bytes.len())?)?;
    writer.write_all(bytes)?;
    writer.flush()?;
    Ok(())
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
pub fn read_frame<M: DeserializeOwned, R: Read + ?Sized>(
    reader: &mut R,
) -> Result<Option<Frame<M>>, ProtocolError> {
    let mut header = [0; FRAME_HEADER_LEN];
    let mut filled = 0;
    while filled < FRAME_HEADER_LEN {
        match reader.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(ProtocolError::Truncated { buffered: filled }),
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error.into()),
        }
    }
    let (kind, len) = parse_header(header)?;
    let mut payload = vec![0; len];
    let mut got = 0;
    while got < len {
        match reader.read(&mut payload[got..]) {
            Ok(0) => {
                return Err(ProtocolError::Truncated {
                    buffered: FRAME_HEADER_LEN + got,
                });
            }
            Ok(n) => got += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error.into()),
        }
    }
    decode_payload(kind, payload).map(Some)
}

/// An incremental frame decoder: feed it bytes as they arrive, take frames out.
#[derive(Debug)]
pub struct Decoder<M> {
    buffer: Vec<u8>,
    /// Start of the first undecoded byte in `buffer`.
    start: usize,
    failed: bool,
    _message: PhantomData<fn() -> M>,
}

impl<M> Default for Decoder<M> {
    fn default() -> Self {
        Decoder {
            buffer: Vec::new(),
            start: 0,
            failed: false,
            _message: PhantomData,
        }
    }
}

impl<M: DeserializeOwned> Decoder<M> {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `bytes` and returns every frame now complete. On an error the
    /// decoder stays failed: close the connection.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Frame<M>>, ProtocolError> {
        self.push(bytes);
        let mut frames = Vec::new();
        while let Some(frame) = self.next_frame()? {
            frames.push(frame);
        }
        Ok(frames)
    }

    /// Adds `bytes` without decoding; take frames with [`Decoder::next_frame`].
    pub fn push(&mut self, bytes: &[u8]) {
        // Drop consumed bytes before growing, so the buffer stays about one frame long.
        if self.start > 0 && (self.start == self.buffer.len() || self.start >= 64 * 1024) {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame<M>>, ProtocolError> {
        if self.failed {
            return Err(ProtocolError::DecoderFailed);
        }
        let result = self.decode_one();
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn decode_one(&mut self) -> Result<Option<Frame<M>>, ProtocolError> {
        let available = &self.buffer[self.start..];
        let Some(header) = available.first_chunk::<FRAME_HEADER_LEN>() else {
            return Ok(None);
        };
        let (kind, len) = parse_header(*header)?;
        let Some(payload) = available.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
            return Ok(None);
        };
        let payload = payload.to_vec();
        self.start += FRAME_HEADER_LEN + len;
        decode_payload(kind, payload).map(Some)
    }

    /// Bytes received that do not yet form a whole frame.
    pub fn buffered(&self) -> usize {
        self.buffer.len() - self.start
    }

    /// Call at end of stream: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        match self.buffered() {
            0 => Ok(()),
            buffered => Err(ProtocolError::Truncated { buffered }),
        }
    }
}
