//! RFC 6455 framing for channel sockets, without copies on the data path.
//!
//! Channel sockets carry bulk bytes (64 KiB frames from the SDKs), and a
//! general WebSocket library costs several passes over every byte: zeroing
//! its read buffer, copying the payload out of it, copying each outgoing
//! frame into its write buffer. Here:
//! - [`FrameReader`] reads each frame's payload into a buffer of its own
//!   (no zeroing: reads go into spare capacity), unmasks it in place and
//!   hands it out as [`Bytes`] that the pipe keeps without copying;
//! - [`FrameWriter`] writes frames as header + payload slices in one vectored
//!   write, several queued frames at a time; as a client it masks while
//!   copying each payload once (a client must mask, so one pass is the least);
//! - [`handshake`] does the HTTP/1.1 upgrade on both sides, so the socket is
//!   ours from the first byte after it.
//!
//! Only what channel sockets need: no extensions (RSV bits must be zero), no
//! subprotocols. Fragmented messages are joined (the SDKs do not fragment,
//! but RFC 6455 lets any client), bounded like single frames.

pub mod handshake;
mod header;
mod read;
mod write;

pub use header::apply_mask;
pub use read::FrameReader;
pub use write::FrameWriter;

use crate::protocol::codes::close;
use bytes::Bytes;

/// Which end of the connection this is: a client masks every frame it sends
/// and must not receive masked ones; a server the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// The frame types of RFC 6455 §5.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        self as u8 & 0x8 != 0
    }
}

/// One message read from a socket, fragments already joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Binary(Bytes),
    /// Valid UTF-8 (checked on arrival).
    Text(Bytes),
    Ping(Bytes),
    Pong,
    /// `None`: a close frame without a status code.
    Close(Option<CloseFrame>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    pub code: u16,
    pub reason: String,
}

/// Why a socket cannot be read any further (or, for [`TooBig`], why one
/// message was refused: its bytes are skipped, so the close handshake can
/// still be read after it).
///
/// [`TooBig`]: FrameError::TooBig
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("the connection ended without a close frame")]
    Eof,
    #[error("a message of {len} bytes is over the limit of {limit}")]
    TooBig { len: u64, limit: usize },
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("a text message is not valid UTF-8")]
    InvalidUtf8,
}

impl FrameError {
    /// The close code to send the peer for this error, if the peer broke a rule.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            FrameError::TooBig { .. } => Some(close::MESSAGE_TOO_BIG),
            FrameError::Protocol(_) => Some(close::PROTOCOL_ERROR),
            FrameError::InvalidUtf8 => Some(close::INVALID_PAYLOAD),
            FrameError::Io(_) | FrameError::Eof => None,
        }
    }
}

/// The payload of a close frame: the code, then as much of `reason` as fits
/// the 125 bytes a control frame may carry (cut at a character boundary).
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = Vec::with_capacity(2 + end);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&reason.as_bytes()[..end]);
    out
}
