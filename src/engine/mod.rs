//! The engine root: the one place that knows every part.
//!
//! [`Engine::start`] opens the store, builds the mesh and every module,
//! installs what the modules provide into the mesh and starts their
//! background tasks; when it returns the engine is ready (the binary prints
//! its address then, tests connect then). [`Engine::serve`] serves the
//! worker listener until `shutdown` resolves and then drains, in order:
//!
//! 1. the listeners stop accepting (the worker listener and modules' own);
//!    new upgrades get 503;
//! 2. each module stops taking new work ([`Module::stop_intake`]: the queue
//!    stops starting jobs, realtime runs its clients' disconnect handlers
//!    and streams fires its clients' `stream:leave` handlers while workers
//!    are still connected);
//! 3. calls in flight get `server.shutdown_grace` to finish;
//! 4. each module stops, in reverse order ([`Module::stop`]: the queue
//!    scheduler lets go of the store; channel sockets close with 1001);
//! 5. every worker is closed with 1001, and the engine waits (briefly) for
//!    their close frames to leave.
//!
//! A module is one line in [`Engine::start`].

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::budget::MemoryBudget;
use crate::channels::Channels;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::cron::CronModule;
use crate::dashboard::Dashboard;
use crate::functions::Introspection;
use crate::http::HttpModule;
use crate::mesh::{Mesh, Provisions};
use crate::module::{Module, StateBackend, StreamBackend};
use crate::observability::Observability;
use crate::protocol::codes::close;
use crate::pubsub::PubSub;
use crate::queue::{QueueBackend, Queues};
use crate::realtime::RealtimeModule;
use crate::state::StateModule;
use crate::store::state::StateValues;
use crate::store::stream::StreamItems;
use crate::store::{Store, StoreError};
use crate::stream::StreamsModule;
use crate::topics::TopicsModule;
pub use snapshot::{BindingView, FunctionView, Snapshot, WorkerView};

mod listeners;
mod snapshot;

