//! Cluster mode on a NATS server that asks who connects: TLS with client
//! certificates (mTLS), user and password, a token, an nkey. Engines with
//! the right credentials join and call each other's workers; an engine
//! without them refuses to start (as it does when NATS is unreachable),
//! saying which server and what to check, never the secret.

mod common;

use common::nats::NatsCluster;
use common::{RawClient, TestEngine, test_config};
use qmesh::config::{Config, Secret};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;
use std::path::{Path, PathBuf};

/// Certificates made for one test: the CA NATS trusts (`ca.pem`), the
/// server's (`server.pem`, for 127.0.0.1), an engine's client certificate
/// from that CA (`engine.pem`), and a stranger CA (`rogue-ca.pem`) with a
/// client certificate of its own (`rogue.pem`).
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = write_ca(dir.path(), "ca");
        write_leaf(
            dir.path(),
            "server",
            &ca,
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        write_leaf(
            dir.path(),
            "engine",
            &ca,
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let rogue = write_ca(dir.path(), "rogue-ca");
        write_leaf(
            dir.path(),
            "rogue",
            &rogue,
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        Self { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// NATS config: TLS on the client port, every client must present a
    /// certificate from `ca.pem`.
    fn server_tls(&self) -> String {
        format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: true\n}}\n",
            self.path("server.pem"),
            self.path("server-key.pem"),
            self.path("ca.pem"),
        )
    }

    /// An engine trusting `ca` (a file name) with client certificate
    /// `client` (`engine`, `rogue`, or none).
    fn engine_config(
        &self,
        nats: &NatsCluster,
        id: &str,
        ca: &str,
        client: Option<&str>,
    ) -> Config {
        let mut c = nats.engine_config(test_config(), id);
        c.cluster.tls_ca = Some(self.path(ca));
        if let Some(name) = client {
            c.cluster.tls_cert = Some(self.path(&format!("{name}.pem")));
            c.cluster.tls_key = Some(self.path(&format!("{name}-key.pem")));
        }
        c
    }
}

fn write_ca(dir: &Path, name: &str) -> Issuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
        .distinguished_name
        .push(DnType::CommonName, format!("qmesh test {name}"));
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    Issuer::new(params, key)
}

fn write_leaf(dir: &Path, name: &str, ca: &Issuer<'_, KeyPair>, usage: ExtendedKeyUsagePurpose) {
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
}

/// A worker on `b` serves `svc::echo`; a worker on `a` calls it: the call
/// crosses NATS both ways.
async fn call_across(a: &TestEngine, b: &TestEngine) {
    let mut worker = RawClient::worker(&b.url, "echo-worker").await;
    worker.register_function("svc::echo").await;
    a.wait_for_providers("svc::echo", 1).await;
    let mut caller = RawClient::worker(&a.url, "caller").await;
    let id = caller.send_call("svc::echo", json!({"n": 7})).await;
    worker.serve(1, |data| json!({"echo": data["n"]})).await;
    let result = caller
        .recv_until("the result", |v| {
            v["type"] == "invocationresult" && v["invocation_id"] == id.as_str()
        })
        .await;
    assert_eq!(result["result"], json!({"echo": 7}), "{result}");
}

