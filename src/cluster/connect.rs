//! This engine's NATS connection options, built in one place from
//! `[cluster]`: how it authenticates (creds, nkey, user and password,
//! token), TLS (the CA it trusts, its client certificate, whether TLS is
//! required) and how it reconnects. Everything is handed to the
//! `async-nats` client as its own options; nothing here speaks TLS or signs
//! a nonce itself. And what to say when the connection is refused, naming
//! the URLs and the settings to check, never a secret.

use async_nats::{ConnectErrorKind, ConnectOptions};

use super::ClusterError;
use super::config::{ClusterConfig, NatsAuth};

/// The longest wait between two attempts to reach NATS again.
const RECONNECT_DELAY_MAX_MS: u64 = 1000;

/// The options every connection of this engine to NATS is opened with
/// (the caller adds its name and event callback). The config is checked
/// first, its files read.
pub(crate) fn options(config: &ClusterConfig) -> Result<ConnectOptions, ClusterError> {
    let mut options = match config.auth().map_err(ClusterError::Config)? {
        NatsAuth::None => ConnectOptions::new(),
        NatsAuth::Creds(text) => ConnectOptions::with_credentials(text.expose())
            .map_err(|e| ClusterError::Config(format!("[cluster] creds: {e}")))?,
        NatsAuth::Nkey(seed) => ConnectOptions::with_nkey(seed.expose().to_owned()),
        NatsAuth::User(user, password) => {
            ConnectOptions::with_user_and_password(user, password.expose().to_owned())
        }
        NatsAuth::Token(token) => ConnectOptions::with_token(token.expose().to_owned()),
    };
    let tls = config.tls().map_err(ClusterError::Config)?;
    if let Some(ca) = tls.ca {
        options = options.add_root_certificates(ca);
    }
    if let Some((cert, key)) = tls.client {
        options = options.add_client_certificate(cert, key);
    }
    Ok(options
        .require_tls(tls.required)
        // The client's default backs off to 4 s between attempts; an
        // engine cut off from NATS is cut off from its cluster, so it
        // tries again sooner.
        .reconnect_delay_callback(|attempts| {
            std::time::Duration::from_millis((50u64 << attempts.min(5)).min(RECONNECT_DELAY_MAX_MS))
        }))
}

/// Which way of authenticating `[cluster]` names, for logs (never the
/// secret).
pub(crate) fn auth_kind(config: &ClusterConfig) -> &'static str {
    if config.creds.is_some() {
        "creds"
    } else if config.nkey.is_some() {
        "nkey"
    } else if config.user.is_some() {
        "user"
    } else if config.token.is_some() || config.token_file.is_some() {
        "token"
    } else {
        "none"
    }
}

/// What to check when connecting failed with `error`, after the client's
/// own words: " (…)" or nothing.
pub(crate) fn hint(config: &ClusterConfig, error: &async_nats::ConnectError) -> String {
    use rustls::AlertDescription;
    let hint = match error.kind() {
        ConnectErrorKind::AuthorizationViolation if auth_kind(config) == "none" => {
            "the server asks for credentials: set [cluster] user and password, token, nkey or creds"
        }
        ConnectErrorKind::AuthorizationViolation => {
            "the server refused this engine's credentials: check [cluster] user and password, \
             token, nkey or creds"
        }
        ConnectErrorKind::Authentication => {
            "this engine could not sign the server's challenge: check [cluster] nkey or creds"
        }
        ConnectErrorKind::Tls => "check [cluster] tls_ca, tls_cert and tls_key",
        // A failed handshake comes back as an I/O error holding rustls's.
        ConnectErrorKind::Io => match tls_error(error) {
            Some(rustls::Error::InvalidCertificate(_)) if config.tls_ca.is_some() => {
                "the server's TLS certificate is not signed by [cluster] tls_ca"
            }
            Some(rustls::Error::InvalidCertificate(_)) => {
                "the server's TLS certificate is not signed by a CA this machine trusts: set \
                 [cluster] tls_ca to the CA that signed it"
            }
            Some(rustls::Error::AlertReceived(AlertDescription::CertificateRequired)) => {
                "the server asks for a TLS client certificate: set [cluster] tls_cert and tls_key"
            }
            Some(rustls::Error::AlertReceived(_)) => {
                "the server refused the TLS handshake: check [cluster] tls_cert and tls_key (a \
                 client certificate from a CA the server trusts)"
            }
            Some(_) => "the TLS handshake failed: check [cluster] tls_ca, tls_cert and tls_key",
            None => return String::new(),
        },
        _ => return String::new(),
    };
    format!(" ({hint})")
}

/// The rustls error under a connect error, if a TLS handshake failed.
fn tls_error(error: &async_nats::ConnectError) -> Option<&rustls::Error> {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // An `io::Error`'s `source()` skips the error it wraps.
        let wrapped = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        if wrapped.is_some() {
            return wrapped;
        }
        source = e.source();
    }
    None
}
