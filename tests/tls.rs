//! TLS on the engine's listeners: workers connect with `wss://`, HTTP
//! trigger routes answer over `https://`, and a renewed certificate is
//! served after a reload (SIGHUP) without a restart, while a broken one is
//! refused and the old one kept.

mod common;

use common::{TestEngine, WAIT, test_config};
use futures_util::StreamExt;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;

/// A fresh self-signed certificate for `localhost`, written to `dir`.
fn write_cert(dir: &Path) -> CertificateDer<'static> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    ck.cert.der().clone()
}

fn tls_config(dir: &Path) -> qmesh::config::TlsConfig {
    qmesh::config::TlsConfig {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    }
}

/// A TLS connection to `addr` that trusts `trusted` only.
async fn tls_connect(
    addr: SocketAddr,
    trusted: &CertificateDer<'static>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// `wss://` to the worker listener; returns the engine's first frame.
async fn first_frame_over_tls(addr: SocketAddr, trusted: &CertificateDer<'static>) -> Value {
    let stream = tls_connect(addr, trusted).await.expect("TLS handshake");
    let url = format!("wss://localhost:{}/", addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("upgrade over TLS");
    let Some(Ok(Message::Text(t))) = tokio::time::timeout(WAIT, ws.next()).await.unwrap() else {
        panic!("no first frame");
    };
    serde_json::from_str(&t).unwrap()
}

#[tokio::test]
async fn workers_connect_over_tls_and_a_renewed_certificate_is_served_after_reload() {
    let dir = tempfile::tempdir().unwrap();
    let first = write_cert(dir.path());
    let mut config = test_config();
    config.tls = Some(tls_config(dir.path()));
    let engine = TestEngine::start_with(config).await;

    let hello = first_frame_over_tls(engine.addr, &first).await;
    assert_eq!(hello["type"], "workerregistered", "{hello}");
    // Plain text on a TLS listener gets nowhere.
    assert!(
        tokio_tungstenite::connect_async(engine.url.as_str())
            .await
            .is_err()
    );

    // Renewed on disk: still the old one until the reload.
    let second = write_cert(dir.path());
    assert!(tls_connect(engine.addr, &second).await.is_err());
    engine.reload_tls().expect("reload");
    let hello = first_frame_over_tls(engine.addr, &second).await;
    assert_eq!(hello["type"], "workerregistered");
    assert!(
        tls_connect(engine.addr, &first).await.is_err(),
        "the old certificate is no longer served"
    );

    // A broken file is refused, and the current certificate stays.
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    let err = engine.reload_tls().unwrap_err();
    assert!(err.contains("key.pem"), "{err}");
    let hello = first_frame_over_tls(engine.addr, &second).await;
    assert_eq!(hello["type"], "workerregistered");
}

#[tokio::test]
async fn http_trigger_routes_are_served_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cert = write_cert(dir.path());
    let mut config = test_config();
    config.http.tls = Some(tls_config(dir.path()));
    let engine = TestEngine::start_with(config).await;
    let mut s = tls_connect(engine.http_addr(), &cert).await.unwrap();
    s.write_all(b"GET /no/such/route HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
}

#[tokio::test]
async fn an_engine_does_not_start_with_a_missing_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.tls = Some(tls_config(dir.path()));
    config.data_dir = dir.path().join("data");
    let err = qmesh::Engine::start(config).await.err().expect("refused");
    assert!(err.to_string().contains("cert.pem"), "{err}");
}
