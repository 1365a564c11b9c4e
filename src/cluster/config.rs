//! `[cluster]`: which NATS cluster this engine joins, under which names,
//! and how it proves who it is to NATS (credentials, TLS).

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `[cluster]` (or `qmesh serve --cluster nats://…`). Off while `urls` is
/// empty: the engine is alone, on its embedded store.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS servers to connect to (`nats://host:4222`); any one is enough,
    /// the client learns the others from the server.
    pub urls: Vec<String>,
    /// The qmesh cluster's name: engines with the same name on one NATS
    /// cluster form one mesh. In subjects and bucket names, so
    /// `[A-Za-z0-9_-]` only.
    pub name: String,
    /// This engine's id in the cluster (`[A-Za-z0-9_-]`). Absent: a fresh
    /// one per start. Give a stable one so a restarted engine clears what
    /// its previous run announced.
    pub engine_id: Option<String>,
    /// Replicas of the cluster's JetStream buckets and streams (3 on a
    /// 3-node NATS cluster; 1 on a single server).
    pub replicas: usize,
    /// Where `Enqueue` calls, `queue::enqueue` and durable topics' jobs go:
    /// `local` (each engine's embedded store, the default: no NATS round
    /// trip per job) or `jetstream` (the cluster's replicated job stream,
    /// run by any engine with a worker for the function).
    pub queues: BackendKind,
    /// Where `state::*` values live: `local` (each engine's embedded store,
    /// the default: no NATS round trip per read or write) or `jetstream`
    /// (one KV bucket shared by every engine).
    pub state: BackendKind,
    /// Where `stream::*` items live: `local` (each engine's embedded store,
    /// its events for its own bindings and clients only) or `jetstream`
    /// (one KV bucket shared by every engine, each event reaching every
    /// engine's bindings and clients).
    pub streams: BackendKind,
    /// With `queues = "jetstream"`: how long an idempotency key is
    /// remembered (the job stream's duplicate window).
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
    /// How often this engine tells the others it is alive (core NATS).
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// How long another engine may go unheard before it is declared dead
    /// and its functions leave this engine's mesh. More than `heartbeat`
    /// (a few beats, so one late beat is not a death).
    #[serde(with = "humantime_serde")]
    pub engine_timeout: Duration,
    /// NATS decentralized auth: a `.creds` file (the user's JWT and nkey
    /// seed, as `nsc` writes it).
    pub creds: Option<PathBuf>,
    /// A file holding a user nkey seed (`SU…`) whose public key the server
    /// lists.
    pub nkey: Option<PathBuf>,
    /// User and password auth: `user` with `password` or `password_file`.
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// A file holding the password (a trailing line break is ignored), to
    /// keep it out of the config as `[auth] tokens_file` keeps tokens.
    pub password_file: Option<PathBuf>,
    /// Token auth: `token` or `token_file`.
    pub token: Option<Secret>,
    pub token_file: Option<PathBuf>,
    /// PEM CA certificate(s) the NATS servers' certificates must chain to,
    /// instead of the system's roots.
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate chain and its private key, for servers that
    /// verify clients (mTLS). One needs the other.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Refuse to talk to NATS without TLS. Implied by any `tls_*` file and
    /// by a `tls://` URL; without it the connection is TLS only when the
    /// server asks for it.
    pub tls_required: bool,
}

/// A secret in the config (a NATS password or token). Its `Debug` never
/// shows it, so neither does the config's; nothing else prints it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, for the NATS client only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where a module's data lives (`queues`, `state`, `streams`): each
/// engine's own store, or the cluster's JetStream (streams and KV).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Local,
    Jetstream,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            name: "qmesh".to_owned(),
            engine_id: None,
            replicas: 3,
            queues: BackendKind::Local,
            state: BackendKind::Local,
            streams: BackendKind::Local,
            idempotency_window: Duration::from_secs(3600),
            heartbeat: Duration::from_secs(1),
            engine_timeout: Duration::from_secs(4),
            creds: None,
            nkey: None,
            user: None,
            password: None,
            password_file: None,
            token: None,
            token_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_required: false,
        }
    }
}

