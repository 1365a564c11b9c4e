//! The channel workload of `qmesh bench channel`: N binary channels at once,
//! each with one writer and one reader connection through the engine, both
//! in this process so they share one clock.
//!
//! Every frame starts with a 16-byte header, its sequence number in its
//! channel and the time it was sent (nanoseconds since the run started, both
//! little-endian); the rest is a fixed pattern. The reader treats what arrives
//! as a byte stream (it does not rely on the engine keeping frame
//! boundaries), cuts it back into frames, and checks each one: the next
//! sequence number, every byte of the pattern, and at the end that it got
//! every frame the writer sent and no partial one. A frame's latency runs
//! from the writer sending it to the reader holding its last byte.
//!
//! At most `in_flight` frames per channel are sent and not yet received: the
//! writer waits for the reader to free a slot, so `in_flight = 1` measures
//! the hop alone and a larger window measures throughput.

use axum::body::Bytes;
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

use super::{Limit, Outcome, Progress};
use crate::client::channel::{ChannelError, ChannelItem, ChannelReader, ChannelWriter};
use crate::client::{Client, ClientError};

/// Bytes of a frame's header: sequence number, then send time.
pub const HEADER: usize = 16;

/// Creates a channel on `client`'s engine and opens both of its ends.
pub async fn open_pair(client: &Client) -> Result<(ChannelWriter, ChannelReader), SetupError> {
    let pair = client.create_channel(None).await?;
    let writer = client.open_writer(&pair.writer).await?;
    let reader = client.open_reader(&pair.reader).await?;
    Ok((writer, reader))
}

/// Why a channel run could not start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `engine::channels::create` failed.
    #[error(transparent)]
    Create(#[from] ClientError),
    /// An end could not be opened.
    #[error("cannot open a channel end: {0}")]
    Open(#[from] ChannelError),
}

/// The shape of a channel run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelLoad {
    pub channels: usize,
    /// Frames sent and not yet received, per channel (at least 1).
    pub in_flight: usize,
    /// Bytes of each frame, header included (at least [`HEADER`]).
    pub frame_size: usize,
    /// A count is of frames over all channels, shared out evenly.
    pub limit: Limit,
    /// Longest a writer waits to send a frame, or a reader for the next
    /// piece of the stream, before its channel fails: a stalled engine ends
    /// the run instead of hanging it.
    pub stall: Duration,
}

/// What a channel run measured: [`Outcome`] counts frames; `bytes` is what
/// the readers received and verified.
#[derive(Debug)]
pub struct ChannelOutcome {
    pub outcome: Outcome,
    pub bytes: u64,
}

/// Opens `load.channels` channels through `client`'s engine, streams frames
/// through all of them at once until `load.limit`, and closes them.
/// `progress` counts frames received (and failed ones at the end).
pub async fn run(
    client: &Client,
    load: ChannelLoad,
    progress: Arc<Progress>,
) -> Result<ChannelOutcome, SetupError> {
    assert!(
        load.frame_size >= HEADER,
        "frames hold a {HEADER}-byte header"
    );
    let mut ends = Vec::with_capacity(load.channels);
    for _ in 0..load.channels {
        ends.push(open_pair(client).await?);
    }
    let template = pattern(load.frame_size);
    let started = Instant::now();
    let deadline = match load.limit {
        Limit::Duration(d) => Some(started + d),
        Limit::Count(_) => None,
    };
    let mut tasks = Vec::with_capacity(load.channels);
    for (i, (writer, reader)) in ends.into_iter().enumerate() {
        let quota = match load.limit {
            Limit::Count(n) => share(n, load.channels, i),
            Limit::Duration(_) => u64::MAX,
        };
        let window = Arc::new(Semaphore::new(load.in_flight.max(1)));
        let send = Sender {
            template: template.clone(),
            quota,
            deadline,
            window: window.clone(),
            started,
            stall: load.stall,
        };
        let check = FrameCheck::new(template.clone());
        let writer = tokio::spawn(send.run(writer));
        let reader = tokio::spawn(receive(
            reader,
            check,
            window,
            progress.clone(),
            (started, load.stall),
        ));
        tasks.push((writer, reader));
    }
    let mut latency_us = Histogram::<u64>::new(3).expect("3 significant digits is valid");
    let (mut ok, mut errors, mut bytes) = (0, 0, 0);
    let mut first_error = None;
    for (writer, reader) in tasks {
        let (sent, wrote) = writer
            .await
            .unwrap_or_else(|e| (0, Err(format!("writer task: {e}"))));
        let got = reader.await.unwrap_or_else(|e| Received {
            latency_us: Histogram::new(3).expect("valid"),
            frames: 0,
            bytes: 0,
            error: Some(format!("reader task: {e}")),
        });
        latency_us
            .add(&got.latency_us)
            .expect("auto-resizing histograms merge");
        ok += got.frames;
        bytes += got.bytes;
        // The reader's complaint says more than the writer's (which is
        // mostly "the reader is gone" after it left).
        let failure = got.error.or(wrote.err()).or_else(|| {
            (got.frames != sent).then(|| {
                format!(
                    "the writer sent {sent} frames, the reader received {}",
                    got.frames
                )
            })
        });
        if let Some(why) = failure {
            let lost = sent.saturating_sub(got.frames).max(1);
            errors += lost;
            progress.errors.fetch_add(lost, Ordering::Relaxed);
            first_error.get_or_insert(why);
        }
    }
    Ok(ChannelOutcome {
        outcome: Outcome {
            elapsed: started.elapsed(),
            ok,
            errors,
            latency_us,
            first_error,
        },
        bytes,
    })
}

