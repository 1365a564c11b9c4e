//! What goes back to the HTTP client: a handler's return value (buffered
//! mode), the status and headers gathered from the response channel
//! (streamed mode), and the engine's own error envelopes — each exactly as
//! iii serialises them.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use crate::protocol::codes;

/// `{"error":{"code","message","error_id"?}}`; `error_id` only on 5xx.
pub(crate) fn envelope(status: StatusCode, code: &str, message: &str) -> Response {
    let mut error = json!({ "code": code, "message": message });
    if status.is_server_error() {
        error["error_id"] = Value::String(uuid::Uuid::new_v4().simple().to_string());
    }
    json_response(status, &json!({ "error": error }))
}

pub(crate) fn not_found() -> Response {
    envelope(StatusCode::NOT_FOUND, codes::HTTP_NOT_FOUND, "Not Found")
}

/// 422 with iii's extra top-level `skipped: true`.
pub(crate) fn condition_not_met() -> Response {
    json_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        &json!({
            "error": {"code": codes::CONDITION_NOT_MET, "message": "Request condition not met"},
            "skipped": true,
        }),
    )
}

/// A status with an empty body (405, the whole-request 504).
pub(crate) fn empty(status: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    let mut r = Response::new(Body::from(serde_json::to_vec(v).expect("JSON serializes")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Adds `name: value` to `headers` if both are valid on the wire (others are dropped).
pub(crate) fn add_header(headers: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(n), Ok(v)) = (
        HeaderName::from_bytes(name.trim().as_bytes()),
        HeaderValue::from_str(value.trim()),
    ) {
        headers.insert(n, v);
    }
}

/// iii's `HttpResponse::from_function_return`: `{status_code?, headers?, body?}`.
///
/// - `status_code`: a number, else 200;
/// - `headers`: an object of strings or a list of `"Name: value"` strings;
/// - `body`: `{}` when missing. With a user content-type a string body goes
///   as its bytes, `null` as nothing, anything else as JSON text; without
///   one the body goes as JSON with `content-type: application/json`.
pub(crate) fn from_return(v: &Value) -> Response {
    let status = v
        .get("status_code")
        .and_then(Value::as_u64)
        .and_then(|n| u16::try_from(n).ok())
        .and_then(|n| StatusCode::from_u16(n).ok())
        .unwrap_or(StatusCode::OK);
    let mut headers = HeaderMap::new();
    match v.get("headers") {
        Some(Value::Object(map)) => {
            for (k, val) in map {
                match val {
                    Value::String(s) => add_header(&mut headers, k, s),
                    Value::Number(n) => add_header(&mut headers, k, &n.to_string()),
                    Value::Bool(b) => add_header(&mut headers, k, &b.to_string()),
                    _ => {}
                }
            }
        }
        Some(Value::Array(lines)) => {
            for line in lines.iter().filter_map(Value::as_str) {
                if let Some((k, val)) = line.split_once(':') {
                    add_header(&mut headers, k, val);
                }
            }
        }
        _ => {}
    }
    let empty_object = Value::Object(Default::default());
    let body = v.get("body").unwrap_or(&empty_object);
    let bytes = if headers.contains_key(header::CONTENT_TYPE) {
        match body {
            Value::String(s) => s.clone().into_bytes(),
            Value::Null => Vec::new(),
            other => serde_json::to_vec(other).expect("JSON serializes"),
        }
    } else {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        serde_json::to_vec(body).expect("JSON serializes")
    };
    let mut r = Response::new(Body::from(bytes));
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

/// What the response channel's control messages gathered (streamed mode).
pub(crate) struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

impl Default for Head {
    fn default() -> Self {
        Head {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
        }
    }
}

impl Head {
    /// Applies one text item: `{"type":"set_status","status_code":N}` (100–599)
    /// or `{"type":"set_headers","headers":{..}}` (merged; non-strings
    /// dropped). Anything else is ignored.
    pub(crate) fn apply(&mut self, text: &[u8]) {
        let Ok(msg) = serde_json::from_slice::<Value>(text) else {
            return;
        };
        match msg.get("type").and_then(Value::as_str) {
            Some("set_status") => {
                if let Some(code) = msg
                    .get("status_code")
                    .and_then(Value::as_u64)
                    .filter(|c| (100..=599).contains(c))
                    .and_then(|c| StatusCode::from_u16(c as u16).ok())
                {
                    self.status = code;
                }
            }
            Some("set_headers") => {
                if let Some(map) = msg.get("headers").and_then(Value::as_object) {
                    for (k, v) in map {
                        if let Some(s) = v.as_str() {
                            add_header(&mut self.headers, k, s);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    pub(crate) fn into_response(self, body: Body) -> Response {
        let mut r = Response::new(body);
        *r.status_mut() = self.status;
        *r.headers_mut() = self.headers;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn parts(r: Response) -> (u16, Option<String>, Vec<u8>) {
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = r.into_body().collect().await.unwrap().to_bytes().to_vec();
        (status, ct, body)
    }

    #[tokio::test]
    async fn buffered_returns_serialise_as_iii_does() {
        let (s, ct, b) = parts(from_return(
            &json!({"status_code": 404, "body": {"error": "Not found"}}),
        ))
        .await;
        assert_eq!((s, ct.as_deref()), (404, Some("application/json")));
        assert_eq!(b, br#"{"error":"Not found"}"#);
        let (s, ct, b) = parts(from_return(
            &json!({"headers": {"Content-Type": "text/xml"}, "body": "<a>1</a>"}),
        ))
        .await;
        assert_eq!(
            (s, ct.as_deref(), b.as_slice()),
            (200, Some("text/xml"), &b"<a>1</a>"[..])
        );
        let (_, ct, b) = parts(from_return(
            &json!({"headers": ["X-A: 1", "Content-Type: text/plain"], "body": null}),
        ))
        .await;
        assert_eq!((ct.as_deref(), b.len()), (Some("text/plain"), 0));
        let (s, _, b) = parts(from_return(&json!({"status_code": "nope"}))).await;
        assert_eq!((s, b.as_slice()), (200, &b"{}"[..]));
    }

    #[test]
    fn control_messages_set_status_and_merge_headers() {
        let mut h = Head::default();
        h.apply(br#"{"type":"set_status","status_code":201}"#);
        h.apply(br#"{"type":"set_status","status_code":700}"#);
        h.apply(br#"{"type":"set_headers","headers":{"content-type":"text/event-stream","x":1}}"#);
        h.apply(b"not json");
        assert_eq!(h.status, 201);
        assert_eq!(h.headers.len(), 1);
    }
}
