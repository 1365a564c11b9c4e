//! Reading frames: each payload lands in its own buffer, straight from the
//! socket, and leaves as `Bytes` without a copy.

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::header::{self, Header, MAX_HEADER, Parsed};
use super::{CloseFrame, FrameError, Incoming, OpCode, Role, apply_mask};

/// Reads smaller than this are rounded up, so small frames come several to a
/// read; a frame's payload read past it ends up copied once, which costs less
/// than the system call it saves.
const SMALL_READ: usize = 4096;
/// Chunk size for discarding the bytes of a refused frame.
const DISCARD_READ: usize = 64 << 10;

/// Reads messages from one socket (or its read half).
///
/// Every read goes into `buf`'s spare capacity (never zeroed), sized to end at
/// the current frame's last byte plus room for the next header. A complete
/// frame is split off the front of `buf`: the payload keeps that memory, and
/// only the few bytes read past it move to a new buffer.
pub struct FrameReader<R> {
    io: R,
    role: Role,
    /// Largest message accepted, in bytes (joined fragments count together).
    limit: usize,
    buf: BytesMut,
    /// Size of the last whole frame: the next one is likely alike.
    last_frame: usize,
    /// Bytes of a refused frame (from the start of `buf`) still to discard.
    skip: u64,
    /// A fragmented message being joined: its type and bytes so far.
    partial: Option<(OpCode, BytesMut)>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R, role: Role, limit: usize) -> Self {
        Self::with_buffered(io, role, limit, BytesMut::new())
    }

    /// Like [`new`](Self::new), with bytes already read past the handshake.
    pub fn with_buffered(io: R, role: Role, limit: usize, buffered: BytesMut) -> Self {
        FrameReader {
            io,
            role,
            limit,
            buf: buffered,
            last_frame: 0,
            skip: 0,
            partial: None,
        }
    }

    /// The next message. [`FrameError::TooBig`] refuses one message and
    /// leaves the socket readable (its bytes are skipped on the next call);
    /// the other errors end the socket.
    ///
    /// Cancel-safe: everything read is kept in `self`, so a call dropped at
    /// an await loses nothing and the next call carries on.
    pub async fn next(&mut self) -> Result<Incoming, FrameError> {
        loop {
            if self.skip > 0 {
                self.discard().await?;
                continue;
            }
            let h = match header::parse(&self.buf)? {
                Parsed::Need(n) => {
                    self.fill(n).await?;
                    continue;
                }
                Parsed::Header(h) => h,
            };
            self.check(&h)?;
            let total = h.size + h.len as usize; // `check` bounded `len`
            if self.buf.len() < total {
                self.fill(total).await?;
                continue;
            }
            self.last_frame = total;
            let mut payload = self.buf.split_to(total);
            payload.advance(h.size);
            if let Some(key) = h.mask {
                apply_mask(&mut payload, key);
            }
            if let Some(message) = self.message(h, payload)? {
                return Ok(message);
            }
        }
    }

    /// The rules a header breaks only in context: masking by role, and size.
    fn check(&mut self, h: &Header) -> Result<(), FrameError> {
        match (self.role, h.mask) {
            (Role::Server, None) => {
                return Err(FrameError::Protocol("client frames must be masked"));
            }
            (Role::Client, Some(_)) => {
                return Err(FrameError::Protocol("server frames must not be masked"));
            }
            _ => {}
        }
        let joined = match (&self.partial, h.opcode) {
            (Some((_, so_far)), OpCode::Continuation) => so_far.len() as u64,
            _ => 0,
        };
        if joined + h.len > self.limit as u64 {
            self.skip = h.size as u64 + h.len;
            self.partial = None;
            return Err(FrameError::TooBig {
                len: joined + h.len,
                limit: self.limit,
            });
        }
        Ok(())
    }

    /// What a whole frame means; `None` for a fragment of a message not yet whole.
    fn message(&mut self, h: Header, payload: BytesMut) -> Result<Option<Incoming>, FrameError> {
        let (opcode, whole) = match h.opcode {
            OpCode::Ping => return Ok(Some(Incoming::Ping(payload.freeze()))),
            OpCode::Pong => return Ok(Some(Incoming::Pong)),
            OpCode::Close => return close_frame(&payload).map(|f| Some(Incoming::Close(f))),
            OpCode::Text | OpCode::Binary if self.partial.is_some() => {
                return Err(FrameError::Protocol(
                    "a message began inside a fragmented one",
                ));
            }
            OpCode::Text | OpCode::Binary => (h.opcode, payload),
            OpCode::Continuation => {
                let Some((opcode, mut joined)) = self.partial.take() else {
                    return Err(FrameError::Protocol(
                        "a continuation frame without a message",
                    ));
                };
                // Joining copies; the SDKs send whole frames, so this is the rare path.
                joined.extend_from_slice(&payload);
                (opcode, joined)
            }
        };
        if !h.fin {
            self.partial = Some((opcode, whole));
            return Ok(None);
        }
        let whole = whole.freeze();
        Ok(Some(match opcode {
            OpCode::Text if std::str::from_utf8(&whole).is_err() => {
                return Err(FrameError::InvalidUtf8);
            }
            OpCode::Text => Incoming::Text(whole),
            _ => Incoming::Binary(whole),
        }))
    }

    /// Reads until `buf` holds at least `need` bytes' worth of one more read.
    async fn fill(&mut self, need: usize) -> Result<(), FrameError> {
        // Up to the frame's end and the next header, so a stream of large
        // frames takes one read each and the payload lands where it stays.
        let want = (need + MAX_HEADER).max(SMALL_READ) - self.buf.len();
        // Room for a frame like the last one, so a header read on its own
        // does not leave its payload to be moved to a bigger buffer.
        let room = want.max((self.last_frame + MAX_HEADER).saturating_sub(self.buf.len()));
        self.buf.reserve(room);
        let n = self.io.read_buf(&mut (&mut self.buf).limit(want)).await?;
        if n == 0 {
            return Err(FrameError::Eof);
        }
        Ok(())
    }

    /// Drops bytes of a refused frame, reading them in bounded chunks.
    async fn discard(&mut self) -> Result<(), FrameError> {
        let held = self.skip.min(self.buf.len() as u64);
        self.buf.advance(held as usize);
        self.skip -= held;
        if self.skip == 0 {
            return Ok(());
        }
        let want = self.skip.min(DISCARD_READ as u64) as usize;
        self.buf.reserve(want);
        let n = self.io.read_buf(&mut (&mut self.buf).limit(want)).await?;
        if n == 0 {
            return Err(FrameError::Eof);
        }
        Ok(())
    }
}

