//! Engine addresses as people type them: `ws://host:port`, `host:port`, or an
//! `http(s)://` URL (the worker socket lives at `/` of the same listener).

/// The WebSocket URL for `input`, or why it is not one.
///
/// `127.0.0.1:49134` → `ws://127.0.0.1:49134`; `http://h:1` → `ws://h:1`;
/// `https://h` → `wss://h`; `ws://` and `wss://` URLs are kept as they are.
pub fn engine_url(input: &str) -> Result<String, String> {
    let input = input.trim();
    if input.is_empty() {
        return Err("the engine address is empty".into());
    }
    let url = match input.split_once("://") {
        None => format!("ws://{input}"),
        Some(("ws" | "wss", _)) => input.to_owned(),
        Some(("http", rest)) => format!("ws://{rest}"),
        Some(("https", rest)) => format!("wss://{rest}"),
        Some((scheme, _)) => {
            return Err(format!(
                "unsupported scheme {scheme:?} in {input:?}; use ws://host:port"
            ));
        }
    };
    let host = url
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or(""))
        .unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Err(format!("no host in {input:?}; use ws://host:port"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_websocket_urls() {
        assert_eq!(
            engine_url("ws://127.0.0.1:49134").unwrap(),
            "ws://127.0.0.1:49134"
        );
        assert_eq!(
            engine_url("localhost:49134").unwrap(),
            "ws://localhost:49134"
        );
        assert_eq!(engine_url(" http://h:1/ ").unwrap(), "ws://h:1/");
        assert_eq!(engine_url("https://h").unwrap(), "wss://h");
        assert_eq!(engine_url("wss://h:2").unwrap(), "wss://h:2");
    }

    #[test]
    fn nonsense_is_refused_with_a_reason() {
        assert!(engine_url("").unwrap_err().contains("empty"));
        assert!(engine_url("ftp://h").unwrap_err().contains("ftp"));
        assert!(engine_url("ws://").unwrap_err().contains("no host"));
        assert!(engine_url(":49134").unwrap_err().contains("no host"));
    }
}
