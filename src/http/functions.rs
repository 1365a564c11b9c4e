//! HTTP-invoked functions (iii's `iii-http-functions`): a worker registers a
//! function with `invocation: {url, method?, timeout_ms?, headers?, auth?}`
//! and the engine calls that URL for every invocation, through the mesh's
//! external-function seam, so sync calls, void calls, trigger fires and the
//! durable queue (retries, leases, DLQ: a webhook delivery queue) all reach
//! it like any function.
//!
//! Policy (`[http_functions]`), checked at registration and again per call:
//! the scheme (`require_https`), the host against `url_allowlist` (globs,
//! port ignored), and `block_private_ips`. Private addresses are refused on
//! the *resolved* address: the client's resolver drops them, so a name that
//! resolves (or re-resolves) to a private range cannot be reached.
//!
//! The request: one HTTP/1.1 request (reqwest over hyper with rustls), the
//! JSON body with its length (so head and body leave together), iii's
//! `x-iii-*` headers, configured headers, then auth (bearer, api key, or an
//! HMAC-SHA256 signature of `"<ts>:<base64(body)>"`). Redirects are not
//! followed; the response is read to EOF.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::HttpFunctionsConfig;
use crate::mesh::provided::{ExternalCall, ExternalFunctions, ExternalTarget};
use crate::protocol::{ErrorBody, Payload, codes, to_payload};

/// A call's bound when `timeout_ms` is not given (iii's).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The client's cap on any call, whatever `timeout_ms` says (iii's).
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Deserialize)]
struct Spec {
    url: String,
    #[serde(default = "post")]
    method: String,
    timeout_ms: Option<u64>,
    #[serde(default)]
    headers: HashMap<String, String>,
    auth: Option<AuthSpec>,
}

fn post() -> String {
    "POST".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum AuthSpec {
    Hmac { secret_key: String },
    Bearer { token_key: String },
    ApiKey { header: String, value_key: String },
}

/// Auth with its secrets read from the engine's environment (once, at registration).
enum Auth {
    Hmac(Vec<u8>),
    Bearer(String),
    ApiKey(HeaderName, HeaderValue),
}

/// The URL policy, shared by registration, each call and the resolver.
#[derive(Debug, Clone)]
struct Policy {
    allowlist: Vec<String>,
    block_private_ips: bool,
    require_https: bool,
}

fn invalid(msg: impl Into<String>) -> ErrorBody {
    ErrorBody::new(codes::URL_VALIDATION_FAILED, msg)
}

impl Policy {
    /// Everything that can be checked without DNS: scheme, allowlist, and
    /// an IP-literal host.
    fn check(&self, url: &reqwest::Url) -> Result<(), ErrorBody> {
        match url.scheme() {
            "https" => {}
            "http" if !self.require_https => {}
            "http" => return Err(invalid("HTTPS is required")),
            _ => return Err(invalid("Invalid URL")),
        }
        let Some(host) = url.host_str() else {
            return Err(invalid("Invalid URL"));
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if !self.allowlist.is_empty() && !self.allowlist.iter().any(|p| glob(p, host)) {
            return Err(invalid("URL not in allowlist"));
        }
        let literal = host.parse::<IpAddr>().ok();
        if self.block_private_ips && literal.is_some_and(is_private) {
            return Err(invalid("Private IP blocked"));
        }
        Ok(())
    }
}

/// `*` matches any run of characters, `?` one; case-insensitive.
fn glob(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

/// Loopback, private, link-local, shared (CGNAT), unspecified, broadcast,
/// multicast and documentation ranges; IPv6 unique-local and link-local,
/// and IPv4 addresses embedded in IPv6.
pub(crate) fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x64 && s[1] == 0xff9b)
                || (s[0] == 0x2001 && s[1] == 0x0db8)
        }
    }
}

