//! One worker connection as the rest of the engine sees it: an identity and an
//! outbox. The socket itself belongs to `edge::worker_socket`.
//!
//! The outbox never blocks the sender: routing code pushes under the registry
//! lock. Memory stays bounded because the bytes queued are counted, and a
//! connection that stops reading until the bound is hit is closed (1013)
//! instead of growing the engine without limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::access::Access;
use crate::budget::MemoryBudget;
use crate::protocol::codes::close;

/// What the socket writer sends next.
#[derive(Debug)]
pub enum Outgoing {
    Text(String),
    Close { code: u16, reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connection closed")]
    Closed,
    #[error("outbound queue full ({0} bytes queued)")]
    Full(usize),
}

#[derive(Debug)]
pub struct Connection {
    pub id: Uuid,
    pub reattach_token: Uuid,
    pub remote_addr: Option<SocketAddr>,
    pub connected_at: SystemTime,
    /// Who this connection is and what it may do; fixed at connect.
    pub access: Arc<Access>,
    outbox: mpsc::UnboundedSender<Outgoing>,
    queued_bytes: AtomicUsize,
    max_queued_bytes: usize,
    /// The engine-wide budget the queued bytes also count against.
    budget: Arc<MemoryBudget>,
    /// Calls this connection is waiting on a re-registering worker for.
    pub(crate) waiting_calls: AtomicUsize,
    closed: CancellationToken,
}

impl Connection {
    pub(crate) fn new(
        remote_addr: Option<SocketAddr>,
        access: Arc<Access>,
        max_queued_bytes: usize,
        budget: Arc<MemoryBudget>,
    ) -> (Self, mpsc::UnboundedReceiver<Outgoing>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = Self {
            id: Uuid::new_v4(),
            reattach_token: Uuid::new_v4(),
            remote_addr,
            connected_at: SystemTime::now(),
            access,
            outbox: tx,
            queued_bytes: AtomicUsize::new(0),
            max_queued_bytes,
            budget,
            waiting_calls: AtomicUsize::new(0),
            closed: CancellationToken::new(),
        };
        (conn, rx)
    }

    /// Queues one text frame. Fails if the connection is closing or its
    /// outbound queue is over the bound (in which case it is closed now).
    pub fn send(&self, text: String) -> Result<(), SendError> {
        if self.closed.is_cancelled() {
            return Err(SendError::Closed);
        }
        let len = text.len();
        let queued = self.queued_bytes.fetch_add(len, Ordering::Relaxed) + len;
        if queued > self.max_queued_bytes {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            tracing::warn!(worker_id = %self.id, queued, "worker stopped reading; closing it");
            self.close(close::TRY_AGAIN_LATER, "outbound queue full: slow consumer");
            return Err(SendError::Full(queued));
        }
        // Counted before it is queued: the writer may send it, and give the
        // bytes back, before this thread runs another line.
        self.budget.charge(len);
        self.outbox.send(Outgoing::Text(text)).map_err(|_| {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            self.budget.release(len);
            SendError::Closed
        })
    }

    /// The id this worker registered a function under: an RBAC session with
    /// a registration prefix registered `x` as `<prefix>::x`, and is called
    /// with `x` again.
    pub(crate) fn local_function_id<'a>(&self, function_id: &'a str) -> &'a str {
        self.access
            .registration_prefix()
            .and_then(|p| function_id.strip_prefix(p))
            .and_then(|rest| rest.strip_prefix("::"))
            .unwrap_or(function_id)
    }

    /// Called by the socket writer once a frame has left.
    pub(crate) fn sent(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.budget.release(bytes);
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    /// Asks the socket to close with `code`. Idempotent; frames already queued go first.
    pub fn close(&self, code: u16, reason: &str) {
        if !self.closed.is_cancelled() {
            let _ = self.outbox.send(Outgoing::Close {
                code,
                reason: reason.to_owned(),
            });
            self.closed.cancel();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Resolves once [`Connection::close`] has been called.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }
}

/// Frames still queued when the connection goes were never sent: their
/// bytes leave the engine's budget with it.
impl Drop for Connection {
    fn drop(&mut self) {
        self.budget.release(*self.queued_bytes.get_mut());
    }
}
