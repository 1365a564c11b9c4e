//! The cluster's directory of functions: which engine's workers serve what.
//!
//! One JetStream KV bucket per cluster, `qmesh_<cluster>_functions`, one key
//! per (engine, namespace, function): `<engine>.<b64(namespace)>.<b64(id)>`
//! (base64url, since function ids hold `::`), the value the function's
//! description. An engine writes its own keys: it puts a key when its
//! workers start serving a function and deletes it when the last one stops
//! (and all of them at drain, and at start those a previous run under the
//! same engine id left). Every engine watches the whole bucket and mirrors
//! other engines' keys into its mesh: one peer per live engine, whose
//! functions are external functions calling that engine (`remote.rs`).
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
//! Lock order: `members` may be held while calling the mesh, never the other
//! way round (nothing the mesh runs takes `members`).

use base64::Engine as _;
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::{ClusterError, Names, remote};
use crate::mesh::Mesh;
use crate::mesh::access::{Access, ListenerRules};
use crate::mesh::state::WorkerMeta;
use crate::protocol::inbound::FunctionRegistration;

/// (namespace, function id)
type Key = (String, String);

pub(crate) struct Directory {
    mesh: Mesh,
    client: async_nats::Client,
    kv: async_nats::jetstream::kv::Store,
    names: Names,
    /// The other engines this one knows of, live or declared dead.
    members: Mutex<HashMap<String, Member>>,
    /// What this engine has put in the bucket; `None` once withdrawn (at
    /// drain: nothing is announced again, whatever its workers still do).
    announced: tokio::sync::Mutex<Option<HashSet<Key>>>,
    /// Own keys someone else deleted (this engine was declared dead): the
    /// announcer forgets them and puts them again.
    deleted_by_others: Mutex<HashSet<Key>>,
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
}

impl Member {
    fn new() -> Self {
        Member {
            last_seen: Instant::now(),
            alive: true,
            functions: HashMap::new(),
            peer: None,
        }
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
    ) -> Result<Directory, ClusterError> {
        let js = async_nats::jetstream::new(client.clone());
        let bucket = names.bucket();
        let kv = js
            .create_key_value(async_nats::jetstream::kv::Config {
                bucket: bucket.clone(),
                history: 1,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|source| ClusterError::Bucket {
                bucket,
                replicas,
                source,
            })?;
        let directory = Directory {
            mesh: mesh.clone(),
            client: client.clone(),
            kv,
            names: names.clone(),
            members: Mutex::new(HashMap::new()),
            announced: tokio::sync::Mutex::new(Some(HashSet::new())),
            deleted_by_others: Mutex::new(HashSet::new()),
            resync: Notify::new(),
        };
        directory.clear_previous_run().await;
        Ok(directory)
    }

    /// The tasks: announcing this engine's functions, mirroring the others'.
    pub(super) fn start(self: Arc<Self>) -> Vec<JoinHandle<()>> {
        vec![
            tokio::spawn(self.clone().announce()),
            tokio::spawn(self.watch()),
        ]
    }

    fn members(&self) -> std::sync::MutexGuard<'_, HashMap<String, Member>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether one of this engine's own workers serves the function.
    pub(super) fn served_here(&self, namespace: &str, function_id: &str) -> bool {
        let peers = self.peer_workers();
        self.mesh.inspect(|st| {
            st.functions
                .get(namespace)
                .and_then(|f| f.get(function_id))
                .is_some_and(|f| f.providers.iter().any(|p| !peers.contains(&p.worker)))
        })
    }

    fn peer_workers(&self) -> HashSet<Uuid> {
        self.members().values().filter_map(|m| m.peer).collect()
    }

    /// Deletes every key of this engine (at drain).
    pub(super) async fn withdraw(&self) {
        let Some(announced) = self.announced.lock().await.take() else {
            return;
        };
        for key in announced {
            if let Err(e) = self.kv.delete(self.key(&self.names.engine_id, &key)).await {
                tracing::warn!(function_id = %key.1, error = %e, "cannot withdraw a function from the cluster");
            }
        }
    }

    fn key(&self, engine: &str, (namespace, id): &Key) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{engine}.{}.{}", b64.encode(namespace), b64.encode(id))
    }

    /// Keys a previous run under this engine id left (it did not drain).
    async fn clear_previous_run(&self) {
        let Ok(mut keys) = self.kv.keys().await else {
            return;
        };
        let mine = format!("{}.", self.names.engine_id);
        while let Some(Ok(key)) = keys.next().await {
            if key.starts_with(&mine) {
                let _ = self.kv.delete(&key).await;
            }
        }
    }

