//! `stream::*`: iii's shapes, exactly. `set` answers `{old_value,
//! new_value}`; `delete` answers `{old_value}` (wrapped, unlike
//! `state::delete`); `list` and `list_groups` bare arrays; `list_all`
//! `{stream: [{id, groups}], count}`; `send` null.
//!
//! As in state, writes are applied inline, in order with the caller's other
//! messages; only the durable wait happens in a task. A stream with a custom
//! provider (`providers.rs`) is answered from a task instead, once the
//! provider has answered.

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Streams;
use super::providers::{self, Deleted, Written as ProviderWritten};
use super::watchers::{Event, envelope};
use crate::mesh::{CallCtx, Mesh, Reply};
use crate::module::Refused;
use crate::protocol::{ErrorBody, codes, names, update_ops};
use crate::store::StoreError;
use crate::store::state::Written;

// The inputs serialise back to iii's fields only: what a custom provider gets.

#[derive(Deserialize, Serialize)]
struct ItemInput {
    stream_name: String,
    group_id: String,
    item_id: String,
    #[serde(skip_serializing)]
    durable: Option<bool>,
}

#[derive(Deserialize, Serialize)]
struct SetInput {
    stream_name: String,
    group_id: String,
    item_id: String,
    data: Option<Value>,
    #[serde(skip_serializing)]
    durable: Option<bool>,
}

#[derive(Deserialize, Serialize)]
struct UpdateInput {
    stream_name: String,
    group_id: String,
    item_id: String,
    ops: Vec<Value>,
    #[serde(skip_serializing)]
    durable: Option<bool>,
}

#[derive(Deserialize, Serialize)]
struct GroupInput {
    stream_name: String,
    group_id: String,
}

#[derive(Deserialize, Serialize)]
struct StreamInput {
    stream_name: String,
}

#[derive(Deserialize)]
struct SendInput {
    stream_name: String,
    group_id: String,
    id: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    data: Option<Value>,
}

fn input<T: DeserializeOwned>(id: &str, v: Value) -> Result<T, ErrorBody> {
    serde_json::from_value(v).map_err(|e| {
        ErrorBody::new(
            codes::DESERIALIZATION_ERROR,
            format!("Failed to deserialize input for {id}: {e}"),
        )
    })
}

/// Stream and group names are names; an item id is bounded and clean.
fn check(code: &str, stream: &str, group: &str, item: Option<&str>) -> Result<(), ErrorBody> {
    names::check("stream_name", stream)
        .and_then(|_| names::check("group_id", group))
        .and_then(|_| item.map_or(Ok(()), |i| names::check_content("item_id", i)))
        .map_err(|m| ErrorBody::new(code, m))
}

fn parse(bytes: Option<&[u8]>) -> Value {
    bytes
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or(Value::Null)
}

fn ready(reply: Reply) -> BoxFuture<'static, Reply> {
    Box::pin(std::future::ready(reply))
}

impl Streams {
    fn too_large(&self, code: &str, bytes: &[u8]) -> Result<(), Refused> {
        let limit = self.config.max_item_bytes;
        if bytes.len() > limit {
            return Err(Refused::Body(ErrorBody::new(
                code,
                format!(
                    "the item is {} bytes; at most {limit} are allowed",
                    bytes.len()
                ),
            )));
        }
        Ok(())
    }

