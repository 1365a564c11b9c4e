//! Decoding what workers send.
//!
//! Decoding is tolerant in exactly the ways `docs/protocol.md` §8 lists:
//! unknown fields are ignored, `data`/`config` may be missing (null),
//! `description` may be missing (""), `invocation_id` may be null or absent.
//! A frame is parsed once into [`Frame`], a flat union of every message's
//! fields, so payloads can stay raw (serde cannot keep raw JSON inside an
//! internally tagged enum); [`Frame::into_message`] then checks what the
//! `type` requires.

use serde::Deserialize;
use std::borrow::Cow;
use uuid::Uuid;

use super::{ErrorBody, Payload};

/// A decoded worker → engine message.
#[derive(Debug)]
pub enum Inbound {
    RegisterFunction(FunctionRegistration),
    UnregisterFunction {
        id: String,
    },
    Invoke(Invoke),
    Result(InvocationResult),
    RegisterTriggerType(TriggerTypeRegistration),
    UnregisterTriggerType {
        id: String,
        namespace: Option<String>,
    },
    RegisterTrigger(TriggerRegistration),
    TriggerRegistrationResult(TriggerRegistrationResult),
    UnregisterTrigger {
        id: String,
    },
    Reattach {
        previous_worker_id: String,
        reattach_token: Option<String>,
    },
    Ping,
    Pong,
    /// A known message the engine has no use for (`registerservice`, engine →
    /// worker messages echoed back, the observe family).
    Ignored(String),
}

#[derive(Debug)]
pub struct FunctionRegistration {
    pub id: String,
    pub description: Option<String>,
    pub request_format: Option<Payload>,
    pub response_format: Option<Payload>,
    pub metadata: Option<Payload>,
    /// How the engine calls it itself (iii's HTTP-invoked functions:
    /// `{url, method, timeout_ms, headers, auth}`); absent for worker functions.
    pub invocation: Option<Payload>,
}

#[derive(Debug)]
pub struct Invoke {
    /// `None` for fire-and-forget calls.
    pub invocation_id: Option<Uuid>,
    pub function_id: String,
    pub data: Option<Payload>,
    pub traceparent: Option<String>,
    pub baggage: Option<String>,
    pub metadata: Option<Payload>,
    pub namespace: Option<String>,
    pub action: Action,
}

/// How the caller wants its call handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// No `action`: wait for the result.
    Sync,
    /// `{"type":"void"}`: never answer.
    Void,
    /// `{"type":"enqueue","queue":Q}`: answer with a receipt, deliver later.
    Enqueue { queue: String },
    /// Anything else; answered with `invalid_action`.
    Unknown(String),
}

#[derive(Debug)]
pub struct InvocationResult {
    pub invocation_id: Uuid,
    pub function_id: String,
    pub result: Option<Payload>,
    pub error: Option<ErrorBody>,
    pub traceparent: Option<String>,
    pub baggage: Option<String>,
}

#[derive(Debug)]
pub struct TriggerTypeRegistration {
    pub id: String,
    pub description: String,
    pub trigger_request_format: Option<Payload>,
    pub call_request_format: Option<Payload>,
    pub namespace: Option<String>,
}

#[derive(Debug)]
pub struct TriggerRegistration {
    pub id: String,
    pub trigger_type: String,
    pub function_id: String,
    pub config: Option<Payload>,
    pub metadata: Option<Payload>,
    pub namespace: Option<String>,
    pub trigger_namespace: Option<String>,
}

#[derive(Debug)]
pub struct TriggerRegistrationResult {
    pub id: String,
    pub trigger_type: String,
    pub function_id: String,
    pub error: Option<ErrorBody>,
}

/// Why a frame was dropped. Never fatal to the connection.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("{kind} without required field `{field}`")]
    MissingField {
        kind: &'static str,
        field: &'static str,
    },
    #[error("{kind}: field `{field}` is not a UUID")]
    BadUuid {
        kind: &'static str,
        field: &'static str,
    },
}

/// Every field of every message, all optional. Unknown fields are ignored.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    id: Option<String>,
    function_id: Option<String>,
    invocation_id: Option<String>,
    data: Option<Payload>,
    result: Option<Payload>,
    error: Option<ErrorBody>,
    traceparent: Option<String>,
    baggage: Option<String>,
    metadata: Option<Payload>,
    namespace: Option<String>,
    action: Option<RawAction>,
    description: Option<String>,
    request_format: Option<Payload>,
    response_format: Option<Payload>,
    invocation: Option<Payload>,
    trigger_request_format: Option<Payload>,
    call_request_format: Option<Payload>,
    trigger_type: Option<String>,
    config: Option<Payload>,
    trigger_namespace: Option<String>,
    previous_worker_id: Option<String>,
    reattach_token: Option<String>,
}

