//! The cluster's directory: which engine's workers serve what.
//!
//! Two JetStream KV buckets per cluster. `qmesh_<cluster>_functions` has one
//! key per (engine, namespace, function): `<engine>.<b64(namespace)>.<b64(id)>`
//! (base64url, since function ids hold `::`), the value the function's
//! description. `qmesh_<cluster>_workers` has one key per registered worker
//! (one that reported a pid, as `engine::workers::list` shows):
//! `<engine>.<worker id>`, the value its row (id, name, runtime, functions…).
//! An engine writes its own keys: it puts a key when its workers start
//! serving a function (or a worker registers or changes) and deletes it when
//! that ends (and all of them at drain, and at start those a previous run
//! under the same engine id left). Every engine watches both buckets and
//! mirrors other engines' keys: functions into its mesh, one peer per live
//! engine whose functions are external functions calling that engine
//! (`remote.rs`); workers into its members, for `engine::workers::list`
//! ([`OtherEngines`]).
//!
//! Liveness (`liveness.rs`) decides which engines are live: an engine whose
//! heartbeats stop for `engine_timeout` is dead. Its peer leaves the mesh as
//! a vanished worker does (callers wait `rebind_grace` for its functions to
//! come back, from whichever engine its workers reconnect to), and every
//! engine that saw it die deletes its keys, so the bucket does not keep the
//! dead for ever. An engine wrongly declared dead (it lost NATS for longer
//! than the timeout) sees its own keys deleted by others and puts them again;
//! its heartbeats bring its peer back on every other engine.
//!
//! Trigger types and bindings cross engines through two more buckets
//! (`triggers.rs`): the types this engine's workers provide, and the
//! bindings made here that another engine's type serves, each key read by
//! the engine that provides it.
//!
//! Lock order: `members` may be held while calling the mesh, never the other
//! way round (nothing the mesh runs takes `members`).

mod triggers;

use base64::Engine as _;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::{ClusterError, Names, remote};
use crate::mesh::Mesh;
use crate::mesh::access::{Access, ListenerRules};
use crate::mesh::provided::OtherEngines;
use crate::mesh::state::{State, Worker, WorkerMeta};
use crate::protocol::inbound::FunctionRegistration;

/// (namespace, function id)
type Key = (String, String);

pub(crate) struct Directory {
    mesh: Mesh,
    client: async_nats::Client,
    functions_kv: async_nats::jetstream::kv::Store,
    workers_kv: async_nats::jetstream::kv::Store,
    trigger_types_kv: async_nats::jetstream::kv::Store,
    bindings_kv: async_nats::jetstream::kv::Store,
    names: Names,
    /// Counts this engine's NATS disconnections (calls on their way fail).
    disconnects: tokio::sync::watch::Receiver<u64>,
    /// The other engines this one knows of, live or declared dead.
    members: Mutex<HashMap<String, Member>>,
    /// What this engine has put in the buckets; `None` once withdrawn (at
    /// drain: nothing is announced again, whatever its workers still do).
    announced: tokio::sync::Mutex<Option<Published>>,
    /// Own keys someone else deleted (this engine was declared dead): the
    /// announcer forgets them and puts them again.
    deleted_by_others: Mutex<Vec<(Bucket, String)>>,
    /// Wakes the announcer for `deleted_by_others`.
    resync: Notify,
}

