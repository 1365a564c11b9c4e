//! HTTP as an engine module: iii's `iii-http` (trigger routes on their own
//! listener) and `iii-http-functions` (functions the engine calls over HTTP).
//!
//! - [`routes`]: the `http` trigger type and its route table (keys, path
//!   parameters, last registration wins, structural conflicts refused).
//! - [`server`]: the listener and the life of one request: match, global
//!   middleware, the two channels, condition, route middleware, the handler
//!   call raced against the response channel.
//! - [`response`]: what a handler's return value or the response channel
//!   becomes on the wire, and the engine's error envelopes.
//! - [`functions`]: HTTP-invoked functions (`registerfunction.invocation`):
//!   URL policy (allowlist, HTTPS, private addresses checked after DNS),
//!   signing, result and error mapping.
//! - [`module`]: the module seam.
//!
//! Architecture invariant: the module reaches workers only through the mesh
//! (internal calls, the external-function seam) and channels only through
//! `crate::channels`; the mesh never names it. The route lock is never held
//! while calling the mesh.

pub(crate) mod functions;
pub(crate) mod module;
pub(crate) mod response;
pub(crate) mod routes;
pub(crate) mod server;

pub(crate) use module::HttpModule;

use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

/// The trigger type's id, iii's.
pub(crate) const TRIGGER_TYPE: &str = "http";

/// `[http]`: the trigger-route listener (iii's `iii-http` module).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Where trigger routes are served; separate from the worker listener.
    /// Port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// Whole-request bound (the handler and middleware included): 504 when
    /// it runs out. Also each middleware call's bound.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// Absent: any origin, method and header (iii's permissive default).
    pub cors: Option<CorsConfig>,
    /// Requests handled at once; more wait their turn.
    pub concurrency_request_limit: usize,
    /// Middleware run on every matched request, before the route's own.
    pub middleware: Vec<GlobalMiddleware>,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// A client that has not sent its request head within this is dropped.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// TLS on the HTTP listener (`https://`).
    pub tls: Option<crate::net::TlsConfig>,
}

/// `[http.cors]`: an empty list or `"*"` allows any value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    pub allowed_origins: Vec<String>,
    pub allowed_methods: Vec<String>,
}

/// One `[[http.middleware]]` entry: run in ascending `priority`; only the
/// `preHandler` phase exists.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalMiddleware {
    pub function_id: String,
    #[serde(default = "pre_handler")]
    pub phase: String,
    #[serde(default)]
    pub priority: i64,
}

fn pre_handler() -> String {
    "preHandler".to_owned()
}

/// iii's default port for trigger routes.
pub const DEFAULT_HTTP_PORT: u16 = 3111;

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_HTTP_PORT)),
            default_timeout: Duration::from_secs(30),
            cors: None,
            concurrency_request_limit: 1024,
            middleware: Vec::new(),
            max_body_bytes: 16 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

impl HttpConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.default_timeout.is_zero() {
            return Err("http.default_timeout must be greater than 0".into());
        }
        if self.header_read_timeout.is_zero() {
            return Err("http.header_read_timeout must be greater than 0".into());
        }
        if let Some(m) = self.middleware.iter().find(|m| m.phase != "preHandler") {
            return Err(format!(
                "http.middleware {}: phase must be preHandler, not {:?}",
                m.function_id, m.phase
            ));
        }
        Ok(())
    }
}

/// `[http_functions]`: which URLs HTTP-invoked functions may call. Secure
/// by default: HTTPS only, no private or loopback addresses (checked on
/// the resolved address, so a name cannot lead there either).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpFunctionsConfig {
    /// Globs matched against the URL's host (not the port); empty means any.
    pub url_allowlist: Vec<String>,
    pub block_private_ips: bool,
    pub require_https: bool,
}

impl Default for HttpFunctionsConfig {
    fn default() -> Self {
        Self {
            url_allowlist: vec!["*".to_owned()],
            block_private_ips: true,
            require_https: true,
        }
    }
}