/// How long closed workers' writers get to put their close frames on the wire.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot open the store at {path}: {source}")]
    Store { path: PathBuf, source: StoreError },
    #[error("cannot start the durable queue: {0}")]
    Queue(StoreError),
    #[error("{0}")]
    Tokens(crate::edge::auth::TokenError),
    #[error("{0}")]
    Tls(#[from] crate::net::TlsError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Observability(#[from] crate::observability::ObservabilityError),
    #[error("{0}")]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// A running engine: a cheap, cloneable handle.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    mesh: Mesh,
    /// In start order; drained in this order, stopped in reverse.
    modules: Vec<Arc<dyn Module>>,
    channels: Channels,
    realtime: Arc<RealtimeModule>,
    http: Arc<HttpModule>,
    listeners: listeners::WorkerListeners,
    /// Every listener's TLS, re-read by [`Engine::reload_tls`] (and SIGHUP).
    tls: Vec<crate::net::Tls>,
    streams: Arc<StreamsModule>,
    /// Cancelled when the drain begins: modules' own listeners stop accepting.
    listeners_stop: tokio_util::sync::CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Engine {
    /// Builds and starts everything but the listener. Must run inside a
    /// tokio runtime. When it returns, the store is open, crash recovery has
    /// run and every module is ready.
    pub async fn start(config: Config) -> Result<Engine, EngineError> {
        let store_dir = config.data_dir.join("store");
        let store = Store::open(&store_dir).map_err(|source| EngineError::Store {
            path: store_dir.clone(),
            source,
        })?;
        let store = Arc::new(store);
        let worker_listeners = listeners::WorkerListeners::bind(&config).await?;
        let budget = MemoryBudget::new(config.limits.memory_budget);
        let mesh = Mesh::new(config.mesh(), budget.clone());

        let introspection = Arc::new(Introspection::new(&mesh));
        let cluster = match config.cluster.enabled() {
            true => Some(Cluster::join(&mesh, &config.cluster).await?),
            false => None,
        };
        // In a cluster, a socket here for a channel another engine holds is
        // linked to it, and other engines' sockets to channels held here.
        let max_frame = config.channels.max_frame_size;
        let channel_peers = cluster.as_ref().map(|c| c.channel_peers(max_frame));
        let channels = Channels::new(config.channels.clone(), budget.clone(), channel_peers);
        if let Some(c) = &cluster {
            c.serve_channels(Arc::new(channels.clone()), max_frame);
        }
        let queues = Queues::start(mesh.clone(), store.clone(), config.queue.clone())
            .map_err(EngineError::Queue)?;
        // In a cluster, a worker here may act on a client connected to
        // another engine, and other engines' workers on clients here.
        let realtime_peers = cluster.as_ref().map(|c| c.realtime_peers());
        let realtime = Arc::new(
            RealtimeModule::bind(
                &mesh,
                config.realtime.clone(),
                store.clone(),
                &queues,
                realtime_peers,
            )
            .await?,
        );
        if let Some(c) = &cluster {
            c.serve_realtime(realtime.held_clients());
        }
        let http = Arc::new(
            HttpModule::bind(
                &mesh,
                &channels,
                config.http.clone(),
                &config.http_functions,
            )
            .await?,
        );
        let observability = Observability::new(config.observability.clone(), &config.otel)?;
        // With the cluster's JetStream queues, workers' enqueues, the queue
        // functions and durable topics' jobs go there; the local queue keeps
        // realtime disconnects (their clients are this engine's).
        let cluster_queues = match &cluster {
            Some(c) if config.cluster.jetstream_queues() => {
                let watchers = queues.progress_watchers.clone();
                Some(
                    c.queues(&config.cluster, config.queue.clone(), watchers)
                        .await?,
                )
            }
            _ => None,
        };
        let topic_jobs: Arc<dyn QueueBackend> = match &cluster_queues {
            Some(q) => Arc::new(q.clone()),
            None => Arc::new(queues.clone()),
        };
        let topics = TopicsModule::new(store.clone(), topic_jobs, config.topics.clone());
        // With the cluster's state, every engine reads and writes one
        // JetStream KV bucket; otherwise each keeps its own in its store.
        let state_values: Arc<dyn StateBackend> = match &cluster {
            Some(c) if config.cluster.jetstream_state() => c.state(&config.cluster).await?,
            _ => Arc::new(StateValues::new(store.clone())),
        };
        // The same for stream items: shared ones also carry each event to
        // the other engines' bindings and socket clients.
        let stream_items: Arc<dyn StreamBackend> = match &cluster {
            Some(c) if config.cluster.jetstream_streams() => c.streams(&config.cluster).await?,
            _ => Arc::new(StreamItems::new(store.clone())),
        };
        let streams =
            Arc::new(StreamsModule::bind(&mesh, stream_items, config.streams.clone()).await?);
        let queues = match cluster_queues {
            Some(_) => queues.serving_no_workers(),
            None => queues,
        };
        let mut modules: Vec<Arc<dyn Module>> = vec![
            introspection,
            Arc::new(channels.clone()),
            Arc::new(queues),
            realtime.clone(),
            http.clone(),
            Arc::new(StateModule::new(state_values, config.state.clone())),
            streams.clone(),
            Arc::new(PubSub::default()),
            Arc::new(CronModule::new(&mesh, store, config.cron.clone())),
            Arc::new(topics),
            Arc::new(observability),
            Arc::new(Dashboard),
        ];
        if let Some(cluster) = cluster {
            modules.push(Arc::new(cluster));
        }
        if let Some(q) = cluster_queues {
            modules.push(Arc::new(q));
        }

        let mut provisions = Provisions::default();
        for m in &modules {
            m.provide(&mut provisions);
        }
        mesh.install(provisions);
        let mut tasks = vec![tokio::spawn(crate::mesh::router::expire_calls(
            mesh.clone(),
        ))];
        for m in &modules {
            tasks.extend(m.start());
        }
        // Modules' own listeners get every listener's defences and TLS.
        let listeners_stop = tokio_util::sync::CancellationToken::new();
        let mut tls = worker_listeners.tls();
        for m in &modules {
            let Some(l) = m.listener() else { continue };
            tls.extend(l.tls.clone());
            let mut handshakes = crate::edge::handshakes(&mesh);
            if let Some(timeout) = l.request_timeout {
                handshakes.timeout = timeout;
            }
            let stop = listeners_stop.clone().cancelled_owned();
            let name = m.name();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = crate::net::serve(l.tcp, l.app, handshakes, l.tls, stop).await {
                    tracing::error!(module = name, error = %e, "a module's listener failed");
                }
            }));
        }
        if !tls.is_empty() {
            tasks.push(tokio::spawn(reload_tls_on_sighup(tls.clone())));
        }
        tracing::info!(
            modules = ?modules.iter().map(|m| m.name()).collect::<Vec<_>>(),
            data_dir = %config.data_dir.display(),
            "engine ready"
        );
        Ok(Engine {
            inner: Arc::new(Inner {
                config,
                mesh,
                modules,
                channels,
                realtime,
                http,
                listeners: worker_listeners,
                tls,
                streams,
                listeners_stop,
                tasks: Mutex::new(tasks),
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Where HTTP trigger routes are served (`http.listen`, resolved).
    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.inner.http.local_addr()
    }

    /// Where browsers reach realtime routes (`realtime.listen`, resolved).
    pub fn realtime_addr(&self) -> std::net::SocketAddr {
        self.inner.realtime.local_addr()
    }

    /// Re-reads every listener's certificate and key (what SIGHUP does).
    /// Connections already open keep their session; new ones get the new
    /// certificate. A listener whose files fail to load keeps its old one.
    pub fn reload_tls(&self) -> Result<(), crate::net::TlsError> {
        reload_all(&self.inner.tls)
    }

    /// Where each `[[listeners]]` entry listens (resolved), by name.
    pub fn listener_addr(&self, name: &str) -> Option<std::net::SocketAddr> {
        let addrs = &self.inner.listeners.addrs;
        addrs.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// Live HTTP trigger routes.
    pub fn http_routes(&self) -> usize {
        self.inner.http.routes()
    }

    /// Where stream clients connect (`streams.listen`, resolved).
    pub fn streams_addr(&self) -> std::net::SocketAddr {
        self.inner.streams.local_addr()
    }

    /// Open stream client sockets.
    pub fn stream_clients(&self) -> usize {
        self.inner.streams.clients()
    }

    /// Serves the worker listener (and every module's routes on it) until
    /// `shutdown` resolves, then drains the engine (see the module docs).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let mesh = self.inner.mesh.clone();
        let modules = self.inner.modules.clone();
        let health: crate::edge::HealthParts =
            Arc::new(move || modules.iter().filter_map(|m| m.health()).collect());
        let modules = self.inner.modules.clone();
        let scraped = mesh.clone();
        let metrics: crate::edge::MetricsSource = Arc::new(move || {
            let (modules, mesh) = (modules.clone(), scraped.clone());
            Box::pin(async move {
                let mut registry = prometheus_client::registry::Registry::with_prefix("qmesh");
                mesh.describe_metrics(&mut registry);
                for m in modules.iter() {
                    m.metrics(&mut registry).await;
                }
                let mut text = String::new();
                if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
                    tracing::warn!(error = %e, "cannot encode /metrics");
                }
                text
            })
        });
        let slots = crate::edge::connection_slots(&mesh);
        // Every worker listener serves the same paths; only its admission differs.
        let app = |policy| {
            let views = (health.clone(), metrics.clone());
            let mut app = crate::edge::router(&mesh, views, slots.clone(), policy);
            for m in &self.inner.modules {
                if let Some(routes) = m.routes() {
                    app = app.merge(routes);
                }
            }
            app
        };
        let main = self.inner.listeners.main.clone();
        if let Ok(addr) = listener.local_addr() {
            listeners::warn_if_open(&main, addr);
        }
        let stopped = tokio_util::sync::CancellationToken::new();
        let handshakes = crate::edge::handshakes(&mesh);
        let extra = self.inner.listeners.serve_extra(app, handshakes, &stopped);
        let draining = mesh.clone();
        let stop_all = stopped.clone();
        let stop = async move {
            shutdown.await;
            tracing::info!("shutdown requested: no new connections; finishing calls in flight");
            draining.start_draining();
            stop_all.cancel();
        };
        let main_tls = self.inner.listeners.main_tls.clone();
        let served = crate::net::serve(listener, app(main), handshakes, main_tls, stop).await;
        stopped.cancel();
        for task in extra {
            match task.await {
                Ok(Err(e)) => tracing::warn!(error = %e, "a worker listener stopped with an error"),
                Err(e) => tracing::warn!(error = %e, "a worker listener task failed"),
                Ok(Ok(())) => {}
            }
        }
        self.drain().await;
        served
    }

    async fn drain(&self) {
        let Inner {
            config,
            mesh,
            modules,
            ..
        } = &*self.inner;
        mesh.start_draining();
        self.inner.listeners_stop.cancel();
        let grace = config.server.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        for m in modules {
            m.stop_intake(grace).await;
        }
        if !mesh.wait_quiet(deadline, |st| st.calls.is_empty()).await {
            tracing::warn!(
                abandoned = mesh.pending_calls(),
                "grace period over; closing with calls still in flight"
            );
        }
        for m in modules.iter().rev() {
            m.stop().await;
        }
        mesh.close_all(close::GOING_AWAY, "engine shutting down");
        let flushed = tokio::time::Instant::now() + CLOSE_FLUSH;
        mesh.wait_quiet(flushed, |st| st.workers.is_empty()).await;
        for task in self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
        tracing::info!("engine stopped");
    }

    /// A consistent read-only picture of workers, functions, bindings,
    /// calls and realtime routes.
    pub fn snapshot(&self) -> Snapshot {
        let mut snap = self.inner.mesh.inspect(|st| Snapshot {
            workers: st
                .workers
                .iter()
                .map(|(id, w)| WorkerView {
                    id: *id,
                    name: w.meta.as_ref().and_then(|m| m.name.clone()),
                    executing: w.calls_in.len(),
                    reattach_token: w.conn.reattach_token,
                })
                .collect(),
            functions: st
                .functions
                .iter()
                .flat_map(|(ns, ids)| {
                    ids.iter().map(move |(id, f)| FunctionView {
                        namespace: ns.clone(),
                        id: id.clone(),
                        providers: f.providers.iter().map(|p| p.worker).collect(),
                    })
                })
                .collect(),
            bindings: st
                .bindings
                .values()
                .map(|b| BindingView {
                    id: b.id.clone(),
                    trigger_type: b.trigger_type.clone(),
                    function_id: b.function_id.clone(),
                    active: b.active_on.is_some(),
                })
                .collect(),
            trigger_types: st.trigger_types.keys().cloned().collect(),
            rebinding: st
                .rebinding
                .iter()
                .map(|((ns, id), r)| (ns.clone(), id.clone(), r.waiters.len()))
                .collect(),
            pending_calls: st.calls.len(),
            draining: self.inner.mesh.is_draining(),
            routes: Vec::new(),
            realtime_connections: Vec::new(),
            channels: 0,
        });
        snap.channels = self.inner.channels.len();
        let hub = self.inner.realtime.hub();
        snap.routes = hub.routes().summary();
        snap.realtime_connections = hub
            .list(None, None, usize::MAX)
            .iter()
            .map(|c| (c.id.clone(), c.route.clone()))
            .collect();
        snap.bindings.sort_by(|a, b| a.id.cmp(&b.id));
        snap
    }

    /// Closes a worker's connection with `code`, as a lost network would
    /// (tests of reconnects; operators evicting a worker). Returns whether
    /// the worker was connected.
    pub fn close_worker(&self, id: uuid::Uuid, code: u16, reason: &str) -> bool {
        let conn = self
            .inner
            .mesh
            .inspect(|st| st.workers.get(&id).map(|w| w.conn.clone()));
        conn.map(|c| c.close(code, reason)).is_some()
    }

    /// A live binary channel's operator view (`engine::channels::info`).
    pub fn channel_info(&self, channel_id: &str) -> Option<serde_json::Value> {
        let info = self.inner.channels.info(channel_id)?;
        Some(serde_json::to_value(info).expect("channel info serializes"))
    }
}

/// Reloads each TLS listener; the first failure is returned after all were tried.
fn reload_all(tls: &[crate::net::Tls]) -> Result<(), crate::net::TlsError> {
    let mut first_error = None;
    for t in tls {
        match t.reload() {
            Ok(()) => tracing::info!(cert = %t.cert_path().display(), "TLS certificate reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "TLS reload failed; the previous certificate stays in use");
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// SIGHUP re-reads certificates: a renewed certificate without a restart.
async fn reload_tls_on_sighup(tls: Vec<crate::net::Tls>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!(
            "cannot listen for SIGHUP; TLS certificates reload only through Engine::reload_tls"
        );
        return;
    };
    while hangups.recv().await.is_some() {
        let _ = reload_all(&tls);
    }
}

/// Starts an engine with `config` and serves `listener` until `shutdown`
/// resolves (mini-redis's `server::run`); what `qmesh serve` does.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), EngineError> {
    let engine = Engine::start(config).await?;
    engine.serve(listener, shutdown).await?;
    Ok(())
}