/// Another engine, as this one sees it.
struct Member {
    /// When it was last heard from: its last heartbeat, or its first
    /// directory entry before any heartbeat (an engine announces as it
    /// starts beating; a fresh watcher replays entries first).
    last_seen: Instant,
    /// False once its heartbeats stopped for `engine_timeout`: its entries
    /// stay out of the mesh until it is heard from again.
    alive: bool,
    /// Its functions as the directory says, with their descriptions.
    functions: HashMap<Key, Option<String>>,
    /// Its peer in this mesh, while it is alive and serves something.
    peer: Option<Uuid>,
    /// Its workers' rows by worker id, as the directory says.
    workers: HashMap<String, serde_json::Value>,
    /// The trigger types its workers provide (their entries, encoded).
    trigger_types: HashMap<Key, Vec<u8>>,
    /// Its bindings that this engine's types serve, by binding id: the
    /// provider their key names (this engine, or every engine) and their
    /// entries, encoded.
    bindings: HashMap<String, (String, Vec<u8>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Bucket {
    Functions,
    Workers,
    TriggerTypes,
    Bindings,
}

const BUCKETS: [Bucket; 4] = [
    Bucket::Functions,
    Bucket::Workers,
    Bucket::TriggerTypes,
    Bucket::Bindings,
];

/// What this engine put in each bucket: key → value.
#[derive(Default)]
struct Published {
    functions: HashMap<String, Vec<u8>>,
    workers: HashMap<String, Vec<u8>>,
    trigger_types: HashMap<String, Vec<u8>>,
    bindings: HashMap<String, Vec<u8>>,
}

impl Published {
    fn of(&mut self, bucket: Bucket) -> &mut HashMap<String, Vec<u8>> {
        match bucket {
            Bucket::Functions => &mut self.functions,
            Bucket::Workers => &mut self.workers,
            Bucket::TriggerTypes => &mut self.trigger_types,
            Bucket::Bindings => &mut self.bindings,
        }
    }
}

impl Member {
    fn new() -> Self {
        Member {
            last_seen: Instant::now(),
            alive: true,
            functions: HashMap::new(),
            peer: None,
            workers: HashMap::new(),
            trigger_types: HashMap::new(),
            bindings: HashMap::new(),
        }
    }

    /// Nothing of it is in this engine's mesh: its peer can go.
    fn holds_nothing(&self) -> bool {
        self.functions.is_empty() && self.trigger_types.is_empty() && self.bindings.is_empty()
    }
}

/// How soon a refused announcement is tried again.
const ANNOUNCE_RETRY: Duration = Duration::from_millis(250);

impl Directory {
    pub(super) async fn open(
        mesh: &Mesh,
        client: &async_nats::Client,
        names: &Names,
        replicas: usize,
        disconnects: tokio::sync::watch::Receiver<u64>,
    ) -> Result<Directory, ClusterError> {
        let open = async |bucket: String| {
            super::kv::open_bucket(client, bucket, replicas, Duration::ZERO).await
        };
        let directory = Directory {
            mesh: mesh.clone(),
            client: client.clone(),
            functions_kv: open(names.functions_bucket()).await?,
            workers_kv: open(names.workers_bucket()).await?,
            trigger_types_kv: open(names.trigger_types_bucket()).await?,
            bindings_kv: open(names.bindings_bucket()).await?,
            names: names.clone(),
            disconnects,
            members: Mutex::new(HashMap::new()),
            announced: tokio::sync::Mutex::new(Some(Published::default())),
            deleted_by_others: Mutex::new(Vec::new()),
            resync: Notify::new(),
        };
        for bucket in BUCKETS {
            directory.clear_previous_run(bucket).await;
        }
        Ok(directory)
    }

    /// The tasks: announcing this engine's functions and workers, mirroring
    /// the others'.
    pub(super) fn start(self: Arc<Self>) -> Vec<JoinHandle<()>> {
        let mut tasks = vec![tokio::spawn(self.clone().announce())];
        for bucket in BUCKETS {
            tasks.push(tokio::spawn(self.clone().watch(bucket)));
        }
        tasks
    }

    fn kv(&self, bucket: Bucket) -> &async_nats::jetstream::kv::Store {
        match bucket {
            Bucket::Functions => &self.functions_kv,
            Bucket::Workers => &self.workers_kv,
            Bucket::TriggerTypes => &self.trigger_types_kv,
            Bucket::Bindings => &self.bindings_kv,
        }
    }

    fn members(&self) -> std::sync::MutexGuard<'_, HashMap<String, Member>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The other engines heard from lately (alive), by id.
    pub(super) fn live_engines(&self) -> Vec<String> {
        let members = self.members();
        members
            .iter()
            .filter(|(_, m)| m.alive)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Whether one of this engine's own workers serves the function.
    pub(super) fn served_here(&self, namespace: &str, function_id: &str) -> bool {
        self.mesh.inspect(|st| {
            st.functions
                .get(namespace)
                .and_then(|f| f.get(function_id))
                .is_some_and(|f| f.providers.iter().any(|p| !is_peer(st, p.worker)))
        })
    }

    /// Deletes every key of this engine (at drain).
    pub(super) async fn withdraw(&self) {
        let Some(mut announced) = self.announced.lock().await.take() else {
            return;
        };
        for bucket in BUCKETS {
            for key in announced.of(bucket).keys() {
                if let Err(e) = self.kv(bucket).delete(key).await {
                    tracing::warn!(key, error = %e, "cannot withdraw an entry from the cluster's directory");
                }
            }
        }
    }

    fn key(&self, engine: &str, (namespace, id): &Key) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{engine}.{}.{}", b64.encode(namespace), b64.encode(id))
    }

    /// Keys a previous run under this engine id left (it did not drain).
    async fn clear_previous_run(&self, bucket: Bucket) {
        let kv = self.kv(bucket);
        let Ok(mut keys) = kv.keys().await else {
            return;
        };
        let mine = format!("{}.", self.names.engine_id);
        while let Some(Ok(key)) = keys.next().await {
            if key.starts_with(&mine) {
                let _ = kv.delete(&key).await;
            }
        }
    }

    /// What this engine's own workers serve and are, as directory entries.
    fn desired(&self, st: &State) -> Published {
        let mut out = Published::default();
        for (ns, by_id) in &st.functions {
            for (id, f) in by_id {
                if let Some(p) = f.providers.iter().find(|p| !is_peer(st, p.worker)) {
                    let key = self.key(&self.names.engine_id, &(ns.clone(), id.clone()));
                    let value = serde_json::to_vec(&p.info.description).expect("a string encodes");
                    out.functions.insert(key, value);
                }
            }
        }
        for w in st.workers.values() {
            if let Some(row) = worker_row(w) {
                let key = format!("{}.{}", self.names.engine_id, w.conn.id);
                out.workers
                    .insert(key, serde_json::to_vec(&row).expect("a row encodes"));
            }
        }
        self.desired_triggers(st, &mut out);
        out
    }

    /// Keeps the bucket in step with the functions this engine's own
    /// workers serve: recomputed on every mesh event (a lagging receiver
    /// just recomputes), put and deleted by difference.
    async fn announce(self: Arc<Self>) {
        let mut events = self.mesh.subscribe();
        loop {
            // A type another engine provides takes the place of one that
            // went here (or on the engine that provided it first).
            self.offer_trigger_types();
            let mut desired = self.mesh.inspect(|st| self.desired(st));
            // A put or delete NATS refused (a stream still electing its
            // leader, a node restarting) is retried without waiting for
            // the next mesh event, which may never come.
            let mut failed = false;
            let mut guard = self.announced.lock().await;
            let Some(announced) = guard.as_mut() else {
                return;
            };
            let forgotten =
                std::mem::take(&mut *self.deleted_by_others.lock().expect("not poisoned"));
            for (bucket, key) in forgotten {
                announced.of(bucket).remove(&key);
            }
            // Each bucket on its own: one whose stream is electing a leader
            // (a node died) must not hold back the others' changes.
            let (d, a) = (&mut desired, announced);
            let (fs, ws, ts, bs) = tokio::join!(
                sync(
                    self.kv(Bucket::Functions),
                    &mut a.functions,
                    &mut d.functions
                ),
                sync(self.kv(Bucket::Workers), &mut a.workers, &mut d.workers),
                sync(
                    self.kv(Bucket::TriggerTypes),
                    &mut a.trigger_types,
                    &mut d.trigger_types
                ),
                sync(self.kv(Bucket::Bindings), &mut a.bindings, &mut d.bindings),
            );
            failed |= fs || ws || ts || bs;
            drop(guard);
            let retry = async {
                match failed {
                    true => tokio::time::sleep(ANNOUNCE_RETRY).await,
                    false => std::future::pending().await,
                }
            };
            tokio::select! {
                event = events.recv() => match event {
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                () = self.resync.notified() => {}
                () = retry => {}
            }
        }
    }

    /// Mirrors other engines' keys into the mesh, from the bucket's current
    /// contents on. A watch NATS refuses or ends (a node restarting, the
    /// bucket's stream still electing a leader) is opened again: its history
    /// replays every current key and delete marker, and adding or removing
    /// twice changes nothing.
    ///
    /// A dropped connection opens it again too, once reconnected: the
    /// watch's consumer may have lived on the node that went, and the
    /// client would only notice after its idle heartbeats failed (seconds).
    async fn watch(self: Arc<Self>, bucket: Bucket) {
        let mut disconnects = self.disconnects.clone();
        loop {
            disconnects.borrow_and_update();
            let mut watch = match self.kv(bucket).watch_with_history(">").await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, ?bucket, "cannot watch the cluster's directory; retrying");
                    tokio::time::sleep(ANNOUNCE_RETRY).await;
                    continue;
                }
            };
            loop {
                let entry = tokio::select! {
                    entry = watch.next() => match entry {
                        Some(entry) => entry,
                        None => break,
                    },
                    Ok(()) = disconnects.changed() => {
                        tracing::info!(?bucket, "NATS connection dropped: the directory watch is opened again once reconnected");
                        break;
                    }
                };
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(error = %e, ?bucket, "the cluster's directory watch failed");
                        continue;
                    }
                };
                let put = matches!(entry.operation, async_nats::jetstream::kv::Operation::Put);
                let Some((engine, rest)) = entry.key.split_once('.') else {
                    tracing::warn!(key = %entry.key, "ignored a malformed directory key");
                    continue;
                };
                if engine == self.names.engine_id {
                    if !put {
                        // Deleted by an engine that thought this one dead,
                        // or by this one (putting it again is harmless).
                        self.deleted_by_others
                            .lock()
                            .expect("not poisoned")
                            .push((bucket, entry.key.clone()));
                        self.resync.notify_one();
                    }
                    continue;
                }
                match bucket {
                    Bucket::Functions => {
                        let Some((engine, key)) = parse_key(&entry.key) else {
                            tracing::warn!(key = %entry.key, "ignored a malformed directory key");
                            continue;
                        };
                        if put {
                            let description: Option<String> =
                                serde_json::from_slice(&entry.value).unwrap_or(None);
                            self.add(engine, key, description);
                        } else {
                            self.remove(&engine, &key);
                        }
                    }
                    Bucket::Workers => {
                        let row = match put {
                            true => serde_json::from_slice(&entry.value).ok(),
                            false => None,
                        };
                        self.set_worker(engine, rest, row);
                    }
                    Bucket::TriggerTypes => {
                        let Some((engine, key)) = parse_key(&entry.key) else {
                            tracing::warn!(key = %entry.key, "ignored a malformed directory key");
                            continue;
                        };
                        self.set_trigger_type(engine, key, put.then(|| entry.value.to_vec()));
                    }
                    Bucket::Bindings => {
                        let Some((owner, provider, id)) = triggers::parse_binding_key(&entry.key)
                        else {
                            tracing::warn!(key = %entry.key, "ignored a malformed directory key");
                            continue;
                        };
                        if provider == self.names.engine_id || provider == triggers::EVERY_ENGINE {
                            let entry = put.then(|| entry.value.to_vec());
                            self.set_binding(owner, provider, id, entry);
                        }
                    }
                }
            }
            tracing::warn!(
                ?bucket,
                "the cluster's directory watch ended; opening it again"
            );
            tokio::time::sleep(ANNOUNCE_RETRY).await;
        }
    }

    /// Another engine's worker row, or its removal (`None`).
    fn set_worker(&self, engine: &str, worker: &str, row: Option<serde_json::Value>) {
        let mut members = self.members();
        match row {
            Some(row) => {
                let member = members.entry(engine.to_owned()).or_insert_with(Member::new);
                member.workers.insert(worker.to_owned(), row);
            }
            None => {
                let Some(member) = members.get_mut(engine) else {
                    return;
                };
                member.workers.remove(worker);
                if member.is_forgettable() {
                    members.remove(engine);
                }
            }
        }
    }

    fn add(&self, engine: String, key: Key, description: Option<String>) {
        let mut members = self.members();
        let member = members.entry(engine.clone()).or_insert_with(Member::new);
        member.functions.insert(key.clone(), description.clone());
        if member.alive {
            let worker = *member
                .peer
                .get_or_insert_with(|| self.connect_peer(&engine));
            self.register(worker, &engine, key, description);
        }
    }

    fn remove(&self, engine: &str, key: &Key) {
        let mut members = self.members();
        let Some(member) = members.get_mut(engine) else {
            return;
        };
        member.functions.remove(key);
        if let Some(worker) = member.peer {
            // Withdrawn by choice: callers get function_not_found at once,
            // not the grace period a vanished worker's callers wait.
            self.mesh.unregister_function(worker, &key.0, &key.1);
        }
        self.let_go(engine, &mut members);
    }

    /// `engine`'s peer leaves the mesh once nothing of it is there, and the
    /// engine is forgotten once nothing of it is left.
    fn let_go(&self, engine: &str, members: &mut HashMap<String, Member>) {
        let Some(member) = members.get_mut(engine) else {
            return;
        };
        if member.holds_nothing()
            && let Some(worker) = member.peer.take()
        {
            self.mesh.disconnect(worker);
        }
        if member.is_forgettable() {
            members.remove(engine);
        }
    }

    /// `engine`'s peer in this mesh, joined now if it has none.
    fn peer_of(&self, engine: &str, member: &mut Member) -> Uuid {
        *member.peer.get_or_insert_with(|| self.connect_peer(engine))
    }

    /// A heartbeat from `engine`: it is alive, and back in the mesh if it
    /// had been declared dead.
    pub(super) fn heard_from(&self, engine: &str) {
        if engine == self.names.engine_id {
            return;
        }
        let mut members = self.members();
        let member = members.entry(engine.to_owned()).or_insert_with(Member::new);
        member.last_seen = Instant::now();
        if member.alive {
            return;
        }
        member.alive = true;
        tracing::info!(engine_id = %engine, "an engine declared dead is heard from again");
        if member.holds_nothing() {
            return;
        }
        let worker = self.connect_peer(engine);
        member.peer = Some(worker);
        for (key, description) in member.functions.clone() {
            self.register(worker, engine, key, description);
        }
        self.restore_triggers(worker, member);
    }

    /// Declares dead every live engine not heard from for `timeout` since
    /// `since` (when this engine's NATS connection last came up: while it is
    /// down nobody can be heard, so nobody is judged).
    pub(super) fn sweep(&self, timeout: Duration, since: Instant) {
        let now = Instant::now();
        let mut dead = Vec::new();
        let mut members = self.members();
        for (engine, member) in members.iter_mut() {
            if !member.alive || now.duration_since(member.last_seen.max(since)) < timeout {
                continue;
            }
            member.alive = false;
            tracing::warn!(engine_id = %engine, timeout = ?timeout, "an engine of the cluster stopped beating: dropping its functions");
            if let Some(worker) = member.peer.take() {
                // As a vanished worker: its callers wait for the functions
                // to come back, from wherever its workers reconnect.
                self.mesh.disconnect(worker);
            }
            dead.extend(
                member
                    .functions
                    .keys()
                    .map(|k| (Bucket::Functions, self.key(engine, k))),
            );
            dead.extend(
                member
                    .workers
                    .keys()
                    .map(|w| (Bucket::Workers, format!("{engine}.{w}"))),
            );
            dead.extend(
                member
                    .trigger_types
                    .keys()
                    .map(|k| (Bucket::TriggerTypes, self.key(engine, k))),
            );
            dead.extend(member.bindings.iter().map(|(id, (provider, _))| {
                let key = triggers::binding_key(engine, provider, id);
                (Bucket::Bindings, key)
            }));
        }
        members.retain(|_, m| !m.is_forgettable());
        drop(members);
        if dead.is_empty() {
            return;
        }
        // Every engine that saw it die deletes its keys; deleting twice is
        // harmless, and an engine wrongly judged puts its keys again.
        let kvs: HashMap<Bucket, async_nats::jetstream::kv::Store> =
            BUCKETS.map(|b| (b, self.kv(b).clone())).into();
        tokio::spawn(async move {
            for (bucket, key) in dead {
                if let Err(e) = kvs[&bucket].delete(&key).await {
                    tracing::debug!(key, error = %e, "cannot delete a dead engine's directory entry");
                }
            }
        });
    }

    fn register(&self, worker: Uuid, engine: &str, key: Key, description: Option<String>) {
        let target = Arc::new(remote::RemoteFunction {
            client: self.client.clone(),
            engine_id: engine.to_owned(),
            subject: self.names.call_subject(engine),
            namespace: key.0.clone(),
            disconnects: self.disconnects.clone(),
        });
        let reg = FunctionRegistration {
            id: key.1,
            description,
            request_format: None,
            response_format: None,
            metadata: None,
            invocation: None,
        };
        self.mesh.register_external(worker, &key.0, reg, target);
    }

    /// A peer in the mesh for `engine`: a connection with no socket (what
    /// would be sent to it is dropped: calls to it go through its external
    /// functions), as the anonymous operator, so it shares function ids with
    /// this engine's workers on trusted listeners.
    fn connect_peer(&self, engine: &str) -> Uuid {
        let access = Arc::new(Access::trusted(Arc::new(ListenerRules {
            name: "cluster".to_owned(),
            ..ListenerRules::default()
        })));
        let (conn, rx) = self.mesh.connect(None, access);
        tokio::spawn(drain(rx));
        self.mesh.set_worker_meta(
            conn.id,
            WorkerMeta {
                name: Some(format!("engine:{engine}")),
                runtime: Some("qmesh".to_owned()),
                engine: Some(engine.to_owned()),
                ..WorkerMeta::default()
            },
        );
        tracing::info!(engine_id = %engine, worker_id = %conn.id, "an engine of the cluster joined this mesh as a peer");
        conn.id
    }
}

