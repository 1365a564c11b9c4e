//! `channel::*`: what workers do to realtime client connections (send, close,
//! topics, per-connection state, login over the socket, upgrade tickets).
//! All of them answer inline: nothing here waits on a client. In a cluster, one
//! acting on a client another engine holds waits for that engine's answer.

use axum::extract::ws::Message;
use base64::Engine as _;
use futures_util::future::{BoxFuture, ready};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

use super::{Client, CloseReason, ClosedBy, Realtime, persist, topics};
use crate::mesh::provided::args;
use crate::mesh::{CallCtx, Mesh, Reply};
use crate::module::{ClientCaller, PeerAnswer, RealtimeClients, RealtimePeers};
use crate::protocol::ErrorBody;
use crate::protocol::codes::{self, close};

fn bad(msg: impl Into<String>) -> ErrorBody {
    ErrorBody::new(codes::INVALID_ARGUMENTS, msg)
}

/// Who may act on a route's clients: an operator, or a worker that serves
/// one of the route's handlers (its own application). Anyone else could
/// read or message every browser connected to someone else's route. A
/// caller on another engine comes with the rights its engine vouches for.
pub(super) enum Caller<'a> {
    Here { mesh: &'a Mesh, ctx: &'a CallCtx },
    Elsewhere(&'a ClientCaller),
}

impl Caller<'_> {
    fn may_act_on(&self, hub: &Realtime, pattern: &str) -> bool {
        let serves = |namespace: &str, function_id: &str| match self {
            Caller::Here { mesh, ctx } => mesh.provides(ctx.caller, namespace, function_id),
            Caller::Elsewhere(c) => c
                .functions
                .iter()
                .any(|(ns, f)| ns == namespace && f == function_id),
        };
        let operator = match self {
            Caller::Here { mesh, ctx } => mesh.may_operate(ctx.caller),
            Caller::Elsewhere(c) => c.operator,
        };
        if operator {
            return true;
        }
        let routes = hub.routes();
        routes.route(pattern).is_some_and(|r| {
            r.handlers
                .iter()
                .any(|h| serves(&h.namespace, &h.function_id))
        })
    }

    fn check(&self, hub: &Realtime, pattern: &str) -> Result<(), ErrorBody> {
        if self.may_act_on(hub, pattern) {
            Ok(())
        } else {
            Err(ErrorBody::new(
                codes::FORBIDDEN,
                format!(
                    "route {pattern} is served by other workers; acting on its clients needs the operator role"
                ),
            ))
        }
    }

    /// What this engine vouches for when the client is on another engine.
    fn rights(mesh: &Mesh, ctx: &CallCtx) -> ClientCaller {
        ClientCaller {
            operator: mesh.may_operate(ctx.caller),
            functions: mesh.functions_of(ctx.caller),
        }
    }
}

fn channel(
    hub: &Realtime,
    caller: &Caller<'_>,
    id: Option<String>,
) -> Result<Arc<Client>, ErrorBody> {
    let id = id.ok_or_else(|| bad("missing channel_id"))?;
    let ch = hub
        .get(&id)
        .ok_or_else(|| ErrorBody::new(codes::CHANNEL_NOT_FOUND, format!("no open channel {id}")))?;
    caller.check(hub, &ch.route)?;
    Ok(ch)
}