/// The client's resolver: addresses in private ranges are dropped when
/// `block_private_ips` is on, so the connection can only go where the
/// policy allows, whatever the name resolves to at connect time.
struct GuardedResolver {
    block_private_ips: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let block = self.block_private_ips;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> {
                    format!("DNS lookup failed: {e}").into()
                })?
                .filter(|a| !(block && is_private(a.ip())))
                .collect();
            if addrs.is_empty() {
                return Err(format!(
                    "Private IP blocked: {host} resolves only to blocked addresses"
                )
                .into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// The module's side of the external-function seam.
pub(crate) struct HttpFunctions {
    policy: Arc<Policy>,
    client: reqwest::Client,
}

impl HttpFunctions {
    pub(crate) fn new(config: &HttpFunctionsConfig) -> Self {
        let policy = Arc::new(Policy {
            allowlist: if config.url_allowlist.iter().any(|p| p == "*") {
                Vec::new()
            } else {
                config.url_allowlist.clone()
            },
            block_private_ips: config.block_private_ips,
            require_https: config.require_https,
        });
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(MAX_TIMEOUT)
            .dns_resolver(Arc::new(GuardedResolver {
                block_private_ips: config.block_private_ips,
            }))
            .build()
            .expect("the HTTP client builds (rustls, no system configuration)");
        HttpFunctions { policy, client }
    }
}

impl ExternalFunctions for HttpFunctions {
    fn accept(
        &self,
        function_id: &str,
        spec: &Payload,
    ) -> Result<Arc<dyn ExternalTarget>, ErrorBody> {
        let spec: Spec = serde_json::from_str(spec.get())
            .map_err(|e| ErrorBody::new(codes::INVALID_INVOCATION, format!("invocation: {e}")))?;
        let url = reqwest::Url::parse(&spec.url).map_err(|_| invalid("Invalid URL"))?;
        self.policy.check(&url)?;
        let method = match spec.method.as_str() {
            "GET" => reqwest::Method::GET,
            "POST" => reqwest::Method::POST,
            "PUT" => reqwest::Method::PUT,
            "PATCH" => reqwest::Method::PATCH,
            "DELETE" => reqwest::Method::DELETE,
            other => {
                return Err(ErrorBody::new(
                    codes::INVALID_INVOCATION,
                    format!(
                        "method must be GET, POST, PUT, PATCH or DELETE (upper case), not {other:?}"
                    ),
                ));
            }
        };
        let mut headers = HeaderMap::new();
        for (k, v) in &spec.headers {
            let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) else {
                return Err(ErrorBody::new(
                    codes::INVALID_INVOCATION,
                    format!("header {k:?} is not a valid HTTP header"),
                ));
            };
            headers.insert(k, v);
        }
        let env = |key: &str, code: &str| {
            std::env::var(key)
                .map_err(|_| ErrorBody::new(code, format!("environment variable {key} is not set")))
        };
        let auth = match spec.auth {
            None => None,
            Some(AuthSpec::Hmac { secret_key }) => Some(Auth::Hmac(
                env(&secret_key, codes::SECRET_NOT_FOUND)?.into_bytes(),
            )),
            Some(AuthSpec::Bearer { token_key }) => {
                Some(Auth::Bearer(env(&token_key, codes::TOKEN_NOT_FOUND)?))
            }
            Some(AuthSpec::ApiKey { header, value_key }) => {
                let value = env(&value_key, codes::API_KEY_NOT_FOUND)?;
                match (
                    HeaderName::from_bytes(header.as_bytes()),
                    HeaderValue::from_str(&value),
                ) {
                    (Ok(h), Ok(v)) => Some(Auth::ApiKey(h, v)),
                    _ => {
                        return Err(ErrorBody::new(
                            codes::INVALID_INVOCATION,
                            "api_key header or value is not a valid HTTP header",
                        ));
                    }
                }
            }
        };
        let timeout = spec
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_TIMEOUT)
            .min(MAX_TIMEOUT);
        tracing::info!(function_id, url = %url, method = %method, "HTTP-invoked function registered");
        Ok(Arc::new(Target(Arc::new(TargetInner {
            url,
            method,
            timeout,
            headers,
            auth,
            policy: self.policy.clone(),
            client: self.client.clone(),
        }))))
    }
}

struct TargetInner {
    url: reqwest::Url,
    method: reqwest::Method,
    timeout: Duration,
    headers: HeaderMap,
    auth: Option<Auth>,
    policy: Arc<Policy>,
    client: reqwest::Client,
}

struct Target(Arc<TargetInner>);

impl ExternalTarget for Target {
    fn invoke(&self, call: ExternalCall) {
        let t = self.0.clone();
        tokio::spawn(async move {
            let outcome = t.send(&call.function_id, call.data.get().as_bytes()).await;
            if let Err(e) = &outcome {
                tracing::debug!(function_id = %call.function_id, error = %e, "HTTP-invoked function failed");
            }
            call.settle(outcome);
        });
    }
}

type Hmac256 = Hmac<Sha256>;

