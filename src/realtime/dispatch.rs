//! Dispatch: the one payload shape every handler gets, routing a client
//! message to its handler (routing key and correlation id stripped), and the
//! automatic reply (routing key and id echoed; errors as `{error:{code,message}}`).

use base64::Engine as _;
use serde_json::{Map, Value, json};
use std::sync::Arc;

use super::routes::{AuthMode, Event};
use super::{Client, CloseReason, ClosedBy, Realtime};
use crate::mesh::Mesh;
use crate::protocol::codes::{self, close};
use crate::protocol::{ErrorBody, Payload, to_payload};

/// One event for a handler.
pub struct Delivery<'a> {
    pub event: Event,
    /// The routing key and value that selected a routed handler.
    pub matched: Option<(&'a str, &'a Value)>,
    /// The client's correlation id, echoed in the reply.
    pub id: Option<&'a Value>,
    pub data: Data,
    pub reason: Option<&'a CloseReason>,
}

pub enum Data {
    Json(Value),
    Binary(Vec<u8>),
    None,
}

/// The invocation payload: the same shape for every event.
pub fn payload(ch: &Client, d: &Delivery<'_>) -> Payload {
    let mut p = Map::new();
    p.insert("channel".into(), ch.snapshot());
    p.insert("event".into(), d.event.as_str().into());
    p.insert("seq".into(), ch.next_seq().into());
    if let Some((k, v)) = d.matched {
        p.insert("match".into(), json!({ k: v }));
    }
    if let Some(id) = d.id {
        p.insert("id".into(), id.clone());
    }
    match &d.data {
        Data::Json(v) => {
            p.insert("data".into(), v.clone());
        }
        Data::Binary(b) => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(b);
            p.insert("data_b64".into(), b64.into());
        }
        Data::None => {
            p.insert("data".into(), Value::Null);
        }
    }
    if let Some(r) = d.reason {
        p.insert("reason".into(), r.to_json());
    }
    to_payload(&p)
}

/// The function bound to an event of this channel's route, if any.
#[derive(Debug, Clone)]
pub struct Target {
    pub function_id: String,
    pub namespace: String,
    pub auth: Option<AuthMode>,
}

/// The channel's route lost its last trigger while the socket stayed open.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the route has no handlers any more")]
pub struct RouteGone;

/// Looks up the handler for `event` (and `matched`). `Err` when the route
/// itself is gone (its workers unbound it while the socket stayed open).
pub fn target(
    hub: &Realtime,
    ch: &Client,
    event: Event,
    matched: Option<(&str, &Value)>,
) -> Result<Option<Target>, RouteGone> {
    let routes = hub.routes();
    let route = routes.route(&ch.route).ok_or(RouteGone)?;
    Ok(route.handler(event, matched).map(|h| Target {
        function_id: h.function_id.clone(),
        namespace: h.namespace.clone(),
        auth: h.auth,
    }))
}

/// Calls a handler and returns its outcome as JSON.
pub async fn invoke(
    mesh: &Mesh,
    hub: &Realtime,
    ch: &Client,
    t: &Target,
    d: &Delivery<'_>,
) -> Result<Value, ErrorBody> {
    if t.auth.unwrap_or(ch.limits.auth) == AuthMode::Required && !ch.is_authenticated() {
        return Err(ErrorBody::new(
            codes::UNAUTHORIZED,
            "this handler requires an authenticated channel",
        ));
    }
    let timeout = hub.config().handler_timeout;
    match mesh
        .call(&t.namespace, &t.function_id, payload(ch, d), timeout)
        .await
    {
        Ok(Some(raw)) => Ok(serde_json::from_str(raw.get()).unwrap_or(Value::Null)),
        Ok(None) => Ok(Value::Null),
        Err(e) if e.code == crate::protocol::codes::FUNCTION_NOT_FOUND => Err(ErrorBody::new(
            codes::HANDLER_UNAVAILABLE,
            format!("no worker serves {} right now", t.function_id),
        )),
        Err(e) => Err(e),
    }
}

