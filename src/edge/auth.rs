//! Who may open a worker socket, decided at the edge before the mesh sees
//! the connection: static Bearer tokens (stored hashed), an RBAC listener's
//! auth function, or a trusted listener where everyone is the anonymous
//! operator.
//!
//! | listener | without `[auth]` tokens | with tokens |
//! |---|---|---|
//! | plain (`listen`, `[[listeners]]` without `rbac`) | anonymous operator | a valid `Authorization: Bearer` token (401 otherwise); its role |
//! | RBAC (`[listeners.rbac]`) | the auth function's session (iii's semantics) | the same: the auth function sees the `authorization` header |
//!
//! A browser cannot set headers on a WebSocket, so a page (the dashboard at
//! `/ui`) offers its token as a subprotocol instead: `Sec-WebSocket-Protocol:
//! qmesh, qmesh.bearer.<base64url of the token>`. It is read exactly like an
//! `Authorization: Bearer` header; the engine answers with the subprotocol
//! `qmesh` only ([`SUBPROTOCOL`]), never echoing the token. Not a query
//! parameter: URLs end up in logs and browser history.

use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::mesh::Mesh;
use crate::mesh::access::{Access, AuthResult, ListenerRules, RbacSession, Role};
use crate::mesh::rbac::{self, AuthError};

/// `[auth]`: the tokens worker connections present.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Tokens written in the config file itself.
    pub tokens: Vec<TokenConfig>,
    /// A TOML file of `[[tokens]]` entries, read at start (keep it out of
    /// version control; `qmesh token new` prints an entry).
    pub tokens_file: Option<PathBuf>,
}

/// One token, by the SHA-256 of its secret: the config never holds a
/// secret an attacker could reuse.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it (logs, ownership of function ids).
    pub name: String,
    pub role: Role,
    /// Hex SHA-256 of the token.
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read tokens file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid tokens file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("token {name:?}: sha256 must be 64 hex digits")]
    BadHash { name: String },
    #[error("token {name:?} is listed twice (same name or same hash)")]
    Duplicate { name: String },
}

/// The accepted tokens, by hash.
#[derive(Debug, Default)]
pub struct TokenTable {
    by_hash: HashMap<[u8; 32], (String, Role)>,
}

impl TokenTable {
    /// Reads `[auth]` (and its tokens file). `None` when no token is
    /// configured: the engine's worker listeners are then trusted.
    pub fn load(config: &AuthConfig) -> Result<Option<Self>, TokenError> {
        let mut tokens = config.tokens.clone();
        if let Some(path) = &config.tokens_file {
            tokens.extend(read_tokens_file(path)?);
        }
        if tokens.is_empty() {
            return Ok(None);
        }
        let mut table = TokenTable::default();
        let mut names = std::collections::HashSet::new();
        for t in tokens {
            let hash = parse_hash(&t.sha256).ok_or_else(|| TokenError::BadHash {
                name: t.name.clone(),
            })?;
            if !names.insert(t.name.clone()) || table.by_hash.contains_key(&hash) {
                return Err(TokenError::Duplicate { name: t.name });
            }
            table.by_hash.insert(hash, (t.name, t.role));
        }
        Ok(Some(table))
    }

    /// The holder of `token`, if it is one of ours.
    fn holder(&self, token: &str) -> Option<&(String, Role)> {
        self.by_hash.get(&hash_token(token))
    }
}

fn read_tokens_file(path: &Path) -> Result<Vec<TokenConfig>, TokenError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        tokens: Vec<TokenConfig>,
    }
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: path.to_owned(),
        source,
    })?;
    let file: File = toml::from_str(&text).map_err(|source| TokenError::Parse {
        path: path.to_owned(),
        source,
    })?;
    Ok(file.tokens)
}

/// SHA-256 of a token, as stored in the config.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub fn hash_hex(token: &str) -> String {
    hash_token(token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The subprotocol the engine selects when a client offers it (browsers
/// fail a socket whose offered subprotocols all went unanswered).
pub(crate) const SUBPROTOCOL: &str = "qmesh";

/// The prefix of the subprotocol that carries a token, base64url-encoded
/// (a subprotocol is an HTTP token: no spaces, no `=`, `/`, `+`).
const BEARER_SUBPROTOCOL: &str = "qmesh.bearer.";

/// How one worker listener admits connections.
pub(crate) struct ListenerPolicy {
    pub rules: Arc<ListenerRules>,
    /// Set when `[auth]` has tokens and the listener is not an RBAC one.
    pub tokens: Option<Arc<TokenTable>>,
}

/// What the upgrade request showed.
pub(crate) struct Upgrade<'a> {
    pub headers: &'a HeaderMap,
    pub query: &'a [(String, String)],
    pub remote: SocketAddr,
}

/// Why an upgrade is refused before it happens.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    #[error("a valid Authorization: Bearer token is required on this listener")]
    NoToken,
}

