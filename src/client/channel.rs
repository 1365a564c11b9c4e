//! Binary channels from the client side: create one, open its writer or
//! reader (`docs/protocol.md` §6). Frames and close codes as the engine
//! speaks them: binary frames are the stream (64 KiB each, as the SDKs send),
//! text frames are messages in order with it, a normal close is the end.
//!
//! Channel ends use the engine's own frame layer (`channels::frames`) in
//! the client role rather than tungstenite: each outgoing frame is masked in
//! the one copy a client must make anyway, and incoming payloads are read
//! straight into the buffers handed out. This is what keeps `qmesh bench
//! channel` and the channel bench cheap next to the engine they measure.

use bytes::Bytes;
use std::time::Duration;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::channels::frames::handshake::{self, ConnectError};
use crate::channels::frames::{
    CloseFrame, FrameError, FrameReader, FrameWriter, Incoming, OpCode, Role,
};
use crate::protocol::channel::socket_url;
pub use crate::protocol::channel::{ChannelPair, ChannelRef, Direction};
use crate::protocol::codes::close;

/// The chunk size the SDKs use; [`ChannelWriter::write`] splits by it.
pub const CHUNK: usize = 64 << 10;
/// Chunks [`ChannelWriter::write`] masks before it writes them out.
const CHUNKS_PER_WRITE: usize = 8;
/// Largest frame accepted from the engine (it sends at most its own
/// `channels.max_frame_size`, 1 MiB by default).
const MAX_FRAME: usize = 16 << 20;
/// How long closing waits for the engine's answer.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Every way a channel end can fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The engine refused the connect (404 unknown or wrong key, 409 end
    /// taken, 410 gone) before any upgrade.
    #[error("channel refused with HTTP {status}: {reason}")]
    Refused { status: u16, reason: String },
    #[error("this ref opens the {0} end")]
    WrongDirection(Direction),
    /// Reader: the writer vanished without a normal close (close 4499); what
    /// was read is a truncated stream.
    #[error("the writer aborted: the stream is truncated")]
    WriterAborted,
    /// Writer: the reader went away (close 4410); nothing more is delivered.
    #[error("the reader is gone")]
    ReaderGone,
    /// The channel expired, or its creator left, before both ends connected (4408).
    #[error("the channel was abandoned before both ends connected")]
    Abandoned,
    /// Any other close from the engine (1001 when it shuts down, 1009 for an
    /// oversize frame).
    #[error("channel closed with {code}: {reason}")]
    Closed { code: u16, reason: String },
    /// The socket failed or could not be opened.
    #[error("channel socket: {0}")]
    Io(String),
}

/// One item read from a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelItem {
    /// A chunk of the byte stream.
    Binary(Bytes),
    /// A message, in order with the chunks.
    Text(String),
}

/// One channel socket: its frame reader and writer over the two TCP halves.
struct Socket {
    rd: FrameReader<OwnedReadHalf>,
    wr: FrameWriter<OwnedWriteHalf>,
    /// Our close frame has been queued; nothing more may be sent.
    closing: bool,
}

impl Socket {
    async fn open(engine_url: &str, r: &ChannelRef, want: Direction) -> Result<Self, ChannelError> {
        if r.direction != want {
            return Err(ChannelError::WrongDirection(r.direction));
        }
        let connected = handshake::connect(&socket_url(engine_url, r))
            .await
            .map_err(|e| match e {
                ConnectError::Refused { status, body } => ChannelError::Refused {
                    status,
                    reason: body,
                },
                e => ChannelError::Io(e.to_string()),
            })?;
        let (rd, wr) = connected.stream.into_split();
        Ok(Socket {
            rd: FrameReader::with_buffered(rd, Role::Client, MAX_FRAME, connected.buffered),
            wr: FrameWriter::new(wr, Role::Client),
            closing: false,
        })
    }

    async fn flush(&mut self) -> Result<(), ChannelError> {
        self.wr
            .flush()
            .await
            .map_err(|e| ChannelError::Io(e.to_string()))
    }

    /// Queues our close (once) and sends it.
    async fn close(&mut self, code: Option<u16>, reason: &str) -> Result<(), ChannelError> {
        if !self.closing {
            self.closing = true;
            self.wr.queue_close(code, reason);
        }
        self.flush().await
    }

    /// The engine closed: answer it (once), as RFC 6455 asks.
    async fn answer(&mut self, frame: &Option<CloseFrame>) {
        let _ = self.close(frame.as_ref().map(|f| f.code), "").await;
    }
}

fn io_error(e: FrameError) -> ChannelError {
    match e {
        FrameError::Eof => ChannelError::Io("connection lost".into()),
        e => ChannelError::Io(e.to_string()),
    }
}

/// What a close from the engine means.
fn closed_by(frame: Option<CloseFrame>) -> Result<(), ChannelError> {
    let Some(f) = frame else { return Ok(()) };
    match f.code {
        close::NORMAL => Ok(()),
        close::CHANNEL_WRITER_ABORTED => Err(ChannelError::WriterAborted),
        close::CHANNEL_READER_GONE => Err(ChannelError::ReaderGone),
        close::CHANNEL_ABANDONED => Err(ChannelError::Abandoned),
        code => Err(ChannelError::Closed {
            code,
            reason: f.reason,
        }),
    }
}

/// The write end of a channel.
pub struct ChannelWriter {
    ws: Socket,
}

