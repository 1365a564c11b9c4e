//! Read models of the registry, in iii's response shapes (`docs/protocol.md` §4).
//! Built under the registry lock from plain data; no I/O.

use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::time::UNIX_EPOCH;
use uuid::Uuid;

use crate::mesh::Mesh;
use crate::mesh::state::{Binding, BindingOwner, Key, State, TriggerType, TypeProvider, Worker};
use crate::protocol::Payload;

/// Name shown for things the engine itself provides.
pub const ENGINE_WORKER_NAME: &str = "qmesh";

/// This engine's id in its cluster; `None` when it is alone. Listings then
/// say which engine each row is on (`engine_id`, `engine_ids`).
pub fn this_engine(mesh: &Mesh) -> Option<&str> {
    mesh.provided().other_engines().map(|o| o.this_engine())
}

pub fn raw_to_value(raw: &Payload) -> Value {
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

fn matches_search(search: &Option<String>, fields: &[&str]) -> bool {
    match search {
        None => true,
        Some(s) => {
            let s = s.to_lowercase();
            fields.iter().any(|f| f.to_lowercase().contains(&s))
        }
    }
}

/// Whether a listed item passes the common `worker` and `search` filters:
/// `worker` names the item's `worker_name`; `search` is a case-insensitive
/// substring of any of `fields`.
pub fn view_matches(
    v: &Value,
    worker: &Option<String>,
    search: &Option<String>,
    fields: &[&str],
) -> bool {
    let by_worker = worker
        .as_ref()
        .is_none_or(|w| v["worker_name"] == w.as_str());
    let texts: Vec<&str> = fields
        .iter()
        .map(|f| v[*f].as_str().unwrap_or_default())
        .collect();
    by_worker && matches_search(search, &texts)
}

/// `worker_name` of a function: its first provider's name, else the first `::` segment.
fn worker_name_of(st: &State, function_id: &str, providers: &[Uuid]) -> String {
    providers
        .iter()
        .find_map(|p| st.worker_name(p))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            function_id
                .split("::")
                .next()
                .unwrap_or(function_id)
                .to_owned()
        })
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct FunctionFilter {
    pub search: Option<String>,
    pub prefix: Option<String>,
    pub worker: Option<String>,
    pub workers: Option<Vec<String>>,
    pub include_internal: bool,
}

/// Which functions a listing may show: (namespace, id, registered metadata).
pub type Visible<'a> = &'a dyn Fn(&str, &str, Option<&Value>) -> bool;

/// Every function is visible (the engine's own listings, trusted callers).
pub fn all_visible(_: &str, _: &str, _: Option<&Value>) -> bool {
    true
}

/// FunctionSummary for every worker function that passes `filter` and
/// `visible`, sorted by id. qmesh adds `instances` (how many workers share
/// the id) to iii's shape.
pub fn function_list(
    st: &State,
    here: Option<&str>,
    filter: &FunctionFilter,
    visible: Visible<'_>,
) -> Vec<Value> {
    let mut out: Vec<(String, String, Value)> = Vec::new();
    for (ns, by_id) in &st.functions {
        for (id, f) in by_id {
            let providers: Vec<Uuid> = f.providers.iter().map(|p| p.worker).collect();
            let info = &f.providers[0].info;
            let metadata = info.metadata.as_ref().map(raw_to_value);
            let internal = metadata.as_ref().is_some_and(|m| m["internal"] == true);
            if internal && !filter.include_internal {
                continue;
            }
            if !visible(ns, id, metadata.as_ref()) {
                continue;
            }
            if filter
                .prefix
                .as_ref()
                .is_some_and(|p| !id.starts_with(p.as_str()))
            {
                continue;
            }
            let names: Vec<&str> = providers.iter().filter_map(|p| st.worker_name(p)).collect();
            let wanted =
                |w: &str| names.contains(&w) || providers.iter().any(|p| p.to_string() == w);
            if filter.worker.as_deref().is_some_and(|w| !wanted(w)) {
                continue;
            }
            if filter
                .workers
                .as_ref()
                .is_some_and(|ws| !ws.iter().any(|w| wanted(w)))
            {
                continue;
            }
            let description = info.description.clone().unwrap_or_default();
            if !matches_search(&filter.search, &[id, &description]) {
                continue;
            }
            out.push((
                id.clone(),
                ns.clone(),
                summary(st, here, (ns, id), &providers, info),
            ));
        }
    }
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    out.into_iter().map(|(_, _, v)| v).collect()
}

/// FunctionSummary; in a cluster (`here`), with the ids of the engines whose
/// workers serve it, this one's for its own workers.
fn summary(
    st: &State,
    here: Option<&str>,
    (ns, id): (&str, &str),
    providers: &[Uuid],
    info: &crate::mesh::state::FunctionInfo,
) -> Value {
    let mut m = Map::new();
    m.insert("function_id".into(), id.into());
    m.insert("namespace".into(), ns.into());
    m.insert(
        "worker_name".into(),
        worker_name_of(st, id, providers).into(),
    );
    if let Some(d) = &info.description {
        m.insert("description".into(), d.clone().into());
    }
    if let Some(meta) = &info.metadata {
        m.insert("metadata".into(), raw_to_value(meta));
    }
    m.insert("instances".into(), providers.len().into());
    if let Some(here) = here {
        let mut engines: Vec<&str> = providers
            .iter()
            .map(|p| {
                st.workers
                    .get(p)
                    .and_then(|w| w.meta.as_ref()?.engine.as_deref())
                    .unwrap_or(here)
            })
            .collect();
        engines.sort_unstable();
        engines.dedup();
        m.insert("engine_ids".into(), engines.into());
    }
    Value::Object(m)
}

