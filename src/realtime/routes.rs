//! Routes: the `websocket` trigger's config, path patterns and matching, and
//! the table of routes built from bindings. The table lives in the mesh state
//! so it changes under the same lock as the bindings it is made of: a route
//! exists exactly while at least one of its triggers is bound.

use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

use super::{Limits, RealtimeConfig};
use crate::mesh::state::Binding;
use crate::protocol::{ErrorBody, codes};

/// The engine-provided trigger type.
pub const TRIGGER_TYPE: &str = "websocket";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    Connect,
    Message,
    Disconnect,
    Binary,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Connect => "connect",
            Event::Message => "message",
            Event::Disconnect => "disconnect",
            Event::Binary => "binary",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    Required,
    Optional,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    Serial,
    Concurrent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnHandlerError {
    Reply,
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundQueue {
    pub messages: usize,
    pub bytes: usize,
}

/// `route_options`: declared on any trigger of a route; the first value of
/// each field wins and a different later value fails that registration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteOptions {
    pub auth_function_id: Option<String>,
    pub auth: Option<AuthMode>,
    pub allowed_origins: Option<Vec<String>>,
    pub routing_keys: Option<Vec<String>>,
    pub correlation_key: Option<String>,
    pub max_message_bytes: Option<usize>,
    pub outbound_queue: Option<OutboundQueue>,
    pub ordering: Option<Ordering>,
    pub max_in_flight: Option<usize>,
    pub on_handler_error: Option<OnHandlerError>,
    pub ping_interval_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
}

/// A `websocket` binding's config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerConfig {
    route: String,
    on: Event,
    #[serde(default, rename = "match")]
    matcher: Option<Map<String, Value>>,
    #[serde(default)]
    auth: Option<AuthMode>,
    #[serde(default)]
    route_options: Option<RouteOptions>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Static(String),
    Param(String),
}

/// One handler of a route: an event (and for messages, an optional match).
#[derive(Debug, Clone)]
pub struct Handler {
    pub on: Event,
    /// `(routing key, value)` for routed message handlers.
    pub matcher: Option<(String, Value)>,
    pub auth: Option<AuthMode>,
    pub function_id: String,
    pub namespace: String,
    /// Bindings declaring this same handler (several workers may).
    bindings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub pattern: String,
    segments: Vec<Segment>,
    pub options: RouteOptions,
    /// Namespace of the trigger that named the auth function.
    pub auth_namespace: String,
    pub handlers: Vec<Handler>,
}

/// What an upgrade needs to know about the route it matched.
#[derive(Debug, Clone)]
pub struct Matched {
    pub pattern: String,
    pub params: Map<String, Value>,
    pub options: RouteOptions,
    pub auth_namespace: String,
}

/// Every route, by pattern.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: HashMap<String, Route>,
    /// binding id → its route pattern.
    by_binding: HashMap<String, String>,
    /// Routes whose triggers all went (their workers restarting, most
    /// likely): upgrades get 503 and Retry-After rather than 404.
    departed: HashMap<String, Vec<Segment>>,
}

fn invalid(msg: impl Into<String>) -> ErrorBody {
    ErrorBody::new(codes::TRIGGER_REGISTRATION_FAILED, msg)
}

fn parse_pattern(route: &str) -> Result<Vec<Segment>, ErrorBody> {
    if !route.starts_with('/') {
        return Err(invalid(format!("route {route:?} must start with '/'")));
    }
    if route == "/" || route == "/otel" || route == "/health" || route.starts_with("/ws/channels/")
    {
        return Err(invalid(format!(
            "route {route:?} is reserved by the engine"
        )));
    }
    let mut seen = Vec::new();
    route
        .trim_end_matches('/')
        .split('/')
        .skip(1)
        .map(|s| {
            let param = s
                .strip_prefix(':')
                .or_else(|| s.strip_prefix('{').and_then(|p| p.strip_suffix('}')));
            match param {
                Some(p) if p.is_empty() || seen.contains(&p) => Err(invalid(format!(
                    "route {route:?}: bad or repeated parameter {s:?}"
                ))),
                Some(p) => {
                    seen.push(p);
                    Ok(Segment::Param(p.to_owned()))
                }
                None if s.is_empty() => {
                    Err(invalid(format!("route {route:?} has an empty segment")))
                }
                None => Ok(Segment::Static(s.to_owned())),
            }
        })
        .collect()
}