/// Both engines' `/health` say the cluster is ok.
async fn assert_cluster_ok(engines: &[&TestEngine]) {
    for e in engines {
        let health = e.health().await;
        assert_eq!(health["cluster"]["state"], "ok", "{health}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_join_a_nats_that_verifies_client_certificates() {
    let pki = Pki::new();
    let nats = NatsCluster::start_single(&pki.server_tls()).await;
    let a = TestEngine::start_with(pki.engine_config(&nats, "a", "ca.pem", Some("engine"))).await;
    let b = TestEngine::start_with(pki.engine_config(&nats, "b", "ca.pem", Some("engine"))).await;
    call_across(&a, &b).await;
    assert_cluster_ok(&[&a, &b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_right_certificates_an_engine_refuses_to_start() {
    let pki = Pki::new();
    let nats = NatsCluster::start_single(&pki.server_tls()).await;
    let url = &nats.urls[0];

    // No client certificate: the server ends the handshake.
    let e = TestEngine::start_error(pki.engine_config(&nats, "a", "ca.pem", None)).await;
    assert!(e.contains(url), "names the server: {e}");
    assert!(
        e.contains("asks for a TLS client certificate: set [cluster] tls_cert and tls_key"),
        "says what to check: {e}"
    );

    // A client certificate from a CA the server does not trust.
    let e = TestEngine::start_error(pki.engine_config(&nats, "a", "ca.pem", Some("rogue"))).await;
    assert!(e.contains(url), "{e}");
    assert!(e.contains("the server refused the TLS handshake"), "{e}");

    // The engine does not trust the server's CA.
    let e = TestEngine::start_error(pki.engine_config(&nats, "a", "rogue-ca.pem", Some("engine")))
        .await;
    assert!(e.contains(url), "{e}");
    assert!(
        e.contains("certificate is not signed by [cluster] tls_ca"),
        "{e}"
    );

    // No TLS settings at all: the server asks for TLS, the system's roots
    // do not know its CA.
    let e = TestEngine::start_error(nats.engine_config(test_config(), "a")).await;
    assert!(e.contains(url), "{e}");
    assert!(
        e.contains("set [cluster] tls_ca to the CA that signed it"),
        "{e}"
    );

    // A client certificate without its key is refused before connecting.
    let mut config = pki.engine_config(&nats, "a", "ca.pem", Some("engine"));
    config.cluster.tls_key = None;
    let e = TestEngine::start_error(config).await;
    assert!(e.contains("tls_cert needs tls_key"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_join_with_a_password_and_a_wrong_one_is_refused() {
    const PASSWORD: &str = "correct-horse-battery";
    let nats = NatsCluster::start_single(&format!(
        "authorization {{\n  user: qmesh\n  password: {PASSWORD:?}\n}}\n"
    ))
    .await;
    let url = &nats.urls[0];
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("nats-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();

    let with = |id: &str, password: Option<&str>| {
        let mut c = nats.engine_config(test_config(), id);
        c.cluster.user = Some("qmesh".to_owned());
        c.cluster.password = password.map(Secret::new);
        c
    };
    // One engine with the password in the config, one from a file.
    let a = TestEngine::start_with(with("a", Some(PASSWORD))).await;
    let mut b_config = with("b", None);
    b_config.cluster.password_file = Some(password_file);
    let b = TestEngine::start_with(b_config).await;
    call_across(&a, &b).await;
    assert_cluster_ok(&[&a, &b]).await;

    let wrong = with("c", Some("wrong-password-123"));
    assert!(!format!("{wrong:?}").contains("wrong-password"));
    let e = TestEngine::start_error(wrong).await;
    assert!(
        e.contains(url) && e.contains("authorization violation"),
        "{e}"
    );
    assert!(e.contains("refused this engine's credentials"), "{e}");
    assert!(!e.contains("wrong-password"), "the password stays out: {e}");

    let e = TestEngine::start_error(nats.engine_config(test_config(), "d")).await;
    assert!(e.contains(url) && e.contains("asks for credentials"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_joins_with_a_token_or_an_nkey() {
    let dir = tempfile::tempdir().unwrap();

    // A token, from a file; a wrong one is refused.
    let nats = NatsCluster::start_single("authorization {\n  token: \"s3cret-token\"\n}\n").await;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let mut config = nats.engine_config(test_config(), "a");
    config.cluster.token_file = Some(token_file);
    let a = TestEngine::start_with(config).await;
    assert_cluster_ok(&[&a]).await;
    let mut config = nats.engine_config(test_config(), "b");
    config.cluster.token = Some(Secret::new("not-the-token"));
    let e = TestEngine::start_error(config).await;
    assert!(
        e.contains("authorization violation") && !e.contains("not-the-token"),
        "{e}"
    );
    a.stop().await;
    drop(nats);

    // An nkey the server lists; another user's seed is refused.
    let user = nkeys::KeyPair::new_user();
    let nats = NatsCluster::start_single(&format!(
        "authorization {{\n  users: [ {{ nkey: {:?} }} ]\n}}\n",
        user.public_key()
    ))
    .await;
    let seed_file = |name: &str, key: &nkeys::KeyPair| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{}\n", key.seed().unwrap())).unwrap();
        path
    };
    let mut config = nats.engine_config(test_config(), "a");
    config.cluster.nkey = Some(seed_file("user.nk", &user));
    let a = TestEngine::start_with(config).await;
    assert_cluster_ok(&[&a]).await;
    let mut config = nats.engine_config(test_config(), "b");
    config.cluster.nkey = Some(seed_file("other.nk", &nkeys::KeyPair::new_user()));
    let e = TestEngine::start_error(config).await;
    assert!(e.contains("authorization violation"), "{e}");
}
