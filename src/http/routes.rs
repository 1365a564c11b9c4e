//! The `http` trigger type: a binding is a route, kept in a table keyed by
//! method and path (iii's `"<METHOD>:<path without leading slash>"`).
//!
//! - Registering the same method and path again replaces the route (last
//!   registration wins, whoever owns it); the replaced binding's later
//!   unbinding is then a no-op.
//! - A route with the same method and shape but other parameter names
//!   (`a/:x/:y` against `a/:y/:x`) is refused with iii's message.
//! - `bind` and `unbind` run under the mesh lock: the route is live as soon
//!   as its `registertrigger` has been processed.
//!
//! Matching prefers a literal segment over a parameter, position by
//! position, so `items/new` wins over `items/:id` for `/items/new`.

use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::mesh::state::{Binding, TriggerTypeHandler};
use crate::protocol::{ErrorBody, Payload, codes};

/// Methods iii serves; any other is stored but never matches.
const METHODS: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// One live route.
#[derive(Debug)]
pub(crate) struct Route {
    pub binding_id: String,
    pub function_id: String,
    /// The bound function's namespace.
    pub namespace: String,
    pub metadata: Option<Payload>,
    pub method: String,
    /// `api_path` as registered (what handlers see as `path`).
    pub api_path: String,
    segments: Vec<Segment>,
    pub condition_function_id: Option<String>,
    pub middleware_function_ids: Vec<String>,
}

/// A matched request: the route and its path parameters.
pub(crate) struct Matched {
    pub route: Arc<Route>,
    pub path_params: Map<String, Value>,
}

/// What a lookup found.
pub(crate) enum Lookup {
    Found(Matched),
    /// The path exists under other methods only.
    MethodNotAllowed,
    NotFound,
}

#[derive(Default)]
struct Table {
    /// `"<METHOD>:<path>"` → route.
    by_key: HashMap<String, Arc<Route>>,
}

/// The route table; cheap to clone. Readers (every request) take the read
/// lock for a scan; writers are registrations.
#[derive(Clone, Default)]
pub(crate) struct Routes {
    table: Arc<RwLock<Table>>,
}

fn normalize(path: &str) -> &str {
    let p = path.trim_start_matches('/');
    if p.is_empty() { "/" } else { p }
}

fn split(path: &str) -> Vec<&str> {
    if path == "/" {
        Vec::new()
    } else {
        path.split('/').collect()
    }
}

fn parse_segments(path: &str) -> Vec<Segment> {
    split(path)
        .into_iter()
        .map(|s| match s.strip_prefix(':') {
            Some(name) => Segment::Param(name.to_owned()),
            None => Segment::Literal(s.to_owned()),
        })
        .collect()
}

fn same_shape(a: &[Segment], b: &[Segment]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (Segment::Literal(x), Segment::Literal(y)) => x == y,
            (Segment::Param(_), Segment::Param(_)) => true,
            _ => false,
        })
}

fn refuse(msg: impl Into<String>) -> ErrorBody {
    ErrorBody::new(codes::TRIGGER_REGISTRATION_FAILED, msg)
}

impl Route {
    /// Reads a binding's config: `{api_path, http_method?, condition_function_id?,
    /// middleware_function_ids?}`; other keys are ignored, as iii does.
    fn from_binding(b: &Binding) -> Result<Route, ErrorBody> {
        let config: Value = serde_json::from_str(b.config.get()).unwrap_or(Value::Null);
        let api_path = config
            .get("api_path")
            .and_then(Value::as_str)
            .ok_or_else(|| refuse("api_path is required for http triggers"))?
            .to_owned();
        let method = config
            .get("http_method")
            .and_then(Value::as_str)
            .unwrap_or("GET")
            .to_ascii_uppercase();
        if !METHODS.contains(&method.as_str()) {
            tracing::warn!(binding = %b.id, method, "http trigger with an unsupported method: stored, never served");
        }
        let condition_function_id = config
            .get("condition_function_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let middleware_function_ids = config
            .get("middleware_function_ids")
            .and_then(Value::as_array)
            .map(|ids| {
                ids.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Route {
            binding_id: b.id.clone(),
            function_id: b.function_id.clone(),
            namespace: b.namespace.clone(),
            metadata: b.metadata.clone(),
            segments: parse_segments(normalize(&api_path)),
            method,
            api_path,
            condition_function_id,
            middleware_function_ids,
        })
    }

    fn key(&self) -> String {
        format!("{}:{}", self.method, normalize(&self.api_path))
    }

    /// Path parameters if `segments` (of a request path) match, with a score
    /// that ranks literal matches first.
    fn matches(&self, segments: &[&str]) -> Option<(Vec<bool>, Map<String, Value>)> {
        if segments.len() != self.segments.len() {
            return None;
        }
        let mut params = Map::new();
        let mut literal = Vec::with_capacity(segments.len());
        for (want, got) in self.segments.iter().zip(segments) {
            match want {
                Segment::Literal(l) if l == got => literal.push(true),
                Segment::Literal(_) => return None,
                Segment::Param(name) => {
                    literal.push(false);
                    params.insert(name.clone(), Value::String((*got).to_owned()));
                }
            }
        }
        Some((literal, params))
    }
}

impl Routes {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The route serving `method` `path`.
    pub(crate) fn lookup(&self, method: &str, path: &str) -> Lookup {
        let segments = split(normalize(path));
        let table = self.read();
        // (literal-segment score, path parameters, route)
        type Candidate<'a> = (Vec<bool>, Map<String, Value>, &'a Arc<Route>);
        let mut best: Option<Candidate<'_>> = None;
        let mut other_method = false;
        for route in table.by_key.values() {
            let Some((score, params)) = route.matches(&segments) else {
                continue;
            };
            if route.method != method {
                other_method |= METHODS.contains(&route.method.as_str());
                continue;
            }
            if best.as_ref().is_none_or(|(s, _, _)| score > *s) {
                best = Some((score, params, route));
            }
        }
        match best {
            Some((_, path_params, route)) => Lookup::Found(Matched {
                route: route.clone(),
                path_params,
            }),
            None if other_method => Lookup::MethodNotAllowed,
            None => Lookup::NotFound,
        }
    }

    /// Live routes (operator views, tests).
    pub(crate) fn len(&self) -> usize {
        self.read().by_key.len()
    }
}

impl TriggerTypeHandler for Routes {
    fn bind(&self, binding: &Binding) -> Result<(), ErrorBody> {
        let route = Route::from_binding(binding)?;
        let key = route.key();
        let mut table = self.write();
        if let Some(existing) = table.by_key.values().find(|r| {
            r.method == route.method && r.key() != key && same_shape(&r.segments, &route.segments)
        }) {
            return Err(refuse(format!(
                "Route '{m} {new}' conflicts with already-registered route '{m} {old}': \
                 routes with identical structure but different path-parameter names are not supported",
                m = route.method,
                new = normalize(&route.api_path),
                old = normalize(&existing.api_path),
            )));
        }
        tracing::debug!(binding = %binding.id, route = %key, function_id = %route.function_id, "http route live");
        table.by_key.insert(key, Arc::new(route));
        Ok(())
    }

