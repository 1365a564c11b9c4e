//! Engine configuration: an optional TOML file where every key has a default.
//!
//! Durations are humantime strings (`30s`, `5m`, `250ms`); sizes are bytes.
//! The command line and `QMESH_*` environment variables override the file for
//! the few settings an operator changes per run (listen address, data dir).

use serde::Deserialize;

pub use crate::cluster::{BackendKind, ClusterConfig, Secret};
pub use crate::edge::auth::{AuthConfig, TokenConfig};
pub use crate::mesh::access::{ExposeRule, RbacConfig, Role};
pub use crate::mesh::config::{InvocationConfig, Limits, MeshConfig, ServerConfig};
pub use crate::net::TlsConfig;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Everything the engine reads at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the main worker listener binds. `0.0.0.0` only when asked.
    pub listen: SocketAddr,
    /// TLS on the main worker listener (`wss://`).
    pub tls: Option<crate::net::TlsConfig>,
    /// Home of the embedded store.
    pub data_dir: PathBuf,
    pub limits: Limits,
    pub invocation: InvocationConfig,
    pub server: ServerConfig,
    pub log: LogConfig,
    /// Durable queues: defaults and per-queue settings.
    pub queue: crate::queue::settings::QueueConfig,
    /// Binary channels: expiry, buffers, limits.
    pub channels: crate::channels::ChannelConfig,
    /// Realtime channels: defaults for `websocket` routes (a route's options override them).
    pub realtime: crate::realtime::RealtimeConfig,
    /// HTTP trigger routes: their own listener (iii's `iii-http`).
    pub http: crate::http::HttpConfig,
    /// HTTP-invoked functions: which URLs they may call.
    pub http_functions: crate::http::HttpFunctionsConfig,
    /// State: durability of writes, value and update limits, triggers.
    pub state: crate::state::StateConfig,
    /// Streams: durability of writes, item and update limits.
    pub streams: crate::stream::StreamsConfig,
    /// Cron: the condition functions' time limit.
    pub cron: crate::cron::CronConfig,
    /// Durable topics: how long subscriptions outlive their bindings.
    pub topics: crate::topics::TopicsConfig,
    /// Telemetry kept in memory (spans, logs, metrics): how much, how long.
    pub observability: crate::observability::ObservabilityConfig,
    /// OTLP export of spans to a collector (off unless `endpoint` is set).
    pub otel: crate::observability::OtelConfig,
    /// Worker tokens: who may connect to the worker listeners.
    pub auth: crate::edge::auth::AuthConfig,
    /// More worker listeners, each with its own address and policy (iii's
    /// second `iii-worker-manager`, e.g. an RBAC listener for untrusted workers).
    pub listeners: Vec<ListenerConfig>,
    pub cluster: crate::cluster::ClusterConfig,
}

/// `[[listeners]]`: one more worker listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// For logs and principals; unique.
    pub name: String,
    pub listen: SocketAddr,
    /// Calls from this listener's connections to worker functions go to this
    /// function instead (engine functions bypass it), as iii's listener-level
    /// `middleware_function_id`.
    pub middleware_function_id: Option<String>,
    /// iii's RBAC: an auth function per connection, registration hooks,
    /// exposed functions. Without it the listener admits like the main one.
    pub rbac: Option<crate::mesh::access::RbacConfig>,
    /// TLS on this listener.
    pub tls: Option<crate::net::TlsConfig>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

