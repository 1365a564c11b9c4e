//! A closed-loop load generator over [`Client`]s, shared by `qmesh bench` and
//! usable from the benches in `benches/`.
//!
//! [`drive`] keeps `in_flight` operations outstanding on each client until a
//! [`Limit`] is reached; each operation reports its own latency, which lands in
//! an HDR histogram (microseconds). [`Progress`] is updated as operations end,
//! so a caller can draw a progress bar while it runs. [`workload`] has the
//! operations `qmesh bench` measures; [`Report`] is what a run prints.
//! [`channel`] is the streaming workload: frames through binary channels.

pub mod channel;
mod report;
pub mod workload;

pub use report::{Latency, Report, RunShape};

use hdrhistogram::Histogram;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::client::{Client, ClientError};

/// When a run stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Start no operation after this long; the ones in flight still finish.
    Duration(Duration),
    /// Run exactly this many operations in total.
    Count(u64),
}

/// Counters a progress display reads while a run goes on.
#[derive(Debug, Default)]
pub struct Progress {
    done: AtomicU64,
    errors: AtomicU64,
}

impl Progress {
    /// Operations ended so far, failed ones included.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// What a run measured.
#[derive(Debug)]
pub struct Outcome {
    /// From the first operation's start to the last one's end.
    pub elapsed: Duration,
    /// Operations that succeeded.
    pub ok: u64,
    pub errors: u64,
    /// Latency of the successful operations, in microseconds.
    pub latency_us: Histogram<u64>,
    /// The first failure, for the report.
    pub first_error: Option<String>,
}

/// Runs `op(client, seq)` from `in_flight` tasks per client until `limit`.
/// `seq` numbers operations from 0 across the whole run. `op` returns the
/// latency it measured. A task stops early once its connection is gone.
pub async fn drive<F, Fut>(
    clients: &[Client],
    in_flight: usize,
    limit: Limit,
    progress: Arc<Progress>,
    op: F,
) -> Outcome
where
    F: Fn(Client, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Duration, ClientError>> + Send + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let started = Instant::now();
    let deadline = match limit {
        Limit::Duration(d) => Some(started + d),
        Limit::Count(_) => None,
    };
    let count = match limit {
        Limit::Count(n) => n,
        Limit::Duration(_) => u64::MAX,
    };
    let mut tasks = Vec::with_capacity(clients.len() * in_flight.max(1));
    for client in clients {
        for _ in 0..in_flight.max(1) {
            let lane = Lane {
                client: client.clone(),
                next: next.clone(),
                count,
                deadline,
                progress: progress.clone(),
                first_error: first_error.clone(),
            };
            tasks.push(tokio::spawn(lane.run(op.clone())));
        }
    }
    let mut latency_us = Histogram::<u64>::new(3).expect("3 significant digits is valid");
    let mut ok = 0;
    for task in tasks {
        if let Ok((h, n)) = task.await {
            ok += n;
            latency_us.add(h).expect("auto-resizing histograms merge");
        }
    }
    let first_error = first_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    Outcome {
        elapsed: started.elapsed(),
        ok,
        errors: progress.errors(),
        latency_us,
        first_error,
    }
}

/// One task keeping one operation outstanding.
struct Lane {
    client: Client,
    next: Arc<AtomicU64>,
    count: u64,
    deadline: Option<Instant>,
    progress: Arc<Progress>,
    first_error: Arc<Mutex<Option<String>>>,
}

impl Lane {
    async fn run<F, Fut>(self, op: Arc<F>) -> (Histogram<u64>, u64)
    where
        F: Fn(Client, u64) -> Fut,
        Fut: Future<Output = Result<Duration, ClientError>>,
    {
        let mut h = Histogram::<u64>::new(3).expect("3 significant digits is valid");
        let mut ok = 0;
        loop {
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let seq = self.next.fetch_add(1, Ordering::Relaxed);
            if seq >= self.count {
                break;
            }
            let outcome = op(self.client.clone(), seq).await;
            self.progress.done.fetch_add(1, Ordering::Relaxed);
            match outcome {
                Ok(latency) => {
                    // `record` grows an auto-resizing histogram; `saturating_record` would clamp.
                    let _ = h.record(latency.as_micros().max(1) as u64);
                    ok += 1;
                }
                Err(e) => {
                    self.progress.errors.fetch_add(1, Ordering::Relaxed);
                    let gone = matches!(e, ClientError::Closed);
                    self.first_error
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get_or_insert_with(|| e.to_string());
                    if gone {
                        break;
                    }
                }
            }
        }
        (h, ok)
    }
}