/// Channel `i`'s part of `n` frames over `channels`.
fn share(n: u64, channels: usize, i: usize) -> u64 {
    let c = channels as u64;
    n / c + u64::from((i as u64) < n % c)
}

/// The bytes of every frame after its header: a pattern that does not repeat
/// within 251 bytes, so a shifted or repeated piece does not look right.
fn pattern(frame_size: usize) -> Bytes {
    (0..frame_size).map(|i| (i % 251) as u8).collect()
}

/// One channel's writer.
struct Sender {
    template: Bytes,
    quota: u64,
    deadline: Option<Instant>,
    window: Arc<Semaphore>,
    started: Instant,
    stall: Duration,
}

impl Sender {
    /// Sends frames until the quota or the deadline, then ends the stream.
    /// Returns the frames handed to the socket, and how the writer ended.
    async fn run(self, mut writer: ChannelWriter) -> (u64, Result<(), String>) {
        let mut sent = 0;
        while sent < self.quota && self.deadline.is_none_or(|d| Instant::now() < d) {
            match self.window.acquire().await {
                Ok(slot) => slot.forget(),
                // The reader stopped (and said why): send no more.
                Err(_) => break,
            }
            let mut header = [0u8; HEADER];
            header[..8].copy_from_slice(&sent.to_le_bytes());
            let at = self.started.elapsed().as_nanos() as u64;
            header[8..].copy_from_slice(&at.to_le_bytes());
            // Header and pattern go into the frame in the one copy that masks it.
            let parts: [&[u8]; 2] = [&header, &self.template[HEADER..]];
            match tokio::time::timeout(self.stall, writer.send_parts(&parts)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return (sent, Err(format!("writer: {e}"))),
                Err(_) => {
                    let why = format!("writer: frame {sent} not taken within {:?}", self.stall);
                    return (sent, Err(why));
                }
            }
            sent += 1;
        }
        let end = writer.finish().await.map_err(|e| format!("writer: {e}"));
        (sent, end)
    }
}

/// What one channel's reader saw.
struct Received {
    latency_us: Histogram<u64>,
    frames: u64,
    bytes: u64,
    error: Option<String>,
}

/// Reads one channel to its end, checking every frame.
async fn receive(
    mut reader: ChannelReader,
    mut check: FrameCheck,
    window: Arc<Semaphore>,
    progress: Arc<Progress>,
    (started, stall): (Instant, Duration),
) -> Received {
    let mut latency_us = Histogram::<u64>::new(3).expect("3 significant digits is valid");
    let mut on_frame = |sent_ns: u64| {
        let now = started.elapsed().as_nanos() as u64;
        let us = Duration::from_nanos(now.saturating_sub(sent_ns)).as_micros() as u64;
        // `record` grows an auto-resizing histogram.
        let _ = latency_us.record(us.max(1));
        window.add_permits(1);
        progress.done.fetch_add(1, Ordering::Relaxed);
    };
    let error = loop {
        let Ok(next) = tokio::time::timeout(stall, reader.next()).await else {
            break Some(format!(
                "reader: nothing arrived within {stall:?} after frame {}",
                check.frames
            ));
        };
        match next {
            Ok(Some(ChannelItem::Binary(b))) => {
                if let Err(e) = check.feed(&b, &mut on_frame) {
                    break Some(e);
                }
            }
            Ok(Some(ChannelItem::Text(_))) => {
                break Some(format!(
                    "a text message arrived after frame {}",
                    check.frames
                ));
            }
            Ok(None) => break check.finish().err(),
            Err(e) => break Some(format!("reader after frame {}: {e}", check.frames)),
        }
    };
    if error.is_some() {
        // Unblock the writer, and tell it through the engine that we left.
        window.close();
        reader.close().await;
    }
    Received {
        latency_us,
        frames: check.frames,
        bytes: check.frames * check.template.len() as u64,
        error,
    }
}