impl ClusterConfig {
    pub(crate) fn enabled(&self) -> bool {
        !self.urls.is_empty()
    }

    /// Whether `state::*` values are the cluster's JetStream KV bucket.
    pub(crate) fn jetstream_state(&self) -> bool {
        self.enabled() && self.state == BackendKind::Jetstream
    }

    /// Whether `stream::*` items are the cluster's JetStream KV bucket.
    pub(crate) fn jetstream_streams(&self) -> bool {
        self.enabled() && self.streams == BackendKind::Jetstream
    }

    /// Whether `Enqueue` calls go to the cluster's JetStream queues.
    pub(crate) fn jetstream_queues(&self) -> bool {
        self.enabled() && self.queues == BackendKind::Jetstream
    }

    /// Checks the URLs, the credentials and the TLS files (each file read
    /// and parsed, so a wrong path fails at load, not at the first
    /// reconnect). Called when the config is loaded and again when the
    /// engine joins (the command line may have added URLs).
    pub(crate) fn validate(&self) -> Result<(), String> {
        self.addrs()?;
        self.auth()?;
        self.tls()?;
        Ok(())
    }

    /// The NATS servers. A URL carrying credentials is refused: URLs are
    /// logged and shown in errors (and `--cluster` in process listings),
    /// credentials are not.
    pub(crate) fn addrs(&self) -> Result<Vec<async_nats::ServerAddr>, String> {
        self.urls
            .iter()
            .map(|u| {
                let addr = u.parse::<async_nats::ServerAddr>().map_err(|e| {
                    if u.contains('@') {
                        format!("[cluster] urls: a URL is not a NATS URL: {e}")
                    } else {
                        format!("[cluster] urls: {u:?} is not a NATS URL: {e}")
                    }
                })?;
                if addr.has_user_pass() || addr.password().is_some() {
                    return Err(format!(
                        "[cluster] urls: the URL of {}:{} carries credentials; give them as \
                         user and password (or password_file), token (or token_file), nkey or \
                         creds instead: URLs are logged",
                        addr.host(),
                        addr.port()
                    ));
                }
                Ok(addr)
            })
            .collect()
    }

    /// How this engine authenticates to NATS, its files read: at most one
    /// way.
    pub(crate) fn auth(&self) -> Result<NatsAuth, String> {
        let mut given = Vec::new();
        if self.creds.is_some() {
            given.push("creds");
        }
        if self.nkey.is_some() {
            given.push("nkey");
        }
        if self.user.is_some() || self.password.is_some() || self.password_file.is_some() {
            given.push("user/password");
        }
        if self.token.is_some() || self.token_file.is_some() {
            given.push("token");
        }
        if given.len() > 1 {
            return Err(format!(
                "[cluster] {} are different ways to authenticate to NATS: give one",
                given.join(" and ")
            ));
        }
        let secret =
            |field: &str, inline: &Option<Secret>, file: &Option<PathBuf>| match (inline, file) {
                (Some(_), Some(_)) => Err(format!(
                    "[cluster] {field} and {field}_file are both set: give one"
                )),
                (Some(s), None) => Ok(Some(s.clone())),
                (None, Some(path)) => read_secret(&format!("{field}_file"), path).map(Some),
                (None, None) => Ok(None),
            };
        if let Some(path) = &self.creds {
            let text = read_text("creds", path)?;
            // The client's own parser, so what passes here is what it uses.
            async_nats::ConnectOptions::with_credentials(&text).map_err(|e| {
                format!(
                    "[cluster] creds {}: not a NATS credentials file: {e}",
                    path.display()
                )
            })?;
            return Ok(NatsAuth::Creds(Secret(text)));
        }
        if let Some(path) = &self.nkey {
            let seed = read_secret("nkey", path)?;
            let seed = Secret(seed.expose().trim().to_owned());
            nkeys::KeyPair::from_seed(seed.expose())
                .map_err(|e| format!("[cluster] nkey {}: not an nkey seed: {e}", path.display()))?;
            return Ok(NatsAuth::Nkey(seed));
        }
        let password = secret("password", &self.password, &self.password_file)?;
        match (&self.user, password) {
            (Some(user), Some(password)) => return Ok(NatsAuth::User(user.clone(), password)),
            (Some(_), None) => {
                return Err("[cluster] user needs password or password_file".to_owned());
            }
            (None, Some(_)) => {
                return Err("[cluster] password needs user".to_owned());
            }
            (None, None) => {}
        }
        if let Some(token) = secret("token", &self.token, &self.token_file)? {
            return Ok(NatsAuth::Token(token));
        }
        Ok(NatsAuth::None)
    }

