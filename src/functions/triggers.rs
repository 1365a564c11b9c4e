//! Trigger introspection (`engine::triggers::*`, `engine::registered-triggers::*`)
//! and engine-owned bindings (`engine::register_trigger` / `unregister_trigger`).

use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::oneshot;

use super::views;
use crate::mesh::Mesh;
use crate::mesh::provided::args;
use crate::mesh::state::BindingOwner;
use crate::mesh::{CallCtx, Reply};
use crate::protocol::inbound::TriggerRegistration;
use crate::protocol::{ErrorBody, codes, to_payload};

/// How long `engine::register_trigger` waits for a worker provider's verdict.
const PROVIDER_ACK_WAIT: Duration = Duration::from_secs(10);

#[derive(Default, Deserialize)]
#[serde(default)]
struct ListTypesArgs {
    search: Option<String>,
    prefix: Option<String>,
    worker: Option<String>,
    include_internal: bool,
}

/// `{triggers: [{id, namespace, worker_name, description}]}` (trigger types).
pub fn list_types(mesh: &Mesh, _: &CallCtx, input: Value) -> Reply {
    let a: ListTypesArgs = args(input)?;
    let st = mesh.lock();
    let mut out: Vec<Value> = st
        .trigger_types
        .iter()
        .filter(|(k, _)| a.include_internal || !k.1.starts_with("engine::"))
        .filter(|(k, _)| {
            a.prefix
                .as_ref()
                .is_none_or(|p| k.1.starts_with(p.as_str()))
        })
        .map(|(k, t)| views::trigger_type_summary(&st, k, t))
        .filter(|v| views::view_matches(v, &a.worker, &a.search, &["id", "description"]))
        .collect();
    out.sort_by_key(|v| {
        (
            v["id"].as_str().unwrap_or_default().to_owned(),
            v["namespace"].as_str().unwrap_or_default().to_owned(),
        )
    });
    Ok(json!({ "triggers": out }))
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct TypeInfoArgs {
    id: Option<String>,
    namespace: Option<String>,
}

pub fn type_info(mesh: &Mesh, _: &CallCtx, input: Value) -> Reply {
    let a: TypeInfoArgs = args(input)?;
    let id =
        a.id.ok_or_else(|| ErrorBody::new(codes::INVALID_ARGUMENTS, "missing id"))?;
    let key = (
        a.namespace
            .unwrap_or_else(|| crate::protocol::DEFAULT_NAMESPACE.to_owned()),
        id,
    );
    let st = mesh.lock();
    let t = st.trigger_types.get(&key).ok_or_else(|| {
        ErrorBody::new(
            codes::NOT_FOUND,
            format!("trigger type {} not found in namespace {}", key.1, key.0),
        )
    })?;
    Ok(views::trigger_type_detail(&st, &key, t))
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct ListBindingsArgs {
    search: Option<String>,
    trigger_type: Option<String>,
    function_id: Option<String>,
    worker: Option<String>,
}

/// `{registered_triggers: [...]}`; qmesh adds `state` (`active` or `parked`) and `namespace`.
pub fn list_bindings(mesh: &Mesh, _: &CallCtx, input: Value) -> Reply {
    let a: ListBindingsArgs = args(input)?;
    let st = mesh.lock();
    let mut out: Vec<Value> = st
        .bindings
        .values()
        .filter(|b| a.trigger_type.as_ref().is_none_or(|t| &b.trigger_type == t))
        .filter(|b| a.function_id.as_ref().is_none_or(|f| &b.function_id == f))
        .map(|b| views::binding_summary(&st, b))
        .filter(|v| {
            views::view_matches(
                v,
                &a.worker,
                &a.search,
                &["id", "trigger_type", "function_id", "config_summary"],
            )
        })
        .collect();
    out.sort_by_key(|v| v["id"].as_str().unwrap_or_default().to_owned());
    Ok(json!({ "registered_triggers": out }))
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct IdArgs {
    id: Option<String>,
    #[allow(dead_code)] // accepted for iii compatibility; the id alone is unique
    trigger_type: Option<String>,
}

pub fn binding_info(mesh: &Mesh, _: &CallCtx, input: Value) -> Reply {
    let a: IdArgs = args(input)?;
    let id =
        a.id.ok_or_else(|| ErrorBody::new(codes::INVALID_ARGUMENTS, "missing id"))?;
    let st = mesh.lock();
    let b = st
        .bindings
        .get(&id)
        .ok_or_else(|| ErrorBody::new(codes::NOT_FOUND, format!("no registered trigger {id}")))?;
    Ok(views::binding_detail(&st, b))
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct RegisterArgs {
    trigger_type: Option<String>,
    function_id: Option<String>,
    config: Option<Value>,
    metadata: Option<Value>,
    namespace: Option<String>,
    trigger_namespace: Option<String>,
}

/// A binding owned by the engine, not by the calling connection. Waits up to
/// 10 s for a worker provider's verdict; a refusal removes it and is returned.
pub fn register(mesh: Mesh, _: CallCtx, input: Value) -> BoxFuture<'static, Reply> {
    Box::pin(async move {
        let a: RegisterArgs = args(input)?;
        let missing = |f: &str| ErrorBody::new(codes::INVALID_ARGUMENTS, format!("missing {f}"));
        let trigger_type = a.trigger_type.ok_or_else(|| missing("trigger_type"))?;
        let function_id = a.function_id.ok_or_else(|| missing("function_id"))?;
        let id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        let reg = TriggerRegistration {
            id: id.clone(),
            trigger_type,
            function_id,
            config: Some(to_payload(&a.config.unwrap_or(Value::Null))),
            metadata: a.metadata.map(|m| to_payload(&m)),
            namespace: a.namespace,
            trigger_namespace: a.trigger_namespace,
        };
        mesh.bind_trigger(
            BindingOwner::Engine,
            crate::protocol::DEFAULT_NAMESPACE,
            reg,
            Some(tx),
        );
        match tokio::time::timeout(PROVIDER_ACK_WAIT, rx).await {
            Ok(Ok(Err(err))) => {
                mesh.unbind_trigger(None, &id);
                Err(ErrorBody::new(
                    codes::TRIGGER_REGISTRATION_FAILED,
                    err.message,
                ))
            }
            // Accepted, parked, or the provider did not answer in time: the binding stands.
            _ => Ok(json!({ "id": id })),
        }
    })
}

/// `{removed: bool}`; idempotent.
/// Anyone may remove their own binding; only an operator may remove
/// another's (or one made with `engine::register_trigger`).
pub fn unregister(mesh: &Mesh, ctx: &CallCtx, input: Value) -> Reply {
    let a: IdArgs = args(input)?;
    let id =
        a.id.ok_or_else(|| ErrorBody::new(codes::INVALID_ARGUMENTS, "missing id"))?;
    let (operator, owner) = mesh.inspect(|st| {
        let operator = st
            .workers
            .get(&ctx.caller)
            .is_none_or(|w| w.conn.access.may_operate());
        (operator, st.bindings.get(&id).map(|b| b.owner))
    });
    match owner {
        None => Ok(json!({ "removed": false })),
        Some(_) if operator => Ok(json!({ "removed": mesh.unbind_trigger(None, &id) })),
        Some(BindingOwner::Worker(w)) if w == ctx.caller => {
            Ok(json!({ "removed": mesh.unbind_trigger(Some(w), &id) }))
        }
        Some(_) => Err(ErrorBody::new(
            codes::FORBIDDEN,
            format!(
                "trigger '{id}' belongs to another worker; removing it needs the operator role"
            ),
        )),
    }
}
