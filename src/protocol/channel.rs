//! The wire shapes of binary channels (`docs/protocol.md` §6): the refs
//! workers pass around inside payloads, and the query of the channel socket.
//!
//! Field names are iii's, because the SDKs recognise a ref inside any payload
//! by exactly these three keys and swap it for a live reader or writer.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Which end of a channel a ref or a socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Read,
    Write,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Read => "read",
            Direction::Write => "write",
        }
    }

    /// The `dir` query value of the channel socket.
    pub fn parse(s: &str) -> Option<Direction> {
        match s {
            "read" => Some(Direction::Read),
            "write" => Some(Direction::Write),
            _ => None,
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{channel_id, access_key, direction}`: a bearer capability for one end.
/// Its `Debug` hides the key, so a ref can be logged by accident safely.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRef {
    pub channel_id: String,
    pub access_key: String,
    pub direction: Direction,
}

impl std::fmt::Debug for ChannelRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelRef")
            .field("channel_id", &self.channel_id)
            .field("access_key", &"<redacted>")
            .field("direction", &self.direction)
            .finish()
    }
}

/// What `engine::channels::create` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChannelPair {
    pub writer: ChannelRef,
    pub reader: ChannelRef,
}

/// The SDKs' test for "this object is a channel ref" (string `channel_id`,
/// string `access_key`, direction `read` or `write`), so the engine sees refs
/// exactly where an SDK would.
pub fn is_ref(v: &Value) -> bool {
    v.get("channel_id").is_some_and(Value::is_string)
        && v.get("access_key").is_some_and(Value::is_string)
        && matches!(
            v.get("direction").and_then(Value::as_str),
            Some("read" | "write")
        )
}

/// The channel ids of every ref anywhere inside `v`.
pub fn find_refs(v: &Value) -> Vec<String> {
    let mut found = Vec::new();
    walk(v, &mut found);
    found
}

fn walk(v: &Value, found: &mut Vec<String>) {
    if is_ref(v) {
        found.push(v["channel_id"].as_str().unwrap_or_default().to_owned());
        return;
    }
    match v {
        Value::Array(items) => items.iter().for_each(|i| walk(i, found)),
        Value::Object(map) => map.values().for_each(|i| walk(i, found)),
        _ => {}
    }
}

/// Channel ids of refs in a raw JSON payload. Payloads without the text
/// `access_key` (nearly all) are not parsed.
pub fn refs_in_payload(raw: &str) -> Vec<String> {
    if !raw.contains("\"access_key\"") {
        return Vec::new();
    }
    serde_json::from_str::<Value>(raw)
        .map(|v| find_refs(&v))
        .unwrap_or_default()
}

/// The path of a channel's socket under an engine URL (`ws://host:port`), as
/// the SDKs build it: trailing slash dropped, a query already on the engine URL
/// kept ahead of the channel's own.
pub fn socket_url(engine_url: &str, r: &ChannelRef) -> String {
    let (base, query) = engine_url.split_once('?').unwrap_or((engine_url, ""));
    let base = base.trim_end_matches('/');
    let prefix = if query.is_empty() {
        String::new()
    } else {
        format!("{query}&")
    };
    format!(
        "{base}/ws/channels/{}?{prefix}key={}&dir={}",
        r.channel_id,
        percent_encode(&r.access_key),
        r.direction
    )
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refs_are_found_where_the_sdks_find_them() {
        let r = json!({"channel_id":"c1","access_key":"k","direction":"read"});
        let payload = json!({"a":[1,{"nested":r}],"not":{"channel_id":"c2","access_key":"k","direction":"sideways"}});
        assert_eq!(find_refs(&payload), vec!["c1".to_owned()]);
        assert_eq!(refs_in_payload(&payload.to_string()), vec!["c1".to_owned()]);
        assert!(refs_in_payload(r#"{"x":1}"#).is_empty());
    }

    #[test]
    fn debug_hides_the_key_and_urls_match_the_sdks() {
        let r = ChannelRef {
            channel_id: "id".into(),
            access_key: "s e/cret".into(),
            direction: Direction::Write,
        };
        assert!(!format!("{r:?}").contains("cret"));
        assert_eq!(
            socket_url("ws://h:1/?token=t", &r),
            "ws://h:1/ws/channels/id?token=t&key=s%20e%2Fcret&dir=write"
        );
    }
}