#[derive(Deserialize)]
struct RawAction {
    #[serde(rename = "type")]
    kind: String,
    queue: Option<String>,
}

/// Decode one text (or JSON binary) frame.
pub fn decode(text: &str) -> Result<Inbound, DecodeError> {
    let frame: Frame<'_> = serde_json::from_str(text)?;
    frame.into_message()
}

/// For a call frame [`decode`] refused (a field of the wrong type, say): its
/// invocation id and function id, when they can still be read, so the caller
/// can be told instead of left waiting. `None` for anything else.
pub fn refused_call(text: &str) -> Option<(Uuid, String)> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    if v.get("type")?.as_str()? != "invokefunction" {
        return None;
    }
    let id = Uuid::parse_str(v.get("invocation_id")?.as_str()?).ok()?;
    let function_id = v
        .get("function_id")
        .and_then(|f| f.as_str())
        .unwrap_or_default()
        .to_owned();
    Some((id, function_id))
}

/// Frames with nothing in them are skipped without a log line (SDKs send them).
pub fn is_blank(text: &str) -> bool {
    text.trim().is_empty()
}

/// Telemetry that older SDKs put on the worker socket: a 4-byte ASCII tag then OTLP JSON.
pub fn is_telemetry(bytes: &[u8]) -> bool {
    matches!(bytes.get(..4), Some(b"OTLP" | b"MTRC" | b"LOGS"))
}

fn required<T>(v: Option<T>, kind: &'static str, field: &'static str) -> Result<T, DecodeError> {
    v.ok_or(DecodeError::MissingField { kind, field })
}

fn uuid_field(v: &str, kind: &'static str, field: &'static str) -> Result<Uuid, DecodeError> {
    Uuid::parse_str(v).map_err(|_| DecodeError::BadUuid { kind, field })
}

fn non_null(p: Option<Payload>) -> Option<Payload> {
    p.filter(|raw| raw.get() != "null")
}