/// Cuts a byte stream back into frames and checks each one against what the
/// writer sends: the next sequence number, then the pattern byte for byte.
#[derive(Debug)]
pub struct FrameCheck {
    template: Bytes,
    header: [u8; HEADER],
    /// Bytes of the current frame seen so far.
    pos: usize,
    /// Whole, correct frames so far; also the next sequence number expected.
    pub frames: u64,
}

impl FrameCheck {
    /// Expects frames of `template.len()` bytes whose bytes after the header are `template`'s.
    pub fn new(template: Bytes) -> FrameCheck {
        FrameCheck {
            template,
            header: [0; HEADER],
            pos: 0,
            frames: 0,
        }
    }

    /// Takes the next piece of the stream; calls `on_frame(sent_ns)` for each
    /// frame it completes. A wrong sequence number or byte is an error.
    pub fn feed(&mut self, mut chunk: &[u8], on_frame: &mut impl FnMut(u64)) -> Result<(), String> {
        let size = self.template.len();
        while !chunk.is_empty() {
            let n = if self.pos < HEADER {
                let n = (HEADER - self.pos).min(chunk.len());
                self.header[self.pos..self.pos + n].copy_from_slice(&chunk[..n]);
                if self.pos + n == HEADER {
                    let seq = u64::from_le_bytes(self.header[..8].try_into().expect("8 bytes"));
                    if seq != self.frames {
                        return Err(format!(
                            "frame {} expected, frame {seq} arrived",
                            self.frames
                        ));
                    }
                }
                n
            } else {
                let n = (size - self.pos).min(chunk.len());
                if chunk[..n] != self.template[self.pos..self.pos + n] {
                    return Err(format!(
                        "frame {}: bytes {}..{} differ from what was sent",
                        self.frames,
                        self.pos,
                        self.pos + n
                    ));
                }
                n
            };
            self.pos += n;
            chunk = &chunk[n..];
            if self.pos == size {
                let sent = u64::from_le_bytes(self.header[8..].try_into().expect("8 bytes"));
                self.frames += 1;
                self.pos = 0;
                on_frame(sent);
            }
        }
        Ok(())
    }

    /// At the end of the stream: an error if it stopped inside a frame.
    pub fn finish(&self) -> Result<(), String> {
        if self.pos == 0 {
            return Ok(());
        }
        Err(format!(
            "the stream ended inside frame {} ({} of {} bytes)",
            self.frames,
            self.pos,
            self.template.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, sent: u64, size: usize) -> Vec<u8> {
        let mut f = pattern(size).to_vec();
        f[..8].copy_from_slice(&seq.to_le_bytes());
        f[8..HEADER].copy_from_slice(&sent.to_le_bytes());
        f
    }

    #[test]
    fn frames_are_found_however_the_stream_is_cut() {
        let size = 1000;
        let stream: Vec<u8> = (0..5).flat_map(|s| frame(s, 100 + s, size)).collect();
        for cut in [1, 7, 16, 999, 1000, 1001, 5000] {
            let mut check = FrameCheck::new(pattern(size));
            let mut sent = Vec::new();
            for piece in stream.chunks(cut) {
                check.feed(piece, &mut |t| sent.push(t)).unwrap();
            }
            assert_eq!(sent, [100, 101, 102, 103, 104], "cut {cut}");
            assert_eq!(check.frames, 5);
            check.finish().unwrap();
        }
    }

    #[test]
    fn header_only_frames_work() {
        let mut check = FrameCheck::new(pattern(HEADER));
        let mut n = 0;
        let stream = [frame(0, 1, HEADER), frame(1, 2, HEADER)].concat();
        check.feed(&stream, &mut |_| n += 1).unwrap();
        assert_eq!((n, check.frames), (2, 2));
    }

    #[test]
    fn a_missing_frame_a_changed_byte_or_a_cut_end_is_an_error() {
        let size = 64;
        let mut skip = FrameCheck::new(pattern(size));
        skip.feed(&frame(0, 0, size), &mut |_| {}).unwrap();
        let e = skip.feed(&frame(2, 0, size), &mut |_| {}).unwrap_err();
        assert!(e.contains("frame 1 expected, frame 2 arrived"), "{e}");

        let mut bad = frame(0, 0, size);
        bad[40] ^= 1;
        let mut flipped = FrameCheck::new(pattern(size));
        assert!(flipped.feed(&bad, &mut |_| {}).is_err());
        assert_eq!(flipped.frames, 0);

        let mut cut = FrameCheck::new(pattern(size));
        cut.feed(&frame(0, 0, size)[..30], &mut |_| {}).unwrap();
        assert!(cut.finish().unwrap_err().contains("inside frame 0"));
    }

    #[test]
    fn a_count_is_shared_out_evenly() {
        let parts: Vec<u64> = (0..3).map(|i| share(10, 3, i)).collect();
        assert_eq!(parts, [4, 3, 3]);
        assert_eq!((0..4).map(|i| share(2, 4, i)).sum::<u64>(), 2);
    }
}
