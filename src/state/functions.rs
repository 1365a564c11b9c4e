//! `state::*`: iii's shapes, exactly. `set` answers `{old_value, new_value}`
//! and no more; `delete` answers the removed value itself; `list` a bare
//! array; `list_groups` `{groups}`.
//!
//! Every function asks the backend at once: on the embedded store a write
//! is applied inline, in order with the caller's other messages (a `get`
//! sent right after a `set` sees it), and only the wait for the disk, when
//! the write is durable, happens in a task. On a shared backend the whole
//! call waits for NATS: a caller awaits its `set` before reading it.

use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::State;
use super::watchers::{Change, Event};
use crate::mesh::{CallCtx, Mesh, Reply};
use crate::module::{Refused, Updated, ValueWritten, update_change};
use crate::protocol::{ErrorBody, codes, names};

#[derive(Deserialize)]
struct KeyInput {
    scope: String,
    key: String,
    durable: Option<bool>,
}

#[derive(Deserialize)]
struct SetInput {
    scope: String,
    key: String,
    #[serde(alias = "data")]
    value: Option<Value>,
    durable: Option<bool>,
}

#[derive(Deserialize)]
struct UpdateInput {
    scope: String,
    key: String,
    ops: Vec<Value>,
    durable: Option<bool>,
}

#[derive(Deserialize)]
struct ScopeInput {
    scope: String,
}

/// iii's answer to input that does not deserialize.
fn input<T: DeserializeOwned>(id: &str, v: Value) -> Result<T, ErrorBody> {
    serde_json::from_value(v).map_err(|e| {
        ErrorBody::new(
            codes::DESERIALIZATION_ERROR,
            format!("Failed to deserialize input for {id}: {e}"),
        )
    })
}

/// Scope and key are names: bounded, no control characters.
fn check(code: &str, scope: &str, key: &str) -> Result<(), ErrorBody> {
    names::check("scope", scope)
        .and_then(|_| names::check_content("key", key))
        .map_err(|m| ErrorBody::new(code, m))
}

fn parse(bytes: Option<&[u8]>) -> Value {
    bytes
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or(Value::Null)
}

/// A value over `limit` bytes is refused with `VALUE_TOO_LARGE`.
fn too_large(limit: usize, bytes: &[u8]) -> Result<(), Refused> {
    if bytes.len() > limit {
        return Err(Refused::Body(ErrorBody::new(
            codes::VALUE_TOO_LARGE,
            format!(
                "the value is {} bytes; at most {limit} are allowed",
                bytes.len()
            ),
        )));
    }
    Ok(())
}

impl State {
    /// Whether a write's reply waits until it is durable.
    fn durable(&self, asked: Option<bool>) -> bool {
        asked.unwrap_or(self.config.durable)
    }
}

/// Waits until a write is as durable as asked.
async fn settle(written: &mut ValueWritten, code: &'static str) -> Result<(), ErrorBody> {
    match written.until_durable.take() {
        Some(wait) => wait.await.map_err(|e| ErrorBody::new(code, e.to_string())),
        None => Ok(()),
    }
}

fn ready(reply: Reply) -> BoxFuture<'static, Reply> {
    Box::pin(std::future::ready(reply))
}

pub(super) fn set(s: State, mesh: Mesh, _: CallCtx, v: Value) -> BoxFuture<'static, Reply> {
    let inp: SetInput = match input("state::set", v) {
        Ok(i) => i,
        Err(e) => return ready(Err(e)),
    };
    if let Err(e) = check(codes::SET_ERROR, &inp.scope, &inp.key) {
        return ready(Err(e));
    }
    let new_value = inp.value.unwrap_or(Value::Null);
    let bytes = serde_json::to_vec(&new_value).unwrap_or_default();
    if let Err(e) = too_large(s.config.max_value_bytes, &bytes) {
        return ready(Err(e.into_body(codes::SET_ERROR)));
    }
    let write = s.values.modify(
        &inp.scope,
        &inp.key,
        s.durable(inp.durable),
        Box::new(move |_| Ok(Some(bytes.clone()))),
    );
    Box::pin(async move {
        let mut written = write.await.map_err(|e| e.into_body(codes::SET_ERROR))?;
        let old_value = parse(written.old.as_deref());
        s.fire(
            &mesh,
            Event {
                change: Change::of_write(written.old.is_some()),
                scope: &inp.scope,
                key: &inp.key,
                old: &old_value,
                new: &new_value,
            },
        );
        settle(&mut written, codes::SET_ERROR).await?;
        Ok(json!({ "old_value": old_value, "new_value": new_value }))
    })
}

pub(super) fn get(s: State, _: Mesh, _: CallCtx, v: Value) -> BoxFuture<'static, Reply> {
    let inp: KeyInput = match input("state::get", v) {
        Ok(i) => i,
        Err(e) => return ready(Err(e)),
    };
    if let Err(e) = check(codes::GET_ERROR, &inp.scope, &inp.key) {
        return ready(Err(e));
    }
    let read = s.values.get(&inp.scope, &inp.key);
    Box::pin(async move {
        let found = read
            .await
            .map_err(|e| ErrorBody::new(codes::GET_ERROR, e.to_string()))?;
        Ok(parse(found.as_deref()))
    })
}

