//! An OTLP/HTTP receiver for the tests: a collector's `POST /v1/traces`,
//! `/v1/logs` and `/v1/metrics`, decoding each protobuf body with the
//! OpenTelemetry project's own types (opentelemetry-proto, prost) and keeping
//! every span with its service, and every log and metrics request whole.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;

/// A span as the receiver got it.
#[derive(Debug, Clone)]
pub struct Received {
    pub service: String,
    pub span: Span,
}

impl Received {
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    pub fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Default)]
struct Kept {
    /// Each request's `x-api-key` header (`[otel] headers` in the tests).
    api_keys: Vec<Option<String>>,
    spans: Vec<Received>,
    logs: Vec<ExportLogsServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
}

type Shared = Arc<Mutex<Kept>>;

pub struct OtlpReceiver {
    pub addr: SocketAddr,
    kept: Shared,
    task: JoinHandle<()>,
    tls: bool,
}

fn app(kept: Shared) -> Router {
    Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/logs", post(logs))
        .route("/v1/metrics", post(metrics))
        .layer(axum::middleware::from_fn_with_state(
            kept.clone(),
            note_api_key,
        ))
        .with_state(kept)
}

async fn note_api_key(
    State(kept): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let key = request
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    kept.lock().unwrap().api_keys.push(key);
    next.run(request).await
}

impl OtlpReceiver {
    pub async fn start() -> Self {
        let kept = Shared::default();
        let app = app(kept.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("OTLP receiver");
        });
        Self {
            addr,
            kept,
            task,
            tls: false,
        }
    }

    /// The same over TLS, with a fresh self-signed certificate for
    /// `localhost` written to `dir/ca.pem` (what the engine must trust).
    pub async fn start_tls(dir: &std::path::Path) -> Self {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(dir.join("ca.pem"), ck.cert.pem()).unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let kept = Shared::default();
        let app = app(kept.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            kept,
            task,
            tls: true,
        }
    }

    /// Each request's `x-api-key` header, in arrival order.
    pub fn api_keys(&self) -> Vec<Option<String>> {
        self.kept.lock().unwrap().api_keys.clone()
    }

    /// `[otel] endpoint` for an engine exporting here.
    pub fn endpoint(&self) -> String {
        match self.tls {
            true => format!("https://localhost:{}", self.addr.port()),
            false => format!("http://{}", self.addr),
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Received> {
        self.kept.lock().unwrap().spans.clone()
    }

    /// Every logs request received so far.
    pub fn logs(&self) -> Vec<ExportLogsServiceRequest> {
        self.kept.lock().unwrap().logs.clone()
    }

    /// Every metrics request received so far.
    pub fn metrics(&self) -> Vec<ExportMetricsServiceRequest> {
        self.kept.lock().unwrap().metrics.clone()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn logs(State(kept): State<Shared>, body: Bytes) -> StatusCode {
    match ExportLogsServiceRequest::decode(body) {
        Ok(req) => {
            kept.lock().unwrap().logs.push(req);
            StatusCode::OK
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

async fn metrics(State(kept): State<Shared>, body: Bytes) -> StatusCode {
    match ExportMetricsServiceRequest::decode(body) {
        Ok(req) => {
            kept.lock().unwrap().metrics.push(req);
            StatusCode::OK
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

async fn traces(State(kept): State<Shared>, body: Bytes) -> StatusCode {
    let Ok(req) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut kept = kept.lock().unwrap();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                kept.spans.push(Received {
                    service: service.clone(),
                    span,
                });
            }
        }
    }
    StatusCode::OK
}
