//! Binary channels: one-way byte pipes between workers, brokered by the
//! engine (`docs/protocol.md` §6, `docs/channels.md` §4.1).
//!
//! A worker calls `engine::channels::create` and gets two refs, one per end,
//! each with its own key. Each end opens `/ws/channels/{id}?key=…&dir=…`
//! (served by [`socket`]); the engine relays the writer's frames
//! to the reader in order through a [`pipe`] bounded by frames and bytes.
//!
//! - [`keys`]: per-end access keys, compared in constant time.
//! - [`pipe`]: the bounded buffer and its counters.
//! - [`frames`]: the WebSocket framing of channel sockets (both sides),
//!   which moves payloads without copying them.
//! - [`config`]: the `[channels]` settings.
//! - [`functions`]: `engine::channels::*`; [`socket`]: the channel socket route.
//! - [`bridged`]: ends driven by another engine instead of a socket (in a
//!   cluster, through the `module::ChannelPeers` and `ChannelEnds` seams):
//!   a socket here for a channel another engine holds uses a *proxy*, a
//!   pipe of its own whose other half the cluster carries to that engine.
//! - this file: the registry of live channels, who may claim which end, and
//!   when a channel goes (finished, expired, creator gone, engine stopping).

pub(crate) mod bridged;
pub mod config;
pub mod frames;
pub(crate) mod functions;
pub(crate) mod keys;
pub(crate) mod pipe;
pub(crate) mod socket;

pub use config::ChannelConfig;

use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::budget::MemoryBudget;
use crate::module::{ChannelPeers, PeerRefusal};
use crate::protocol::channel::{ChannelPair, ChannelRef, Direction};
use keys::AccessKey;
use pipe::{PipeRx, PipeTx, Stats};

/// Removed channels are remembered this long (at least), so a late connect
/// gets 410 with the reason rather than a bare 404.
const TOMBSTONE_MIN: Duration = Duration::from_secs(60);
/// Bound on remembered removals; the oldest are forgotten first.
const MAX_TOMBSTONES: usize = 100_000;

/// The engine's channels. Cheap to clone.
#[derive(Clone)]
pub struct Channels {
    inner: Arc<Registry>,
}

struct Registry {
    config: ChannelConfig,
    /// The engine-wide budget buffered frames count against.
    budget: Arc<MemoryBudget>,
    table: Mutex<Table>,
    /// Parent of every channel's `abandoned` token: cancelled at shutdown.
    stopping: CancellationToken,
    /// The engines that may hold a channel this one does not (a cluster).
    peers: Option<Arc<dyn ChannelPeers>>,
}

#[derive(Default)]
struct Table {
    live: HashMap<Uuid, Arc<Channel>>,
    gone: HashMap<Uuid, Tombstone>,
}

struct Tombstone {
    writer_key: AccessKey,
    reader_key: AccessKey,
    reason: GoneReason,
    at: Instant,
}

/// Why a channel no longer exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GoneReason {
    /// Both ends are done.
    Finished,
    /// Its ends did not both connect within `channels.ttl`.
    Expired,
    /// The worker that created it disconnected before either end connected.
    CreatorLeft,
}

impl std::fmt::Display for GoneReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GoneReason::Finished => "the channel has finished",
            GoneReason::Expired => "the channel expired before both ends connected",
            GoneReason::CreatorLeft => "the worker that created the channel disconnected",
        })
    }
}

/// Why a connect to a channel end is refused (before the upgrade).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("no such channel, or the key does not open its {0} end")]
    NotFound(Direction),
    #[error("the {0} end of this channel is already taken")]
    Taken(Direction),
    #[error("{0}")]
    Gone(GoneReason),
}

/// How an end stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndState {
    /// Never connected.
    Waiting,
    /// Claimed, the WebSocket upgrade under way.
    Connecting,
    Open,
    /// Writer: closed normally (end of stream). Reader: got everything.
    Done,
    /// Writer: vanished without a normal close. Reader: went away early.
    Aborted,
    /// The channel was abandoned (expiry, engine stopping) while it was open.
    Cancelled,
}

impl EndState {
    fn connected_once(self) -> bool {
        !matches!(self, EndState::Waiting)
    }

    fn is_over(self) -> bool {
        matches!(
            self,
            EndState::Done | EndState::Aborted | EndState::Cancelled
        )
    }
}

pub struct Channel {
    pub id: Uuid,
    writer_key: AccessKey,
    reader_key: AccessKey,
    /// The worker that created it, if a worker did.
    pub owner: Option<Uuid>,
    pub created: Instant,
    pub buffer_frames: usize,
    pub max_bytes: usize,
    pub stats: Arc<Stats>,
    /// Cancelled when the channel is abandoned: open ends close at once.
    pub abandoned: CancellationToken,
    ends: Mutex<Ends>,
}

