//! Building what the engine sends. Each function returns the JSON text of one
//! frame; the engine always sends text frames. Optional fields are omitted
//! rather than sent as null, as iii does.

use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use super::ErrorBody;

fn encode<T: Serialize>(frame: &T) -> String {
    serde_json::to_string(frame).expect("outbound frames always serialize")
}

#[derive(Serialize)]
struct WorkerRegistered<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    worker_id: &'a Uuid,
    reattach_token: &'a Uuid,
}

/// The first frame of every worker connection.
pub fn worker_registered(worker_id: &Uuid, reattach_token: &Uuid) -> String {
    encode(&WorkerRegistered {
        kind: "workerregistered",
        worker_id,
        reattach_token,
    })
}

#[derive(Serialize)]
struct InvokeFunction<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    invocation_id: &'a Uuid,
    function_id: &'a str,
    data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    baggage: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a RawValue>,
}

/// A call delivered to an executor. Never carries `action` or `namespace`.
pub struct InvokeParts<'a> {
    pub invocation_id: &'a Uuid,
    pub function_id: &'a str,
    pub data: &'a RawValue,
    pub traceparent: Option<&'a str>,
    pub baggage: Option<&'a str>,
    pub metadata: Option<&'a RawValue>,
}

pub fn invoke(p: InvokeParts<'_>) -> String {
    encode(&InvokeFunction {
        kind: "invokefunction",
        invocation_id: p.invocation_id,
        function_id: p.function_id,
        data: p.data,
        traceparent: p.traceparent,
        baggage: p.baggage,
        metadata: p.metadata,
    })
}

#[derive(Serialize)]
struct InvocationResult<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    invocation_id: &'a Uuid,
    function_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a ErrorBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    baggage: Option<&'a str>,
}

/// A successful result. A null result is omitted, as iii does.
pub fn result_ok(
    invocation_id: &Uuid,
    function_id: &str,
    result: Option<&RawValue>,
    traceparent: Option<&str>,
    baggage: Option<&str>,
) -> String {
    encode(&InvocationResult {
        kind: "invocationresult",
        invocation_id,
        function_id,
        result: result.filter(|r| r.get() != "null"),
        error: None,
        traceparent,
        baggage,
    })
}

pub fn result_err(invocation_id: &Uuid, function_id: &str, error: &ErrorBody) -> String {
    encode(&InvocationResult {
        kind: "invocationresult",
        invocation_id,
        function_id,
        result: None,
        error: Some(error),
        traceparent: None,
        baggage: None,
    })
}

#[derive(Serialize)]
struct RegisterTrigger<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    trigger_type: &'a str,
    function_id: &'a str,
    config: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trigger_namespace: Option<&'a str>,
}

/// A binding forwarded to the worker that provides its trigger type.
/// Namespaces are written only when they are not `default`, as iii does.
pub struct BindingParts<'a> {
    pub id: &'a str,
    pub trigger_type: &'a str,
    pub function_id: &'a str,
    pub config: &'a RawValue,
    pub metadata: Option<&'a RawValue>,
    pub namespace: &'a str,
    pub trigger_namespace: &'a str,
}

pub fn register_trigger(p: BindingParts<'_>) -> String {
    encode(&RegisterTrigger {
        kind: "registertrigger",
        id: p.id,
        trigger_type: p.trigger_type,
        function_id: p.function_id,
        config: p.config,
        metadata: p.metadata,
        namespace: non_default(p.namespace),
        trigger_namespace: non_default(p.trigger_namespace),
    })
}

fn non_default(ns: &str) -> Option<&str> {
    (ns != crate::protocol::DEFAULT_NAMESPACE).then_some(ns)
}

#[derive(Serialize)]
struct UnregisterTrigger<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    trigger_type: &'a str,
}

/// Tells a provider that a binding is gone. The engine always sets `trigger_type`.
pub fn unregister_trigger(id: &str, trigger_type: &str) -> String {
    encode(&UnregisterTrigger {
        kind: "unregistertrigger",
        id,
        trigger_type,
    })
}

#[derive(Serialize)]
struct TriggerRegistrationResult<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    trigger_type: &'a str,
    function_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a ErrorBody>,
}

/// Relays a provider's refusal of a binding to the worker that asked for it.
pub fn trigger_registration_result(
    id: &str,
    trigger_type: &str,
    function_id: &str,
    error: Option<&ErrorBody>,
) -> String {
    encode(&TriggerRegistrationResult {
        kind: "triggerregistrationresult",
        id,
        trigger_type,
        function_id,
        error,
    })
}

#[derive(Serialize)]
struct RegistrationRejected<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'a str,
    namespace: &'a str,
    function_id: &'a str,
    owner_worker_id: &'a str,
}

/// A function id the worker may not register (the engine owns it). Non-fatal
/// for every SDK: only that function is refused.
pub fn function_rejected(namespace: &str, function_id: &str) -> String {
    encode(&RegistrationRejected {
        kind: "registrationrejected",
        code: super::codes::FUNCTION_NAMESPACE_CONFLICT,
        namespace,
        function_id,
        owner_worker_id: "",
    })
}

/// A connection-level error (iii's `{"type":"error"}`): sent once, before the
/// engine closes a socket it refused, e.g. when auth failed.
pub fn connection_error(error: &ErrorBody) -> String {
    encode(&serde_json::json!({ "type": "error", "error": error }))
}

pub fn pong() -> String {
    r#"{"type":"pong"}"#.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_results_and_default_namespaces_are_omitted() {
        let id = Uuid::nil();
        let null = RawValue::from_string("null".into()).unwrap();
        let s = result_ok(&id, "f", Some(&null), None, None);
        assert!(!s.contains("\"result\""), "{s}");
        let cfg = RawValue::from_string("{}".into()).unwrap();
        let s = register_trigger(BindingParts {
            id: "b",
            trigger_type: "t",
            function_id: "f",
            config: &cfg,
            metadata: None,
            namespace: "default",
            trigger_namespace: "other",
        });
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert!(v.get("namespace").is_none());
        assert_eq!(v["trigger_namespace"], "other");
        assert_eq!(v["type"], "registertrigger");
    }
}
