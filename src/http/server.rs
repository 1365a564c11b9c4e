//! The trigger-route listener and the life of one request (iii's
//! `dynamic_handler`, in its order):
//!
//! 1. match the route (404 envelope; 405 empty when only the method differs);
//! 2. global middleware (`[http] middleware`), before any channel exists;
//! 3. two channels: `request_body` (the engine writes, the handler reads)
//!    and `response` (the handler writes, the engine reads);
//! 4. the body: with a JSON content-type it is buffered, parsed into `body`
//!    (`null` when it is not JSON) and written to `request_body` as is;
//!    otherwise it is forwarded frame by frame as it arrives and `body` is
//!    `null`. Either way the handler can read the exact bytes;
//! 5. the payload; 6. the condition function (only `false` skips: 422);
//! 7. the route's middleware, in order; 8. the handler call, raced against
//!    the response channel, channel items first: a non-null return is the
//!    buffered response; text items are `set_status` / `set_headers`; the
//!    first binary item starts a streamed (chunked) body.
//!
//! The whole pipeline runs under `http.default_timeout` (504, empty body, as
//! iii's `TimeoutLayer`); a handler call still in flight then is failed so
//! the mesh forgets it. A streamed body, once started, is not bounded by it.

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::response::{self, Head};
use super::routes::{Lookup, Matched, Route, Routes};
use super::{GlobalMiddleware, HttpConfig};
use crate::channels::pipe::{Data, PipeRx, PipeTx};
use crate::channels::{Channel, Channels, ClaimedEnd, EndState};
use crate::mesh::Mesh;
use crate::mesh::router::CallExtras;
use crate::protocol::channel::{ChannelRef, Direction};
use crate::protocol::{ErrorBody, codes, to_payload};

/// Frames each request channel holds (iii's buffer of 64 items).
const CHANNEL_FRAMES: usize = 64;

/// What every request handler shares.
pub(crate) struct Server {
    pub mesh: Mesh,
    pub channels: Channels,
    pub routes: Routes,
    pub config: HttpConfig,
    /// Global middleware in ascending priority.
    pub middleware: Vec<GlobalMiddleware>,
    pub slots: Arc<Semaphore>,
}

/// The router: one handler for every path, CORS around it.
pub(crate) fn app(server: Arc<Server>) -> axum::Router {
    use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};
    let cors = match &server.config.cors {
        None => CorsLayer::permissive(),
        Some(c) => {
            let any = |l: &[String]| l.is_empty() || l.iter().any(|v| v == "*");
            let origins = if any(&c.allowed_origins) {
                AllowOrigin::any()
            } else {
                AllowOrigin::list(c.allowed_origins.iter().filter_map(|o| o.parse().ok()))
            };
            let methods = if any(&c.allowed_methods) {
                AllowMethods::any()
            } else {
                AllowMethods::list(c.allowed_methods.iter().filter_map(|m| m.parse().ok()))
            };
            CorsLayer::new()
                .allow_origin(origins)
                .allow_methods(methods)
                .allow_headers(AllowHeaders::any())
        }
    };
    axum::Router::new()
        .fallback(handle)
        .with_state(server)
        .layer(cors)
}

async fn handle(State(s): State<Arc<Server>>, req: Request) -> Response {
    let Ok(_slot) = s.slots.clone().acquire_owned().await else {
        return response::empty(StatusCode::SERVICE_UNAVAILABLE);
    };
    match tokio::time::timeout(s.config.default_timeout, s.pipeline(req)).await {
        Ok(r) => r,
        Err(_) => response::empty(StatusCode::GATEWAY_TIMEOUT),
    }
}

/// What middleware and the handler learn of the request.
struct RequestView {
    method: String,
    path_params: Map<String, Value>,
    query_params: HashMap<String, String>,
    headers: Headers,
}

impl RequestView {
    /// The request's W3C `traceparent` and `baggage`: the handler's call
    /// continues the client's trace.
    fn trace_context(&self) -> (Option<String>, Option<String>) {
        let header = |name| {
            let value = self.headers.0.get(name)?.to_str().ok()?;
            Some(value.to_owned())
        };
        (header("traceparent"), header("baggage"))
    }