struct Ends {
    writer: EndState,
    reader: EndState,
    tx: Option<PipeTx>,
    rx: Option<PipeRx>,
}

/// One end, claimed before the upgrade. Dropping it unused (the upgrade
/// failed) gives the end back, so a broken handshake does not burn it.
pub struct Claim {
    channels: Channels,
    pub channel: Arc<Channel>,
    pub dir: Direction,
    end: Option<ClaimedEnd>,
    /// A proxy's end (its channel is on another engine): unused, it is
    /// dropped rather than given back, which ends the proxy.
    proxy: bool,
}

pub enum ClaimedEnd {
    Writer(PipeTx),
    Reader(PipeRx),
}

impl Channels {
    /// The engine's channels; with `peers`, a socket for a channel held by
    /// another engine of the cluster is connected to it.
    pub(crate) fn new(
        config: ChannelConfig,
        budget: Arc<MemoryBudget>,
        peers: Option<Arc<dyn ChannelPeers>>,
    ) -> Self {
        Channels {
            inner: Arc::new(Registry {
                config,
                budget,
                table: Mutex::default(),
                stopping: CancellationToken::new(),
                peers,
            }),
        }
    }

    pub fn config(&self) -> &ChannelConfig {
        &self.inner.config
    }

    /// Whether the engine's memory budget is spent (no new channels then).
    pub fn budget_spent(&self) -> bool {
        self.inner.budget.is_spent()
    }

    /// Never held across an await; a poisoned lock still holds sound tables.
    fn table(&self) -> MutexGuard<'_, Table> {
        self.inner.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new channel. `buffer_frames` is clamped to the configured range, as
    /// iii clamps it. `None` when `channels.max_channels` are alive.
    pub fn create(&self, owner: Option<Uuid>, buffer_frames: Option<usize>) -> Option<ChannelPair> {
        let c = &self.inner.config;
        let frames = buffer_frames
            .unwrap_or(c.default_buffer_frames)
            .clamp(1, c.max_buffer_frames);
        let stats = Arc::new(Stats::default());
        let (tx, rx) = pipe::pipe(
            frames,
            c.max_buffer_bytes,
            stats.clone(),
            self.inner.budget.clone(),
        );
        let channel = Arc::new(Channel {
            id: Uuid::new_v4(),
            writer_key: AccessKey::random(),
            reader_key: AccessKey::random(),
            owner,
            created: Instant::now(),
            buffer_frames: frames,
            max_bytes: c.max_buffer_bytes,
            stats,
            abandoned: self.inner.stopping.child_token(),
            ends: Mutex::new(Ends {
                writer: EndState::Waiting,
                reader: EndState::Waiting,
                tx: Some(tx),
                rx: Some(rx),
            }),
        });
        let pair = ChannelPair {
            writer: channel.make_ref(Direction::Write),
            reader: channel.make_ref(Direction::Read),
        };
        let mut table = self.table();
        if table.live.len() >= c.max_channels {
            return None;
        }
        table.live.insert(channel.id, channel.clone());
        drop(table);
        tracing::debug!(channel_id = %channel.id, owner = ?owner, buffer_frames = frames, "channel created");
        Some(pair)
    }

    /// Takes one end for a socket about to be upgraded.
    pub fn claim(&self, id: &str, dir: Direction, key: &str) -> Result<Claim, ClaimError> {
        let id = Uuid::parse_str(id).map_err(|_| ClaimError::NotFound(dir))?;
        let mut table = self.table();
        let Some(channel) = table.live.get(&id).cloned() else {
            return Err(match table.gone.get(&id) {
                Some(t) if t.key(dir).matches(key) => ClaimError::Gone(t.reason),
                _ => ClaimError::NotFound(dir),
            });
        };
        if !channel.key(dir).matches(key) {
            return Err(ClaimError::NotFound(dir));
        }
        if self.expired(&channel) {
            Self::remove(&mut table, &channel, GoneReason::Expired);
            return Err(ClaimError::Gone(GoneReason::Expired));
        }
        drop(table);
        let mut ends = channel.lock_ends();
        let end = match dir {
            Direction::Write if ends.writer == EndState::Waiting => {
                ends.writer = EndState::Connecting;
                ends.tx.take().map(ClaimedEnd::Writer)
            }
            Direction::Read if ends.reader == EndState::Waiting => {
                ends.reader = EndState::Connecting;
                ends.rx.take().map(ClaimedEnd::Reader)
            }
            _ => None,
        };
        drop(ends);
        let end = end.ok_or(ClaimError::Taken(dir))?;
        Ok(Claim {
            channels: self.clone(),
            channel,
            dir,
            end: Some(end),
            proxy: false,
        })
    }

