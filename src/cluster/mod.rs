//! Cluster mode: engines on one NATS cluster route sync calls to each
//! other's workers, list each other's functions and workers, relay pub/sub
//! and realtime publishes, link a binary channel's ends connected to
//! different engines, and forget an engine that stops beating.
//!
//! - `directory.rs`: which engine's workers serve which functions, in the
//!   JetStream KV bucket `qmesh_<cluster>_functions` (one key per engine and
//!   function, written by that engine, watched by every other one), and its
//!   registered workers' rows in `qmesh_<cluster>_workers`. Each other live
//!   engine is one peer in the mesh (a connection with no socket, named
//!   `engine:<id>`) whose functions are external functions. Its
//!   `triggers.rs` shares trigger types (`qmesh_<cluster>_trigger_types`)
//!   and the bindings one engine makes that another's type serves
//!   (`qmesh_<cluster>_bindings`): the peer provides the type, or owns the
//!   binding, in the other engine's mesh.
//! - `liveness.rs`: heartbeats on core NATS, `qmesh.<cluster>.heartbeat.<id>`;
//!   an engine unheard for `engine_timeout` is dead and leaves the directory.
//! - `relay.rs`: what modules share with the same module on other engines
//!   (pub/sub's and realtime's publishes, shared state's changes and shared
//!   streams' events), core NATS on `qmesh.<cluster>.relay.<channel>.<id>`.
//! - `links.rs`: binary channels whose writer and reader are connected to
//!   different engines: opens on `qmesh.<cluster>.engine.<id>.channel`,
//!   then the frames on `qmesh.<cluster>.link.<link>.{owner,peer}` with
//!   credit-based flow control, behind `module::ChannelPeers` (and the
//!   channels module's `module::ChannelEnds`).
//! - `remote.rs`: the calls themselves, core NATS request/reply on
//!   `qmesh.<cluster>.engine.<id>.call`: a call to a peer's function goes
//!   out as a request, and the peer answers it from its own workers.
//! - `slots.rs`: which engine fires a slot of a schedule several engines
//!   share (cron's), a KV create per slot in `qmesh_<cluster>_cron`: the
//!   mesh's `SlotClaims` seam.
//! - `state.rs`: the state module's values in the KV bucket
//!   `qmesh_<cluster>_state` (`[cluster] state = "jetstream"`), behind
//!   `module::StateBackend`.
//! - `streams.rs`: the streams module's items in the KV bucket
//!   `qmesh_<cluster>_streams` (`[cluster] streams = "jetstream"`), behind
//!   `module::StreamBackend`.
//! - `values.rs`: JSON values in a KV bucket every engine reads and writes
//!   (key encoding, compare-and-set writes, reads from the stream leader,
//!   listings by key prefix), what shared state and streams are made of.
//! - `kv.rs`: how a bucket is opened, and what a refused KV write means
//!   (async-nats 0.52 knows only the older server's code for a lost
//!   compare-and-set; "no responders" means no stream took it).
//! - `config.rs`: `[cluster]`, its credentials and TLS files checked.
//! - `connect.rs`: the NATS client's options from `[cluster]` (auth, TLS,
//!   reconnects), built in one place, and what a refused connection says.
//!
//! The mesh knows none of this by name: a peer's functions are registered
//! with [`crate::mesh::provided::ExternalTarget`]s, as HTTP-invoked
//! functions are; the listings and pub/sub reach other engines through the
//! mesh's `OtherEngines` and `Relay` seams, and cron's slots are claimed
//! through its `SlotClaims` seam; peers' trigger types and bindings are
//! registered like a worker's, and durable topics' subscribers are shared
//! as bindings every engine serves (`TriggerTypeHandler::cluster_wide`);
//! their messages, like queues, state and streams unless configured
//! otherwise, stay in each engine's store.

mod clients;
mod config;
mod connect;
mod directory;
mod kv;
mod links;
mod liveness;
mod queue;
mod relay;
mod remote;
mod slots;
mod state;
mod streams;
mod values;

pub use config::{BackendKind, ClusterConfig, Secret};

use futures_util::future::BoxFuture;
use std::sync::Arc;
use tokio::task::JoinHandle;

use crate::mesh::Mesh;
use crate::module::{ChannelEnds, ChannelPeers, Module, RealtimeClients, RealtimePeers};

