//! `state::*`: iii's shapes, exactly. `set` answers `{old_value, new_value}`
//! and no more; `delete` answers the removed value itself; `list` a bare
//! array; `list_groups` `{groups}`.
//!
//! Writes are applied inline, in order with the caller's other messages
//! (a `get` sent right after a `set` sees it); only the wait for the disk,
//! when the write is durable, happens in a task.

use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::State;
use super::watchers::{Change, Event};
use crate::mesh::{CallCtx, Mesh, Reply};
use crate::module::Refused;
use crate::protocol::{ErrorBody, codes, names, update_ops};
use crate::store::state::Written;

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

impl State {
    fn too_large(&self, bytes: &[u8]) -> Result<(), Refused> {
        let limit = self.config.max_value_bytes;
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

    /// The reply, once the write is as durable as asked.
    fn reply_after(
        &self,
        written: &Written,
        durable: Option<bool>,
        code: &'static str,
        reply: Value,
    ) -> BoxFuture<'static, Reply> {
        let wait = durable.unwrap_or(self.config.durable);
        match written.ticket.filter(|_| wait) {
            None => Box::pin(std::future::ready(Ok(reply))),
            Some(ticket) => {
                let values = self.values.clone();
                values.want(ticket);
                Box::pin(async move {
                    values
                        .durable(ticket)
                        .await
                        .map_err(|e| ErrorBody::new(code, e.to_string()))?;
                    Ok(reply)
                })
            }
        }
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
    let written = s.values.modify(&inp.scope, &inp.key, |_| {
        s.too_large(&bytes)?;
        Ok::<_, Refused>(Some(bytes))
    });
    let written = match written {
        Ok(w) => w,
        Err(e) => return ready(Err(e.into_body(codes::SET_ERROR))),
    };
    let old_value = parse(written.old.as_deref());
    let change = Change::of_write(written.old.is_some());
    s.fire(
        &mesh,
        Event {
            change,
            scope: &inp.scope,
            key: &inp.key,
            old: &old_value,
            new: &new_value,
        },
    );
    let reply = json!({ "old_value": old_value, "new_value": new_value });
    s.reply_after(&written, inp.durable, codes::SET_ERROR, reply)
}

pub(super) fn get(s: &State, _: &Mesh, _: &CallCtx, v: Value) -> Reply {
    let inp: KeyInput = input("state::get", v)?;
    check(codes::GET_ERROR, &inp.scope, &inp.key)?;
    let found = s
        .values
        .get(&inp.scope, &inp.key)
        .map_err(|e| ErrorBody::new(codes::GET_ERROR, e.to_string()))?;
    Ok(parse(found.as_deref()))
}

pub(super) fn delete(s: State, mesh: Mesh, _: CallCtx, v: Value) -> BoxFuture<'static, Reply> {
    let inp: KeyInput = match input("state::delete", v) {
        Ok(i) => i,
        Err(e) => return ready(Err(e)),
    };
    if let Err(e) = check(codes::DELETE_ERROR, &inp.scope, &inp.key) {
        return ready(Err(e));
    }
    let written = match s
        .values
        .modify(&inp.scope, &inp.key, |_| Ok::<_, Refused>(None))
    {
        Ok(w) => w,
        Err(e) => return ready(Err(e.into_body(codes::DELETE_ERROR))),
    };
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
    s.reply_after(&written, inp.durable, codes::DELETE_ERROR, old_value)
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
    let mut outcome = None;
    let written = s.values.modify(&inp.scope, &inp.key, |old| {
        let mut value = match old {
            Some(_) => parse(old),
            None => Value::Object(Default::default()),
        };
        let errors = update_ops::apply(&mut value, &inp.ops);
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        s.too_large(&bytes)?;
        outcome = Some((value, errors));
        Ok::<_, Refused>(Some(bytes))
    });
    let (written, (new_value, errors)) = match (written, outcome) {
        (Ok(w), Some(o)) => (w, o),
        (Err(e), _) => return ready(Err(e.into_body(codes::UPDATE_ERROR))),
        (Ok(_), None) => {
            return ready(Err(ErrorBody::new(
                codes::UPDATE_ERROR,
                "the update did not run",
            )));
        }
    };
    let old_value = parse(written.old.as_deref());
    let change = Change::of_write(written.old.is_some());
    s.fire(
        &mesh,
        Event {
            change,
            scope: &inp.scope,
            key: &inp.key,
            old: &old_value,
            new: &new_value,
        },
    );
    let mut reply = json!({ "old_value": old_value, "new_value": new_value });
    if !errors.is_empty() {
        reply["errors"] = serde_json::to_value(errors).unwrap_or_default();
    }
    s.reply_after(&written, inp.durable, codes::UPDATE_ERROR, reply)
}

pub(super) fn list(s: &State, _: &Mesh, _: &CallCtx, v: Value) -> Reply {
    let inp: ScopeInput = input("state::list", v)?;
    names::check("scope", &inp.scope).map_err(|m| ErrorBody::new(codes::LIST_ERROR, m))?;
    let values = s
        .values
        .list(&inp.scope)
        .map_err(|e| ErrorBody::new(codes::LIST_ERROR, e.to_string()))?;
    Ok(Value::Array(
        values.iter().map(|b| parse(Some(b))).collect(),
    ))
}

pub(super) fn list_groups(s: &State, _: &Mesh, _: &CallCtx, _: Value) -> Reply {
    let mut groups = s
        .values
        .scopes()
        .map_err(|e| ErrorBody::new(codes::LIST_GROUPS_ERROR, e.to_string()))?;
    groups.sort();
    groups.dedup();
    Ok(json!({ "groups": groups }))
}

impl State {
    fn fire(&self, mesh: &Mesh, ev: Event<'_>) {
        if self.config.triggers_enabled {
            super::watchers::fire(&self.watchers, mesh, self.config.condition_timeout, ev);
        }
    }
}