    /// Whether another engine may hold channel `id`: this engine knows
    /// nothing of it (neither live nor remembered) and has peers to ask.
    pub(crate) fn may_be_elsewhere(&self, id: &str) -> bool {
        let Ok(id) = Uuid::parse_str(id) else {
            return false;
        };
        let table = self.table();
        self.inner.peers.is_some() && !table.live.contains_key(&id) && !table.gone.contains_key(&id)
    }

    /// End `dir` of a channel another engine holds, for a socket here:
    /// that engine opens its end (checking `key`), and a proxy pipe here
    /// carries the frames between this socket and the cluster's link.
    pub(crate) async fn claim_elsewhere(
        &self,
        id: &str,
        dir: Direction,
        key: &str,
    ) -> Result<Claim, PeerRefusal> {
        let peers = self.inner.peers.clone().ok_or(PeerRefusal::NotFound)?;
        let parsed = Uuid::parse_str(id).map_err(|_| PeerRefusal::NotFound)?;
        let (claim, here) = self.proxy(parsed, dir);
        peers.open(id, dir, key, here).await?;
        Ok(claim)
    }

    /// A proxy of channel `id`: its `dir` end for this engine's socket, the
    /// other half for the link to the engine holding the channel. Never in
    /// the table (the channel is that engine's); it ends with its halves.
    fn proxy(&self, id: Uuid, dir: Direction) -> (Claim, crate::module::LocalEnd) {
        let c = &self.inner.config;
        let stats = Arc::new(Stats::default());
        let (tx, rx) = pipe::pipe(
            c.default_buffer_frames,
            c.max_buffer_bytes,
            stats.clone(),
            self.inner.budget.clone(),
        );
        // The link's half is open from the start; the socket's is being upgraded.
        let (writer, reader) = match dir {
            Direction::Read => (EndState::Open, EndState::Connecting),
            Direction::Write => (EndState::Connecting, EndState::Open),
        };
        let channel = Arc::new(Channel {
            id,
            writer_key: AccessKey::random(),
            reader_key: AccessKey::random(),
            owner: None,
            created: Instant::now(),
            buffer_frames: c.default_buffer_frames,
            max_bytes: c.max_buffer_bytes,
            stats,
            abandoned: self.inner.stopping.child_token(),
            ends: Mutex::new(Ends {
                writer,
                reader,
                tx: None,
                rx: None,
            }),
        });
        let (socket_end, link_half) = match dir {
            Direction::Read => (
                ClaimedEnd::Reader(rx),
                bridged::sink(self, channel.clone(), tx),
            ),
            Direction::Write => (
                ClaimedEnd::Writer(tx),
                bridged::source(self, channel.clone(), rx),
            ),
        };
        let claim = Claim {
            channels: self.clone(),
            channel,
            dir,
            end: Some(socket_end),
            proxy: true,
        };
        (claim, link_half)
    }

    /// Records that an end's socket is over. The writer's outcome is recorded
    /// before its pipe is dropped, so the reader sees how the stream ended.
    pub fn end_over(&self, channel: &Channel, dir: Direction, state: EndState) {
        let mut ends = channel.lock_ends();
        match dir {
            Direction::Write => ends.writer = state,
            Direction::Read => ends.reader = state,
        }
        // Finished once nothing more can be delivered: the reader is over and
        // no writer socket is still running.
        let finished =
            ends.reader.is_over() && !matches!(ends.writer, EndState::Open | EndState::Connecting);
        drop(ends);
        tracing::debug!(channel_id = %channel.id, dir = %dir, state = ?state, "channel end over");
        if finished {
            let mut table = self.table();
            Self::remove(&mut table, channel, GoneReason::Finished);
        }
    }

    /// The engine, holding the `engine_end` of a channel itself (an HTTP
    /// request's body and response), is done with it. If the worker's end
    /// never connected, the channel goes now and quietly: no tombstone, since
    /// nobody was waiting for it and one per request would fill the table.
    /// Otherwise it finishes as its ends finish.
    pub(crate) fn release(&self, channel: &Channel, engine_end: Direction) {
        let unclaimed = {
            let e = channel.lock_ends();
            match engine_end {
                Direction::Write => e.reader == EndState::Waiting,
                Direction::Read => e.writer == EndState::Waiting,
            }
        };
        if unclaimed && self.table().live.remove(&channel.id).is_some() {
            channel.abandoned.cancel();
        }
    }