/// `/ws/chat/{room}` and `/ws/chat/:room` are the same route.
fn canonical(segments: &[Segment]) -> String {
    let mut out = String::new();
    for s in segments {
        out.push('/');
        match s {
            Segment::Static(s) => out.push_str(s),
            Segment::Param(p) => {
                out.push(':');
                out.push_str(p);
            }
        }
    }
    out
}

fn match_path(segments: &[Segment], path: &str) -> Option<Map<String, Value>> {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    if parts.len() != segments.len() {
        return None;
    }
    let mut params = Map::new();
    for (seg, part) in segments.iter().zip(parts) {
        match seg {
            Segment::Static(s) if s == part => {}
            Segment::Param(p) if !part.is_empty() => {
                let value = percent_decode(part)?;
                params.insert(p.clone(), Value::String(value));
            }
            _ => return None,
        }
    }
    Some(params)
}

/// Decodes `%xx` escapes of a path segment; invalid UTF-8 does not match.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Merges `new` into `old`: unset fields are filled; a different value is a conflict.
fn merge_options(old: &mut RouteOptions, new: &RouteOptions) -> Result<(), String> {
    macro_rules! field {
        ($($f:ident),*) => {$(
            match (&old.$f, &new.$f) {
                (Some(a), Some(b)) if a != b => return Err(format!(
                    "route_options.{} conflicts with the value an earlier trigger of this route declared",
                    stringify!($f)
                )),
                (None, Some(b)) => old.$f = Some(b.clone()),
                _ => {}
            }
        )*};
    }
    field!(
        auth_function_id,
        auth,
        allowed_origins,
        routing_keys,
        correlation_key,
        max_message_bytes,
        outbound_queue,
        ordering,
        max_in_flight,
        on_handler_error,
        ping_interval_ms,
        idle_timeout_ms
    );
    Ok(())
}

fn check_options(o: &RouteOptions) -> Result<(), String> {
    let zero = |v: Option<usize>| v == Some(0);
    if zero(o.max_message_bytes)
        || zero(o.max_in_flight)
        || o.outbound_queue
            .is_some_and(|q| q.messages == 0 || q.bytes == 0)
        || o.ping_interval_ms == Some(0)
        || o.idle_timeout_ms == Some(0)
    {
        return Err("route_options: sizes, counts and intervals must be greater than 0".into());
    }
    if o.routing_keys.as_ref().is_some_and(|k| k.is_empty()) {
        return Err("route_options.routing_keys must name at least one key".into());
    }
    Ok(())
}