    /// Keeps the bucket in step with the functions this engine's own
    /// workers serve: recomputed on every mesh event (a lagging receiver
    /// just recomputes), put and deleted by difference.
    async fn announce(self: Arc<Self>) {
        let mut events = self.mesh.subscribe();
        loop {
            let peers = self.peer_workers();
            let now: HashMap<Key, Option<String>> = self.mesh.inspect(|st| {
                let mut out = HashMap::new();
                for (ns, by_id) in &st.functions {
                    for (id, f) in by_id {
                        if let Some(p) = f.providers.iter().find(|p| !peers.contains(&p.worker)) {
                            out.insert((ns.clone(), id.clone()), p.info.description.clone());
                        }
                    }
                }
                out
            });
            // A put or delete NATS refused (a stream still electing its
            // leader, a node restarting) is retried without waiting for
            // the next mesh event, which may never come.
            let mut failed = false;
            let mut guard = self.announced.lock().await;
            let Some(announced) = guard.as_mut() else {
                return;
            };
            for key in std::mem::take(&mut *self.deleted_by_others.lock().expect("not poisoned")) {
                announced.remove(&key);
            }
            for (key, description) in &now {
                if announced.contains(key) {
                    continue;
                }
                let value = serde_json::to_vec(description).expect("a string encodes");
                match self
                    .kv
                    .put(self.key(&self.names.engine_id, key), value.into())
                    .await
                {
                    Ok(_) => {
                        announced.insert(key.clone());
                    }
                    Err(e) => {
                        failed = true;
                        tracing::warn!(function_id = %key.1, error = %e, "cannot announce a function to the cluster; retrying")
                    }
                }
            }
            let gone: Vec<Key> = announced
                .iter()
                .filter(|k| !now.contains_key(*k))
                .cloned()
                .collect();
            for key in gone {
                match self.kv.delete(self.key(&self.names.engine_id, &key)).await {
                    Ok(()) => {
                        announced.remove(&key);
                    }
                    Err(e) => {
                        failed = true;
                        tracing::warn!(function_id = %key.1, error = %e, "cannot withdraw a function from the cluster; retrying")
                    }
                }
            }
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
    async fn watch(self: Arc<Self>) {
        loop {
            let mut watch = match self.kv.watch_with_history(">").await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the cluster's function directory; retrying");
                    tokio::time::sleep(ANNOUNCE_RETRY).await;
                    continue;
                }
            };
            while let Some(entry) = watch.next().await {
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(error = %e, "the cluster's function directory watch failed");
                        continue;
                    }
                };
                let Some((engine, key)) = parse_key(&entry.key) else {
                    tracing::warn!(key = %entry.key, "ignored a malformed directory key");
                    continue;
                };
                let put = matches!(entry.operation, async_nats::jetstream::kv::Operation::Put);
                if engine == self.names.engine_id {
                    if !put {
                        // Deleted by an engine that thought this one dead,
                        // or by this one (putting it again is harmless).
                        self.deleted_by_others
                            .lock()
                            .expect("not poisoned")
                            .insert(key);
                        self.resync.notify_one();
                    }
                    continue;
                }
                if put {
                    let description: Option<String> =
                        serde_json::from_slice(&entry.value).unwrap_or(None);
                    self.add(engine, key, description);
                } else {
                    self.remove(&engine, &key);
                }
            }
            tracing::warn!("the cluster's function directory watch ended; opening it again");
            tokio::time::sleep(ANNOUNCE_RETRY).await;
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
            if member.functions.is_empty() {
                member.peer = None;
                self.mesh.disconnect(worker);
            }
        }
        if !member.alive && member.functions.is_empty() {
            members.remove(engine);
        }
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
        if member.functions.is_empty() {
            return;
        }
        let worker = self.connect_peer(engine);
        member.peer = Some(worker);
        for (key, description) in member.functions.clone() {
            self.register(worker, engine, key, description);
        }
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
            dead.extend(member.functions.keys().map(|k| self.key(engine, k)));
        }
        members.retain(|_, m| m.alive || !m.functions.is_empty());
        drop(members);
        if dead.is_empty() {
            return;
        }
        // Every engine that saw it die deletes its keys; deleting twice is
        // harmless, and an engine wrongly judged puts its keys again.
        let kv = self.kv.clone();
        tokio::spawn(async move {
            for key in dead {
                if let Err(e) = kv.delete(&key).await {
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
                ..WorkerMeta::default()
            },
        );
        tracing::info!(engine_id = %engine, worker_id = %conn.id, "an engine of the cluster joined this mesh as a peer");
        conn.id
    }
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
