//! The worker's side of the wire: frames a client sends (the mirror of
//! [`protocol::inbound`](crate::protocol::inbound)) and frames it receives (the
//! mirror of [`protocol::outbound`](crate::protocol::outbound)).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use std::borrow::Cow;
use uuid::Uuid;

use crate::protocol::ErrorBody;

/// `action` of an `invokefunction`; absent for a sync call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    Sync,
    Void,
    Enqueue { queue: &'a str },
}

#[derive(Serialize)]
struct ActionFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    queue: Option<&'a str>,
}

#[derive(Serialize)]
struct InvokeFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    invocation_id: Option<&'a Uuid>,
    function_id: &'a str,
    data: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<ActionFrame<'a>>,
}

/// An `invokefunction`. Void calls carry no `invocation_id`, as the 0.25 SDKs do.
pub fn invoke(
    invocation_id: Option<&Uuid>,
    function_id: &str,
    data: &Value,
    action: Action<'_>,
) -> String {
    let action = match action {
        Action::Sync => None,
        Action::Void => Some(ActionFrame {
            kind: "void",
            queue: None,
        }),
        Action::Enqueue { queue } => Some(ActionFrame {
            kind: "enqueue",
            queue: Some(queue),
        }),
    };
    encode(&InvokeFrame {
        kind: "invokefunction",
        invocation_id,
        function_id,
        data,
        action,
    })
}

#[derive(Serialize)]
struct ResultFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    invocation_id: &'a Uuid,
    function_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a ErrorBody>,
}

/// The `invocationresult` a handler's outcome turns into.
pub fn result(
    invocation_id: &Uuid,
    function_id: &str,
    outcome: &Result<Value, ErrorBody>,
) -> String {
    let (result, error) = match outcome {
        Ok(v) => (Some(v).filter(|v| !v.is_null()), None),
        Err(e) => (None, Some(e)),
    };
    encode(&ResultFrame {
        kind: "invocationresult",
        invocation_id,
        function_id,
        result,
        error,
    })
}

#[derive(Serialize)]
struct IdFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
}

pub fn register_function(id: &str) -> String {
    encode(&IdFrame {
        kind: "registerfunction",
        id,
    })
}

pub fn unregister_function(id: &str) -> String {
    encode(&IdFrame {
        kind: "unregisterfunction",
        id,
    })
}

pub fn pong() -> String {
    r#"{"type":"pong"}"#.to_owned()
}

/// The data of the void `engine::workers::register` call that names a worker.
pub fn worker_info(name: &str) -> Value {
    serde_json::json!({
        "name": name,
        "runtime": "rust",
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "os": std::env::consts::OS,
    })
}

fn encode<T: Serialize>(frame: &T) -> String {
    serde_json::to_string(frame).expect("client frames always serialize")
}

/// A frame the engine sent, reduced to what a client acts on.
#[derive(Debug)]
pub enum FromEngine {
    Registered {
        worker_id: Uuid,
    },
    Result {
        invocation_id: Uuid,
        outcome: Reply,
    },
    Invoke {
        invocation_id: Option<Uuid>,
        function_id: String,
        data: Option<Box<RawValue>>,
        /// What the caller (or the engine: a queued job's context) attached.
        metadata: Option<Box<RawValue>>,
    },
    Rejected {
        code: String,
        detail: String,
    },
    Ping,
    /// A frame a plain client has no use for (trigger messages, `pong`, ...).
    Other(String),
}

/// What the engine answered to one call; the result stays raw until the
/// caller that waits for it parses it.
pub type Reply = Result<Option<Box<RawValue>>, ErrorBody>;

/// Every field of every engine frame a client reads. Unknown fields are ignored.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    invocation_id: Option<Uuid>,
    function_id: Option<String>,
    data: Option<Box<RawValue>>,
    metadata: Option<Box<RawValue>>,
    result: Option<Box<RawValue>>,
    error: Option<ErrorBody>,
    worker_id: Option<Uuid>,
    code: Option<String>,
    worker_name: Option<String>,
}