impl Member {
    /// Dead and nothing of it left in the directory: no need to remember it
    /// (a heartbeat would bring it back as new).
    fn is_forgettable(&self) -> bool {
        !self.alive && self.holds_nothing() && self.workers.is_empty()
    }
}

impl OtherEngines for Directory {
    fn this_engine(&self) -> &str {
        &self.names.engine_id
    }

    /// Rows as their engines published them, plus where they are. Their
    /// load is not published (it changes with every call): listed here,
    /// they are `available` with no active invocations.
    fn workers(&self) -> Vec<serde_json::Value> {
        let members = self.members();
        let mut rows = Vec::new();
        for (engine, member) in members.iter().filter(|(_, m)| m.alive) {
            for row in member.workers.values() {
                let mut row = row.clone();
                if let Some(m) = row.as_object_mut() {
                    m.insert("engine_id".into(), engine.as_str().into());
                    m.insert("status".into(), "available".into());
                    m.insert("active_invocations".into(), 0.into());
                }
                rows.push(row);
            }
        }
        rows
    }
}

/// Whether `worker` is a peer: a connection standing for another engine.
fn is_peer(st: &State, worker: Uuid) -> bool {
    st.workers
        .get(&worker)
        .and_then(|w| w.meta.as_ref())
        .is_some_and(|m| m.engine.is_some())
}