/// Why an engine could not join its cluster (the engine does not start).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("[cluster] {field} {value:?} may hold only letters, digits, '_' and '-'")]
    Name { field: &'static str, value: String },
    /// `[cluster]` URLs, credentials or TLS files (the message names the key).
    #[error("{0}")]
    Config(String),
    #[error("cannot connect to NATS at {urls}: {source}{hint}")]
    Connect {
        urls: String,
        source: async_nats::ConnectError,
        /// What to check, or nothing.
        hint: String,
    },
    #[error(
        "cannot open the JetStream bucket {bucket} (is JetStream on, with {replicas} replica(s) possible?): {source}"
    )]
    Bucket {
        bucket: String,
        replicas: usize,
        source: async_nats::jetstream::context::CreateKeyValueError,
    },
    #[error(
        "cannot open the cluster's queue stream or bucket {name} (is JetStream on, with {replicas} replica(s) possible?): {message}"
    )]
    Queues {
        name: String,
        replicas: usize,
        message: String,
    },
    #[error(
        "[cluster] engine_timeout ({timeout:?}) must be longer than heartbeat ({heartbeat:?}), which must not be zero"
    )]
    Timing {
        heartbeat: std::time::Duration,
        timeout: std::time::Duration,
    },
    #[error("cannot subscribe to {subject}: {source}")]
    Subscribe {
        subject: String,
        source: async_nats::SubscribeError,
    },
}

/// Names every engine of one cluster derives from its `[cluster] name`.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub cluster: String,
    pub engine_id: String,
}

impl Names {
    pub(crate) fn functions_bucket(&self) -> String {
        format!("qmesh_{}_functions", self.cluster)
    }
    pub(crate) fn workers_bucket(&self) -> String {
        format!("qmesh_{}_workers", self.cluster)
    }
    pub(crate) fn trigger_types_bucket(&self) -> String {
        format!("qmesh_{}_trigger_types", self.cluster)
    }
    pub(crate) fn bindings_bucket(&self) -> String {
        format!("qmesh_{}_bindings", self.cluster)
    }
    pub(crate) fn cron_bucket(&self) -> String {
        format!("qmesh_{}_cron", self.cluster)
    }
    pub(crate) fn call_subject(&self, engine_id: &str) -> String {
        format!("qmesh.{}.engine.{engine_id}.call", self.cluster)
    }
    pub(crate) fn heartbeat_subject(&self, engine_id: &str) -> String {
        format!("qmesh.{}.heartbeat.{engine_id}", self.cluster)
    }
    pub(crate) fn relay_subject(&self, channel: &str, engine_id: &str) -> String {
        format!("qmesh.{}.relay.{channel}.{engine_id}", self.cluster)
    }
    pub(crate) fn channel_subject(&self, engine_id: &str) -> String {
        format!("qmesh.{}.engine.{engine_id}.channel", self.cluster)
    }
    pub(crate) fn realtime_subject(&self, engine_id: &str) -> String {
        format!("qmesh.{}.engine.{engine_id}.realtime", self.cluster)
    }
    pub(crate) fn link_subject(&self, link: &str, side: &str) -> String {
        format!("qmesh.{}.link.{link}.{side}", self.cluster)
    }
}

/// This engine's membership of a cluster: a module of the engine root.
pub(crate) struct Cluster {
    names: Names,
    client: async_nats::Client,
    directory: Arc<directory::Directory>,
    mesh: Mesh,
    /// This engine's call subject, everyone's heartbeats and relayed
    /// messages, and the relay's queue, until [`Module::start`] serves them.
    subscriptions: std::sync::Mutex<Option<Subscriptions>>,
    heartbeat: std::time::Duration,
    engine_timeout: std::time::Duration,
    relay: Arc<relay::NatsRelay>,
    slots: Arc<slots::NatsSlotClaims>,
    /// Counts this engine's NATS disconnections (links fail on one).
    disconnects: tokio::sync::watch::Receiver<u64>,
    /// This engine's channels, for other engines' sockets: handed over by
    /// the engine root ([`Cluster::serve_channels`]), served from `start`.
    channel_ends: std::sync::Mutex<Option<(Arc<dyn ChannelEnds>, usize)>>,
    /// The realtime module's clients, handed over by the engine root
    /// ([`Cluster::serve_realtime`]), served from `start`.
    realtime_clients: std::sync::Mutex<Option<Arc<dyn RealtimeClients>>>,
}