    fn reply_after(
        &self,
        written: &Written,
        durable: Option<bool>,
        code: &'static str,
        reply: Value,
    ) -> BoxFuture<'static, Reply> {
        let wait = durable.unwrap_or(self.config.durable);
        match written.ticket.filter(|_| wait) {
            None => ready(Ok(reply)),
            Some(ticket) => {
                let items = self.items.clone();
                items.want(ticket);
                Box::pin(async move {
                    items
                        .durable(ticket)
                        .await
                        .map_err(|e| ErrorBody::new(code, e.to_string()))?;
                    Ok(reply)
                })
            }
        }
    }

    /// An event: its envelope, encoded once, goes to the matching `stream`
    /// bindings (from a task) and then to the matching socket subscriptions
    /// (queued without waiting).
    pub(super) fn fire(&self, mesh: &Mesh, ev: Event<'_>) {
        let text = envelope(ev.stream, ev.group, ev.item, &ev.event);
        let payload =
            serde_json::value::RawValue::from_string(text.clone()).expect("an envelope is JSON");
        super::watchers::fire(
            &self.watchers,
            mesh,
            self.config.condition_timeout,
            &ev,
            &payload,
        );
        self.hub.publish(ev.stream, ev.group, ev.item, text);
    }

    /// One item (`id`) or the group's items: what a socket's `sync` carries
    /// and what `stream::get` / `stream::list` answer, through the stream's
    /// provider if it has one.
    pub(super) fn read(
        &self,
        mesh: &Mesh,
        stream: &str,
        group: &str,
        item: Option<&str>,
    ) -> BoxFuture<'static, Reply> {
        match item {
            Some(item) => {
                let inp = ItemInput {
                    stream_name: stream.to_owned(),
                    group_id: group.to_owned(),
                    item_id: item.to_owned(),
                    durable: None,
                };
                read_item(self, mesh, inp)
            }
            None => {
                let inp = GroupInput {
                    stream_name: stream.to_owned(),
                    group_id: group.to_owned(),
                };
                read_group(self, mesh, inp)
            }
        }
    }
}

/// `create` or `update`, from whether there was an item before.
fn write_event(had_old: bool, new: &Value) -> Value {
    let kind = if had_old { "update" } else { "create" };
    json!({ "type": kind, "data": new })
}

/// A custom provider's write: the event fires as for the store, and the
/// caller gets iii's `{old_value, new_value}` (and the provider's `errors`).
fn provider_wrote(
    s: &Streams,
    mesh: &Mesh,
    (stream, group, item): (&str, &str, &str),
    out: ProviderWritten,
) -> (Value, Option<Value>) {
    let old_value = out.old_value.unwrap_or(Value::Null);
    s.fire(
        mesh,
        Event {
            stream,
            group,
            item: Some(item),
            event: write_event(!old_value.is_null(), &out.new_value),
        },
    );
    let reply = json!({ "old_value": old_value, "new_value": out.new_value });
    (reply, out.errors)
}

pub(super) fn set(s: Streams, mesh: Mesh, _: CallCtx, v: Value) -> BoxFuture<'static, Reply> {
    const CODE: &str = codes::STREAM_SET_ERROR;
    let inp: SetInput = match input("stream::set", v) {
        Ok(i) => i,
        Err(e) => return ready(Err(e)),
    };
    if let Err(e) = check(CODE, &inp.stream_name, &inp.group_id, Some(&inp.item_id)) {
        return ready(Err(e));
    }
    if let Some(p) = providers::find(&mesh, "set", &inp.stream_name) {
        return Box::pin(async move {
            let out: ProviderWritten = p.call_as(&mesh, &inp, s.config.provider_timeout).await?;
            let (reply, _) = provider_wrote(
                &s,
                &mesh,
                (&inp.stream_name, &inp.group_id, &inp.item_id),
                out,
            );
            Ok(reply)
        });
    }
    let new_value = inp.data.unwrap_or(Value::Null);
    let bytes = serde_json::to_vec(&new_value).unwrap_or_default();
    let written = s
        .items
        .modify(&inp.stream_name, &inp.group_id, &inp.item_id, |_| {
            s.too_large(CODE, &bytes)?;
            Ok::<_, Refused>(Some(bytes))
        });
    let written = match written {
        Ok(w) => w,
        Err(e) => return ready(Err(e.into_body(CODE))),
    };
    let old_value = parse(written.old.as_deref());
    let event = write_event(written.old.is_some(), &new_value);
    s.fire(
        &mesh,
        Event {
            stream: &inp.stream_name,
            group: &inp.group_id,
            item: Some(&inp.item_id),
            event,
        },
    );
    let reply = json!({ "old_value": old_value, "new_value": new_value });
    s.reply_after(&written, inp.durable, CODE, reply)
}

pub(super) fn get(s: Streams, mesh: Mesh, _: CallCtx, v: Value) -> BoxFuture<'static, Reply> {
    match input::<ItemInput>("stream::get", v) {
        Ok(inp) => read_item(&s, &mesh, inp),
        Err(e) => ready(Err(e)),
    }
}

