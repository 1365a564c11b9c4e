//! Binary channels from the client side: create one, open its writer or
//! reader (`worker-protocol.md` §6). Frames and close codes as the engine
//! speaks them: binary frames are the stream (64 KiB each, as the SDKs send),
//! text frames are messages in order with it, a normal close is the end.

use axum::body::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use super::connection::Socket;
use crate::protocol::channel::socket_url;
pub use crate::protocol::channel::{ChannelPair, ChannelRef, Direction};
use crate::protocol::codes::close;

/// The chunk size the SDKs use; [`ChannelWriter::write`] splits by it.
pub const CHUNK: usize = 64 << 10;
/// Large socket buffers: channel traffic is bulk.
const SOCKET_BUFFER: usize = 128 << 10;
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

async fn open(engine_url: &str, r: &ChannelRef, want: Direction) -> Result<Socket, ChannelError> {
    if r.direction != want {
        return Err(ChannelError::WrongDirection(r.direction));
    }
    let config = WebSocketConfig::default()
        .read_buffer_size(SOCKET_BUFFER)
        .write_buffer_size(SOCKET_BUFFER);
    let url = socket_url(engine_url, r);
    match tokio_tungstenite::connect_async_with_config(url, Some(config), true).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => {
            let reason = resp
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err(ChannelError::Refused {
                status: resp.status().as_u16(),
                reason,
            })
        }
        Err(e) => Err(ChannelError::Io(e.to_string())),
    }
}

/// What a close from the engine means.
fn closed_by(frame: Option<tungstenite::protocol::CloseFrame>) -> Result<(), ChannelError> {
    let Some(f) = frame else { return Ok(()) };
    match u16::from(f.code) {
        close::NORMAL => Ok(()),
        close::CHANNEL_WRITER_ABORTED => Err(ChannelError::WriterAborted),
        close::CHANNEL_READER_GONE => Err(ChannelError::ReaderGone),
        close::CHANNEL_ABANDONED => Err(ChannelError::Abandoned),
        code => Err(ChannelError::Closed {
            code,
            reason: f.reason.to_string(),
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
            ws: open(engine_url, r, Direction::Write).await?,
        })
    }

    /// Writes `data` as 64 KiB chunks; returns once they are on the socket.
    /// It waits while the engine's buffer is full (a slow reader).
    pub async fn write(&mut self, data: &[u8]) -> Result<(), ChannelError> {
        for chunk in data.chunks(CHUNK) {
            let msg = Message::Binary(Bytes::copy_from_slice(chunk));
            if let Err(e) = self.ws.feed(msg).await {
                return Err(self.failed(e).await);
            }
        }
        self.flush().await
    }

    /// Sends one binary frame as given (no copy, no split).
    pub async fn send_frame(&mut self, frame: Bytes) -> Result<(), ChannelError> {
        if let Err(e) = self.ws.send(Message::Binary(frame)).await {
            return Err(self.failed(e).await);
        }
        Ok(())
    }

    /// Sends one text message, ordered with the bytes written before it.
    pub async fn send_text(&mut self, text: &str) -> Result<(), ChannelError> {
        if let Err(e) = self.ws.send(Message::Text(text.into())).await {
            return Err(self.failed(e).await);
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ChannelError> {
        if let Err(e) = self.ws.flush().await {
            return Err(self.failed(e).await);
        }
        Ok(())
    }

    /// Ends the stream (close 1000) and waits for the engine's answer:
    /// `Err(ReaderGone)` if the reader left before the end.
    pub async fn finish(mut self) -> Result<(), ChannelError> {
        let frame = tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "end of stream".into(),
        };
        if let Err(e) = self.ws.send(Message::Close(Some(frame))).await {
            return Err(self.failed(e).await);
        }
        self.await_close().await
    }

    /// Drops the socket without a close: the reader sees an abort (4499).
    pub fn abort(self) {
        drop(self.ws);
    }

    /// A send failed: the engine's close frame, if one arrived, says why.
    async fn failed(&mut self, e: tungstenite::Error) -> ChannelError {
        match tokio::time::timeout(Duration::from_millis(200), self.await_close()).await {
            Ok(Err(why)) if !matches!(why, ChannelError::Io(_)) => why,
            _ => ChannelError::Io(e.to_string()),
        }
    }

    async fn await_close(&mut self) -> Result<(), ChannelError> {
        let wait = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(f))) => return closed_by(f),
                    Some(Ok(_)) => continue,
                    Some(Err(tungstenite::Error::ConnectionClosed)) | None => return Ok(()),
                    Some(Err(e)) => return Err(ChannelError::Io(e.to_string())),
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
            ws: open(engine_url, r, Direction::Read).await?,
            done: false,
        })
    }

    /// The next chunk or message; `Ok(None)` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<ChannelItem>, ChannelError> {
        if self.done {
            return Ok(None);
        }
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Binary(b))) => return Ok(Some(ChannelItem::Binary(b))),
                Some(Ok(Message::Text(t))) => return Ok(Some(ChannelItem::Text(t.to_string()))),
                Some(Ok(Message::Close(f))) => {
                    self.done = true;
                    // Let tungstenite send its close reply.
                    let _ = self.ws.flush().await;
                    return closed_by(f).map(|()| None);
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(ChannelError::Io(e.to_string())),
                None => return Err(ChannelError::Io("connection lost".into())),
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
        let _ = tokio::time::timeout(CLOSE_WAIT, self.ws.close(None)).await;
    }
}