/// `data` as a JSON text frame, or `data_b64` as a binary frame.
fn frame(data: Option<Value>, data_b64: Option<String>) -> Result<Message, ErrorBody> {
    match (data, data_b64) {
        (Some(_), Some(_)) => Err(bad("give data or data_b64, not both")),
        (_, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(|b| Message::Binary(b.into()))
            .map_err(|e| bad(format!("data_b64: {e}"))),
        (Some(v), None) => Ok(Message::Text(v.to_string().into())),
        (None, None) => Err(bad("missing data")),
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct SendArgs {
    channel_id: Option<String>,
    data: Option<Value>,
    data_b64: Option<String>,
}

fn send(hub: &Realtime, caller: &Caller<'_>, input: Value) -> Reply {
    let a: SendArgs = args(input)?;
    let msg = frame(a.data, a.data_b64)?;
    channel(hub, caller, a.channel_id)?.send(msg)?;
    Ok(json!({ "delivered": true }))
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct SendManyArgs {
    channel_ids: Vec<String>,
    data: Option<Value>,
    data_b64: Option<String>,
}

/// `missing`: not open; `dropped`: open but too slow (now closed with 1013).
fn send_many(hub: &Realtime, caller: &Caller<'_>, input: Value) -> Reply {
    let a: SendManyArgs = args(input)?;
    let msg = frame(a.data, a.data_b64)?;
    let (mut delivered, mut missing, mut dropped) = (0, Vec::new(), Vec::new());
    for id in a.channel_ids {
        let ours = hub.get(&id).filter(|ch| caller.may_act_on(hub, &ch.route));
        match ours.map(|ch| ch.send(msg.clone())) {
            Some(Ok(())) => delivered += 1,
            Some(Err(crate::realtime::SendError::Backpressure(_))) => dropped.push(id),
            _ => missing.push(id),
        }
    }
    Ok(json!({ "delivered": delivered, "missing": missing, "dropped": dropped }))
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct CloseArgs {
    channel_id: Option<String>,
    code: Option<u16>,
    reason: Option<String>,
}

/// Idempotent: `closed` is false when the channel was already gone or closing.
fn close(hub: &Realtime, caller: &Caller<'_>, input: Value) -> Reply {
    let a: CloseArgs = args(input)?;
    let code = a.code.unwrap_or(close::NORMAL);
    if code != 1000 && !(3000..=4999).contains(&code) {
        return Err(bad("code must be 1000 or within 3000..=4999"));
    }
    let id = a.channel_id.ok_or_else(|| bad("missing channel_id"))?;
    let ch = hub.get(&id);
    if let Some(ch) = &ch {
        caller.check(hub, &ch.route)?;
    }
    let closed = ch.is_some_and(|ch| {
        ch.close(CloseReason::new(
            code,
            a.reason.unwrap_or_default(),
            ClosedBy::Server,
        ))
    });
    Ok(json!({ "closed": closed }))
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct TopicArgs {
    channel_id: Option<String>,
    topic: Option<String>,
}

fn topic_args(
    hub: &Realtime,
    caller: &Caller<'_>,
    input: Value,
) -> Result<(Arc<Client>, String), ErrorBody> {
    let a: TopicArgs = args(input)?;
    let topic = a
        .topic
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("missing topic"))?;
    Ok((channel(hub, caller, a.channel_id)?, topic))
}

fn subscribe(hub: &Realtime, caller: &Caller<'_>, input: Value) -> Reply {
    let (ch, topic) = topic_args(hub, caller, input)?;
    hub.subscribe(&ch, &topic)?;
    persist::refresh(hub, &ch);
    Ok(json!({ "subscribed": true }))
}

fn unsubscribe(hub: &Realtime, caller: &Caller<'_>, input: Value) -> Reply {
    let (ch, topic) = topic_args(hub, caller, input)?;
    let was = hub.unsubscribe(&ch, &topic);
    if was {
        persist::refresh(hub, &ch);
    }
    Ok(json!({ "subscribed": false, "was_subscribed": was }))
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct PublishArgs {
    topic: Option<String>,
    data: Value,
    exclude_channel_id: Option<String>,
    raw: bool,
}

/// Never waits on a subscriber: a full client is closed and counted in
/// `dropped`. In a cluster the publish is also relayed to the other
/// engines' subscribers; the counts are this engine's clients only.
pub(super) fn publish(hub: &Realtime, mesh: &Mesh, _: &CallCtx, input: Value) -> Reply {
    let a: PublishArgs = args(input)?;
    let topic = a
        .topic
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("missing topic"))?;
    let p = hub.publish(&topic, &a.data, a.exclude_channel_id.as_deref(), a.raw);
    mesh.provided().relay(topics::RELAY_CHANNEL, || {
        let relayed = topics::Relayed {
            topic,
            data: a.data,
            exclude_channel_id: a.exclude_channel_id,
            raw: a.raw,
        };
        serde_json::to_vec(&relayed).expect("a publish encodes")
    });
    Ok(json!({ "recipients": p.recipients, "dropped": p.dropped }))
}

fn get(hub: &Realtime, caller: &Caller<'_>, input: Value) -> Reply {
    let a: TopicArgs = args(input)?;
    Ok(channel(hub, caller, a.channel_id)?.snapshot())
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct ListArgs {
    route: Option<String>,
    topic: Option<String>,
    limit: Option<usize>,
}

pub(super) fn list(hub: &Realtime, mesh: &Mesh, ctx: &CallCtx, input: Value) -> Reply {
    let caller = Caller::Here { mesh, ctx };
    let a: ListArgs = args(input)?;
    let chans = hub.list(
        a.route.as_deref(),
        a.topic.as_deref(),
        a.limit.unwrap_or(1000),
    );
    let out: Vec<Value> = chans
        .iter()
        .filter(|c| caller.may_act_on(hub, &c.route))
        .map(|c| c.snapshot())
        .collect();
    Ok(json!({ "channels": out }))
}

/// `channel::routes` → `{routes: [{route, handlers, connections}]}`: every
/// route with its handler count and open connections, without listing the
/// connections (dashboards). Like `channel::list`, a worker sees only the
/// routes it serves; an operator sees all.
pub(super) fn routes(hub: &Realtime, mesh: &Mesh, ctx: &CallCtx, _: Value) -> Reply {
    let caller = Caller::Here { mesh, ctx };
    let summary = hub.routes().summary();
    let counts = hub.connections_by_route();
    let out: Vec<Value> = summary
        .into_iter()
        .filter(|(route, _)| caller.may_act_on(hub, route))
        .map(|(route, handlers)| {
            let connections = counts.get(&route).copied().unwrap_or(0);
            json!({ "route": route, "handlers": handlers, "connections": connections })
        })
        .collect();
    Ok(json!({ "routes": out }))
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct StateArgs {
    channel_id: Option<String>,
    state: Option<Value>,
    merge: bool,
}

/// Replaces (or with `merge`, shallow-merges into) the per-connection state.
fn set_state(hub: &Realtime, caller: &Caller<'_>, input: Value) -> Reply {
    let a: StateArgs = args(input)?;
    let ch = channel(hub, caller, a.channel_id)?;
    let new = a.state.ok_or_else(|| bad("missing state"))?;
    let state = match (a.merge, ch.state(), new) {
        (true, Value::Object(mut old), Value::Object(add)) => {
            old.extend(add);
            Value::Object(old)
        }
        (true, _, _) => return Err(bad("merge needs an object state on both sides")),
        (false, _, new) => new,
    };
    let size = state.to_string().len();
    let max = hub.config().max_state_bytes;
    if size > max {
        let msg = format!("state is {size} bytes; realtime.max_state_bytes is {max}");
        return Err(ErrorBody::new(codes::STATE_TOO_LARGE, msg));
    }
    ch.set_state(state.clone());
    Ok(json!({ "state": state }))
}

fn get_state(hub: &Realtime, caller: &Caller<'_>, input: Value) -> Reply {
    let a: StateArgs = args(input)?;
    Ok(json!({ "state": channel(hub, caller, a.channel_id)?.state() }))
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct AuthArgs {
    channel_id: Option<String>,
    context: Option<Value>,
}

/// Login (or with a null context, logout) over the socket.
fn set_auth(hub: &Realtime, caller: &Caller<'_>, input: Value) -> Reply {
    let a: AuthArgs = args(input)?;
    let ch = channel(hub, caller, a.channel_id)?;
    let context = a.context.filter(|c| !c.is_null());
    let authenticated = context.is_some();
    ch.set_auth(context);
    persist::refresh(hub, &ch);
    Ok(json!({ "authenticated": authenticated }))
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct TicketArgs {
    route: Option<String>,
    context: Value,
    ttl_ms: Option<u64>,
}

/// A one-use ticket for `?ticket=` on the route (a pattern or a concrete path).
pub(super) fn issue_ticket(hub: &Realtime, mesh: &Mesh, ctx: &CallCtx, input: Value) -> Reply {
    let caller = Caller::Here { mesh, ctx };
    let a: TicketArgs = args(input)?;
    let route = a.route.ok_or_else(|| bad("missing route"))?;
    let pattern = {
        let rt = hub.routes();
        if rt.contains(&route) {
            Some(route.clone())
        } else {
            rt.find(&route).map(|m| m.pattern)
        }
    };
    let pattern = pattern.ok_or_else(|| {
        ErrorBody::new(codes::ROUTE_NOT_FOUND, format!("no realtime route {route}"))
    })?;
    caller.check(hub, &pattern)?;
    let ttl = Duration::from_millis(a.ttl_ms.unwrap_or(30_000)).min(hub.config().max_ticket_ttl);
    if ttl.is_zero() {
        return Err(bad("ttl_ms must be greater than 0"));
    }
    let context = if a.context.is_null() {
        json!({})
    } else {
        a.context
    };
    let ticket = hub.issue_ticket(&pattern, context, ttl);
    Ok(json!({ "ticket": ticket, "route": pattern, "expires_in_ms": ttl.as_millis() as u64 }))
}

type Op = fn(&Realtime, &Caller<'_>, Value) -> Reply;

/// The functions acting on one client (`send_many`: on each client named).
/// In a cluster, a client another engine holds is acted on there.
pub(super) const ON_CLIENTS: &[(&str, Op)] = &[
    ("channel::send", send),
    (SEND_MANY, send_many),
    ("channel::close", close),
    ("channel::subscribe", subscribe),
    ("channel::unsubscribe", unsubscribe),
    ("channel::get", get),
    ("channel::set_state", set_state),
    ("channel::get_state", get_state),
    ("channel::set_auth", set_auth),
];

const SEND_MANY: &str = "channel::send_many";

/// One of [`ON_CLIENTS`], with what it needs to reach another engine's client.
#[derive(Clone)]
pub(super) struct OnClient {
    pub hub: Realtime,
    pub peers: Option<Arc<dyn RealtimePeers>>,
    pub id: &'static str,
    pub op: Op,
}

/// Acts here when this engine holds the client: answered inline, in order
/// with the caller's other messages. Otherwise asks the other engines and
/// answers what the one holding it answered, unchanged; when none does,
/// this engine's own answer for a client it does not know (`not found`).
pub(super) fn on_client(
    h: OnClient,
    mesh: Mesh,
    ctx: CallCtx,
    input: Value,
) -> BoxFuture<'static, Reply> {
    let here = Caller::Here {
        mesh: &mesh,
        ctx: &ctx,
    };
    let Some(peers) = h.peers.clone() else {
        return Box::pin(ready((h.op)(&h.hub, &here, input)));
    };
    if h.id == SEND_MANY {
        return send_many_across(&h.hub, peers, &here, input);
    }
    let elsewhere = match input.get("channel_id").and_then(Value::as_str) {
        Some(id) if h.hub.get(id).is_none() => id.to_owned(),
        _ => return Box::pin(ready((h.op)(&h.hub, &here, input))),
    };
    let caller = Caller::rights(&mesh, &ctx);
    let asked = peers.ask(h.id, caller, input.clone(), Some(&elsewhere));
    Box::pin(async move {
        let mut unanswered = Vec::new();
        for answer in asked.await {
            match answer {
                Ok(Some(reply)) => return reply,
                Ok(None) => {}
                Err(why) => unanswered.push(why),
            }
        }
        let here = Caller::Here {
            mesh: &mesh,
            ctx: &ctx,
        };
        match (h.op)(&h.hub, &here, input) {
            Err(mut e) if !unanswered.is_empty() => {
                e.message = format!(
                    "{} (nor on the engines that answered; {})",
                    e.message,
                    unanswered.join("; ")
                );
                Err(e)
            }
            reply => reply,
        }
    })
}

/// `send_many` here, then the ids missing here on the other engines: one
/// answer, as if every engine's clients were this engine's.
fn send_many_across(
    hub: &Realtime,
    peers: Arc<dyn RealtimePeers>,
    here: &Caller<'_>,
    input: Value,
) -> BoxFuture<'static, Reply> {
    let Caller::Here { mesh, ctx } = here else {
        unreachable!("send_many across engines starts here");
    };
    let mut rest = input.clone();
    let local = match send_many(hub, here, input) {
        Ok(local) => local,
        refused => return Box::pin(ready(refused)),
    };
    let missing: Vec<String> = serde_json::from_value(local["missing"].clone()).unwrap_or_default();
    if missing.is_empty() {
        return Box::pin(ready(Ok(local)));
    }
    rest["channel_ids"] = json!(missing);
    let asked = peers.ask(SEND_MANY, Caller::rights(mesh, ctx), rest, None);
    Box::pin(async move {
        let mut delivered = local["delivered"].as_u64().unwrap_or(0);
        let mut dropped: Vec<Value> = local["dropped"].as_array().cloned().unwrap_or_default();
        let mut found = std::collections::HashSet::new();
        for answer in asked.await {
            let Ok(Some(Ok(theirs))) = answer else {
                continue;
            };
            delivered += theirs["delivered"].as_u64().unwrap_or(0);
            let their_missing: Vec<String> =
                serde_json::from_value(theirs["missing"].clone()).unwrap_or_default();
            found.extend(
                missing
                    .iter()
                    .filter(|id| !their_missing.contains(id))
                    .cloned(),
            );
            dropped.extend(theirs["dropped"].as_array().cloned().unwrap_or_default());
        }
        let missing: Vec<&String> = missing.iter().filter(|id| !found.contains(*id)).collect();
        Ok(json!({ "delivered": delivered, "missing": missing, "dropped": dropped }))
    })
}

/// This engine's clients, acted on for callers on other engines.
pub(crate) struct HeldClients(pub Realtime);

impl RealtimeClients for HeldClients {
    fn act_for_peer(&self, function: &str, caller: &ClientCaller, input: Value) -> PeerAnswer {
        let hub = &self.0;
        let Some((_, op)) = ON_CLIENTS.iter().find(|(id, _)| *id == function) else {
            let msg = format!("{function} does not act on realtime clients");
            return Some(Err(ErrorBody::new(codes::FUNCTION_NOT_FOUND, msg)));
        };
        let held = |id: &Value| id.as_str().is_some_and(|id| hub.get(id).is_some());
        let here = if function == SEND_MANY {
            input["channel_ids"]
                .as_array()
                .is_some_and(|ids| ids.iter().any(held))
        } else {
            held(&input["channel_id"])
        };
        here.then(|| op(hub, &Caller::Elsewhere(caller), input))
    }
}