/// Decodes one engine frame. Fails only on malformed JSON or a frame missing
/// a field the client needs.
pub fn decode(text: &str) -> Result<FromEngine, String> {
    let f: Frame<'_> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let missing = |field: &str| format!("{} without `{field}`", f.kind);
    Ok(match f.kind.as_ref() {
        "workerregistered" => FromEngine::Registered {
            worker_id: f.worker_id.ok_or_else(|| missing("worker_id"))?,
        },
        "invocationresult" => FromEngine::Result {
            invocation_id: f.invocation_id.ok_or_else(|| missing("invocation_id"))?,
            outcome: match f.error {
                Some(e) => Err(e),
                None => Ok(f.result),
            },
        },
        "invokefunction" => FromEngine::Invoke {
            function_id: f.function_id.ok_or_else(|| missing("function_id"))?,
            invocation_id: f.invocation_id,
            data: f.data,
            metadata: f.metadata,
        },
        "registrationrejected" => FromEngine::Rejected {
            code: f.code.unwrap_or_default(),
            detail: f.function_id.or(f.worker_name).unwrap_or_default(),
        },
        // The RBAC failure frame: `{"type":"error","error":{code,message}}`.
        "error" => FromEngine::Rejected {
            code: f.error.as_ref().map(|e| e.code.clone()).unwrap_or_default(),
            detail: f.error.map(|e| e.message).unwrap_or_default(),
        },
        "ping" => FromEngine::Ping,
        other => FromEngine::Other(other.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Inbound, inbound, outbound};
    use serde_json::json;

    #[test]
    fn the_engine_decodes_every_client_frame() {
        let id = Uuid::new_v4();
        let data = json!({"a": 1});
        let Inbound::Invoke(sync) =
            inbound::decode(&invoke(Some(&id), "m::f", &data, Action::Sync)).unwrap()
        else {
            panic!("not an invoke")
        };
        assert_eq!(sync.invocation_id, Some(id));
        assert_eq!(sync.action, inbound::Action::Sync);
        assert_eq!(sync.data.unwrap().get(), r#"{"a":1}"#);

        let Inbound::Invoke(void) =
            inbound::decode(&invoke(None, "m::f", &data, Action::Void)).unwrap()
        else {
            panic!("not an invoke")
        };
        assert_eq!(void.invocation_id, None);
        assert_eq!(void.action, inbound::Action::Void);

        let text = invoke(Some(&id), "m::f", &data, Action::Enqueue { queue: "jobs" });
        let Inbound::Invoke(enq) = inbound::decode(&text).unwrap() else {
            panic!("not an invoke")
        };
        assert_eq!(
            enq.action,
            inbound::Action::Enqueue {
                queue: "jobs".into()
            }
        );

        assert!(
            matches!(inbound::decode(&register_function("m::f")).unwrap(), Inbound::RegisterFunction(r) if r.id == "m::f")
        );
        assert!(
            matches!(inbound::decode(&unregister_function("m::f")).unwrap(), Inbound::UnregisterFunction { id } if id == "m::f")
        );
        assert!(matches!(inbound::decode(&pong()).unwrap(), Inbound::Pong));
    }

    #[test]
    fn results_omit_null_and_carry_errors() {
        let id = Uuid::new_v4();
        let Inbound::Result(ok) = inbound::decode(&result(&id, "f", &Ok(json!([1])))).unwrap()
        else {
            panic!()
        };
        assert_eq!(ok.result.unwrap().get(), "[1]");
        let null = result(&id, "f", &Ok(Value::Null));
        assert!(!null.contains("\"result\""), "{null}");
        let Inbound::Result(err) =
            inbound::decode(&result(&id, "f", &Err(ErrorBody::new("boom", "bad")))).unwrap()
        else {
            panic!()
        };
        assert_eq!(err.error.unwrap().code, "boom");
    }

    #[test]
    fn the_client_decodes_every_engine_frame_it_needs() {
        let (w, t) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(
            matches!(decode(&outbound::worker_registered(&w, &t)).unwrap(), FromEngine::Registered { worker_id } if worker_id == w)
        );

        let raw = RawValue::from_string(r#"{"x":2}"#.into()).unwrap();
        let text = outbound::invoke(outbound::InvokeParts {
            invocation_id: &t,
            function_id: "m::f",
            data: &raw,
            traceparent: None,
            baggage: None,
            metadata: Some(&raw),
        });
        let FromEngine::Invoke {
            invocation_id,
            function_id,
            data,
            metadata,
        } = decode(&text).unwrap()
        else {
            panic!()
        };
        assert_eq!((invocation_id, function_id.as_str()), (Some(t), "m::f"));
        assert_eq!(data.unwrap().get(), r#"{"x":2}"#);
        assert_eq!(metadata.unwrap().get(), r#"{"x":2}"#);

        let FromEngine::Result { outcome, .. } =
            decode(&outbound::result_ok(&t, "f", Some(&raw), None, None)).unwrap()
        else {
            panic!()
        };
        assert_eq!(outcome.unwrap().unwrap().get(), r#"{"x":2}"#);
        let FromEngine::Result { outcome, .. } =
            decode(&outbound::result_ok(&t, "f", None, None, None)).unwrap()
        else {
            panic!()
        };
        assert!(outcome.unwrap().is_none());
        let err = ErrorBody::new("function_not_found", "nope");
        let FromEngine::Result { outcome, .. } =
            decode(&outbound::result_err(&t, "f", &err)).unwrap()
        else {
            panic!()
        };
        assert_eq!(outcome.unwrap_err(), err);

        assert!(
            matches!(decode(&outbound::function_rejected("default", "engine::x")).unwrap(),
            FromEngine::Rejected { code, detail } if code == "FUNCTION_NAMESPACE_CONFLICT" && detail == "engine::x")
        );
        assert!(matches!(decode(&outbound::pong()).unwrap(), FromEngine::Other(k) if k == "pong"));
        assert!(matches!(
            decode(r#"{"type":"ping"}"#).unwrap(),
            FromEngine::Ping
        ));
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert!(decode("{").is_err());
        assert!(decode(r#"{"type":"invocationresult","invocation_id":"nope"}"#).is_err());
        assert!(
            decode(r#"{"type":"workerregistered"}"#)
                .unwrap_err()
                .contains("worker_id")
        );
    }

    #[test]
    fn worker_info_names_a_rust_worker() {
        let info = worker_info("w1");
        assert_eq!(info["runtime"], "rust");
        assert_eq!(info["name"], "w1");
        assert_eq!(info["pid"], std::process::id());
    }
}
