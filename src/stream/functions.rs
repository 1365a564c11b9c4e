//! `stream::*`: iii's shapes, exactly. `set` answers `{old_value,
//! new_value}`; `delete` answers `{old_value}` (wrapped, unlike
//! `state::delete`); `list` and `list_groups` bare arrays; `list_all`
//! `{stream: [{id, groups}], count}`; `send` null.
//!
//! As in state, every function asks the backend at once: on the embedded
//! store a write is applied inline, in order with the caller's other
//! messages, and only the durable wait happens in a task; on a backend
//! shared by a cluster the whole call waits for NATS. A stream with a custom
//! provider (`providers.rs`) is answered from a task, once the provider has
//! answered.

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Streams;
use super::providers::{self, Deleted, Written as ProviderWritten};
use super::watchers::{Event, Where, envelope};
use crate::mesh::{CallCtx, Mesh, Reply};
use crate::module::{Refused, Updated, ValueWritten, update_change};
use crate::protocol::{ErrorBody, codes, names};

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

/// An item over `limit` bytes is refused with `code`.
fn too_large(limit: usize, code: &str, bytes: &[u8]) -> Result<(), Refused> {
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

impl Streams {
    /// Whether a write's reply waits until it is durable.
    fn durable(&self, asked: Option<bool>) -> bool {
        asked.unwrap_or(self.config.durable)
    }

    /// An event: its envelope, encoded once, goes to the matching `stream`
    /// bindings (from a task) and then to the matching socket subscriptions
    /// (queued without waiting); when the items are shared with other
    /// engines, the same envelope is relayed to theirs.
    pub(super) fn fire(&self, mesh: &Mesh, ev: Event<'_>) {
        let text = envelope(ev.stream, ev.group, ev.item, &ev.event);
        if self.items.shared() {
            mesh.provided()
                .relay(super::RELAY_CHANNEL, || text.clone().into_bytes());
        }
        self.fire_here(
            mesh,
            Where {
                stream: ev.stream,
                group: ev.group,
                item: ev.item,
            },
            text,
        );
    }

    /// An envelope to this engine's bindings and socket subscriptions only.
    pub(super) fn fire_here(&self, mesh: &Mesh, at: Where<'_>, text: String) {
        let payload =
            serde_json::value::RawValue::from_string(text.clone()).expect("an envelope is JSON");
        super::watchers::fire(
            &self.watchers,
            mesh,
            self.config.condition_timeout,
            &at,
            &payload,
        );
        self.hub.publish(at.stream, at.group, at.item, text);
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

/// A write's event, `create` or `update` from whether there was an item
/// before, fired for `item`.
fn fire_write(
    s: &Streams,
    mesh: &Mesh,
    (stream, group, item): Item<'_>,
    had_old: bool,
    new: &Value,
) {
    let kind = if had_old { "update" } else { "create" };
    s.fire(
        mesh,
        Event {
            stream,
            group,
            item: Some(item),
            event: json!({ "type": kind, "data": new }),
        },
    );
}

/// An item's stream, group and id.
type Item<'a> = (&'a str, &'a str, &'a str);

/// A custom provider's write: the event fires as for the store, and the
/// caller gets iii's `{old_value, new_value}` (and the provider's `errors`).
fn provider_wrote(
    s: &Streams,
    mesh: &Mesh,
    at: Item<'_>,
    out: ProviderWritten,
) -> (Value, Option<Value>) {
    let old_value = out.old_value.unwrap_or(Value::Null);
    fire_write(s, mesh, at, !old_value.is_null(), &out.new_value);
    let reply = json!({ "old_value": old_value, "new_value": out.new_value });
    (reply, out.errors)
}

/// Waits until a write is as durable as asked.
async fn settle(written: &mut ValueWritten, code: &'static str) -> Result<(), ErrorBody> {
    match written.until_durable.take() {
        Some(wait) => wait.await.map_err(|e| ErrorBody::new(code, e.to_string())),
        None => Ok(()),
    }
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
    if let Err(e) = too_large(s.config.max_item_bytes, CODE, &bytes) {
        return ready(Err(e.into_body(CODE)));
    }
    let write = s.items.modify(
        &inp.stream_name,
        &inp.group_id,
        &inp.item_id,
        s.durable(inp.durable),
        Box::new(move |_| Ok(Some(bytes.clone()))),
    );
    Box::pin(async move {
        let mut written = write.await.map_err(|e| e.into_body(CODE))?;
        let old_value = parse(written.old.as_deref());
        let at = (&*inp.stream_name, &*inp.group_id, &*inp.item_id);
        fire_write(&s, &mesh, at, written.old.is_some(), &new_value);
        settle(&mut written, CODE).await?;
        Ok(json!({ "old_value": old_value, "new_value": new_value }))
    })
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
    let read = s.items.get(&inp.stream_name, &inp.group_id, &inp.item_id);
    Box::pin(async move {
        let found = read
            .await
            .map_err(|e| ErrorBody::new(CODE, e.to_string()))?;
        Ok(parse(found.as_deref()))
    })
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
    let write = s.items.modify(
        &inp.stream_name,
        &inp.group_id,
        &inp.item_id,
        s.durable(inp.durable),
        Box::new(|_| Ok(None)),
    );
    Box::pin(async move {
        let mut written = write.await.map_err(|e| e.into_body(CODE))?;
        let old_value = parse(written.old.as_deref());
        // Only a removal is an event (iii's rule).
        if written.old.is_some() {
            s.fire(&mesh, deleted(&inp, &old_value));
        }
        settle(&mut written, CODE).await?;
        Ok(json!({ "old_value": old_value }))
    })
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
    let mut inp: UpdateInput = match input("stream::update", v) {
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
    let outcome = Updated::default();
    let limit = s.config.max_item_bytes;
    let write = s.items.modify(
        &inp.stream_name,
        &inp.group_id,
        &inp.item_id,
        s.durable(inp.durable),
        update_change(
            std::mem::take(&mut inp.ops),
            move |b| too_large(limit, CODE, b),
            outcome.clone(),
        ),
    );
    Box::pin(async move {
        let mut written = write.await.map_err(|e| e.into_body(CODE))?;
        let taken = outcome.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some((new_value, errors)) = taken else {
            return Err(ErrorBody::new(CODE, "the update did not run"));
        };
        let old_value = parse(written.old.as_deref());
        let at = (&*inp.stream_name, &*inp.group_id, &*inp.item_id);
        fire_write(&s, &mesh, at, written.old.is_some(), &new_value);
        settle(&mut written, CODE).await?;
        let mut reply = json!({ "old_value": old_value, "new_value": new_value });
        if !errors.is_empty() {
            reply["errors"] = serde_json::to_value(errors).unwrap_or_default();
        }
        Ok(reply)
    })
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
    let read = s.items.list(&inp.stream_name, &inp.group_id);
    Box::pin(async move {
        let items = read
            .await
            .map_err(|e| ErrorBody::new(CODE, e.to_string()))?;
        Ok(Value::Array(items.iter().map(|b| parse(Some(b))).collect()))
    })
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
    let read = s.items.groups(&inp.stream_name);
    Box::pin(async move {
        let mut groups = read
            .await
            .map_err(|e| ErrorBody::new(CODE, e.to_string()))?;
        groups.sort();
        Ok(json!(groups))
    })
}

pub(super) fn list_all(s: Streams, _: Mesh, _: CallCtx, _: Value) -> BoxFuture<'static, Reply> {
    const CODE: &str = codes::STREAM_LIST_ALL_ERROR;
    let read = s.items.streams();
    Box::pin(async move {
        let mut all = read
            .await
            .map_err(|e| ErrorBody::new(CODE, e.to_string()))?;
        all.sort();
        let streams: Vec<Value> = all
            .into_iter()
            .map(|(name, mut groups)| {
                groups.sort();
                json!({ "id": name, "groups": groups })
            })
            .collect();
        let count = streams.len();
        Ok(json!({ "stream": streams, "count": count }))
    })
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