impl RouteTable {
    /// Adds an engine-activated `websocket` binding; refuses a bad config or
    /// a conflict with the route's other triggers (the table is unchanged then).
    pub fn bind(&mut self, b: &Binding) -> Result<(), ErrorBody> {
        let cfg: TriggerConfig = serde_json::from_str(b.config.get())
            .map_err(|e| invalid(format!("websocket trigger config: {e}")))?;
        let segments = parse_pattern(&cfg.route)?;
        let matcher = match cfg.matcher {
            None => None,
            Some(m) if m.len() == 1 && cfg.on == Event::Message => m.into_iter().next(),
            Some(_) => {
                return Err(invalid(
                    "match must be one {key: value} pair, on a message trigger",
                ));
            }
        };
        let opts = cfg.route_options.unwrap_or_default();
        check_options(&opts).map_err(invalid)?;
        let pattern = canonical(&segments);
        let mut route = self.routes.get(&pattern).cloned().unwrap_or_else(|| Route {
            pattern: pattern.clone(),
            segments,
            options: RouteOptions::default(),
            auth_namespace: b.namespace.clone(),
            handlers: Vec::new(),
        });
        if opts.auth_function_id.is_some() && route.options.auth_function_id.is_none() {
            route.auth_namespace = b.namespace.clone();
        }
        merge_options(&mut route.options, &opts).map_err(invalid)?;
        if let Some(key) = matcher.as_ref().map(|m| &m.0) {
            let keys = route.options.routing_keys.as_deref().unwrap_or_default();
            if !keys.is_empty() && !keys.contains(key) || keys.is_empty() && key != "action" {
                return Err(invalid(format!(
                    "match key {key:?} is not one of the route's routing_keys"
                )));
            }
        }
        let same = |h: &Handler| h.on == cfg.on && h.matcher == matcher;
        match route.handlers.iter_mut().find(|h| same(h)) {
            Some(h) if h.function_id != b.function_id || h.namespace != b.namespace => {
                return Err(invalid(format!(
                    "route {pattern} already has a {} handler{} bound to {}",
                    cfg.on.as_str(),
                    matcher
                        .as_ref()
                        .map(|(k, v)| format!(" for {k}={v}"))
                        .unwrap_or_default(),
                    h.function_id
                )));
            }
            Some(h) => h.bindings.push(b.id.clone()),
            None => route.handlers.push(Handler {
                on: cfg.on,
                matcher,
                auth: cfg.auth,
                function_id: b.function_id.clone(),
                namespace: b.namespace.clone(),
                bindings: vec![b.id.clone()],
            }),
        }
        self.by_binding.insert(b.id.clone(), pattern.clone());
        self.departed.remove(&pattern);
        self.routes.insert(pattern, route);
        Ok(())
    }

    /// Removes a binding; the route goes with its last trigger.
    pub fn unbind(&mut self, binding_id: &str) {
        let Some(pattern) = self.by_binding.remove(binding_id) else {
            return;
        };
        let Some(route) = self.routes.get_mut(&pattern) else {
            return;
        };
        for h in &mut route.handlers {
            h.bindings.retain(|id| id != binding_id);
        }
        route.handlers.retain(|h| !h.bindings.is_empty());
        if route.handlers.is_empty()
            && let Some(route) = self.routes.remove(&pattern)
        {
            self.departed.insert(pattern, route.segments);
        }
    }

    /// The route serving `path`: the one with the most static segments wins.
    pub fn find(&self, path: &str) -> Option<Matched> {
        self.routes
            .values()
            .filter_map(|r| match_path(&r.segments, path).map(|p| (r, p)))
            .max_by_key(|(r, p)| (r.segments.len() - p.len(), std::cmp::Reverse(&r.pattern)))
            .map(|(r, params)| Matched {
                pattern: r.pattern.clone(),
                params,
                options: r.options.clone(),
                auth_namespace: r.auth_namespace.clone(),
            })
    }

    /// Whether `path` belonged to a route that has lost all its triggers.
    pub fn departed(&self, path: &str) -> bool {
        self.departed
            .values()
            .any(|segments| match_path(segments, path).is_some())
    }

    pub fn route(&self, pattern: &str) -> Option<&Route> {
        self.routes.get(pattern)
    }

    /// Every route as (pattern, handler count).
    pub fn summary(&self) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = self
            .routes
            .values()
            .map(|r| (r.pattern.clone(), r.handlers.len()))
            .collect();
        out.sort();
        out
    }

    pub fn contains(&self, pattern: &str) -> bool {
        self.routes.contains_key(pattern)
    }
}

impl Route {
    /// The handler for `event`; for messages, `matched` selects a routed one.
    pub fn handler(&self, event: Event, matched: Option<(&str, &Value)>) -> Option<&Handler> {
        self.handlers.iter().find(|h| {
            h.on == event
                && match (&h.matcher, matched) {
                    (None, None) => true,
                    (Some((k, v)), Some((mk, mv))) => k == mk && v == mv,
                    _ => false,
                }
        })
    }

    /// Whether any routed handler listens on `key` = `value`.
    pub fn routes_value(&self, key: &str, value: &Value) -> bool {
        self.handler(Event::Message, Some((key, value))).is_some()
    }
}