    /// The TLS files, checked, and whether TLS is required.
    pub(crate) fn tls(&self) -> Result<NatsTls, String> {
        if let Some(path) = &self.tls_ca {
            check_certificates("tls_ca", path)?;
        }
        let client = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                check_certificates("tls_cert", cert)?;
                check_key("tls_key", key)?;
                Some((cert.clone(), key.clone()))
            }
            (Some(_), None) => return Err("[cluster] tls_cert needs tls_key".to_owned()),
            (None, Some(_)) => return Err("[cluster] tls_key needs tls_cert".to_owned()),
            (None, None) => None,
        };
        Ok(NatsTls {
            ca: self.tls_ca.clone(),
            client,
            required: self.tls_wanted(),
        })
    }

    /// Whether this engine requires TLS towards NATS: `tls_required`, any
    /// `tls_*` file, or a `tls://` URL.
    pub(crate) fn tls_wanted(&self) -> bool {
        self.tls_required
            || self.tls_ca.is_some()
            || self.tls_cert.is_some()
            || self.tls_key.is_some()
            || self.urls.iter().any(|u| u.starts_with("tls://"))
    }
}

/// How an engine authenticates to NATS (`[cluster]`, files read). No
/// `Debug`: it holds the secrets themselves.
pub(crate) enum NatsAuth {
    None,
    /// A creds file's text (JWT and seed).
    Creds(Secret),
    Nkey(Secret),
    User(String, Secret),
    Token(Secret),
}

/// TLS towards NATS: the CA to trust instead of the system's, the client
/// certificate and key, whether TLS is required.
pub(crate) struct NatsTls {
    pub ca: Option<PathBuf>,
    pub client: Option<(PathBuf, PathBuf)>,
    pub required: bool,
}

fn read_text(field: &str, path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map_err(|e| format!("[cluster] {field}: cannot read {}: {e}", path.display()))
}

/// A secret file's content without its trailing line break; empty is an
/// error.
fn read_secret(field: &str, path: &Path) -> Result<Secret, String> {
    let text = read_text(field, path)?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(format!("[cluster] {field}: {} is empty", path.display()));
    }
    Ok(Secret(secret.to_owned()))
}

fn check_certificates(field: &str, path: &Path) -> Result<(), String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path)
        .map_err(|e| format!("[cluster] {field}: cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("[cluster] {field} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "[cluster] {field} {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(())
}

fn check_key(field: &str, path: &Path) -> Result<(), String> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path)
        .map_err(|e| format!("[cluster] {field}: cannot read {}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem).map(drop).map_err(|e| {
        format!(
            "[cluster] {field} {} holds no PEM private key: {e}",
            path.display()
        )
    })
}