/// The row another engine lists for one of this engine's workers: what
/// changes only when it registers, changes its metadata or its functions
/// (load is left out). `None` for connections `engine::workers::list` hides
/// (no pid reported) and for peers.
fn worker_row(w: &Worker) -> Option<serde_json::Value> {
    let meta = w
        .meta
        .as_ref()
        .filter(|m| m.pid.is_some() && m.engine.is_none())?;
    let mut functions: Vec<&str> = w.functions.iter().map(|(_, id)| id.as_str()).collect();
    functions.sort_unstable();
    let connected_at_ms = w
        .conn
        .connected_at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Some(serde_json::json!({
        "id": w.conn.id,
        "name": meta.name.clone().unwrap_or_default(),
        "description": meta.description.clone().unwrap_or_default(),
        "version": meta.version.clone().unwrap_or_default(),
        "namespace": w.namespace,
        "runtime": meta.runtime.clone().unwrap_or_default(),
        "os": meta.os.clone().unwrap_or_default(),
        "function_count": w.functions.len(),
        "functions": functions,
        "connected_at_ms": connected_at_ms,
        "isolation": meta.isolation.clone().unwrap_or(serde_json::Value::Null),
        "ip_address": w.conn.remote_addr.map(|a| a.ip().to_string()),
    }))
}