impl RouteOptions {
    /// The limits a connection on this route lives by.
    pub fn resolve(&self, cfg: &RealtimeConfig) -> Arc<Limits> {
        let q = self.outbound_queue;
        let ms = |v: Option<u64>, d| v.map(std::time::Duration::from_millis).unwrap_or(d);
        let auth = self.auth.unwrap_or(if self.auth_function_id.is_some() {
            AuthMode::Required
        } else {
            AuthMode::Optional
        });
        Arc::new(Limits {
            max_message_bytes: self.max_message_bytes.unwrap_or(cfg.max_message_bytes),
            outbound_messages: q.map_or(cfg.outbound_messages, |q| q.messages),
            outbound_bytes: q.map_or(cfg.outbound_bytes, |q| q.bytes),
            ping_interval: ms(self.ping_interval_ms, cfg.ping_interval),
            idle_timeout: ms(self.idle_timeout_ms, cfg.idle_timeout),
            routing_keys: self
                .routing_keys
                .clone()
                .unwrap_or_else(|| vec!["action".into()]),
            correlation_key: self.correlation_key.clone().unwrap_or_else(|| "id".into()),
            concurrent: self.ordering == Some(Ordering::Concurrent),
            max_in_flight: self.max_in_flight.unwrap_or(16),
            close_on_handler_error: self.on_handler_error == Some(OnHandlerError::Close),
            auth,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::state::BindingOwner;

    fn binding(id: &str, function_id: &str, config: Value) -> Binding {
        Binding {
            id: id.into(),
            trigger_type: TRIGGER_TYPE.into(),
            function_id: function_id.into(),
            namespace: "default".into(),
            trigger_namespace: None,
            config: crate::protocol::to_payload(&config),
            metadata: None,
            owner: BindingOwner::Engine,
            active_on: None,
            ack: None,
        }
    }

    #[test]
    fn patterns_match_with_params_and_prefer_static_segments() {
        let mut t = RouteTable::default();
        let on = |route: &str| serde_json::json!({"route": route, "on": "message"});
        t.bind(&binding("1", "f", on("/ws/chat/:room"))).unwrap();
        t.bind(&binding("2", "g", on("/ws/chat/lobby"))).unwrap();
        let m = t.find("/ws/chat/42").unwrap();
        assert_eq!(m.pattern, "/ws/chat/:room");
        assert_eq!(m.params["room"], "42");
        assert_eq!(t.find("/ws/chat/lobby").unwrap().pattern, "/ws/chat/lobby");
        assert_eq!(t.find("/ws/chat/a%20b").unwrap().params["room"], "a b");
        assert!(t.find("/ws/chat").is_none());
        assert!(t.find("/ws/chat/1/2").is_none());
        t.unbind("1");
        assert!(
            t.find("/ws/chat/42").is_none(),
            "the route went with its last trigger"
        );
        assert!(t.departed("/ws/chat/42"), "but it is remembered");
        t.bind(&binding("3", "f", on("/ws/chat/:room"))).unwrap();
        assert!(!t.departed("/ws/chat/42"));
    }

    #[test]
    fn conflicts_are_refused_and_change_nothing() {
        let mut t = RouteTable::default();
        let cfg = serde_json::json!({"route": "/ws/x", "on": "message", "match": {"action": "join"},
            "route_options": {"max_message_bytes": 100}});
        t.bind(&binding("1", "f", cfg.clone())).unwrap();
        t.bind(&binding("2", "f", cfg.clone())).unwrap();
        assert!(t.bind(&binding("3", "other", cfg)).is_err());
        let clash = serde_json::json!({"route": "/ws/x", "on": "connect",
            "route_options": {"max_message_bytes": 200}});
        assert!(t.bind(&binding("4", "c", clash)).is_err());
        assert!(
            t.route("/ws/x")
                .unwrap()
                .handler(Event::Connect, None)
                .is_none()
        );
        assert!(
            t.bind(&binding(
                "5",
                "f",
                serde_json::json!({"route": "/", "on": "message"})
            ))
            .is_err()
        );
        assert!(
            t.bind(&binding(
                "6",
                "f",
                serde_json::json!({"route": "/ws/y", "on": "sometimes"})
            ))
            .is_err()
        );
        t.unbind("1");
        assert!(
            t.find("/ws/x").is_some(),
            "binding 2 still declares the handler"
        );
    }
}