struct Subscriptions {
    calls: async_nats::Subscriber,
    beats: async_nats::Subscriber,
    relayed: async_nats::Subscriber,
    /// Other engines' opens of this engine's channels.
    channel_opens: async_nats::Subscriber,
    /// Other engines' functions on this engine's realtime clients.
    realtime_asks: async_nats::Subscriber,
    /// What the relay queues for NATS.
    to_relay: tokio::sync::mpsc::Receiver<(&'static str, Vec<u8>)>,
}

impl Cluster {
    /// Connects to NATS, opens the function directory and subscribes to
    /// this engine's call subject. Nothing is announced or routed until
    /// [`Module::start`].
    pub(crate) async fn join(mesh: &Mesh, config: &ClusterConfig) -> Result<Cluster, ClusterError> {
        let engine_id = config
            .engine_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        for (field, value) in [("name", &config.name), ("engine_id", &engine_id)] {
            if !config::is_plain_name(value) {
                return Err(ClusterError::Name {
                    field,
                    value: value.clone(),
                });
            }
        }
        if config.heartbeat.is_zero() || config.engine_timeout <= config.heartbeat {
            return Err(ClusterError::Timing {
                heartbeat: config.heartbeat,
                timeout: config.engine_timeout,
            });
        }
        let names = Names {
            cluster: config.name.clone(),
            engine_id,
        };
        // URLs never carry credentials (refused): safe to log and show.
        let urls = config.urls.join(",");
        let addrs = config.addrs().map_err(ClusterError::Config)?;
        let (disconnected, disconnects) = tokio::sync::watch::channel(0u64);
        let client = connect::options(config)?
            .name(format!("qmesh engine {}", names.engine_id))
            .event_callback(move |event| {
                if matches!(event, async_nats::Event::Disconnected) {
                    disconnected.send_modify(|n| *n += 1);
                }
                async {}
            })
            .connect(addrs)
            .await
            .map_err(|source| ClusterError::Connect {
                urls: urls.clone(),
                hint: connect::hint(config, &source),
                source,
            })?;
        let version = client.server_info().version;
        if !syncs_every_write(&version) {
            tracing::warn!(
                nats_version = %version,
                "this NATS server cannot fsync every JetStream write before acknowledging it \
                 (sync_interval: always needs 2.10 or later; 2.15.1 is what qmesh tests): \
                 what the cluster stores may be lost on power failure"
            );
        }
        let directory =
            directory::Directory::open(mesh, &client, &names, config.replicas, disconnects.clone())
                .await?;
        let slots = slots::NatsSlotClaims::open(&client, &names, config.replicas).await?;
        let subscribe = async |subject: String| {
            client
                .subscribe(subject.clone())
                .await
                .map_err(|source| ClusterError::Subscribe { subject, source })
        };
        let calls = subscribe(names.call_subject(&names.engine_id)).await?;
        let beats = subscribe(names.heartbeat_subject("*")).await?;
        let relayed = subscribe(names.relay_subject("*", "*")).await?;
        let channel_opens = subscribe(names.channel_subject(&names.engine_id)).await?;
        let realtime_asks = subscribe(names.realtime_subject(&names.engine_id)).await?;
        let (relay, to_relay) = relay::NatsRelay::new();
        tracing::info!(
            cluster = %names.cluster,
            engine_id = %names.engine_id,
            nats = %urls,
            auth = connect::auth_kind(config),
            tls = config.tls_wanted() || client.server_info().tls_required,
            "joined the cluster"
        );
        Ok(Cluster {
            names,
            client,
            directory: Arc::new(directory),
            mesh: mesh.clone(),
            subscriptions: std::sync::Mutex::new(Some(Subscriptions {
                calls,
                beats,
                relayed,
                channel_opens,
                realtime_asks,
                to_relay,
            })),
            disconnects,
            channel_ends: std::sync::Mutex::new(None),
            realtime_clients: std::sync::Mutex::new(None),
            relay: Arc::new(relay),
            slots: Arc::new(slots),
            heartbeat: config.heartbeat,
            engine_timeout: config.engine_timeout,
        })
    }
}

impl Cluster {
    fn link_timing(&self) -> links::Timing {
        links::Timing {
            tick: self.heartbeat,
            timeout: self.engine_timeout,
        }
    }

    /// What the channels module asks for a socket connected here to a
    /// channel another engine holds. `max_frame_size` is
    /// `channels.max_frame_size` (the largest text message a link reassembles).
    pub(crate) fn channel_peers(&self, max_frame_size: usize) -> Arc<dyn ChannelPeers> {
        Arc::new(links::NatsChannelPeers {
            client: self.client.clone(),
            names: self.names.clone(),
            directory: self.directory.clone(),
            disconnects: self.disconnects.clone(),
            timing: self.link_timing(),
            max_text: max_frame_size,
        })
    }

