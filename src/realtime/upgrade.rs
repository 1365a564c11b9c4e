//! The upgrade of a client socket, everything decided before it: route match
//! (404), `allowed_origins` (403), a one-use ticket or the route's auth
//! function (401/403, fail closed: no socket is ever opened on a refusal),
//! and the opening data (params and query, secrets removed; 422 on a clash).
//! Secret query parameters never reach logs or handlers; only the auth
//! function sees them.

use axum::Json;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::net::SocketAddr;

use super::Realtime;
use super::routes::{AuthMode, Matched};
use super::{Client, ClientInit, connection};
use crate::mesh::Mesh;
use crate::protocol::codes::{self, upgrade};

/// Query parameters that carry credentials.
pub const SECRET_PARAMS: &[&str] = &["token", "ticket", "key", "access_key"];
/// Small socket buffers keep idle clients cheap (tungstenite's default is 128 KiB).
const SOCKET_BUFFER: usize = 4 << 10;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("no realtime route at this path")]
    NotFound,
    #[error("this route has no handlers right now; retry shortly")]
    Departed,
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error("too many client connections")]
    Full,
    #[error("the engine's memory budget is spent; retry later")]
    Overloaded,
    #[error("origin {0:?} is not allowed on this route")]
    Origin(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("authentication is unavailable: {0}")]
    AuthUnavailable(String),
    #[error("{0}")]
    Conflict(String),
    #[error("invalid query string: {0}")]
    BadQuery(String),
}

impl UpgradeError {
    fn status(&self) -> (StatusCode, &'static str) {
        match self {
            UpgradeError::NotFound => (StatusCode::NOT_FOUND, codes::ROUTE_NOT_FOUND),
            UpgradeError::Departed => (StatusCode::SERVICE_UNAVAILABLE, upgrade::ROUTE_UNAVAILABLE),
            UpgradeError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, upgrade::SHUTTING_DOWN),
            UpgradeError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, codes::ENGINE_OVERLOADED),
            UpgradeError::Full => (
                StatusCode::SERVICE_UNAVAILABLE,
                upgrade::TOO_MANY_CONNECTIONS,
            ),
            UpgradeError::Origin(_) => (StatusCode::FORBIDDEN, upgrade::ORIGIN_NOT_ALLOWED),
            UpgradeError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED),
            UpgradeError::Forbidden(_) => (StatusCode::FORBIDDEN, upgrade::FORBIDDEN),
            UpgradeError::AuthUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, upgrade::AUTH_UNAVAILABLE)
            }
            UpgradeError::Conflict(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                upgrade::OPENING_DATA_CONFLICT,
            ),
            UpgradeError::BadQuery(_) => (StatusCode::BAD_REQUEST, upgrade::BAD_QUERY),
        }
    }
}