fn read_item(s: &Streams, mesh: &Mesh, inp: ItemInput) -> BoxFuture<'static, Reply> {
    const CODE: &str = codes::STREAM_GET_ERROR;
    if let Err(e) = check(CODE, &inp.stream_name, &inp.group_id, Some(&inp.item_id)) {
        return ready(Err(e));
    }
    if let Some(p) = providers::find(mesh, "get", &inp.stream_name) {
        let (mesh, timeout) = (mesh.clone(), s.config.provider_timeout);
        return Box::pin(async move { p.call(&mesh, &inp, timeout).await });
    }
    let found = s
        .items
        .get(&inp.stream_name, &inp.group_id, &inp.item_id)
        .map_err(|e| ErrorBody::new(CODE, e.to_string()));
    ready(found.map(|f| parse(f.as_deref())))
}

pub(super) fn delete(s: Streams, mesh: Mesh, _: CallCtx, v: Value) -> BoxFuture<'static, Reply> {
    const CODE: &str = codes::STREAM_DELETE_ERROR;
    let inp: ItemInput = match input("stream::delete", v) {
        Ok(i) => i,
        Err(e) => return ready(Err(e)),
    };
    if let Err(e) = check(CODE, &inp.stream_name, &inp.group_id, Some(&inp.item_id)) {
        return ready(Err(e));
    }
    if let Some(p) = providers::find(&mesh, "delete", &inp.stream_name) {
        return Box::pin(async move {
            let out: Deleted = p.call_as(&mesh, &inp, s.config.provider_timeout).await?;
            let old_value = out.old_value.unwrap_or(Value::Null);
            if !old_value.is_null() {
                s.fire(&mesh, deleted(&inp, &old_value));
            }
            Ok(json!({ "old_value": old_value }))
        });
    }
    let written = match s
        .items
        .modify(&inp.stream_name, &inp.group_id, &inp.item_id, |_| {
            Ok::<_, Refused>(None)
        }) {
        Ok(w) => w,
        Err(e) => return ready(Err(e.into_body(CODE))),
    };
    let old_value = parse(written.old.as_deref());
    // Only a removal is an event (iii's rule).
    if written.old.is_some() {
        s.fire(&mesh, deleted(&inp, &old_value));
    }
    let reply = json!({ "old_value": old_value });
    s.reply_after(&written, inp.durable, CODE, reply)
}

fn deleted<'a>(inp: &'a ItemInput, old_value: &Value) -> Event<'a> {
    Event {
        stream: &inp.stream_name,
        group: &inp.group_id,
        item: Some(&inp.item_id),
        event: json!({ "type": "delete", "data": old_value }),
    }
}

pub(super) fn update(s: Streams, mesh: Mesh, _: CallCtx, v: Value) -> BoxFuture<'static, Reply> {
    const CODE: &str = codes::STREAM_UPDATE_ERROR;
    let inp: UpdateInput = match input("stream::update", v) {
        Ok(i) => i,
        Err(e) => return ready(Err(e)),
    };
    if let Err(e) = check(CODE, &inp.stream_name, &inp.group_id, Some(&inp.item_id)) {
        return ready(Err(e));
    }
    let max = s.config.max_update_ops;
    if inp.ops.len() > max {
        return ready(Err(ErrorBody::new(
            CODE,
            format!(
                "{} ops in one update; at most {max} are allowed",
                inp.ops.len()
            ),
        )));
    }
    if let Some(p) = providers::find(&mesh, "update", &inp.stream_name) {
        return Box::pin(async move {
            let out: ProviderWritten = p.call_as(&mesh, &inp, s.config.provider_timeout).await?;
            let (mut reply, errors) = provider_wrote(
                &s,
                &mesh,
                (&inp.stream_name, &inp.group_id, &inp.item_id),
                out,
            );
            if let Some(errors) = errors.filter(|e| !e.is_null()) {
                reply["errors"] = errors;
            }
            Ok(reply)
        });
    }
    let mut outcome = None;
    let written = s
        .items
        .modify(&inp.stream_name, &inp.group_id, &inp.item_id, |old| {
            let mut value = match old {
                Some(_) => parse(old),
                None => Value::Object(Default::default()),
            };
            let errors = update_ops::apply(&mut value, &inp.ops);
            let bytes = serde_json::to_vec(&value).unwrap_or_default();
            s.too_large(CODE, &bytes)?;
            outcome = Some((value, errors));
            Ok::<_, Refused>(Some(bytes))
        });
    let (written, (new_value, errors)) = match (written, outcome) {
        (Ok(w), Some(o)) => (w, o),
        (Err(e), _) => return ready(Err(e.into_body(CODE))),
        (Ok(_), None) => return ready(Err(ErrorBody::new(CODE, "the update did not run"))),
    };
    let old_value = parse(written.old.as_deref());
    s.fire(
        &mesh,
        Event {
            stream: &inp.stream_name,
            group: &inp.group_id,
            item: Some(&inp.item_id),
            event: write_event(written.old.is_some(), &new_value),
        },
    );
    let mut reply = json!({ "old_value": old_value, "new_value": new_value });
    if !errors.is_empty() {
        reply["errors"] = serde_json::to_value(errors).unwrap_or_default();
    }
    s.reply_after(&written, inp.durable, CODE, reply)
}

