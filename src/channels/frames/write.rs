//! Writing frames: header and payload slices in one vectored write, several
//! frames at a time, without copying a server's payloads.

use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::IoSlice;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::header::{MAX_HEADER, encode};
use super::{OpCode, Role, apply_mask, close_payload};

/// Slices handed to one `writev` at most (well under any system's IOV_MAX).
const MAX_SLICES: usize = 64;

/// One piece of what is queued for the socket, in order.
enum Piece {
    Head { bytes: [u8; MAX_HEADER], len: u8 },
    Body(Bytes),
}

impl Piece {
    fn as_slice(&self) -> &[u8] {
        match self {
            Piece::Head { bytes, len } => &bytes[..*len as usize],
            Piece::Body(b) => b,
        }
    }
}

/// Writes frames to one socket (or its write half).
///
/// Frames are queued, then [`flush`](Self::flush)ed together. A server's
/// payloads go out as they are (each `Bytes` is held until written); a
/// client's are masked into one new buffer per frame, as they must be.
pub struct FrameWriter<W> {
    io: W,
    role: Role,
    queue: VecDeque<Piece>,
    /// Bytes of the first piece already written.
    offset: usize,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(io: W, role: Role) -> Self {
        FrameWriter {
            io,
            role,
            queue: VecDeque::new(),
            offset: 0,
        }
    }

    /// Queues one frame whose payload is `payload` (not copied by a server).
    pub fn queue(&mut self, opcode: OpCode, payload: Bytes) {
        match self.role {
            Role::Server => {
                let mut bytes = [0; MAX_HEADER];
                let len = encode(&mut bytes, opcode, payload.len(), None) as u8;
                self.queue.push_back(Piece::Head { bytes, len });
                if !payload.is_empty() {
                    self.queue.push_back(Piece::Body(payload));
                }
            }
            Role::Client => self.queue_parts(opcode, &[&payload]),
        }
    }

    /// Queues one frame whose payload is `parts` back to back. Copied once,
    /// which for a client is also where the masking happens.
    pub fn queue_parts(&mut self, opcode: OpCode, parts: &[&[u8]]) {
        let len = parts.iter().map(|p| p.len()).sum();
        let key = match self.role {
            Role::Client => Some(rand::random::<[u8; 4]>()),
            Role::Server => None,
        };
        let mut head = [0; MAX_HEADER];
        let size = encode(&mut head, opcode, len, key);
        let mut frame = BytesMut::with_capacity(size + len);
        frame.extend_from_slice(&head[..size]);
        for part in parts {
            frame.extend_from_slice(part);
        }
        if let Some(key) = key {
            // Still in cache from the copy above.
            apply_mask(&mut frame[size..], key);
        }
        self.queue.push_back(Piece::Body(frame.freeze()));
    }

    /// Queues a close frame: `code` and `reason`, or nothing for a close
    /// without a status.
    pub fn queue_close(&mut self, code: Option<u16>, reason: &str) {
        let payload = code.map(|c| close_payload(c, reason)).unwrap_or_default();
        self.queue_parts(OpCode::Close, &[&payload]);
    }

    /// Writes everything queued. Cancel-safe: what was written is recorded
    /// before the next await, so a later call resumes mid-frame and the
    /// stream stays whole.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        while !self.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            for (slot, piece) in slices.iter_mut().zip(&self.queue) {
                let bytes = piece.as_slice();
                *slot = IoSlice::new(if count == 0 {
                    &bytes[self.offset..]
                } else {
                    bytes
                });
                count += 1;
            }
            let written = self.io.write_vectored(&slices[..count]).await?;
            if written == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.consume(written);
        }
        self.io.flush().await
    }

    /// Drops `n` written bytes from the front of the queue.
    fn consume(&mut self, mut n: usize) {
        while let Some(piece) = self.queue.front() {
            let left = piece.as_slice().len() - self.offset;
            if n < left {
                self.offset += n;
                return;
            }
            n -= left;
            self.offset = 0;
            self.queue.pop_front();
        }
    }

    /// Ends the write side (a TCP FIN once the socket is dropped or shut).
    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        self.io.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::super::{CloseFrame, FrameReader, Incoming};
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A socket that takes at most `step` bytes per write, to force partial writes.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let mut budget = self.step;
            for b in bufs {
                let n = b.len().min(budget);
                self.out.extend_from_slice(&b[..n]);
                budget -= n;
                if budget == 0 {
                    break;
                }
            }
            Poll::Ready(Ok(self.step - budget))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    async fn round_trip(role: Role, step: usize) -> Vec<Incoming> {
        let mut w = FrameWriter::new(
            Trickle {
                out: Vec::new(),
                step,
            },
            role,
        );
        let big: Bytes = (0..70_000u32).map(|i| i as u8).collect();
        w.queue(OpCode::Binary, big);
        w.queue(OpCode::Text, Bytes::from_static(b"between"));
        w.queue(OpCode::Binary, Bytes::new());
        w.queue_parts(OpCode::Binary, &[b"two ", b"parts"]);
        w.queue(OpCode::Pong, Bytes::from_static(b"p"));
        w.queue_close(Some(4410), "reader gone");
        w.flush().await.unwrap();
        let peer = match role {
            Role::Server => Role::Client,
            Role::Client => Role::Server,
        };
        let mut r = FrameReader::new(std::io::Cursor::new(w.io.out), peer, 1 << 20);
        let mut got = Vec::new();
        while let Ok(m) = r.next().await {
            got.push(m);
        }
        got
    }

    #[tokio::test]
    async fn queued_frames_arrive_whole_and_in_order_through_partial_writes() {
        let big: Bytes = (0..70_000u32).map(|i| i as u8).collect();
        let want = vec![
            Incoming::Binary(big),
            Incoming::Text("between".into()),
            Incoming::Binary(Bytes::new()),
            Incoming::Binary("two parts".into()),
            Incoming::Pong,
            Incoming::Close(Some(CloseFrame {
                code: 4410,
                reason: "reader gone".into(),
            })),
        ];
        for role in [Role::Server, Role::Client] {
            for step in [1, 7, 4096, 1 << 20] {
                assert_eq!(
                    round_trip(role, step).await,
                    want,
                    "{role:?}, {step} bytes a write"
                );
            }
        }
    }
}