    fn middleware_input(&self) -> Value {
        json!({
            "phase": "preHandler",
            "request": {
                "path_params": self.path_params,
                "query_params": self.query_params,
                "headers": self.headers,
                "method": self.method,
            },
            "context": {},
        })
    }
}

/// The request headers as iii shows them: lower-case names (hyper's already
/// are), a repeated header's last value, "" for a value that is not UTF-8.
/// Serialised straight from hyper's map, without a copy.
struct Headers(HeaderMap);

impl serde::Serialize for Headers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.keys_len()))?;
        for name in self.0.keys() {
            let last = self.0.get_all(name).iter().next_back();
            let value = last.and_then(|v| v.to_str().ok()).unwrap_or("");
            map.serialize_entry(name.as_str(), value)?;
        }
        map.end()
    }
}

/// The handler's payload (iii's shape), serialised once from borrowed parts.
/// The condition function gets it without the two channel refs.
#[derive(serde::Serialize)]
struct HandlerPayload<'a> {
    query_params: &'a HashMap<String, String>,
    path_params: &'a Map<String, Value>,
    headers: &'a Headers,
    path: &'a str,
    method: &'a str,
    /// The JSON body as it arrived (already checked to be JSON), or null.
    body: Option<&'a serde_json::value::RawValue>,
    trigger: TriggerInfo<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_body: Option<&'a ChannelRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<&'a ChannelRef>,
}

#[derive(serde::Serialize)]
struct TriggerInfo<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    path: &'a str,
    method: &'a str,
}

fn is_json(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("application/json"))
}

fn too_large(max: usize) -> Response {
    response::envelope(
        StatusCode::PAYLOAD_TOO_LARGE,
        codes::HTTP_PAYLOAD_TOO_LARGE,
        &format!("request body over http.max_body_bytes ({max} bytes)"),
    )
}

fn failed(e: &ErrorBody) -> Response {
    response::envelope(StatusCode::INTERNAL_SERVER_ERROR, &e.code, &e.message)
}

impl Server {
    async fn pipeline(self: &Arc<Self>, req: Request) -> Response {
        let (parts, body) = req.into_parts();
        let Matched { route, path_params } =
            match self.routes.lookup(parts.method.as_str(), parts.uri.path()) {
                Lookup::Found(m) => m,
                Lookup::MethodNotAllowed => return response::empty(StatusCode::METHOD_NOT_ALLOWED),
                Lookup::NotFound => return response::not_found(),
            };
        let max = self.config.max_body_bytes;
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return too_large(max);
        }
        let view = RequestView {
            method: parts.method.as_str().to_owned(),
            path_params,
            query_params: Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
                .map(|q| q.0)
                .unwrap_or_default(),
            headers: Headers(parts.headers),
        };

        for mw in &self.middleware {
            match self
                .middleware(&mw.function_id, &route.namespace, &view)
                .await
            {
                Ok(None) => {}
                Ok(Some(r)) | Err(r) => return r,
            }
        }

        let Some((req_chan, req_tx, req_ref)) = self.engine_end(Direction::Write) else {
            return failed(&too_many_channels());
        };
        let req_chan = Released::new(&self.channels, req_chan, Direction::Write);
        let Some((resp_chan, resp_end, resp_ref)) = self.engine_end(Direction::Read) else {
            return failed(&too_many_channels());
        };
        let mut resp = ResponseEnd {
            channels: self.channels.clone(),
            channel: resp_chan,
            rx: Some(resp_end.rx()),
            state: EndState::Aborted,
            moved: false,
        };