/// Puts what `desired` has that `published` has not (or has otherwise) and
/// deletes what `published` has that `desired` has not, keeping `published`
/// true to what NATS took. Returns whether NATS refused any of it.
async fn sync(
    kv: &async_nats::jetstream::kv::Store,
    published: &mut HashMap<String, Vec<u8>>,
    desired: &mut HashMap<String, Vec<u8>>,
) -> bool {
    let mut failed = false;
    for (key, value) in desired.iter() {
        if published.get(key) == Some(value) {
            continue;
        }
        match kv.put(key, value.clone().into()).await {
            Ok(_) => {
                published.insert(key.clone(), value.clone());
            }
            Err(e) => {
                failed = true;
                tracing::warn!(key, error = %e, "cannot announce to the cluster's directory; retrying");
            }
        }
    }
    let gone: Vec<String> = published
        .keys()
        .filter(|k| !desired.contains_key(*k))
        .cloned()
        .collect();
    for key in gone {
        match kv.delete(&key).await {
            Ok(()) => {
                published.remove(&key);
            }
            Err(e) => {
                failed = true;
                tracing::warn!(key, error = %e, "cannot withdraw from the cluster's directory; retrying");
            }
        }
    }
    failed
}

async fn drain(mut rx: mpsc::UnboundedReceiver<crate::mesh::Outgoing>) {
    while rx.recv().await.is_some() {}
}

/// `<engine>.<b64(namespace)>.<b64(id)>` → (engine, (namespace, id)).
fn parse_key(key: &str) -> Option<(String, Key)> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = key.split('.');
    let (engine, ns, id) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let decode = |s: &str| String::from_utf8(b64.decode(s).ok()?).ok();
    Some((engine.to_owned(), (decode(ns)?, decode(id)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_names_its_engine_and_function() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let key = format!("e1.{}.{}", b64.encode("default"), b64.encode("svc::echo"));
        assert_eq!(
            parse_key(&key),
            Some(("e1".into(), ("default".into(), "svc::echo".into())))
        );
        assert_eq!(parse_key("e1.only-two"), None);
    }
}