impl ChannelWriter {
    /// Opens the write end named by `r` on the engine at `engine_url`.
    pub async fn open(engine_url: &str, r: &ChannelRef) -> Result<Self, ChannelError> {
        Ok(Self {
            ws: Socket::open(engine_url, r, Direction::Write).await?,
        })
    }

    /// Writes `data` as 64 KiB chunks; returns once they are on the socket.
    /// It waits while the engine's buffer is full (a slow reader).
    pub async fn write(&mut self, data: &[u8]) -> Result<(), ChannelError> {
        for chunks in data.chunks(CHUNK * CHUNKS_PER_WRITE) {
            for chunk in chunks.chunks(CHUNK) {
                self.ws.wr.queue_parts(OpCode::Binary, &[chunk]);
            }
            self.send().await?;
        }
        Ok(())
    }

    /// Sends one binary frame as given (no split).
    pub async fn send_frame(&mut self, frame: Bytes) -> Result<(), ChannelError> {
        self.send_parts(&[&frame]).await
    }

    /// Sends one binary frame made of `parts` back to back. They are copied
    /// once, as the frame is masked (which a client must do anyway).
    pub async fn send_parts(&mut self, parts: &[&[u8]]) -> Result<(), ChannelError> {
        self.ws.wr.queue_parts(OpCode::Binary, parts);
        self.send().await
    }

    /// Sends one text message, ordered with the bytes written before it.
    pub async fn send_text(&mut self, text: &str) -> Result<(), ChannelError> {
        self.ws.wr.queue_parts(OpCode::Text, &[text.as_bytes()]);
        self.send().await
    }

    async fn send(&mut self) -> Result<(), ChannelError> {
        if let Err(e) = self.ws.flush().await {
            return Err(self.failed(e).await);
        }
        Ok(())
    }

    /// Ends the stream (close 1000) and waits for the engine's answer:
    /// `Err(ReaderGone)` if the reader left before the end.
    pub async fn finish(mut self) -> Result<(), ChannelError> {
        if let Err(e) = self.ws.close(Some(close::NORMAL), "end of stream").await {
            return Err(self.failed(e).await);
        }
        self.await_close().await
    }

    /// Drops the socket without a close: the reader sees an abort (4499).
    pub fn abort(self) {
        drop(self.ws);
    }

    /// A send failed: the engine's close frame, if one arrived, says why.
    async fn failed(&mut self, e: ChannelError) -> ChannelError {
        match tokio::time::timeout(Duration::from_millis(200), self.await_close()).await {
            Ok(Err(why)) if !matches!(why, ChannelError::Io(_)) => why,
            _ => e,
        }
    }

    /// Reads until the engine's close (answering it) or the end of the connection.
    async fn await_close(&mut self) -> Result<(), ChannelError> {
        let wait = async {
            loop {
                match self.ws.rd.next().await {
                    Ok(Incoming::Close(f)) => {
                        self.ws.answer(&f).await;
                        return closed_by(f);
                    }
                    Ok(_) | Err(FrameError::TooBig { .. }) => continue,
                    Err(FrameError::Eof) => return Ok(()),
                    Err(e) => return Err(io_error(e)),
                }
            }
        };
        tokio::time::timeout(CLOSE_WAIT, wait)
            .await
            .unwrap_or_else(|_| Err(ChannelError::Io("no close from the engine".into())))
    }
}

/// The read end of a channel.
pub struct ChannelReader {
    ws: Socket,
    done: bool,
}

impl ChannelReader {
    /// Opens the read end named by `r` on the engine at `engine_url`.
    pub async fn open(engine_url: &str, r: &ChannelRef) -> Result<Self, ChannelError> {
        Ok(Self {
            ws: Socket::open(engine_url, r, Direction::Read).await?,
            done: false,
        })
    }

    /// The next chunk or message; `Ok(None)` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<ChannelItem>, ChannelError> {
        if self.done {
            return Ok(None);
        }
        loop {
            match self.ws.rd.next().await {
                Ok(Incoming::Binary(b)) => return Ok(Some(ChannelItem::Binary(b))),
                Ok(Incoming::Text(t)) => {
                    let text = String::from_utf8(Vec::from(t)).expect("checked on arrival");
                    return Ok(Some(ChannelItem::Text(text)));
                }
                Ok(Incoming::Close(f)) => {
                    self.done = true;
                    self.ws.answer(&f).await;
                    return closed_by(f).map(|()| None);
                }
                Ok(Incoming::Ping(payload)) => {
                    self.ws.wr.queue(OpCode::Pong, payload);
                    self.ws.flush().await?;
                }
                Ok(Incoming::Pong) => {}
                Err(e) => return Err(io_error(e)),
            }
        }
    }

    /// Reads to the end: every byte, and the messages in order.
    pub async fn read_all(&mut self) -> Result<(Vec<u8>, Vec<String>), ChannelError> {
        let (mut bytes, mut texts) = (Vec::new(), Vec::new());
        while let Some(item) = self.next().await? {
            match item {
                ChannelItem::Binary(b) => bytes.extend_from_slice(&b),
                ChannelItem::Text(t) => texts.push(t),
            }
        }
        Ok((bytes, texts))
    }

    /// Leaves early: the writer is told the reader is gone (4410).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(CLOSE_WAIT, self.ws.close(None, "")).await;
    }
}
