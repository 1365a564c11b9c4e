//! `engine::functions::list` and `engine::functions::info`.

use serde::Deserialize;
use serde_json::{Value, json};

use super::views::{self, ENGINE_WORKER_NAME, FunctionFilter};
use crate::mesh::Mesh;
use crate::mesh::provided::args;
use crate::mesh::{CallCtx, Reply};
use crate::protocol::{ErrorBody, codes};

/// `{functions: [FunctionSummary]}`; engine functions only with `include_internal`.
/// An RBAC session sees only what it may call (iii's filtered listing).
pub fn list(mesh: &Mesh, ctx: &CallCtx, input: Value) -> Reply {
    let filter: FunctionFilter = args(input)?;
    let here = views::this_engine(mesh);
    let st = mesh.lock();
    let access = st.workers.get(&ctx.caller).map(|w| w.conn.access.clone());
    let session = access.as_ref().and_then(|a| a.rbac.as_ref());
    let mut functions = match session {
        Some(s) => views::function_list(&st, here, &filter, &|ns, id, metadata| {
            s.may_call(id, ns, metadata).is_ok()
        }),
        None => views::function_list(&st, here, &filter, &views::all_visible),
    };
    drop(st);
    if filter.include_internal && session.is_none() {
        for id in mesh.engine_function_ids() {
            if filter
                .prefix
                .as_ref()
                .is_none_or(|p| id.starts_with(p.as_str()))
            {
                let mut row = json!({
                    "function_id": id,
                    "namespace": crate::protocol::DEFAULT_NAMESPACE,
                    "worker_name": ENGINE_WORKER_NAME,
                    "metadata": {"internal": true},
                    "instances": 1,
                });
                if let Some(here) = here {
                    row["engine_ids"] = json!([here]);
                }
                functions.push(row);
            }
        }
    }
    Ok(json!({ "functions": functions }))
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct InfoArgs {
    function_id: Option<String>,
    function_ids: Option<Vec<String>>,
    namespace: Option<String>,
}

/// One FunctionDetail for `function_id`; `{functions: [...]}` for up to 32 `function_ids`.
pub fn info(mesh: &Mesh, _: &CallCtx, input: Value) -> Reply {
    let a: InfoArgs = args(input)?;
    let ns = a
        .namespace
        .as_deref()
        .unwrap_or(crate::protocol::DEFAULT_NAMESPACE);
    let here = views::this_engine(mesh);
    let st = mesh.lock();
    match (a.function_id, a.function_ids) {
        (Some(id), None) => views::function_detail(&st, here, ns, &id).ok_or_else(|| {
            ErrorBody::new(
                codes::NOT_FOUND,
                format!("Function {id} not found in namespace {ns}."),
            )
        }),
        (None, Some(ids)) if ids.len() <= 32 => {
            let functions: Vec<Value> = ids
                .iter()
                .map(|id| {
                    views::function_detail(&st, here, ns, id)
                        .unwrap_or_else(|| json!({ "function_id": id, "error": "not_found" }))
                })
                .collect();
            Ok(json!({ "functions": functions }))
        }
        (None, Some(_)) => Err(ErrorBody::new(
            codes::INVALID_ARGUMENTS,
            "at most 32 function_ids per call",
        )),
        _ => Err(ErrorBody::new(
            codes::INVALID_ARGUMENTS,
            "give exactly one of function_id or function_ids",
        )),
    }
}