pub(super) fn list(s: Streams, mesh: Mesh, _: CallCtx, v: Value) -> BoxFuture<'static, Reply> {
    match input::<GroupInput>("stream::list", v) {
        Ok(inp) => read_group(&s, &mesh, inp),
        Err(e) => ready(Err(e)),
    }
}

fn read_group(s: &Streams, mesh: &Mesh, inp: GroupInput) -> BoxFuture<'static, Reply> {
    const CODE: &str = codes::STREAM_GET_GROUP_ERROR;
    if let Err(e) = check(CODE, &inp.stream_name, &inp.group_id, None) {
        return ready(Err(e));
    }
    if let Some(p) = providers::find(mesh, "list", &inp.stream_name) {
        let (mesh, timeout) = (mesh.clone(), s.config.provider_timeout);
        return Box::pin(async move { p.call(&mesh, &inp, timeout).await });
    }
    let items = s
        .items
        .list(&inp.stream_name, &inp.group_id)
        .map_err(|e| ErrorBody::new(CODE, e.to_string()));
    ready(items.map(|items| Value::Array(items.iter().map(|b| parse(Some(b))).collect())))
}

pub(super) fn list_groups(
    s: Streams,
    mesh: Mesh,
    _: CallCtx,
    v: Value,
) -> BoxFuture<'static, Reply> {
    const CODE: &str = codes::STREAM_LIST_GROUPS_ERROR;
    let inp: StreamInput = match input("stream::list_groups", v) {
        Ok(i) => i,
        Err(e) => return ready(Err(e)),
    };
    if let Err(m) = names::check("stream_name", &inp.stream_name) {
        return ready(Err(ErrorBody::new(CODE, m)));
    }
    if let Some(p) = providers::find(&mesh, "list_groups", &inp.stream_name) {
        return Box::pin(async move { p.call(&mesh, &inp, s.config.provider_timeout).await });
    }
    let groups = s
        .items
        .groups(&inp.stream_name)
        .map_err(|e| ErrorBody::new(CODE, e.to_string()));
    ready(groups.map(|mut g| {
        g.sort();
        json!(g)
    }))
}

pub(super) fn list_all(s: &Streams, _: &Mesh, _: &CallCtx, _: Value) -> Reply {
    const CODE: &str = codes::STREAM_LIST_ALL_ERROR;
    let fail = |e: StoreError| ErrorBody::new(CODE, e.to_string());
    let mut names = s.items.streams().map_err(fail)?;
    names.sort();
    let mut streams = Vec::with_capacity(names.len());
    for name in names {
        let mut groups = s.items.groups(&name).map_err(fail)?;
        groups.sort();
        streams.push(json!({ "id": name, "groups": groups }));
    }
    let count = streams.len();
    Ok(json!({ "stream": streams, "count": count }))
}

pub(super) fn send(s: &Streams, mesh: &Mesh, _: &CallCtx, v: Value) -> Reply {
    const CODE: &str = codes::STREAM_SEND_ERROR;
    let inp: SendInput = input("stream::send", v)?;
    check(CODE, &inp.stream_name, &inp.group_id, inp.id.as_deref())?;
    s.fire(
        mesh,
        Event {
            stream: &inp.stream_name,
            group: &inp.group_id,
            item: inp.id.as_deref(),
            event: json!({ "type": "event", "event": { "type": inp.kind, "data": inp.data } }),
        },
    );
    Ok(Value::Null)
}