    /// This engine's channels, whose ends other engines' sockets may ask
    /// for (served once the module starts).
    pub(crate) fn serve_channels(&self, ends: Arc<dyn ChannelEnds>, max_frame_size: usize) {
        *self.channel_ends.lock().expect("not poisoned") = Some((ends, max_frame_size));
    }

    /// The realtime module's way to clients connected to other engines.
    pub(crate) fn realtime_peers(&self) -> Arc<dyn RealtimePeers> {
        Arc::new(clients::NatsRealtimePeers::new(
            self.client.clone(),
            self.names.clone(),
            self.directory.clone(),
        ))
    }

    /// This engine's realtime clients, which other engines' workers may act
    /// on (served once the module starts).
    pub(crate) fn serve_realtime(&self, clients: Arc<dyn RealtimeClients>) {
        *self.realtime_clients.lock().expect("not poisoned") = Some(clients);
    }
}

impl Module for Cluster {
    fn name(&self) -> &'static str {
        "cluster"
    }

    fn provide(&self, p: &mut crate::mesh::Provisions) {
        p.other_engines(self.directory.clone());
        p.relay(self.relay.clone());
        p.slot_claims(self.slots.clone());
    }

    fn health(&self) -> Option<(&'static str, serde_json::Value)> {
        let state = self.client.connection_state();
        let ok = matches!(state, async_nats::connection::State::Connected);
        Some((
            "cluster",
            serde_json::json!({
                "state": if ok { "ok" } else { "degraded" },
                "engine_id": self.names.engine_id,
                "nats": state.to_string(),
            }),
        ))
    }

    fn start(&self) -> Vec<JoinHandle<()>> {
        let Some(subs) = self.subscriptions.lock().expect("not poisoned").take() else {
            return Vec::new();
        };
        // Beating before announcing: others meet this engine alive.
        let mut tasks = vec![
            tokio::spawn(liveness::beat(
                self.client.clone(),
                self.names.heartbeat_subject(&self.names.engine_id),
                self.heartbeat,
            )),
            tokio::spawn(liveness::listen(self.directory.clone(), subs.beats)),
            tokio::spawn(liveness::sweep(
                self.directory.clone(),
                self.client.clone(),
                self.heartbeat,
                self.engine_timeout,
            )),
        ];
        tasks.extend(self.directory.clone().start());
        tasks.push(tokio::spawn(relay::publish(
            self.client.clone(),
            self.names.clone(),
            subs.to_relay,
        )));
        tasks.push(tokio::spawn(relay::receive(
            self.mesh.clone(),
            self.names.clone(),
            subs.relayed,
        )));
        if let Some((ends, max_text)) = self.channel_ends.lock().expect("not poisoned").take() {
            tasks.push(tokio::spawn(links::serve(
                ends,
                self.client.clone(),
                self.names.clone(),
                self.disconnects.clone(),
                self.link_timing(),
                max_text,
                subs.channel_opens,
            )));
        }
        if let Some(held) = self.realtime_clients.lock().expect("not poisoned").take() {
            tasks.push(tokio::spawn(clients::serve(
                held,
                self.client.clone(),
                subs.realtime_asks,
            )));
        }
        let directory = self.directory.clone();
        tasks.push(tokio::spawn(remote::serve(
            self.mesh.clone(),
            self.client.clone(),
            move |namespace: &str, function_id: &str| directory.served_here(namespace, function_id),
            subs.calls,
        )));
        tasks
    }

    /// Other engines stop routing here: this engine's entries leave the
    /// directory (its workers are about to be closed).
    fn stop_intake(&self, _grace: std::time::Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.directory.withdraw().await })
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = self.client.flush().await {
                tracing::debug!(error = %e, "NATS flush at stop failed");
            }
        })
    }
}

/// Whether a NATS server of `version` can be configured to fsync every
/// JetStream write before acknowledging it (`jetstream { sync_interval:
/// always }`, unknown to 2.9 and earlier). Its configuration is not visible
/// to clients: this is the check a client can make.
fn syncs_every_write(version: &str) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 10)
}

#[cfg(test)]
mod version_tests {
    use super::syncs_every_write;

    #[test]
    fn servers_older_than_2_10_cannot_sync_every_write() {
        for old in ["2.9.10", "2.2.0", "1.4.1", "garbage"] {
            assert!(!syncs_every_write(old), "{old}");
        }
        for new in ["2.10.0", "2.15.1", "v2.12.3-beta", "3.0.0"] {
            assert!(syncs_every_write(new), "{new}");
        }
    }
}