    /// How the writer ended (read by the reader's pump at end of stream).
    pub fn writer_state(&self, channel: &Channel) -> EndState {
        channel.lock_ends().writer
    }

    /// Removes channels whose ends did not both connect within the TTL, and
    /// forgets old tombstones. Returns how many channels expired.
    pub fn sweep(&self) -> usize {
        let ttl = self.inner.config.ttl;
        let keep = ttl.max(TOMBSTONE_MIN);
        let mut table = self.table();
        let expired: Vec<_> = table
            .live
            .values()
            .filter(|c| self.expired(c))
            .cloned()
            .collect();
        for c in &expired {
            tracing::info!(channel_id = %c.id, age = ?c.created.elapsed(), "channel expired before both ends connected");
            Self::remove(&mut table, c, GoneReason::Expired);
        }
        table.gone.retain(|_, t| t.at.elapsed() < keep);
        expired.len()
    }

    /// How often [`sweep`](Self::sweep) should run for expiry to be timely.
    pub fn sweep_interval(&self) -> Duration {
        (self.inner.config.ttl / 4).clamp(Duration::from_millis(10), Duration::from_secs(5))
    }

    /// A worker disconnected: its channels that neither end has connected to
    /// go now. Channels with a connected end are left to finish (a writer
    /// that already streamed everything must not lose it to its own exit).
    pub fn creator_left(&self, worker: Uuid) {
        let mut table = self.table();
        let orphans: Vec<_> = table
            .live
            .values()
            .filter(|c| c.owner == Some(worker) && !c.any_end_connected())
            .cloned()
            .collect();
        for c in &orphans {
            Self::remove(&mut table, c, GoneReason::CreatorLeft);
        }
        if !orphans.is_empty() {
            tracing::debug!(worker_id = %worker, count = orphans.len(), "removed the unconnected channels of a departed worker");
        }
    }

    /// Engine shutdown: every open end closes (1001).
    pub fn shut_down(&self) {
        self.inner.stopping.cancel();
    }

    pub fn is_shutting_down(&self) -> bool {
        self.inner.stopping.is_cancelled()
    }

    pub fn len(&self) -> usize {
        self.table().live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Operator views, oldest first.
    pub fn list(&self) -> Vec<ChannelInfo> {
        let channels: Vec<_> = self.table().live.values().cloned().collect();
        let mut infos: Vec<_> = channels.iter().map(|c| c.info()).collect();
        infos.sort_by_key(|i| std::cmp::Reverse(i.age_ms));
        infos
    }

    pub fn info(&self, id: &str) -> Option<ChannelInfo> {
        let id = Uuid::parse_str(id).ok()?;
        let channel = self.table().live.get(&id).cloned()?;
        Some(channel.info())
    }

    fn expired(&self, c: &Channel) -> bool {
        c.created.elapsed() >= self.inner.config.ttl && !c.both_ends_connected()
    }

    fn remove(table: &mut Table, c: &Channel, reason: GoneReason) {
        if table.live.remove(&c.id).is_none() {
            return;
        }
        if reason != GoneReason::Finished {
            c.abandoned.cancel();
        }
        if table.gone.len() >= MAX_TOMBSTONES
            && let Some(oldest) = table.gone.iter().min_by_key(|(_, t)| t.at).map(|(k, _)| *k)
        {
            table.gone.remove(&oldest);
        }
        table.gone.insert(
            c.id,
            Tombstone {
                writer_key: c.writer_key.clone(),
                reader_key: c.reader_key.clone(),
                reason,
                at: Instant::now(),
            },
        );
    }
}

impl Channel {
    fn make_ref(&self, dir: Direction) -> ChannelRef {
        ChannelRef {
            channel_id: self.id.to_string(),
            access_key: self.key(dir).expose().to_owned(),
            direction: dir,
        }
    }

    fn key(&self, dir: Direction) -> &AccessKey {
        match dir {
            Direction::Write => &self.writer_key,
            Direction::Read => &self.reader_key,
        }
    }

    fn lock_ends(&self) -> MutexGuard<'_, Ends> {
        self.ends.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn both_ends_connected(&self) -> bool {
        let e = self.lock_ends();
        e.writer.connected_once() && e.reader.connected_once()
    }

    fn any_end_connected(&self) -> bool {
        let e = self.lock_ends();
        e.writer.connected_once() || e.reader.connected_once()
    }