pub const DEFAULT_PORT: u16 = 49134;

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            tls: None,
            data_dir: PathBuf::from("data"),
            limits: Limits::default(),
            invocation: InvocationConfig::default(),
            server: ServerConfig::default(),
            log: LogConfig::default(),
            queue: Default::default(),
            channels: Default::default(),
            realtime: Default::default(),
            http: Default::default(),
            http_functions: Default::default(),
            state: Default::default(),
            streams: Default::default(),
            auth: Default::default(),
            listeners: Vec::new(),
            cron: Default::default(),
            topics: Default::default(),
            observability: Default::default(),
            otel: Default::default(),
            cluster: Default::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// The part of the configuration the registry and router read.
    pub fn mesh(&self) -> MeshConfig {
        MeshConfig {
            limits: self.limits.clone(),
            invocation: self.invocation.clone(),
            server: self.server.clone(),
        }
    }

    /// Reads a TOML file; keys it leaves out keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::new(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects settings that would make the engine unusable rather than failing later.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let bad = |what: &str| {
            Err(ConfigError::Invalid(format!(
                "{what} must be greater than 0"
            )))
        };
        if l.max_message_size == 0 {
            return bad("limits.max_message_size");
        }
        if l.max_connections == 0 {
            return bad("limits.max_connections");
        }
        if l.max_pending_calls_per_connection == 0 {
            return bad("limits.max_pending_calls_per_connection");
        }
        if l.max_handshakes == 0 {
            return bad("limits.max_handshakes");
        }
        if l.max_handshakes_per_ip == 0 {
            return bad("limits.max_handshakes_per_ip");
        }
        if l.memory_budget < l.max_message_size {
            return Err(ConfigError::Invalid(
                "limits.memory_budget must be at least limits.max_message_size".into(),
            ));
        }
        if self.server.request_timeout.is_zero() {
            return bad("server.request_timeout");
        }
        if l.max_outbound_queue_bytes < l.max_message_size {
            return Err(ConfigError::Invalid(
                "limits.max_outbound_queue_bytes must be at least limits.max_message_size".into(),
            ));
        }
        if self.invocation.max_duration.is_zero() {
            return bad("invocation.max_duration");
        }
        if self.server.ping_interval.is_zero()
            || self.server.idle_timeout <= self.server.ping_interval
        {
            return Err(ConfigError::Invalid(
                "server.idle_timeout must be longer than server.ping_interval (> 0)".into(),
            ));
        }
        self.queue.validate().map_err(ConfigError::Invalid)?;
        self.channels.validate().map_err(ConfigError::Invalid)?;
        self.realtime.validate().map_err(ConfigError::Invalid)?;
        self.http.validate().map_err(ConfigError::Invalid)?;
        self.state.validate().map_err(ConfigError::Invalid)?;
        self.streams.validate().map_err(ConfigError::Invalid)?;
        self.cron.validate().map_err(ConfigError::Invalid)?;
        self.topics.validate().map_err(ConfigError::Invalid)?;
        self.observability
            .validate()
            .map_err(ConfigError::Invalid)?;
        self.otel.validate().map_err(ConfigError::Invalid)?;
        self.cluster.validate().map_err(ConfigError::Invalid)?;
        let mut names = std::collections::HashSet::from(["main"]);
        for l in &self.listeners {
            if l.name.trim().is_empty() || !names.insert(l.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "[[listeners]] name {:?} must be non-empty and unique (\"main\" is the `listen` listener)",
                    l.name
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn state_and_streams_sections_are_read_and_checked() {
        let c = Config::from_toml(
            "[state]\ndurable = false\nmax_value_bytes = 10\n[streams]\ncondition_timeout = \"2s\"\n",
        )
        .unwrap();
        assert!(!c.state.durable && c.state.max_value_bytes == 10);
        assert!(c.streams.durable, "each module has its own default");
        assert_eq!(c.streams.condition_timeout, Duration::from_secs(2));
        assert!(Config::from_toml("[state]\nmax_value_bytes = 0\n").is_err());
        assert!(Config::from_toml("[state]\nbogus = 1\n").is_err());
    }

    #[test]
    fn the_cluster_picks_where_state_and_streams_live_each_on_its_own() {
        let c = Config::from_toml("[cluster]\nstreams = \"jetstream\"\n").unwrap();
        assert_eq!(c.cluster.streams, BackendKind::Jetstream);
        assert_eq!(c.cluster.state, BackendKind::Local, "local by default");
        assert!(Config::from_toml("[cluster]\nstreams = \"nats\"\n").is_err());
    }

    #[test]
    fn the_cron_section_is_read_and_checked() {
        let c = Config::from_toml("[cron]\ncondition_timeout = \"2s\"\n").unwrap();
        assert_eq!(c.cron.condition_timeout, Duration::from_secs(2));
        assert!(Config::from_toml("[cron]\ncondition_timeout = \"0s\"\n").is_err());
        assert!(Config::from_toml("[cron]\nbogus = 1\n").is_err());
    }

    #[test]
    fn the_topics_section_is_read_and_checked() {
        let c = Config::from_toml("[topics]\nkeep_unbound = \"10m\"\n").unwrap();
        assert_eq!(c.topics.keep_unbound, Duration::from_secs(600));
        assert!(Config::from_toml("[topics]\ncondition_timeout = \"0s\"\n").is_err());
        assert!(Config::from_toml("[topics]\nbogus = 1\n").is_err());
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.listen.port(), DEFAULT_PORT);
        assert!(c.listen.ip().is_loopback());
        assert_eq!(c.invocation.max_duration, Duration::from_secs(600));
    }

    #[test]
    fn humantime_durations_and_unknown_keys() {
        let c = Config::from_toml("[invocation]\nmax_duration = \"1m 30s\"\n").unwrap();
        assert_eq!(c.invocation.max_duration, Duration::from_secs(90));
        assert!(Config::from_toml("[invocation]\nmax_duration = \"30\"\n").is_err());
        let e = Config::from_toml("[limitz]\n").unwrap_err().to_string();
        assert!(e.contains("limitz"), "{e}");
    }

    #[test]
    fn channel_settings_read_humantime_and_refuse_nonsense() {
        let c = Config::from_toml("[channels]\nttl = \"90s\"\n").unwrap();
        assert_eq!(c.channels.ttl, Duration::from_secs(90));
        assert_eq!(Config::default().channels.ttl, Duration::from_secs(300));
        let e = Config::from_toml("[channels]\nmax_buffer_bytes = 10\n").unwrap_err();
        assert!(e.to_string().contains("max_buffer_bytes"), "{e}");
    }

    #[test]
    fn listeners_and_tokens_are_read() {
        let c = Config::from_toml(
            r#"
            [auth]
            tokens = [{ name = "ops", role = "operator", sha256 = "00" }]
            [[listeners]]
            name = "rbac"
            listen = "127.0.0.1:0"
            middleware_function_id = "mw"
            [listeners.rbac]
            auth_function_id = "auth"
            expose_functions = ['match("pub::*")', { metadata = { public = true } }]
            "#,
        )
        .unwrap();
        assert_eq!(c.auth.tokens[0].name, "ops");
        let l = &c.listeners[0];
        assert_eq!(l.middleware_function_id.as_deref(), Some("mw"));
        assert_eq!(l.rbac.as_ref().unwrap().expose_functions.len(), 2);
        let twice = "[[listeners]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\n";
        assert!(Config::from_toml(twice).is_err());
        assert!(
            Config::from_toml("[[listeners]]\nname = \"main\"\nlisten = \"127.0.0.1:0\"\n")
                .is_err()
        );
        assert!(Config::from_toml("[[listeners]]\nname = \"x\"\nlisten = \"127.0.0.1:0\"\n[listeners.rbac]\nbogus = 1\n").is_err());
    }

    #[test]
    fn nonsense_limits_are_refused() {
        assert!(Config::from_toml("[limits]\nmax_connections = 0\n").is_err());
    }
}