impl ListenerPolicy {
    /// The decision that can be made before the upgrade: tokens. An RBAC
    /// listener answers `None` here and decides in [`Self::admit_session`].
    pub(crate) fn admit_request(&self, up: &Upgrade<'_>) -> Result<Option<Access>, Refused> {
        if self.rules.rbac.is_some() {
            return Ok(None);
        }
        let Some(tokens) = &self.tokens else {
            return Ok(Some(Access::trusted(self.rules.clone())));
        };
        let shown = bearer(up.headers)
            .map(str::to_owned)
            .or_else(|| subprotocol_bearer(up.headers));
        let (name, role) = shown
            .and_then(|t| tokens.holder(&t))
            .ok_or(Refused::NoToken)?;
        Ok(Some(Access {
            principal: format!("token:{name}"),
            role: *role,
            listener: self.rules.clone(),
            rbac: None,
        }))
    }

    /// Whether a request may read `/metrics`: any token holder, or anyone
    /// on a listener without tokens.
    pub(crate) fn may_read_metrics(&self, headers: &HeaderMap) -> bool {
        match &self.tokens {
            None => true,
            Some(tokens) => bearer(headers).is_some_and(|t| tokens.holder(t).is_some()),
        }
    }

    /// An RBAC listener's decision, once the socket is open (iii accepts
    /// the upgrade first): the auth function's session, or anonymous
    /// without one.
    pub(crate) async fn admit_session(
        &self,
        mesh: &Mesh,
        up: &Upgrade<'_>,
    ) -> Result<Access, AuthError> {
        let config = self
            .rules
            .rbac
            .clone()
            .expect("admit_session is for RBAC listeners");
        let grant = match &config.auth_function_id {
            Some(auth) => rbac::authenticate(mesh, auth, &auth_input(up)).await?,
            None => AuthResult::anonymous(),
        };
        // Sessions granted the same context are one principal: they may
        // share function ids with each other, not with anyone else.
        let principal = format!("{}:{}", self.rules.name, grant.context);
        Ok(Access {
            principal,
            role: Role::Worker,
            listener: self.rules.clone(),
            rbac: Some(RbacSession { config, grant }),
        })
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The token a browser offered as `qmesh.bearer.<base64url>` in
/// `Sec-WebSocket-Protocol` (padding optional), if any.
fn subprotocol_bearer(headers: &HeaderMap) -> Option<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(BEARER_SUBPROTOCOL))
        .and_then(|b64| URL_SAFE_NO_PAD.decode(b64.trim_end_matches('=')).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|t| !t.is_empty())
}

/// iii's `AuthInput`: every header (lower-case names; values that are not
/// UTF-8 are dropped), the query parameters as lists, the peer's IP.
fn auth_input(up: &Upgrade<'_>) -> Value {
    let mut headers = Map::new();
    for (name, value) in up.headers {
        if let Ok(v) = value.to_str() {
            headers.insert(name.as_str().to_owned(), Value::String(v.to_owned()));
        }
    }
    let mut query: Map<String, Value> = Map::new();
    for (k, v) in up.query {
        let entry = query
            .entry(k.clone())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(values) = entry {
            values.push(Value::String(v.clone()));
        }
    }
    json!({
        "headers": headers,
        "query_params": query,
        "ip_address": up.remote.ip().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, &str, Role)]) -> TokenTable {
        let config = AuthConfig {
            tokens: entries
                .iter()
                .map(|(name, secret, role)| TokenConfig {
                    name: name.to_string(),
                    role: *role,
                    sha256: hash_hex(secret),
                })
                .collect(),
            tokens_file: None,
        };
        TokenTable::load(&config).unwrap().unwrap()
    }

    #[test]
    fn tokens_are_found_by_hash() {
        let t = table(&[("billing", "s3cret", Role::Worker)]);
        assert_eq!(t.holder("s3cret").map(|h| h.0.as_str()), Some("billing"));
        assert!(t.holder("s3cret ").is_none());
        assert!(t.holder("").is_none());
    }

    #[test]
    fn a_token_offered_as_a_subprotocol_is_read() {
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("s3cret/+=");
        let mut headers = HeaderMap::new();
        let offered = format!("qmesh, qmesh.bearer.{encoded}");
        headers.insert("sec-websocket-protocol", offered.parse().unwrap());
        assert_eq!(subprotocol_bearer(&headers).as_deref(), Some("s3cret/+="));
        let mut other = HeaderMap::new();
        other.insert("sec-websocket-protocol", "qmesh, chat".parse().unwrap());
        assert_eq!(subprotocol_bearer(&other), None);
        let mut garbage = HeaderMap::new();
        garbage.insert(
            "sec-websocket-protocol",
            "qmesh.bearer.%%%".parse().unwrap(),
        );
        assert_eq!(subprotocol_bearer(&garbage), None);
    }

    #[test]
    fn bad_tables_are_refused() {
        let bad = AuthConfig {
            tokens: vec![TokenConfig {
                name: "x".into(),
                role: Role::Worker,
                sha256: "abc".into(),
            }],
            tokens_file: None,
        };
        assert!(matches!(
            TokenTable::load(&bad),
            Err(TokenError::BadHash { .. })
        ));
        let twice = AuthConfig {
            tokens: vec![
                TokenConfig {
                    name: "a".into(),
                    role: Role::Worker,
                    sha256: hash_hex("t"),
                },
                TokenConfig {
                    name: "b".into(),
                    role: Role::Operator,
                    sha256: hash_hex("t"),
                },
            ],
            tokens_file: None,
        };
        assert!(matches!(
            TokenTable::load(&twice),
            Err(TokenError::Duplicate { .. })
        ));
        assert!(TokenTable::load(&AuthConfig::default()).unwrap().is_none());
    }
}
