//! The iii worker wire protocol, in one place.
//!
//! Every frame a worker sends is decoded by [`inbound`]; every frame the engine
//! sends is built by [`outbound`]; the error and close codes both sides see live
//! in [`codes`]; binary channels' refs and socket URLs in [`channel`]; the
//! W3C `traceparent` field in [`trace_context`]. Nothing else in the crate
//! parses or writes protocol JSON, so this folder can be read whole against
//! `docs/protocol.md`.
//!
//! Payloads (`data`, `result`, `config`, `metadata`) stay as raw JSON text from
//! the moment they arrive until they leave: the engine routes them and never
//! rebuilds them, except to inject `_caller_worker_id` into object payloads.

pub mod channel;
pub mod codes;
pub mod inbound;
pub mod names;
pub mod outbound;
pub mod trace_context;
pub mod update_ops;

pub use codes::ErrorBody;

/// The namespace of anything registered without one.
pub const DEFAULT_NAMESPACE: &str = "default";
pub use inbound::{Action, DecodeError, Inbound, Invoke};

use serde_json::value::RawValue;

/// A JSON value kept as the exact text it arrived as.
pub type Payload = Box<RawValue>;

/// The JSON `null` payload.
pub fn null_payload() -> Payload {
    RawValue::from_string("null".to_owned()).expect("null is valid JSON")
}

/// Serialize any value into a [`Payload`].
pub fn to_payload<T: serde::Serialize + ?Sized>(value: &T) -> Payload {
    serde_json::value::to_raw_value(value).expect("engine values always serialize")
}

/// Adds `_caller_worker_id` to an object payload, as iii does before dispatch.
///
/// The common case (an object that does not already carry the key) is a text
/// splice, so a large payload is copied once and never parsed into a tree.
/// Non-object payloads are passed through untouched.
pub fn inject_caller(data: Option<Payload>, caller: &str) -> Payload {
    let Some(data) = data else {
        return null_payload();
    };
    let text = data.get();
    let trimmed = text.trim_start();
    if !trimmed.starts_with('{') {
        return data;
    }
    if text.contains("\"_caller_worker_id\"") || text.contains("\\u") {
        // The payload has the key, or a `\u` escape that could spell it
        // (`"_caller\u005fworker_id"`): parse, so ours replaces it rather than
        // leaving a duplicate key whose winner depends on the parser. Without
        // a `\u` escape the key can only be written literally, so the
        // common case stays a splice.
        return match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text) {
            Ok(mut map) => {
                map.insert("_caller_worker_id".into(), caller.into());
                to_payload(&map)
            }
            Err(_) => data,
        };
    }
    let body = trimmed[1..].trim_start();
    let mut out = String::with_capacity(text.len() + caller.len() + 24);
    out.push_str("{\"_caller_worker_id\":\"");
    out.push_str(caller);
    out.push('"');
    if !body.starts_with('}') {
        out.push(',');
    }
    out.push_str(body);
    RawValue::from_string(out).unwrap_or(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Payload {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn injects_into_objects_only() {
        let id = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
        let v: serde_json::Value =
            serde_json::from_str(inject_caller(Some(raw(r#"{"a":1}"#)), id).get()).unwrap();
        assert_eq!(v["a"], 1);
        assert_eq!(v["_caller_worker_id"], id);
        let v: serde_json::Value =
            serde_json::from_str(inject_caller(Some(raw(" { } ")), id).get()).unwrap();
        assert_eq!(v, serde_json::json!({"_caller_worker_id": id}));
        assert_eq!(inject_caller(Some(raw("[1,2]")), id).get(), "[1,2]");
        assert_eq!(inject_caller(Some(raw("\"s\"")), id).get(), "\"s\"");
        assert_eq!(inject_caller(None, id).get(), "null");
    }

    #[test]
    fn replaces_a_caller_id_spelled_with_escapes() {
        let id = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
        for spoof in [
            r#"{"\u005fcaller_worker_id":"me"}"#,
            r#"{"x":1,"_caller\u005Fworker\u005fid":"me"}"#,
            r#"{"_c\u0061ller_worker_id":"me","y":"\u00e9"}"#,
        ] {
            let out = inject_caller(Some(raw(spoof)), id);
            let v: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(out.get()).unwrap();
            assert_eq!(v["_caller_worker_id"], id, "{spoof} gave {}", out.get());
            // One key, whatever a parser does with duplicates.
            assert_eq!(
                out.get().matches("_caller_worker_id").count(),
                1,
                "{}",
                out.get()
            );
        }
    }

    #[test]
    fn replaces_a_spoofed_caller_id() {
        let id = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
        let out = inject_caller(Some(raw(r#"{"_caller_worker_id":"me","x":2}"#)), id);
        let v: serde_json::Value = serde_json::from_str(out.get()).unwrap();
        assert_eq!(v["_caller_worker_id"], id);
        assert_eq!(v["x"], 2);
    }
}