pub(super) fn delete(s: State, mesh: Mesh, _: CallCtx, v: Value) -> BoxFuture<'static, Reply> {
    let inp: KeyInput = match input("state::delete", v) {
        Ok(i) => i,
        Err(e) => return ready(Err(e)),
    };
    if let Err(e) = check(codes::DELETE_ERROR, &inp.scope, &inp.key) {
        return ready(Err(e));
    }
    let write = s.values.modify(
        &inp.scope,
        &inp.key,
        s.durable(inp.durable),
        Box::new(|_| Ok(None)),
    );
    Box::pin(async move {
        let mut written = write.await.map_err(|e| e.into_body(codes::DELETE_ERROR))?;
        let old_value = parse(written.old.as_deref());
        s.fire(
            &mesh,
            Event {
                change: Change::Deleted,
                scope: &inp.scope,
                key: &inp.key,
                old: &old_value,
                new: &Value::Null,
            },
        );
        settle(&mut written, codes::DELETE_ERROR).await?;
        Ok(old_value)
    })
}

pub(super) fn update(s: State, mesh: Mesh, _: CallCtx, v: Value) -> BoxFuture<'static, Reply> {
    let inp: UpdateInput = match input("state::update", v) {
        Ok(i) => i,
        Err(e) => return ready(Err(e)),
    };
    if let Err(e) = check(codes::UPDATE_ERROR, &inp.scope, &inp.key) {
        return ready(Err(e));
    }
    let max = s.config.max_update_ops;
    if inp.ops.len() > max {
        return ready(Err(ErrorBody::new(
            codes::UPDATE_ERROR,
            format!(
                "{} ops in one update; at most {max} are allowed",
                inp.ops.len()
            ),
        )));
    }
    let outcome = Updated::default();
    let limit = s.config.max_value_bytes;
    let write = s.values.modify(
        &inp.scope,
        &inp.key,
        s.durable(inp.durable),
        update_change(inp.ops, move |b| too_large(limit, b), outcome.clone()),
    );
    let (scope, key) = (inp.scope, inp.key);
    Box::pin(async move {
        let mut written = write.await.map_err(|e| e.into_body(codes::UPDATE_ERROR))?;
        let taken = outcome.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some((new_value, errors)) = taken else {
            return Err(ErrorBody::new(
                codes::UPDATE_ERROR,
                "the update did not run",
            ));
        };
        let old_value = parse(written.old.as_deref());
        s.fire(
            &mesh,
            Event {
                change: Change::of_write(written.old.is_some()),
                scope: &scope,
                key: &key,
                old: &old_value,
                new: &new_value,
            },
        );
        settle(&mut written, codes::UPDATE_ERROR).await?;
        let mut reply = json!({ "old_value": old_value, "new_value": new_value });
        if !errors.is_empty() {
            reply["errors"] = serde_json::to_value(errors).unwrap_or_default();
        }
        Ok(reply)
    })
}

pub(super) fn list(s: State, _: Mesh, _: CallCtx, v: Value) -> BoxFuture<'static, Reply> {
    let inp: ScopeInput = match input("state::list", v) {
        Ok(i) => i,
        Err(e) => return ready(Err(e)),
    };
    if let Err(m) = names::check("scope", &inp.scope) {
        return ready(Err(ErrorBody::new(codes::LIST_ERROR, m)));
    }
    let read = s.values.list(&inp.scope);
    Box::pin(async move {
        let values = read
            .await
            .map_err(|e| ErrorBody::new(codes::LIST_ERROR, e.to_string()))?;
        Ok(Value::Array(
            values.iter().map(|b| parse(Some(b))).collect(),
        ))
    })
}

pub(super) fn list_groups(s: State, _: Mesh, _: CallCtx, _: Value) -> BoxFuture<'static, Reply> {
    let read = s.values.scopes();
    Box::pin(async move {
        let mut groups = read
            .await
            .map_err(|e| ErrorBody::new(codes::LIST_GROUPS_ERROR, e.to_string()))?;
        groups.sort();
        groups.dedup();
        Ok(json!({ "groups": groups }))
    })
}

impl State {
    /// Tells this engine's bindings about a change and, when the values
    /// are shared with other engines, those engines' bindings too.
    fn fire(&self, mesh: &Mesh, ev: Event<'_>) {
        if self.values.shared() {
            mesh.provided()
                .relay(super::RELAY_CHANNEL, || super::watchers::encode(&ev));
        }
        self.fire_here(mesh, ev);
    }

    /// Tells this engine's bindings only.
    pub(super) fn fire_here(&self, mesh: &Mesh, ev: Event<'_>) {
        if self.config.triggers_enabled {
            super::watchers::fire(&self.watchers, mesh, self.config.condition_timeout, ev);
        }
    }
}