/// What the client gets back, or nothing (a default handler that returned nothing).
pub fn reply(
    matched: Option<(&str, &Value)>,
    id_key: &str,
    id: Option<&Value>,
    outcome: Result<Value, ErrorBody>,
) -> Option<Value> {
    let mut out = match outcome {
        Ok(Value::Object(map)) => map,
        Ok(Value::Null) if matched.is_none() => return None,
        Ok(Value::Null) => Map::new(),
        Ok(other) => Map::from_iter([("result".to_owned(), other)]),
        Err(e) => Map::from_iter([(
            "error".to_owned(),
            json!({ "code": e.code, "message": e.message }),
        )]),
    };
    if let Some((k, v)) = matched {
        out.entry(k.to_owned()).or_insert_with(|| v.clone());
    }
    if let Some(id) = id {
        out.insert(id_key.to_owned(), id.clone());
    }
    Some(Value::Object(out))
}

fn error_frame(id_key: &str, id: Option<&Value>, code: &str, message: String) -> Value {
    reply(None, id_key, id, Err(ErrorBody::new(code, message))).expect("errors always reply")
}

/// Handles one text message from the client, start to reply.
pub async fn on_text(mesh: &Mesh, hub: &Realtime, ch: &Arc<Client>, text: &str) {
    let limits = ch.limits.clone();
    let (mut obj, non_object) = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(obj)) => (obj, None),
        Ok(other) => (Map::new(), Some(other)),
        Err(_) => (Map::new(), Some(Value::String(text.to_owned()))),
    };
    let id = obj.remove(&limits.correlation_key);
    // The first routing key whose value a routed handler listens on.
    let routed: Option<(String, Value)> = {
        let routes = hub.routes();
        routes.route(&ch.route).and_then(|route| {
            limits.routing_keys.iter().find_map(|k| {
                let v = obj.get(k)?;
                route.routes_value(k, v).then(|| (k.clone(), v.clone()))
            })
        })
    };
    if let Some((k, _)) = &routed {
        obj.remove(k);
    }
    let matched = routed.as_ref().map(|(k, v)| (k.as_str(), v));
    let data = non_object.unwrap_or(Value::Object(obj));
    let id_key = &limits.correlation_key;
    let t = match target(hub, ch, Event::Message, matched) {
        Ok(Some(t)) => t,
        Ok(None) => {
            let msg = "no handler for this message on this route".to_owned();
            let _ = ch.send_json(&error_frame(id_key, id.as_ref(), codes::NO_HANDLER, msg));
            return;
        }
        Err(gone) => {
            let msg = gone.to_string();
            let frame = error_frame(id_key, id.as_ref(), codes::HANDLER_UNAVAILABLE, msg);
            let _ = ch.send_json(&frame);
            return;
        }
    };
    let d = Delivery {
        event: Event::Message,
        matched,
        id: id.as_ref(),
        data: Data::Json(data),
        reason: None,
    };
    let outcome = invoke(mesh, hub, ch, &t, &d).await;
    finish(ch, &t, matched, id_key, id.as_ref(), outcome);
}

/// Handles one binary message: the `binary` handler gets it as `data_b64`.
pub async fn on_binary(mesh: &Mesh, hub: &Realtime, ch: &Arc<Client>, bytes: Vec<u8>) {
    let id_key = ch.limits.correlation_key.clone();
    let t = match target(hub, ch, Event::Binary, None) {
        Ok(Some(t)) => t,
        _ => {
            let msg = "this route does not accept binary messages".to_owned();
            let _ = ch.send_json(&error_frame(&id_key, None, codes::NO_HANDLER, msg));
            return;
        }
    };
    let d = Delivery {
        event: Event::Binary,
        matched: None,
        id: None,
        data: Data::Binary(bytes),
        reason: None,
    };
    let outcome = invoke(mesh, hub, ch, &t, &d).await;
    finish(ch, &t, None, &id_key, None, outcome);
}