/// FunctionDetail, or `None` if nothing provides the function.
pub fn function_detail(st: &State, here: Option<&str>, ns: &str, id: &str) -> Option<Value> {
    let f = st.function(ns, id)?;
    let providers: Vec<Uuid> = f.providers.iter().map(|p| p.worker).collect();
    let info = &f.providers.first()?.info;
    let mut v = summary(st, here, (ns, id), &providers, info);
    let m = v.as_object_mut().expect("summary is an object");
    if let Some(s) = &info.request_format {
        m.insert("request_schema".into(), raw_to_value(s));
    }
    if let Some(s) = &info.response_format {
        m.insert("response_schema".into(), raw_to_value(s));
    }
    let triggers: Vec<Value> = st
        .bindings
        .values()
        .filter(|b| b.namespace == ns && b.function_id == id)
        .map(|b| json!({ "id": b.id, "trigger_type": b.trigger_type, "config": raw_to_value(&b.config) }))
        .collect();
    m.insert("registered_triggers".into(), triggers.into());
    Some(v)
}

fn ms_since_epoch(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn worker_status(w: &Worker) -> &'static str {
    match (&w.meta, w.calls_in.is_empty()) {
        (None, _) => "connected",
        (Some(_), true) => "available",
        (Some(_), false) => "busy",
    }
}

/// WorkerSummary; `detail` adds WorkerDetail's fields.
pub fn worker_view(w: &Worker, detail: bool) -> Value {
    let meta = w.meta.clone().unwrap_or_default();
    let mut v = json!({
        "id": w.conn.id,
        "name": meta.name.unwrap_or_default(),
        "description": meta.description.unwrap_or_default(),
        "version": meta.version.unwrap_or_default(),
        "namespace": w.namespace,
        "runtime": meta.runtime.unwrap_or_default(),
        "os": meta.os.unwrap_or_default(),
        "status": worker_status(w),
        "function_count": w.functions.len(),
        "connected_at_ms": ms_since_epoch(w.conn.connected_at),
        "active_invocations": w.calls_in.len(),
        "isolation": meta.isolation.unwrap_or(Value::Null),
        "ip_address": w.conn.remote_addr.map(|a| a.ip().to_string()),
    });
    if detail {
        let m = v.as_object_mut().expect("object");
        m.insert("pid".into(), meta.pid.into());
        m.insert("internal".into(), false.into());
        m.insert("latest_metrics".into(), Value::Null);
        m.insert("features".into(), meta.features.unwrap_or_default().into());
        m.insert("pending_calls".into(), w.calls_out.len().into());
        m.insert("outbound_queue_bytes".into(), w.conn.queued_bytes().into());
    }
    v
}

pub fn trigger_type_provider_name(st: &State, t: &TriggerType) -> String {
    match t.provider {
        TypeProvider::Engine => ENGINE_WORKER_NAME.to_owned(),
        TypeProvider::Worker(w) => st.worker_name(&w).unwrap_or_default().to_owned(),
    }
}

pub fn trigger_type_summary(st: &State, key: &Key, t: &TriggerType) -> Value {
    json!({
        "id": key.1,
        "namespace": key.0,
        "worker_name": trigger_type_provider_name(st, t),
        "description": t.description,
    })
}

pub fn trigger_type_detail(st: &State, key: &Key, t: &TriggerType) -> Value {
    let mut v = trigger_type_summary(st, key, t);
    let m = v.as_object_mut().expect("object");
    if let Some(s) = &t.trigger_request_format {
        m.insert("configuration_schema".into(), raw_to_value(s));
    }
    if let Some(s) = &t.call_request_format {
        m.insert("request_schema".into(), raw_to_value(s));
    }
    let instances = st
        .bindings
        .values()
        .filter(|b| b.active_on.as_ref() == Some(key))
        .count();
    m.insert("instance_count".into(), instances.into());
    v
}

fn binding_owner_name(st: &State, b: &Binding) -> String {
    match b.owner {
        BindingOwner::Engine => ENGINE_WORKER_NAME.to_owned(),
        BindingOwner::Worker(w) => st.worker_name(&w).unwrap_or_default().to_owned(),
    }
}

/// A short human summary of a binding's config, e.g. `route=/x, on=message`.
fn config_summary(config: &Value) -> String {
    match config {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub fn binding_summary(st: &State, b: &Binding) -> Value {
    let config = raw_to_value(&b.config);
    json!({
        "id": b.id,
        "trigger_type": b.trigger_type,
        "function_id": b.function_id,
        "namespace": b.namespace,
        "worker_name": binding_owner_name(st, b),
        "config_summary": config_summary(&config),
        "config": config,
        "state": if b.active_on.is_some() { "active" } else { "parked" },
    })
}

pub fn binding_detail(st: &State, b: &Binding) -> Value {
    let mut v = binding_summary(st, b);
    let m = v.as_object_mut().expect("object");
    if let Some(meta) = &b.metadata {
        m.insert("metadata".into(), raw_to_value(meta));
    }
    let trigger = b.active_on.as_ref().and_then(|k| {
        st.trigger_types
            .get(k)
            .map(|t| trigger_type_detail(st, k, t))
    });
    m.insert("trigger".into(), trigger.unwrap_or(Value::Null));
    m.insert(
        "function".into(),
        function_detail(st, None, &b.namespace, &b.function_id).unwrap_or(Value::Null),
    );
    v
}