    fn info(&self) -> ChannelInfo {
        let (writer, reader) = {
            let e = self.lock_ends();
            (e.writer, e.reader)
        };
        let s = &self.stats;
        ChannelInfo {
            channel_id: self.id.to_string(),
            owner: self.owner.map(|o| o.to_string()),
            age_ms: self.created.elapsed().as_millis() as u64,
            writer,
            reader,
            buffer_frames: self.buffer_frames,
            max_buffer_bytes: self.max_bytes,
            bytes_in: s.bytes_in.load(Ordering::Acquire),
            frames_in: s.frames_in.load(Ordering::Acquire),
            bytes_out: s.bytes_out.load(Ordering::Acquire),
            frames_out: s.frames_out.load(Ordering::Acquire),
            buffered_bytes: s.buffered_bytes(),
            buffered_frames: s.buffered_frames(),
            peak_buffered_bytes: s.peak_buffered.load(Ordering::Acquire),
        }
    }
}

impl Tombstone {
    fn key(&self, dir: Direction) -> &AccessKey {
        match dir {
            Direction::Write => &self.writer_key,
            Direction::Read => &self.reader_key,
        }
    }
}

/// What operators see of a channel (never its keys).
#[derive(Debug, Clone, Serialize)]
pub struct ChannelInfo {
    pub channel_id: String,
    /// Worker id of its creator.
    pub owner: Option<String>,
    pub age_ms: u64,
    pub writer: EndState,
    pub reader: EndState,
    pub buffer_frames: usize,
    pub max_buffer_bytes: usize,
    /// Accepted from the writer.
    pub bytes_in: u64,
    pub frames_in: u64,
    /// Written to the reader.
    pub bytes_out: u64,
    pub frames_out: u64,
    /// Held by the engine now, and at most so far.
    pub buffered_bytes: u64,
    pub buffered_frames: u64,
    pub peak_buffered_bytes: u64,
}

impl Claim {
    /// The socket is upgraded: the end is open and its pipe handed over.
    pub fn open(mut self) -> ClaimedEnd {
        let end = self.end.take().expect("a claim is opened once");
        let mut ends = self.channel.lock_ends();
        match self.dir {
            Direction::Write => ends.writer = EndState::Open,
            Direction::Read => ends.reader = EndState::Open,
        }
        end
    }

    pub fn channels(&self) -> &Channels {
        &self.channels
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let Some(end) = self.end.take() else { return };
        if self.proxy {
            // Nobody else may take it: dropping the end ends the link.
            drop(end);
            self.channels
                .end_over(&self.channel, self.dir, EndState::Aborted);
            return;
        }
        let mut ends = self.channel.lock_ends();
        match end {
            ClaimedEnd::Writer(tx) => {
                ends.writer = EndState::Waiting;
                ends.tx = Some(tx);
            }
            ClaimedEnd::Reader(rx) => {
                ends.reader = EndState::Waiting;
                ends.rx = Some(rx);
            }
        }
        tracing::debug!(channel_id = %self.channel.id, dir = %self.dir, "upgrade did not happen; end released");
    }
}

/// Runs [`Channels::sweep`] until the engine stops.
async fn run_sweeper(channels: Channels) {
    let mut tick = tokio::time::interval(channels.sweep_interval());
    loop {
        tick.tick().await;
        channels.sweep();
    }
}

/// Binary channels as an engine module: `engine::channels::*`, the channel
/// socket route, the expiry sweeper, and removal when a creator leaves.
impl crate::module::Module for Channels {
    fn name(&self) -> &'static str {
        "channels"
    }

    fn provide(&self, p: &mut crate::mesh::Provisions) {
        p.sync_fn("engine::channels::create", self, functions::create);
        p.sync_fn("engine::channels::list", self, functions::list);
        p.sync_fn("engine::channels::info", self, functions::info);
        let channels = self.clone();
        p.on_worker_gone(move |worker| channels.creator_left(worker));
    }

    fn metrics<'a>(
        &'a self,
        r: &'a mut prometheus_client::registry::Registry,
    ) -> futures_util::future::BoxFuture<'a, ()> {
        let open = self.len();
        crate::mesh::metrics::gauge(r, "binary_channels", "Open binary channels", None, open);
        Box::pin(async {})
    }

    fn routes(&self) -> Option<axum::Router> {
        let route = axum::routing::get(socket::upgrade);
        Some(
            axum::Router::new()
                .route("/ws/channels/{channel_id}", route)
                .with_state(self.clone()),
        )
    }

    fn start(&self) -> Vec<tokio::task::JoinHandle<()>> {
        vec![tokio::spawn(run_sweeper(self.clone()))]
    }

    fn stop(&self) -> futures_util::future::BoxFuture<'_, ()> {
        self.shut_down();
        Box::pin(async {})
    }
}