/// Sends the reply (unless the client is gone) and applies `on_handler_error`.
fn finish(
    ch: &Client,
    t: &Target,
    matched: Option<(&str, &Value)>,
    id_key: &str,
    id: Option<&Value>,
    outcome: Result<Value, ErrorBody>,
) {
    let failed = outcome.as_ref().err().cloned();
    if let Some(e) = &failed {
        tracing::debug!(channel_id = %ch.id, function_id = %t.function_id, error = %e, "realtime handler failed");
    }
    if let Some(frame) = reply(matched, id_key, id, outcome)
        && ch.send_json(&frame).is_err()
    {
        tracing::debug!(channel_id = %ch.id, "reply dropped: the client is gone");
    }
    if failed.is_some() && ch.limits.close_on_handler_error {
        ch.close(CloseReason::new(
            close::INTERNAL_ERROR,
            "handler error",
            ClosedBy::Server,
        ));
    }
}

/// Runs the connect handler; its return value is the client's first frame.
/// An error is sent as an error frame and closes the socket (4403 when forbidden).
pub async fn on_connect(mesh: &Mesh, hub: &Realtime, ch: &Arc<Client>) {
    let Ok(Some(t)) = target(hub, ch, Event::Connect, None) else {
        return;
    };
    let d = Delivery {
        event: Event::Connect,
        matched: None,
        id: None,
        data: Data::None,
        reason: None,
    };
    match invoke(mesh, hub, ch, &t, &d).await {
        Ok(Value::Null) => {}
        Ok(v) => {
            let _ = ch.send_json(&v);
        }
        Err(e) => {
            let forbidden = e.code.eq_ignore_ascii_case("forbidden");
            let code = if forbidden {
                close::FORBIDDEN
            } else {
                close::INTERNAL_ERROR
            };
            let _ = ch.send_json(&error_frame("id", None, &e.code, e.message));
            ch.close(CloseReason::new(
                code,
                "connect handler refused",
                ClosedBy::Server,
            ));
        }
    }
}

/// Runs the disconnect handler (errors are only logged: the client is gone).
pub async fn on_disconnect(mesh: &Mesh, hub: &Realtime, ch: &Arc<Client>, reason: &CloseReason) {
    let Ok(Some(mut t)) = target(hub, ch, Event::Disconnect, None) else {
        return;
    };
    t.auth = Some(AuthMode::None);
    let d = Delivery {
        event: Event::Disconnect,
        matched: None,
        id: None,
        data: Data::None,
        reason: Some(reason),
    };
    if let Err(e) = invoke(mesh, hub, ch, &t, &d).await {
        tracing::warn!(channel_id = %ch.id, function_id = %t.function_id, error = %e, "disconnect handler failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_echo_the_routing_key_and_id() {
        let join = Value::from("join");
        let m = Some(("action", &join));
        let id = Value::from("r-1");
        let r = reply(m, "id", Some(&id), Ok(json!({"ok": true}))).unwrap();
        assert_eq!(r, json!({"ok": true, "action": "join", "id": "r-1"}));
        assert_eq!(
            reply(m, "id", None, Ok(Value::Null)).unwrap(),
            json!({"action": "join"})
        );
        assert_eq!(
            reply(m, "id", Some(&id), Ok(json!(3))).unwrap(),
            json!({"action": "join", "id": "r-1", "result": 3})
        );
        let e = reply(None, "id", Some(&id), Err(ErrorBody::new("boom", "bad"))).unwrap();
        assert_eq!(
            e,
            json!({"error": {"code": "boom", "message": "bad"}, "id": "r-1"})
        );
        assert_eq!(
            reply(None, "id", None, Ok(Value::Null)),
            None,
            "default handler, nothing to say"
        );
    }
}