        let body = if is_json(&view.headers.0) {
            let bytes = match http_body_util::Limited::new(body, max).collect().await {
                Ok(c) => c.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(max),
                Err(e) => {
                    tracing::debug!(error = %e, "http request body lost");
                    return response::empty(StatusCode::BAD_REQUEST);
                }
            };
            let chunk = self.channels.config().max_buffer_bytes;
            tokio::spawn(write_all(
                self.channels.clone(),
                req_chan.channel.clone(),
                req_tx,
                bytes.clone(),
                chunk,
            ));
            Some(bytes)
        } else {
            tokio::spawn(forward(
                self.channels.clone(),
                req_chan.channel.clone(),
                req_tx,
                body,
                max,
                self.config.default_timeout,
            ));
            None
        };
        // Embedded as it arrived when it is JSON (so `body` is the parsed
        // value for the handler); anything else, or nothing, is null.
        let body = body
            .as_deref()
            .and_then(|b| serde_json::from_slice::<&serde_json::value::RawValue>(b).ok());

        let mut payload = HandlerPayload {
            query_params: &view.query_params,
            path_params: &view.path_params,
            headers: &view.headers,
            path: &route.api_path,
            method: &view.method,
            body,
            trigger: TriggerInfo {
                kind: super::TRIGGER_TYPE,
                path: &route.api_path,
                method: &route.method,
            },
            request_body: None,
            response: None,
        };
        if let Some(condition) = &route.condition_function_id {
            let data = to_payload(&payload);
            let timeout = self.config.default_timeout;
            match self
                .mesh
                .call(&route.namespace, condition, data, timeout)
                .await
            {
                Ok(Some(v)) if v.get().trim() == "false" => return response::condition_not_met(),
                Ok(_) => {}
                Err(e) => return failed(&e),
            }
        }
        for mw in &route.middleware_function_ids {
            match self.middleware(mw, &route.namespace, &view).await {
                Ok(None) => {}
                Ok(Some(r)) | Err(r) => return r,
            }
        }
        payload.request_body = Some(&req_ref);
        payload.response = Some(&resp_ref);
        let trace = view.trace_context();
        let r = self
            .invoke(&route, to_payload(&payload), &mut resp, trace)
            .await;
        drop(req_chan);
        r
    }

    /// Runs one middleware: `Ok(None)` continue, `Ok(Some)` its response,
    /// `Err` an error envelope.
    async fn middleware(
        &self,
        function_id: &str,
        namespace: &str,
        view: &RequestView,
    ) -> Result<Option<Response>, Response> {
        let input = to_payload(&view.middleware_input());
        let timeout = self.config.default_timeout;
        match self.mesh.call(namespace, function_id, input, timeout).await {
            Err(e) if e.code == codes::INVOCATION_TIMEOUT => Err(response::envelope(
                StatusCode::GATEWAY_TIMEOUT,
                codes::MIDDLEWARE_TIMEOUT,
                &format!("middleware {function_id} did not answer in time"),
            )),
            Err(e) => Err(failed(&e)),
            Ok(None) => Ok(None),
            Ok(Some(raw)) => {
                let v: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
                match v.get("action").and_then(Value::as_str) {
                    Some("respond") => {
                        let empty = Value::Object(Map::new());
                        Ok(Some(response::from_return(
                            v.get("response").unwrap_or(&empty),
                        )))
                    }
                    Some("continue") => Ok(None),
                    other => {
                        tracing::warn!(function_id, action = ?other, "middleware answered neither continue nor respond; continuing");
                        Ok(None)
                    }
                }
            }
        }
    }

    /// A channel whose `dir` end the engine holds; the other end's ref goes
    /// to the handler.
    fn engine_end(&self, dir: Direction) -> Option<(Arc<Channel>, EngineEnd, ChannelRef)> {
        let pair = self.channels.create(None, Some(CHANNEL_FRAMES))?;
        let (mine, theirs) = match dir {
            Direction::Write => (pair.writer, pair.reader),
            Direction::Read => (pair.reader, pair.writer),
        };
        let claim = self
            .channels
            .claim(&mine.channel_id, dir, &mine.access_key)
            .ok()?;
        let channel = claim.channel.clone();
        let end = match claim.open() {
            ClaimedEnd::Writer(tx) => EngineEnd::Writer(tx),
            ClaimedEnd::Reader(rx) => EngineEnd::Reader(rx),
        };
        Some((channel, end, theirs))
    }

    /// Calls the handler and races its outcome against the response channel.
    async fn invoke(
        &self,
        route: &Route,
        payload: crate::protocol::Payload,
        resp: &mut ResponseEnd,
        (traceparent, baggage): (Option<String>, Option<String>),
    ) -> Response {
        let extras = CallExtras {
            metadata: route.metadata.clone(),
            traceparent,
            baggage,
        };
        let call = match self.mesh.start_internal_call(
            &route.namespace,
            &route.function_id,
            payload,
            extras,
            self.config.default_timeout,
        ) {
            Ok(c) => c,
            Err(e) => return failed(&e),
        };
        let mut unanswered = Some(Unanswered {
            mesh: self.mesh.clone(),
            invocation_id: call.invocation_id,
        });
        let mut outcome = call.outcome;
        let mut returned_null = false;
        let mut head = Head::default();
        let rx = resp
            .rx
            .as_mut()
            .expect("response end held until the response");
        loop {
            tokio::select! {
                biased;
                item = rx.recv() => {
                    let Some(frame) = item else {
                        // Closed before any binary item: an empty streamed body.
                        resp.state = EndState::Done;
                        return head.into_response(Body::empty());
                    };
                    rx.delivered(frame.receipt);
                    match frame.data {
                        Data::Text(t) => head.apply(&t),
                        Data::Binary(first) => {
                            // The handler may still be running (SSE): its
                            // call lives as long as the body it streams.
                            let stream = Streamed {
                                end: resp.take(),
                                first: Some(first),
                                _call: unanswered.take(),
                            };
                            return head.into_response(Body::from_stream(stream.into_stream()));
                        }
                    }
                }
                settled = &mut outcome, if !returned_null => match settled {
                    Ok(Ok(Some(v))) if v.get().trim() != "null" => {
                        let v: Value = serde_json::from_str(v.get()).unwrap_or(Value::Null);
                        resp.state = EndState::Done;
                        return response::from_return(&v);
                    }
                    // Null: the response comes through the channel.
                    Ok(Ok(_)) => returned_null = true,
                    Ok(Err(e)) => return failed(&e),
                    Err(_) => return failed(&ErrorBody::new(codes::INVOCATION_STOPPED, "call abandoned")),
                },
            }
        }
    }
}