/// Whether `s` may be part of a NATS subject token and a bucket name.
pub(crate) fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    fn load(cluster: &str) -> Result<Config, String> {
        Config::from_toml(&format!("[cluster]\n{cluster}\n")).map_err(|e| e.to_string())
    }

    fn write(dir: &Path, name: &str, text: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        format!("{:?}", path.to_str().unwrap())
    }

    #[test]
    fn a_password_is_read_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let c = load("user = \"qmesh\"\npassword = \"hunter2-secret\"").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"), "{c:?}");
        let file = write(dir.path(), "pw", "from-a-file\n");
        let c = load(&format!("user = \"qmesh\"\npassword_file = {file}")).unwrap();
        match c.cluster.auth().unwrap() {
            super::NatsAuth::User(user, pw) => {
                assert_eq!((user.as_str(), pw.expose()), ("qmesh", "from-a-file"));
            }
            _ => panic!("user and password expected"),
        }
    }

    #[test]
    fn one_way_to_authenticate_each_complete() {
        let e = load("user = \"u\"\npassword = \"p\"\ntoken = \"t\"").unwrap_err();
        assert!(e.contains("user/password and token"), "{e}");
        let e = load("token = \"t\"\ncreds = \"x.creds\"").unwrap_err();
        assert!(e.contains("creds and token"), "{e}");
        let e = load("password = \"p\"").unwrap_err();
        assert!(e.contains("password needs user"), "{e}");
        let e = load("user = \"u\"").unwrap_err();
        assert!(e.contains("user needs password"), "{e}");
        let e = load("token = \"t\"\ntoken_file = \"t.txt\"").unwrap_err();
        assert!(e.contains("token and token_file"), "{e}");
        assert!(load("token = \"t\"").is_ok());
    }

    #[test]
    fn missing_or_wrong_files_are_named_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let e = load("user = \"u\"\npassword_file = \"/nonexistent/pw\"").unwrap_err();
        assert!(
            e.contains("password_file") && e.contains("/nonexistent/pw"),
            "{e}"
        );
        let empty = write(dir.path(), "empty", "\n");
        let e = load(&format!("token_file = {empty}")).unwrap_err();
        assert!(e.contains("token_file") && e.contains("empty"), "{e}");
        let e = load("tls_ca = \"/nonexistent/ca.pem\"").unwrap_err();
        assert!(e.contains("tls_ca") && e.contains("cannot read"), "{e}");
        let junk = write(dir.path(), "junk.pem", "not a certificate\n");
        let e = load(&format!("tls_ca = {junk}")).unwrap_err();
        assert!(
            e.contains("tls_ca") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = load(&format!("tls_cert = {junk}")).unwrap_err();
        assert!(e.contains("tls_cert needs tls_key"), "{e}");
        let e = load(&format!("tls_key = {junk}")).unwrap_err();
        assert!(e.contains("tls_key needs tls_cert"), "{e}");
        let e = load(&format!("nkey = {junk}")).unwrap_err();
        assert!(e.contains("not an nkey seed"), "{e}");
        assert!(
            !e.contains("not a certificate"),
            "the file's text stays out: {e}"
        );
        let e = load(&format!("creds = {junk}")).unwrap_err();
        assert!(e.contains("not a NATS credentials file"), "{e}");
    }

    #[test]
    fn creds_and_nkey_seeds_are_parsed_by_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let user = nkeys::KeyPair::new_user();
        let seed = user.seed().unwrap();
        let nkey = write(dir.path(), "user.nk", &format!("{seed}\n"));
        let c = load(&format!("nkey = {nkey}")).unwrap();
        assert!(matches!(c.cluster.auth(), Ok(super::NatsAuth::Nkey(_))));
        let creds = write(
            dir.path(),
            "user.creds",
            &format!(
                "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QifQ.e30.c2ln\n------END NATS USER JWT------\n\n\
                 -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
            ),
        );
        let c = load(&format!("creds = {creds}")).unwrap();
        assert!(matches!(c.cluster.auth(), Ok(super::NatsAuth::Creds(_))));
    }

    #[test]
    fn credentials_in_urls_are_refused_without_echoing_them() {
        let e = load("urls = [\"nats://u:hunter2@127.0.0.1:4222\"]").unwrap_err();
        assert!(
            e.contains("carries credentials") && !e.contains("hunter2"),
            "{e}"
        );
        let e = load("urls = [\"nats://s3cr3t-token@127.0.0.1:4222\"]").unwrap_err();
        assert!(!e.contains("s3cr3t"), "{e}");
    }

    #[test]
    fn tls_is_required_by_any_tls_setting_or_url() {
        let c = load("urls = [\"nats://127.0.0.1:4222\"]").unwrap();
        assert!(!c.cluster.tls().unwrap().required);
        let c = load("urls = [\"tls://127.0.0.1:4222\"]").unwrap();
        assert!(c.cluster.tls().unwrap().required);
        let c = load("tls_required = true").unwrap();
        assert!(c.cluster.tls().unwrap().required);
    }
}