/// A close frame's code and reason (RFC 6455 §5.5.1, §7.4).
fn close_frame(payload: &[u8]) -> Result<Option<CloseFrame>, FrameError> {
    let (code, reason) = match payload {
        [] => return Ok(None),
        [_] => return Err(FrameError::Protocol("a close frame of one byte")),
        [hi, lo, reason @ ..] => (u16::from_be_bytes([*hi, *lo]), reason),
    };
    // Codes a peer may not send: below 1000, reserved for local use, or unassigned.
    if !(1000..5000).contains(&code) || matches!(code, 1004..=1006 | 1015) {
        return Err(FrameError::Protocol("a close code a peer may not send"));
    }
    let reason = std::str::from_utf8(reason).map_err(|_| FrameError::InvalidUtf8)?;
    Ok(Some(CloseFrame {
        code,
        reason: reason.to_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use super::super::header::encode;
    use super::*;

    /// A client's frame, masked, as raw bytes.
    fn masked(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let key = [9, 8, 7, 6];
        let mut head = [0; MAX_HEADER];
        let n = encode(&mut head, opcode, payload.len(), Some(key));
        if !fin {
            head[0] &= 0x7F;
        }
        let mut body = payload.to_vec();
        apply_mask(&mut body, key);
        [&head[..n], &body].concat()
    }

    fn reader(bytes: Vec<u8>, limit: usize) -> FrameReader<std::io::Cursor<Vec<u8>>> {
        FrameReader::new(std::io::Cursor::new(bytes), Role::Server, limit)
    }

    #[tokio::test]
    async fn frames_of_every_size_come_out_whole_and_unmasked() {
        let sizes = [0, 1, 125, 126, 4000, 65535, 65536, 200_000];
        let mut wire = Vec::new();
        for (i, n) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..*n).map(|j| (i + j) as u8).collect();
            wire.extend(masked(true, OpCode::Binary, &data));
        }
        wire.extend(masked(true, OpCode::Text, "héllo".as_bytes()));
        let mut r = reader(wire, 1 << 20);
        for (i, n) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..*n).map(|j| (i + j) as u8).collect();
            assert_eq!(
                r.next().await.unwrap(),
                Incoming::Binary(data.into()),
                "frame {i}"
            );
        }
        assert_eq!(r.next().await.unwrap(), Incoming::Text("héllo".into()));
        assert!(matches!(r.next().await, Err(FrameError::Eof)));
    }

    #[tokio::test]
    async fn fragments_are_joined_around_control_frames() {
        let wire = [
            masked(false, OpCode::Text, b"one "),
            masked(true, OpCode::Ping, b"p"),
            masked(false, OpCode::Continuation, b"two "),
            masked(true, OpCode::Continuation, b"three"),
            masked(
                true,
                OpCode::Close,
                &super::super::close_payload(1000, "bye"),
            ),
        ]
        .concat();
        let mut r = reader(wire, 100);
        assert_eq!(r.next().await.unwrap(), Incoming::Ping("p".into()));
        assert_eq!(
            r.next().await.unwrap(),
            Incoming::Text("one two three".into())
        );
        let close = CloseFrame {
            code: 1000,
            reason: "bye".into(),
        };
        assert_eq!(r.next().await.unwrap(), Incoming::Close(Some(close)));
    }

    #[tokio::test]
    async fn an_oversize_message_is_refused_before_any_allocation_and_skipped() {
        // A header claiming 2^62 bytes: refused from the header alone.
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend((1u64 << 62).to_be_bytes());
        huge.extend([1, 2, 3, 4]);
        let mut r = reader(huge, 1000);
        assert!(matches!(
            r.next().await,
            Err(FrameError::TooBig { limit: 1000, .. })
        ));
        assert!(r.buf.capacity() < 64 << 10, "nothing sized by the header");

        // Fragments that grow past the limit together, then a close that is still read.
        let wire = [
            masked(false, OpCode::Binary, &[1; 600]),
            masked(true, OpCode::Continuation, &[2; 600]),
            masked(true, OpCode::Binary, &[3; 10]),
        ]
        .concat();
        let mut r = reader(wire, 1000);
        let e = r.next().await.unwrap_err();
        assert!(matches!(e, FrameError::TooBig { len: 1200, .. }), "{e}");
        assert_eq!(e.close_code(), Some(1009));
        assert_eq!(
            r.next().await.unwrap(),
            Incoming::Binary(vec![3; 10].into())
        );
    }

    #[tokio::test]
    async fn unmasked_or_malformed_client_frames_are_protocol_errors() {
        let unmasked = vec![0x82, 3, 1, 2, 3];
        let cases = [
            (unmasked, 1002),
            (masked(true, OpCode::Continuation, b"x"), 1002),
            (
                [
                    masked(false, OpCode::Binary, b"x"),
                    masked(true, OpCode::Text, b"y"),
                ]
                .concat(),
                1002,
            ),
            (masked(true, OpCode::Text, &[0xff, 0xfe]), 1007),
            (masked(true, OpCode::Close, &[0x03]), 1002),
            (masked(true, OpCode::Close, &1005u16.to_be_bytes()), 1002),
        ];
        for (wire, code) in cases {
            let e = reader(wire.clone(), 100).next().await.unwrap_err();
            assert_eq!(e.close_code(), Some(code), "{e} for {wire:?}");
        }
    }

    #[tokio::test]
    async fn a_client_refuses_masked_frames_and_reads_plain_ones() {
        let wire = masked(true, OpCode::Binary, b"x");
        let mut r = FrameReader::new(std::io::Cursor::new(wire), Role::Client, 100);
        assert!(matches!(r.next().await, Err(FrameError::Protocol(_))));
        let plain = vec![0x82, 2, b'o', b'k'];
        let mut r = FrameReader::new(std::io::Cursor::new(plain), Role::Client, 100);
        assert_eq!(r.next().await.unwrap(), Incoming::Binary("ok".into()));
    }
}
