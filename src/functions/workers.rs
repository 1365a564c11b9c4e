//! `engine::workers::list` and `engine::workers::info`.

use serde::Deserialize;
use serde_json::{Value, json};

use super::views::{self, ENGINE_WORKER_NAME};
use crate::mesh::Mesh;
use crate::mesh::provided::args;
use crate::mesh::{CallCtx, Reply};
use crate::protocol::{ErrorBody, codes};

#[derive(Default, Deserialize)]
#[serde(default)]
struct ListArgs {
    search: Option<String>,
    runtime: Option<String>,
    status: Option<String>,
}

/// `{workers: [WorkerSummary]}`. Connections that never reported a pid are
/// hidden, as iii does (CLI probes, raw sockets); the engine lists itself.
/// In a cluster, the other live engines' workers too, and every row says
/// which engine it is on (`engine_id`).
pub fn list(mesh: &Mesh, _: &CallCtx, input: Value) -> Reply {
    let a: ListArgs = args(input)?;
    let st = mesh.lock();
    let mut workers: Vec<Value> = st
        .workers
        .values()
        .filter(|w| w.meta.as_ref().is_some_and(|m| m.pid.is_some()))
        .map(|w| views::worker_view(w, false))
        .collect();
    drop(st);
    workers.push(json!({
        "id": uuid::Uuid::nil(),
        "name": ENGINE_WORKER_NAME,
        "description": "the engine's own functions and trigger types",
        "version": env!("CARGO_PKG_VERSION"),
        "namespace": crate::protocol::DEFAULT_NAMESPACE,
        "runtime": "engine",
        "os": std::env::consts::OS,
        "status": "available",
        "function_count": mesh.engine_function_ids().len(),
        "connected_at_ms": Value::Null,
        "active_invocations": 0,
        "isolation": Value::Null,
        "ip_address": Value::Null,
    }));
    if let Some(others) = mesh.provided().other_engines() {
        let here = others.this_engine();
        for w in &mut workers {
            w["engine_id"] = here.into();
        }
        workers.extend(others.workers());
    }
    let text = |w: &Value, k: &str| w[k].as_str().unwrap_or_default().to_lowercase();
    workers.retain(|w| {
        a.runtime
            .as_ref()
            .is_none_or(|r| text(w, "runtime") == r.to_lowercase())
            && a.status
                .as_ref()
                .is_none_or(|s| text(w, "status") == s.to_lowercase())
            && a.search.as_ref().is_none_or(|s| {
                let s = s.to_lowercase();
                text(w, "name").contains(&s)
                    || text(w, "description").contains(&s)
                    || text(w, "id").contains(&s)
            })
    });
    workers.sort_by_key(|w| (text(w, "name"), text(w, "id")));
    Ok(json!({ "workers": workers }))
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct InfoArgs {
    name: Option<String>,
    id: Option<String>,
    namespace: Option<String>,
}

/// `{worker: WorkerDetail, functions, trigger_types, registered_triggers}` for a
/// worker found by `name` (and `namespace`) or by `id`.
pub fn info(mesh: &Mesh, _: &CallCtx, input: Value) -> Reply {
    let a: InfoArgs = args(input)?;
    if a.name.is_none() && a.id.is_none() {
        return Err(ErrorBody::new(
            codes::INVALID_ARGUMENTS,
            "give name (and optionally namespace) or id",
        ));
    }
    let st = mesh.lock();
    let mut candidates: Vec<_> = st
        .workers
        .values()
        .filter(|w| a.id.as_ref().is_none_or(|id| w.conn.id.to_string() == *id))
        .filter(|w| {
            a.name
                .as_ref()
                .is_none_or(|n| w.meta.as_ref().and_then(|m| m.name.as_ref()) == Some(n))
        })
        .filter(|w| a.namespace.as_ref().is_none_or(|ns| w.namespace == *ns))
        .collect();
    candidates.sort_by_key(|w| w.conn.connected_at);
    let Some(w) = candidates.first() else {
        let who = a.name.or(a.id).unwrap_or_default();
        return Err(ErrorBody::new(
            codes::NOT_FOUND,
            format!("no connected worker {who}"),
        ));
    };
    let mut functions: Vec<Value> = w
        .functions
        .iter()
        .filter_map(|(ns, id)| views::function_detail(&st, None, ns, id))
        .collect();
    functions.sort_by_key(|f| f["function_id"].as_str().unwrap_or_default().to_owned());
    let trigger_types: Vec<Value> = w
        .trigger_types
        .iter()
        .filter_map(|k| {
            st.trigger_types
                .get(k)
                .map(|t| views::trigger_type_summary(&st, k, t))
        })
        .collect();
    let registered_triggers: Vec<Value> = w
        .bindings
        .iter()
        .filter_map(|id| st.bindings.get(id).map(|b| views::binding_summary(&st, b)))
        .collect();
    Ok(json!({
        "worker": views::worker_view(w, true),
        "functions": functions,
        "trigger_types": trigger_types,
        "registered_triggers": registered_triggers,
    }))
}
