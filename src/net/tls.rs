//! TLS on a listener (rustls): a certificate chain and a private key read
//! from PEM files, re-read on demand (the engine does it on SIGHUP) so a
//! renewed certificate is served without a restart. A reload that fails
//! keeps the previous certificate and says why.

use rustls::ServerConfig;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// `tls = { cert = "...", key = "..." }` on a listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS {what} {path}: {reason}")]
    Read {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("TLS certificate {path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("TLS key {key} does not fit certificate {cert}: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// A listener's TLS: the acceptor in use, swapped whole on reload.
#[derive(Clone)]
pub(crate) struct Tls {
    config: TlsConfig,
    acceptor: Arc<RwLock<TlsAcceptor>>,
}

impl Tls {
    /// Reads the files; an engine does not start with a bad certificate.
    pub(crate) fn load(config: &TlsConfig) -> Result<Self, TlsError> {
        Ok(Self {
            acceptor: Arc::new(RwLock::new(acceptor(config)?)),
            config: config.clone(),
        })
    }

    /// Re-reads the files. On error the current certificate stays.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let fresh = acceptor(&self.config)?;
        *self.acceptor.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// The certificate file, for logs.
    pub(crate) fn cert_path(&self) -> &Path {
        &self.config.cert
    }

    pub(crate) async fn accept(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        let acceptor = self
            .acceptor
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        acceptor.accept(tcp).await
    }
}

fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    fn read_err<'a>(what: &'static str, path: &'a Path) -> impl Fn(pem::Error) -> TlsError + 'a {
        move |e| TlsError::Read {
            what,
            path: path.to_owned(),
            reason: e.to_string(),
        }
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert)
        .map_err(read_err("certificate", &config.cert))?
        .collect::<Result<_, _>>()
        .map_err(read_err("certificate", &config.cert))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: config.cert.clone(),
        });
    }
    let key =
        PrivateKeyDer::from_pem_file(&config.key).map_err(read_err("private key", &config.key))?;
    let server =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
            .map_err(|e| TlsError::Mismatch {
                cert: config.cert.clone(),
                key: config.key.clone(),
                reason: e.to_string(),
            })?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}