/// `sha256=<hex(HMAC-SHA256(secret, "<ts>:<base64(body)>"))>`.
fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b":");
    mac.update(
        base64::engine::general_purpose::STANDARD
            .encode(body)
            .as_bytes(),
    );
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// The error chain of a failed request, outermost first.
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

impl TargetInner {
    async fn send(&self, function_id: &str, body: &[u8]) -> Result<Option<Payload>, ErrorBody> {
        self.policy.check(&self.url)?;
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut req = self
            .client
            .request(self.method.clone(), self.url.clone())
            .timeout(self.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("x-iii-Function-Path", function_id)
            .header("x-iii-Invocation-ID", uuid::Uuid::new_v4().to_string())
            .header("x-iii-Timestamp", timestamp.to_string())
            .headers(self.headers.clone());
        req = match &self.auth {
            None => req,
            Some(Auth::Bearer(token)) => req.bearer_auth(token),
            Some(Auth::ApiKey(h, v)) => req.header(h.clone(), v.clone()),
            Some(Auth::Hmac(secret)) => {
                req.header("x-iii-Signature", signature(secret, timestamp, body))
            }
        };
        let resp = req.body(body.to_vec()).send().await.map_err(|e| {
            let msg = chain(&e);
            if msg.contains("Private IP blocked") || msg.contains("DNS lookup failed") {
                invalid(msg)
            } else {
                ErrorBody::new(codes::HTTP_REQUEST_FAILED, msg)
            }
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ErrorBody::new(codes::HTTP_RESPONSE_FAILED, chain(&e)))?;
        let parsed = || serde_json::from_slice::<Value>(&bytes);
        if status.is_success() {
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(None);
            }
            return match parsed() {
                Ok(v) => Ok(Some(to_payload(&v))),
                Err(e) => Err(ErrorBody::new(
                    codes::INVALID_RESPONSE,
                    format!("the response body is not JSON: {e}"),
                )),
            };
        }
        if status.as_u16() < 400 {
            return Ok(parsed().ok().map(|v| to_payload(&v)));
        }
        let err = parsed().ok().and_then(|v| {
            let e = v.get("error")?;
            Some(ErrorBody::new(
                e.get("code")
                    .and_then(Value::as_str)
                    .unwrap_or(codes::HTTP_ERROR),
                e.get("message")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("HTTP {}", status.as_u16())),
            ))
        });
        Err(err.unwrap_or_else(|| {
            ErrorBody::new(codes::HTTP_ERROR, format!("HTTP {}", status.as_u16()))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str]) -> Policy {
        Policy {
            allowlist: allow.iter().map(|s| s.to_string()).collect(),
            block_private_ips: true,
            require_https: true,
        }
    }

    fn check(p: &Policy, url: &str) -> Result<(), String> {
        p.check(&reqwest::Url::parse(url).unwrap())
            .map_err(|e| e.message)
    }

    #[test]
    fn secure_defaults_refuse_plain_http_private_literals_and_unlisted_hosts() {
        let p = policy(&[]);
        assert_eq!(
            check(&p, "http://example.com/x"),
            Err("HTTPS is required".into())
        );
        assert_eq!(
            check(&p, "https://127.0.0.1/x"),
            Err("Private IP blocked".into())
        );
        assert_eq!(
            check(&p, "https://[::1]/x"),
            Err("Private IP blocked".into())
        );
        assert_eq!(
            check(&p, "https://10.1.2.3/x"),
            Err("Private IP blocked".into())
        );
        assert_eq!(
            check(&p, "https://[::ffff:192.168.0.1]/"),
            Err("Private IP blocked".into())
        );
        assert!(check(&p, "https://example.com/x").is_ok());
        let p = policy(&["*.example.com", "api.test"]);
        assert!(check(&p, "https://hooks.example.com:8443/x").is_ok());
        assert_eq!(
            check(&p, "https://example.org/"),
            Err("URL not in allowlist".into())
        );
        assert!(check(&p, "https://API.test/").is_ok());
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_and_base64_body() {
        // printf '1700000000:eyJhIjoxfQ==' | openssl dgst -sha256 -hmac s3cret
        assert_eq!(
            signature(b"s3cret", 1_700_000_000, br#"{"a":1}"#),
            "sha256=ef70ecc409d280b3ed0a97fdb005b95bcea1b1c20e8984d0a9d92dcd79d1f077"
        );
    }
}