    fn unbind(&self, binding_id: &str) {
        let mut table = self.write();
        // Only if this binding still owns its key (a later registration may have replaced it).
        table.by_key.retain(|_, r| r.binding_id != binding_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::state::BindingOwner;
    use crate::protocol::to_payload;

    fn binding(id: &str, config: Value) -> Binding {
        Binding {
            id: id.to_owned(),
            trigger_type: "http".to_owned(),
            function_id: format!("fn::{id}"),
            namespace: "default".to_owned(),
            trigger_namespace: None,
            config: to_payload(&config),
            metadata: None,
            owner: BindingOwner::Engine,
            active_on: None,
            ack: None,
        }
    }

    fn found(routes: &Routes, method: &str, path: &str) -> Option<(String, Value)> {
        match routes.lookup(method, path) {
            Lookup::Found(m) => Some((m.route.binding_id.clone(), Value::Object(m.path_params))),
            _ => None,
        }
    }

    #[test]
    fn params_literals_first_and_last_registration_wins() {
        let r = Routes::default();
        r.bind(&binding("a", serde_json::json!({"api_path": "items/:id"})))
            .unwrap();
        r.bind(&binding("b", serde_json::json!({"api_path": "/items/new"})))
            .unwrap();
        assert_eq!(
            found(&r, "GET", "/items/42"),
            Some(("a".into(), serde_json::json!({"id": "42"})))
        );
        assert_eq!(found(&r, "GET", "/items/new").unwrap().0, "b");
        assert!(matches!(
            r.lookup("POST", "/items/1"),
            Lookup::MethodNotAllowed
        ));
        assert!(matches!(r.lookup("GET", "/nope"), Lookup::NotFound));
        // Same key again: replaced; the first binding's unbind is then a no-op.
        r.bind(&binding(
            "c",
            serde_json::json!({"api_path": "/items/:id", "http_method": "get"}),
        ))
        .unwrap();
        r.unbind("a");
        assert_eq!(found(&r, "GET", "/items/7").unwrap().0, "c");
        r.unbind("c");
        assert!(found(&r, "GET", "/items/7").is_none());
    }

    #[test]
    fn same_shape_other_names_is_refused_with_iii_text() {
        let r = Routes::default();
        r.bind(&binding(
            "a",
            serde_json::json!({"api_path": "c/:listId/:userId"}),
        ))
        .unwrap();
        let e = r
            .bind(&binding(
                "b",
                serde_json::json!({"api_path": "c/:userId/:listId"}),
            ))
            .unwrap_err();
        assert_eq!(e.code, codes::TRIGGER_REGISTRATION_FAILED);
        assert!(
            e.message
                .contains("conflicts with already-registered route"),
            "{}",
            e.message
        );
        let e = r.bind(&binding("d", serde_json::json!({}))).unwrap_err();
        assert_eq!(e.message, "api_path is required for http triggers");
        assert!(found(&r, "GET", "/").is_none());
        r.bind(&binding("root", serde_json::json!({"api_path": "/"})))
            .unwrap();
        assert_eq!(found(&r, "GET", "/").unwrap().0, "root");
    }
}