fn too_many_channels() -> ErrorBody {
    ErrorBody::new(
        codes::TOO_MANY_CHANNELS,
        "the engine holds channels.max_channels channels",
    )
}

enum EngineEnd {
    Writer(PipeTx),
    Reader(PipeRx),
}

impl EngineEnd {
    fn tx(self) -> PipeTx {
        match self {
            EngineEnd::Writer(tx) => tx,
            EngineEnd::Reader(_) => unreachable!("asked for the writer end"),
        }
    }

    fn rx(self) -> PipeRx {
        match self {
            EngineEnd::Reader(rx) => rx,
            EngineEnd::Writer(_) => unreachable!("asked for the reader end"),
        }
    }
}

/// Fails the handler call if the request ends (timeout, client gone, its
/// streamed body over) while it is still in flight, so the mesh forgets it.
/// A no-op once settled.
struct Unanswered {
    mesh: Mesh,
    invocation_id: Uuid,
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        self.mesh.fail_call(
            self.invocation_id,
            codes::INVOCATION_TIMEOUT,
            "the HTTP request ended before the handler answered",
        );
    }
}

/// A channel the engine holds one end of: when the request is over, a
/// worker end that never connected is not waited for.
struct Released {
    channels: Channels,
    channel: Arc<Channel>,
    engine_end: Direction,
}

impl Released {
    fn new(channels: &Channels, channel: Arc<Channel>, engine_end: Direction) -> Self {
        Released {
            channels: channels.clone(),
            channel,
            engine_end,
        }
    }
}

impl Drop for Released {
    fn drop(&mut self) {
        self.channels.release(&self.channel, self.engine_end);
    }
}

/// The engine's (reading) end of the response channel. When it is
/// dropped, a handler that never connected its writer is not waited for,
/// and the engine's end is recorded as over.
struct ResponseEnd {
    channels: Channels,
    channel: Arc<Channel>,
    rx: Option<PipeRx>,
    /// How the engine's reading ended.
    state: EndState,
    /// Handed to a streamed body (which now owns the end).
    moved: bool,
}

