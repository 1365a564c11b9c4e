//! The bounded buffer between a channel's two sockets.
//!
//! Bounded twice: a frame count (an `mpsc` of `buffer_size` slots, iii's
//! meaning of the setting) and a byte budget (a semaphore of `max_bytes`
//! permits; a frame holds permits for its length until it is written to the
//! reader). The writer's pump awaits both before it reads the next frame from
//! its socket, so a slow reader stops the engine reading the writer and TCP
//! pushes back; engine memory stays within the budget whatever the writer does.

use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::budget::{Held, MemoryBudget};
use tokio_util::sync::CancellationToken;

/// What a channel carries, as it arrived from the writer's socket (the
/// payload buffers are the ones the frames were read into).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// A chunk of the byte stream.
    Binary(Bytes),
    /// A message in order with the chunks; valid UTF-8 (checked on arrival).
    Text(Bytes),
}

impl Data {
    /// The byte length (what the budget counts).
    pub fn len(&self) -> usize {
        match self {
            Data::Binary(b) | Data::Text(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One chunk or message, with its share of the byte budget.
pub struct Frame {
    pub data: Data,
    pub receipt: Receipt,
}

/// A frame's claim on the budget, given back by [`PipeRx::delivered`] once the
/// frame is on its way to the reader.
pub struct Receipt {
    len: u64,
    _budget: OwnedSemaphorePermit,
    _engine_budget: Held,
}

/// Counters shown by `engine::channels::info`. "In" is accepted from the
/// writer, "out" written to the reader; the difference is what the engine holds.
#[derive(Debug, Default)]
pub struct Stats {
    pub bytes_in: AtomicU64,
    pub frames_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub frames_out: AtomicU64,
    /// The most bytes ever held at once.
    pub peak_buffered: AtomicU64,
}

impl Stats {
    /// "In" is read first: a delivery racing the two reads can only make
    /// this smaller, never larger than what the engine really held.
    pub fn buffered_bytes(&self) -> u64 {
        let held_in = self.bytes_in.load(Ordering::Acquire);
        held_in.saturating_sub(self.bytes_out.load(Ordering::Acquire))
    }

    pub fn buffered_frames(&self) -> u64 {
        let held_in = self.frames_in.load(Ordering::Acquire);
        held_in.saturating_sub(self.frames_out.load(Ordering::Acquire))
    }
}

/// The pipe is closed at the other end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the reader is gone")]
pub struct ReaderGone;

pub struct PipeTx {
    tx: mpsc::Sender<Frame>,
    budget: Arc<Semaphore>,
    engine_budget: Arc<MemoryBudget>,
    stats: Arc<Stats>,
    reader_gone: CancellationToken,
}

pub struct PipeRx {
    rx: mpsc::Receiver<Frame>,
    budget: Arc<Semaphore>,
    stats: Arc<Stats>,
    reader_gone: CancellationToken,
}

/// A pipe of at most `frames` frames and `max_bytes` bytes.
pub fn pipe(
    frames: usize,
    max_bytes: usize,
    stats: Arc<Stats>,
    engine_budget: Arc<MemoryBudget>,
) -> (PipeTx, PipeRx) {
    let (tx, rx) = mpsc::channel(frames.max(1));
    let budget = Arc::new(Semaphore::new(max_bytes));
    let reader_gone = CancellationToken::new();
    (
        PipeTx {
            tx,
            budget: budget.clone(),
            engine_budget,
            stats: stats.clone(),
            reader_gone: reader_gone.clone(),
        },
        PipeRx {
            rx,
            budget,
            stats,
            reader_gone,
        },
    )
}

impl PipeTx {
    /// Waits for room (the pipe's bytes, the engine's budget, then a frame
    /// slot), then queues `data`.
    /// `data` must be no larger than the pipe's byte budget (the socket's
    /// frame limit guarantees it).
    pub async fn push(&self, data: Data) -> Result<(), ReaderGone> {
        let len = data.len();
        let permits = u32::try_from(len).map_err(|_| ReaderGone)?;
        let budget = self
            .budget
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| ReaderGone)?;
        tokio::select! {
            () = self.engine_budget.room() => {}
            () = self.reader_gone.cancelled() => return Err(ReaderGone),
        }
        let slot = self.tx.reserve().await.map_err(|_| ReaderGone)?;
        let len = len as u64;
        let s = &self.stats;
        let held =
            s.bytes_in.fetch_add(len, Ordering::AcqRel) + len - s.bytes_out.load(Ordering::Acquire);
        s.frames_in.fetch_add(1, Ordering::AcqRel);
        s.peak_buffered.fetch_max(held, Ordering::AcqRel);
        slot.send(Frame {
            data,
            receipt: Receipt {
                len,
                _budget: budget,
                _engine_budget: self.engine_budget.hold(len as usize),
            },
        });
        Ok(())
    }

    /// Resolves once the reader has gone away.
    pub async fn reader_gone(&self) {
        self.reader_gone.cancelled().await
    }
}

impl PipeRx {
    /// The next frame; `None` once the writer's side is dropped and all is delivered.
    pub async fn recv(&mut self) -> Option<Frame> {
        self.rx.recv().await
    }

    /// A frame already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Frame> {
        self.rx.try_recv().ok()
    }

    /// Counts a frame as delivered and releases its budget.
    pub fn delivered(&self, receipt: Receipt) {
        self.stats
            .bytes_out
            .fetch_add(receipt.len, Ordering::AcqRel);
        self.stats.frames_out.fetch_add(1, Ordering::AcqRel);
    }
}

/// A dropped reader wakes a writer waiting for room, and tells an idle one.
impl Drop for PipeRx {
    fn drop(&mut self) {
        self.budget.close();
        self.reader_gone.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn bin(n: usize) -> Data {
        Data::Binary(vec![7u8; n].into())
    }

    #[tokio::test]
    async fn a_full_pipe_blocks_by_bytes_and_by_frames() {
        let stats = Arc::new(Stats::default());
        let (tx, mut rx) = pipe(4, 100, stats.clone(), MemoryBudget::new(1 << 20));
        tx.push(bin(60)).await.unwrap();
        // 60 + 60 > 100: the second push waits until the first is delivered.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), tx.push(bin(60)))
                .await
                .is_err()
        );
        let f = rx.recv().await.unwrap();
        rx.delivered(f.receipt);
        tx.push(bin(60)).await.unwrap();
        assert_eq!(stats.buffered_bytes(), 60);
        assert_eq!(stats.peak_buffered.load(Ordering::Acquire), 60);
        let f = rx.recv().await.unwrap();
        rx.delivered(f.receipt);
        for _ in 0..4 {
            tx.push(bin(0)).await.unwrap();
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(50), tx.push(bin(0)))
                .await
                .is_err(),
            "the fifth frame waits for a slot"
        );
    }

    #[tokio::test]
    async fn a_dropped_reader_fails_a_waiting_writer() {
        let (tx, rx) = pipe(1, 10, Arc::default(), MemoryBudget::new(1 << 20));
        tx.push(bin(10)).await.unwrap();
        let waiting = tokio::spawn(async move {
            let r = tx.push(bin(5)).await;
            tx.reader_gone().await;
            r
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(rx);
        assert_eq!(waiting.await.unwrap(), Err(ReaderGone));
    }
}
