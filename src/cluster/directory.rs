//! The cluster's directory of functions: which engine's workers serve what.
//!
//! One JetStream KV bucket per cluster, `qmesh_<cluster>_functions`, one key
//! per (engine, namespace, function): `<engine>.<b64(namespace)>.<b64(id)>`
//! (base64url, since function ids hold `::`), the value the function's
//! description. An engine writes only its own keys: it puts a key when its
//! workers start serving a function and deletes it when the last one stops
//! (and all of them at drain, and at start those a previous run under the
//! same engine id left). Every engine watches the whole bucket and mirrors
//! other engines' keys into its mesh: one peer per engine, whose functions
//! are external functions calling that engine (`remote.rs`).
//!
//! Known gap: an engine that dies without draining leaves its keys until it
//! starts again under the same `engine_id`; calls routed to it meanwhile fail
//! at once (NATS has no responder), they do not hang.

use base64::Engine as _;
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
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
    /// Other engines as peers of this mesh: engine id → its peer's worker id
    /// and the functions it serves.
    peers: Mutex<HashMap<String, Peer>>,
    /// What this engine has put in the bucket; `None` once withdrawn (at
    /// drain: nothing is announced again, whatever its workers still do).
    announced: tokio::sync::Mutex<Option<HashSet<Key>>>,
}

struct Peer {
    worker: Uuid,
    functions: HashSet<Key>,
}

/// How soon a refused announcement is tried again.
const ANNOUNCE_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

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
            peers: Mutex::new(HashMap::new()),
            announced: tokio::sync::Mutex::new(Some(HashSet::new())),
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
        let peers = self.peers.lock().expect("not poisoned");
        peers.values().map(|p| p.worker).collect()
    }

    /// Deletes every key of this engine (at drain).
    pub(super) async fn withdraw(&self) {
        let Some(announced) = self.announced.lock().await.take() else {
            return;
        };
        for key in announced {
            if let Err(e) = self.kv.delete(self.key(&key)).await {
                tracing::warn!(function_id = %key.1, error = %e, "cannot withdraw a function from the cluster");
            }
        }
    }

    fn key(&self, (namespace, id): &Key) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.{}",
            self.names.engine_id,
            b64.encode(namespace),
            b64.encode(id)
        )
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
            for (key, description) in &now {
                if announced.contains(key) {
                    continue;
                }
                let value = serde_json::to_vec(description).expect("a string encodes");
                match self.kv.put(self.key(key), value.into()).await {
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
                match self.kv.delete(self.key(&key)).await {
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
            let next = if failed {
                match tokio::time::timeout(ANNOUNCE_RETRY, events.recv()).await {
                    Ok(event) => event,
                    Err(_) => continue,
                }
            } else {
                events.recv().await
            };
            match next {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
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
                if engine == self.names.engine_id {
                    continue;
                }
                match entry.operation {
                    async_nats::jetstream::kv::Operation::Put => {
                        let description: Option<String> =
                            serde_json::from_slice(&entry.value).unwrap_or(None);
                        self.add(engine, key, description);
                    }
                    _ => self.remove(&engine, &key),
                }
            }
            tracing::warn!("the cluster's function directory watch ended; opening it again");
            tokio::time::sleep(ANNOUNCE_RETRY).await;
        }
    }

    fn add(self: &Arc<Self>, engine: String, key: Key, description: Option<String>) {
        let worker = {
            let mut peers = self.peers.lock().expect("not poisoned");
            match peers.get(&engine) {
                Some(p) => p.worker,
                None => {
                    let worker = self.connect_peer(&engine);
                    peers.insert(
                        engine.clone(),
                        Peer {
                            worker,
                            functions: HashSet::new(),
                        },
                    );
                    worker
                }
            }
        };
        let target = Arc::new(remote::RemoteFunction {
            client: self.client.clone(),
            engine_id: engine.clone(),
            subject: self.names.call_subject(&engine),
            namespace: key.0.clone(),
        });
        let reg = FunctionRegistration {
            id: key.1.clone(),
            description,
            request_format: None,
            response_format: None,
            metadata: None,
            invocation: None,
        };
        self.mesh.register_external(worker, &key.0, reg, target);
        if let Some(p) = self.peers.lock().expect("not poisoned").get_mut(&engine) {
            p.functions.insert(key);
        }
    }

    fn remove(&self, engine: &str, key: &Key) {
        let mut peers = self.peers.lock().expect("not poisoned");
        let Some(peer) = peers.get_mut(engine) else {
            return;
        };
        peer.functions.remove(key);
        let worker = peer.worker;
        let last = peer.functions.is_empty();
        if last {
            peers.remove(engine);
        }
        drop(peers);
        // Withdrawn by choice: callers get function_not_found at once, not
        // the grace period a vanished worker's callers wait.
        self.mesh.unregister_function(worker, &key.0, &key.1);
        if last {
            self.mesh.disconnect(worker);
        }
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