impl ResponseEnd {
    fn take(&mut self) -> ResponseEnd {
        self.moved = true;
        ResponseEnd {
            channels: self.channels.clone(),
            channel: self.channel.clone(),
            rx: self.rx.take(),
            state: EndState::Aborted,
            moved: false,
        }
    }
}

impl Drop for ResponseEnd {
    fn drop(&mut self) {
        if self.moved {
            return;
        }
        // Released first: a channel the handler never wrote to goes
        // quietly, not as a finished channel remembered for late connects.
        self.channels.release(&self.channel, Direction::Read);
        self.channels
            .end_over(&self.channel, Direction::Read, self.state);
        drop(self.rx.take());
    }
}

/// A streamed response body: the first binary item, then every binary item
/// until the handler closes its writer. Text items after the first binary
/// one are ignored. A writer that vanished without a normal close ends the
/// body with an error, so the client sees a truncated response, not a
/// complete one.
struct Streamed {
    end: ResponseEnd,
    first: Option<Bytes>,
    /// The handler's call, if still in flight when streaming began.
    _call: Option<Unanswered>,
}

impl Streamed {
    fn into_stream(self) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
        futures_util::stream::unfold(self, |mut s| async move {
            if let Some(first) = s.first.take() {
                return Some((Ok(first), s));
            }
            loop {
                if s.end.state == EndState::Done {
                    return None;
                }
                let rx = s.end.rx.as_mut()?;
                let Some(frame) = rx.recv().await else {
                    s.end.state = EndState::Done;
                    if s.end.channels.writer_state(&s.end.channel) == EndState::Done {
                        return None;
                    }
                    let err = std::io::Error::other("the handler's response writer aborted");
                    return Some((Err(err), s));
                };
                rx.delivered(frame.receipt);
                if let Data::Binary(b) = frame.data {
                    return Some((Ok(b), s));
                }
            }
        })
    }
}

/// Writes a buffered (JSON) body to the request channel, in pieces no larger
/// than the channel's byte budget, then ends the stream.
async fn write_all(
    channels: Channels,
    ch: Arc<Channel>,
    end: EngineEnd,
    bytes: Bytes,
    chunk: usize,
) {
    let tx = end.tx();
    let mut state = EndState::Done;
    let mut rest = bytes;
    while !rest.is_empty() {
        let piece = rest.split_to(rest.len().min(chunk.max(1)));
        let pushed = tokio::select! {
            biased;
            _ = ch.abandoned.cancelled() => Err(()),
            r = tx.push(Data::Binary(piece)) => r.map_err(|_| ()),
        };
        if pushed.is_err() {
            state = EndState::Aborted;
            break;
        }
    }
    channels.end_over(&ch, Direction::Write, state);
    drop(tx);
}

/// Forwards a streamed (non-JSON) body frame by frame as it arrives. A
/// client that stalls longer than `idle`, or sends more than `max` bytes,
/// aborts the stream (the handler's reader sees the abort).
async fn forward(
    channels: Channels,
    ch: Arc<Channel>,
    end: EngineEnd,
    mut body: Body,
    max: usize,
    idle: Duration,
) {
    let tx = end.tx();
    let chunk = channels.config().max_buffer_bytes.max(1);
    let mut seen = 0usize;
    let state = loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) | Ok(Some(Err(_))) => break EndState::Aborted,
            Ok(None) => break EndState::Done,
            Ok(Some(Ok(f))) => f,
        };
        let Ok(mut data) = frame.into_data() else {
            continue; // trailers
        };
        seen += data.len();
        if seen > max {
            break EndState::Aborted;
        }
        let mut ok = true;
        while ok && !data.is_empty() {
            let piece = data.split_to(data.len().min(chunk));
            ok = tokio::select! {
                biased;
                _ = ch.abandoned.cancelled() => false,
                r = tx.push(Data::Binary(piece)) => r.is_ok(),
            };
        }
        if !ok {
            break EndState::Aborted;
        }
    };
    channels.end_over(&ch, Direction::Write, state);
    drop(tx);
}