impl Frame<'_> {
    fn into_message(self) -> Result<Inbound, DecodeError> {
        Ok(match self.kind.as_ref() {
            "registerfunction" => Inbound::RegisterFunction(FunctionRegistration {
                id: required(self.id, "registerfunction", "id")?,
                description: self.description,
                request_format: non_null(self.request_format),
                response_format: non_null(self.response_format),
                metadata: non_null(self.metadata),
                invocation: non_null(self.invocation),
            }),
            "unregisterfunction" => Inbound::UnregisterFunction {
                id: required(self.id, "unregisterfunction", "id")?,
            },
            "invokefunction" => {
                const K: &str = "invokefunction";
                let invocation_id = match self.invocation_id.as_deref() {
                    None => None,
                    Some(s) => Some(uuid_field(s, K, "invocation_id")?),
                };
                let action = match self.action {
                    None => Action::Sync,
                    Some(a) => match (a.kind.as_str(), a.queue) {
                        ("void", _) => Action::Void,
                        ("enqueue", Some(queue)) => Action::Enqueue { queue },
                        ("enqueue", None) => Action::Unknown("enqueue without queue".into()),
                        (other, _) => Action::Unknown(other.to_owned()),
                    },
                };
                Inbound::Invoke(Invoke {
                    invocation_id,
                    function_id: required(self.function_id, K, "function_id")?,
                    data: self.data,
                    traceparent: self.traceparent,
                    baggage: self.baggage,
                    metadata: non_null(self.metadata),
                    namespace: self.namespace,
                    action,
                })
            }
            "invocationresult" => {
                const K: &str = "invocationresult";
                let id = required(self.invocation_id, K, "invocation_id")?;
                Inbound::Result(InvocationResult {
                    invocation_id: uuid_field(&id, K, "invocation_id")?,
                    function_id: self.function_id.unwrap_or_default(),
                    result: self.result,
                    error: self.error,
                    traceparent: self.traceparent,
                    baggage: self.baggage,
                })
            }
            "registertriggertype" => Inbound::RegisterTriggerType(TriggerTypeRegistration {
                id: required(self.id, "registertriggertype", "id")?,
                description: self.description.unwrap_or_default(),
                trigger_request_format: non_null(self.trigger_request_format),
                call_request_format: non_null(self.call_request_format),
                namespace: self.namespace,
            }),
            "unregistertriggertype" => Inbound::UnregisterTriggerType {
                id: required(self.id, "unregistertriggertype", "id")?,
                namespace: self.namespace,
            },
            "registertrigger" => {
                const K: &str = "registertrigger";
                Inbound::RegisterTrigger(TriggerRegistration {
                    id: required(self.id, K, "id")?,
                    trigger_type: required(self.trigger_type, K, "trigger_type")?,
                    function_id: required(self.function_id, K, "function_id")?,
                    config: self.config,
                    metadata: non_null(self.metadata),
                    namespace: self.namespace,
                    trigger_namespace: self.trigger_namespace,
                })
            }
            "triggerregistrationresult" => {
                const K: &str = "triggerregistrationresult";
                Inbound::TriggerRegistrationResult(TriggerRegistrationResult {
                    id: required(self.id, K, "id")?,
                    trigger_type: self.trigger_type.unwrap_or_default(),
                    function_id: self.function_id.unwrap_or_default(),
                    error: self.error,
                })
            }
            "unregistertrigger" => Inbound::UnregisterTrigger {
                id: required(self.id, "unregistertrigger", "id")?,
            },
            "reattach" => Inbound::Reattach {
                previous_worker_id: required(
                    self.previous_worker_id,
                    "reattach",
                    "previous_worker_id",
                )?,
                reattach_token: self.reattach_token,
            },
            "ping" => Inbound::Ping,
            "pong" => Inbound::Pong,
            k @ ("registerservice"
            | "workerregistered"
            | "registrationrejected"
            | "observe"
            | "unobserve"
            | "observerack"
            | "invocationsobserved"
            | "localinvocationstats"
            | "functionregistered") => Inbound::Ignored(k.to_owned()),
            other => return Err(DecodeError::UnknownType(other.to_owned())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoke_tolerates_missing_data_and_null_id() {
        let m = decode(
            r#"{"type":"invokefunction","function_id":"a::b","invocation_id":null,"extra":1}"#,
        )
        .unwrap();
        let Inbound::Invoke(inv) = m else { panic!() };
        assert!(inv.invocation_id.is_none());
        assert!(inv.data.is_none());
        assert_eq!(inv.action, Action::Sync);
    }

    #[test]
    fn invoke_keeps_payload_text_verbatim() {
        let m = decode(
            r#"{"type":"invokefunction","function_id":"a","invocation_id":"7c9e6679-7425-40de-944b-e07fc1f90ae7","data":{"x": [1, 2.50]},"action":{"type":"enqueue","queue":"jobs"}}"#,
        )
        .unwrap();
        let Inbound::Invoke(inv) = m else { panic!() };
        assert_eq!(inv.data.unwrap().get(), r#"{"x": [1, 2.50]}"#);
        assert_eq!(
            inv.action,
            Action::Enqueue {
                queue: "jobs".into()
            }
        );
    }

    #[test]
    fn rejects_what_cannot_be_routed() {
        assert!(matches!(
            decode(r#"{"type":"nope"}"#),
            Err(DecodeError::UnknownType(_))
        ));
        assert!(matches!(decode("{"), Err(DecodeError::Json(_))));
        assert!(matches!(
            decode(r#"{"type":"invokefunction","function_id":"a","invocation_id":"x"}"#),
            Err(DecodeError::BadUuid { .. })
        ));
        assert!(matches!(
            decode(r#"{"type":"registerfunction"}"#),
            Err(DecodeError::MissingField { field: "id", .. })
        ));
    }

    #[test]
    fn trigger_messages_default_config_and_description() {
        let Inbound::RegisterTriggerType(t) =
            decode(r#"{"type":"registertriggertype","id":"cron"}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(t.description, "");
        let Inbound::RegisterTrigger(b) = decode(
            r#"{"type":"registertrigger","id":"1","trigger_type":"cron","function_id":"f"}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert!(b.config.is_none());
    }

    #[test]
    fn telemetry_prefix() {
        assert!(is_telemetry(b"OTLP{}"));
        assert!(!is_telemetry(b"{\"type\""));
    }

    #[test]
    fn a_refused_call_still_names_its_invocation() {
        let id = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
        let bad = format!(
            r#"{{"type":"invokefunction","invocation_id":"{id}","function_id":"f","action":"void"}}"#
        );
        assert!(decode(&bad).is_err());
        assert_eq!(
            refused_call(&bad),
            Some((Uuid::parse_str(id).unwrap(), "f".into()))
        );
        let no_id = r#"{"type":"invokefunction","function_id":"f","action":7}"#;
        assert_eq!(refused_call(no_id), None);
        assert_eq!(refused_call(r#"{"type":"registerfunction","id":7}"#), None);
    }
}
