//! The HTTP/1.1 upgrade to a WebSocket (RFC 6455 §4), both sides, so that
//! the connection is handed to [`FrameReader`](super::FrameReader) and
//! [`FrameWriter`](super::FrameWriter) from its first byte.

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::header::{self, HeaderMap, HeaderName};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, BytesMut};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::future::Future;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// The connection after a server's upgrade.
pub type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// A valid WebSocket upgrade request, not answered yet (an axum extractor).
/// Checks and refusals are axum's own for `WebSocketUpgrade`, so a client
/// sees the same statuses as on the engine's other sockets.
pub struct ServerUpgrade {
    on_upgrade: OnUpgrade,
    accept: HeaderValue,
}

impl<S: Send + Sync> FromRequestParts<S> for ServerUpgrade {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        let refuse = |status, why: &'static str| (status, why).into_response();
        if parts.method != Method::GET {
            return Err(refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "Request method must be `GET`",
            ));
        }
        let h = &parts.headers;
        if !has_token(h, header::CONNECTION, "upgrade") {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "Connection header did not include 'upgrade'",
            ));
        }
        if !has_token(h, header::UPGRADE, "websocket") {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "`Upgrade` header did not include 'websocket'",
            ));
        }
        let Some(key) = h.get(header::SEC_WEBSOCKET_KEY) else {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Key` header missing",
            ));
        };
        if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Version` header did not include '13'",
            ));
        }
        let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .expect("base64 is a valid header value");
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(refuse(
                StatusCode::UPGRADE_REQUIRED,
                "WebSocket request couldn't be upgraded since no upgrade state was present",
            ));
        };
        Ok(ServerUpgrade { on_upgrade, accept })
    }
}

impl ServerUpgrade {
    /// Answers 101 and runs `run` on the connection once hyper hands it
    /// over. If the upgrade fails, `run` is dropped unrun (whatever it holds,
    /// such as a claimed channel end, is released).
    pub fn on_upgrade<F, Fut>(self, run: F) -> Response
    where
        F: FnOnce(Upgraded) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => run(TokioIo::new(upgraded)).await,
                Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
            }
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = response.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::SEC_WEBSOCKET_ACCEPT, self.accept);
        response
    }
}

/// Whether a comma-separated header holds `token` (any case).
fn has_token(h: &HeaderMap, name: HeaderName, token: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Largest response head a client reads, and largest refusal body it keeps.
const MAX_HEAD: usize = 16 << 10;
const MAX_BODY: usize = 64 << 10;

/// Why a client's upgrade failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server answered with a status other than 101.
    #[error("HTTP {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("{0}")]
    Url(&'static str),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("bad handshake answer: {0}")]
    Handshake(&'static str),
}

/// A client's upgraded connection, and bytes that came after the 101.
pub struct Connected {
    pub stream: TcpStream,
    pub buffered: BytesMut,
}

/// Opens a WebSocket to a `ws://` URL as a client.
pub async fn connect(url: &str) -> Result<Connected, ConnectError> {
    let uri: Uri = url.parse().map_err(|_| ConnectError::Url("not a URL"))?;
    if uri.scheme_str() != Some("ws") {
        return Err(ConnectError::Url("only ws:// URLs are supported"));
    }
    let (Some(host), Some(authority)) = (uri.host(), uri.authority()) else {
        return Err(ConnectError::Url("no host in the URL"));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let mut stream = TcpStream::connect((host, uri.port_u16().unwrap_or(80))).await?;
    stream.set_nodelay(true)?;
    let key = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        rand::random::<[u8; 16]>(),
    );
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = BytesMut::with_capacity(4096);
    let head = read_head(&mut stream, &mut buf).await?;
    if head.status != 101 {
        let body = read_body(&mut stream, buf, head.content_length).await?;
        return Err(ConnectError::Refused {
            status: head.status,
            body,
        });
    }
    if !head.upgrade_websocket {
        return Err(ConnectError::Handshake("no `Upgrade: websocket`"));
    }
    if head.accept.as_deref() != Some(derive_accept_key(key.as_bytes()).as_str()) {
        return Err(ConnectError::Handshake("wrong Sec-WebSocket-Accept"));
    }
    Ok(Connected {
        stream,
        buffered: buf,
    })
}

/// What a client needs from the response head.
struct Head {
    status: u16,
    upgrade_websocket: bool,
    accept: Option<String>,
    content_length: Option<usize>,
}

/// Reads the response head; leaves in `buf` whatever followed it.
async fn read_head(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<Head, ConnectError> {
    loop {
        if stream.read_buf(buf).await? == 0 {
            return Err(ConnectError::Handshake(
                "the connection closed during the handshake",
            ));
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let parsed = response
            .parse(buf)
            .map_err(|_| ConnectError::Handshake("malformed HTTP response"))?;
        let httparse::Status::Complete(len) = parsed else {
            if buf.len() > MAX_HEAD {
                return Err(ConnectError::Handshake("response head too large"));
            }
            continue;
        };
        let find = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(str::trim)
        };
        let head = Head {
            status: response.code.unwrap_or(0),
            upgrade_websocket: find("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
            accept: find("sec-websocket-accept").map(str::to_owned),
            content_length: find("content-length").and_then(|v| v.parse().ok()),
        };
        buf.advance(len);
        return Ok(head);
    }
}

/// A refusal's body (its reason), as much as `MAX_BODY` of it.
async fn read_body(
    stream: &mut TcpStream,
    mut buf: BytesMut,
    length: Option<usize>,
) -> Result<String, ConnectError> {
    let want = length.unwrap_or(MAX_BODY).min(MAX_BODY);
    while buf.len() < want {
        if stream.read_buf(&mut buf).await? == 0 {
            break;
        }
    }
    buf.truncate(want);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