impl IntoResponse for UpgradeError {
    fn into_response(self) -> Response {
        let (status, code) = self.status();
        let mut resp = (
            status,
            Json(json!({ "error": { "code": code, "message": self.to_string() } })),
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        resp
    }
}

/// What the upgrade handler reaches: the mesh (auth functions, handlers) and the hub.
#[derive(Clone)]
pub(crate) struct Upgrades {
    pub mesh: Mesh,
    pub hub: Realtime,
}

/// The listener's fallback: any path no other route claimed may be a realtime route.
pub(crate) async fn handle(
    State(app): State<Upgrades>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let (mut parts, _body) = req.into_parts();
    let path = parts.uri.path();
    let known = {
        let rt = app.hub.routes();
        match rt.find(path) {
            Some(_) => Ok(()),
            None if rt.departed(path) => Err(UpgradeError::Departed),
            None => Err(UpgradeError::NotFound),
        }
    };
    if let Err(e) = known {
        return e.into_response();
    }
    // Not a WebSocket request: refused before anything (the auth function) runs.
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &app).await {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    match prepare(&app, &parts, addr).await {
        Ok(init) => upgrade(ws, app, init),
        Err(e) => {
            let (status, _) = e.status();
            tracing::info!(path = %parts.uri.path(), remote = %addr, status = status.as_u16(), error = %e, "realtime upgrade refused");
            e.into_response()
        }
    }
}

fn upgrade(ws: WebSocketUpgrade, app: Upgrades, init: ClientInit) -> Response {
    let Upgrades { mesh, hub } = app;
    let max = init.limits.max_message_bytes;
    let (ch, outbox) = Client::new(init);
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(SOCKET_BUFFER)
        .write_buffer_size(SOCKET_BUFFER)
        .on_upgrade(move |socket| connection::serve(socket, mesh, hub, ch, outbox))
}

/// Everything but the upgrade itself; any error here means no socket.
async fn prepare(
    app: &Upgrades,
    parts: &Parts,
    addr: SocketAddr,
) -> Result<ClientInit, UpgradeError> {
    let (mesh, hub) = (&app.mesh, &app.hub);
    let path = parts.uri.path();
    let m: Matched = hub.routes().find(path).ok_or(UpgradeError::NotFound)?;
    if hub.is_shutting_down() || mesh.is_draining() {
        return Err(UpgradeError::ShuttingDown);
    }
    if hub.open_count() >= hub.config().max_connections {
        return Err(UpgradeError::Full);
    }
    if hub.budget().is_spent() {
        return Err(UpgradeError::Overloaded);
    }
    check_origin(&m, parts)?;
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
        .map_err(|e| UpgradeError::BadQuery(e.body_text()))?;
    let auth = authenticate(app, &m, parts, &pairs, addr).await?;
    let limits = m.options.resolve(hub.config());
    if limits.auth == AuthMode::Required && auth.is_none() {
        return Err(UpgradeError::Unauthorized(
            "this route requires authentication".into(),
        ));
    }
    let query = public_query(&pairs)?;
    let mut opening_data = m.params.clone();
    for (k, v) in &query {
        match opening_data.get(k) {
            Some(old) if old != v => {
                let msg = format!(
                    "{k:?} is both a path parameter and a query parameter, with different values"
                );
                return Err(UpgradeError::Conflict(msg));
            }
            _ => {
                opening_data.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(ClientInit {
        route: m.pattern,
        path: path.to_owned(),
        params: m.params,
        query,
        opening_data,
        auth,
        limits,
        budget: hub.budget().clone(),
    })
}

/// Browsers always send `Origin`; a client without one is not a browser and
/// cannot be the victim of cross-site socket hijacking.
fn check_origin(m: &Matched, parts: &Parts) -> Result<(), UpgradeError> {
    let Some(allowed) = m.options.allowed_origins.as_ref().filter(|a| !a.is_empty()) else {
        return Ok(());
    };
    let Some(origin) = parts.headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        Ok(())
    } else {
        Err(UpgradeError::Origin(origin.to_owned()))
    }
}

/// The query without secrets; a key given twice with different values is a clash.
fn public_query(pairs: &[(String, String)]) -> Result<Map<String, Value>, UpgradeError> {
    let mut out = Map::new();
    for (k, v) in pairs
        .iter()
        .filter(|(k, _)| !SECRET_PARAMS.contains(&k.as_str()))
    {
        match out.get(k) {
            Some(old) if old != v => {
                return Err(UpgradeError::Conflict(format!(
                    "query parameter {k:?} is given twice with different values"
                )));
            }
            _ => {
                out.insert(k.clone(), Value::String(v.clone()));
            }
        }
    }
    Ok(out)
}

/// A ticket (used up whatever the outcome) or the auth function decides.
/// `Ok(None)` is an anonymous client on a route that allows one.
async fn authenticate(
    app: &Upgrades,
    m: &Matched,
    parts: &Parts,
    pairs: &[(String, String)],
    addr: SocketAddr,
) -> Result<Option<Value>, UpgradeError> {
    let (mesh, hub) = (&app.mesh, &app.hub);
    if let Some((_, ticket)) = pairs.iter().find(|(k, _)| k == "ticket") {
        return match hub.take_ticket(ticket, &m.pattern) {
            Some(ctx) => Ok(Some(ctx)),
            None => Err(UpgradeError::Unauthorized(
                "invalid, expired or already used ticket".into(),
            )),
        };
    }
    let Some(auth_fn) = m.options.auth_function_id.as_deref() else {
        return Ok(None);
    };
    let headers: Map<String, Value> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into(),
            )
        })
        .collect();
    let query: Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    let input = json!({
        "headers": headers,
        "path": parts.uri.path(),
        "params": m.params,
        "query": query,
        "remote_addr": addr.to_string(),
    });
    let timeout = hub.config().auth_timeout;
    let outcome = mesh
        .call(
            &m.auth_namespace,
            auth_fn,
            crate::protocol::to_payload(&input),
            timeout,
        )
        .await;
    match outcome {
        Ok(raw) => {
            let v: Value = raw
                .and_then(|r| serde_json::from_str(r.get()).ok())
                .unwrap_or(Value::Null);
            Ok(v.get("context").filter(|c| !c.is_null()).cloned())
        }
        Err(e) if e.code.eq_ignore_ascii_case(upgrade::FORBIDDEN) => {
            Err(UpgradeError::Forbidden(e.message))
        }
        Err(e) if e.code == codes::FUNCTION_NOT_FOUND || e.code == codes::INVOCATION_TIMEOUT => {
            tracing::warn!(function_id = auth_fn, error = %e, "realtime auth function unavailable; refusing the upgrade");
            Err(UpgradeError::AuthUnavailable(format!(
                "{auth_fn} did not answer"
            )))
        }
        Err(e) => Err(UpgradeError::Unauthorized(e.message)),
    }
}
