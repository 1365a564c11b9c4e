//! The web dashboard, a module: `/ui/` on every worker listener serves one
//! page (`assets/`: HTML, CSS and plain JavaScript, embedded in the binary
//! with `include_str!`; no CDN, no build step).
//!
//! The page holds no data when it is served: once loaded it opens a worker
//! socket on `/` and is just another client of the engine, reading and acting
//! through the same engine functions as the CLI (`queue::list`,
//! `queue::peek`, `queue::get`, `iii::queue::redrive_message`,
//! `engine::workers::list`, …), answered by `invocationresult`s. So it is
//! admitted like any worker (a token, when `[auth]` has tokens: the page
//! offers it as a `Sec-WebSocket-Protocol`, see `edge::auth`) and the
//! operator-only functions stay refused to anyone who is not an operator.
//!
//! Architecture invariant: the dashboard serves files only; it knows no
//! other module, nor the mesh, nor the store. Whatever the page shows came
//! over the worker protocol.

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::module::Module;

/// One embedded file of the page.
struct Asset {
    body: &'static str,
    content_type: &'static str,
}

const INDEX: Asset = Asset {
    body: include_str!("assets/index.html"),
    content_type: "text/html; charset=utf-8",
};
const SCRIPT: Asset = Asset {
    body: include_str!("assets/app.js"),
    content_type: "text/javascript; charset=utf-8",
};
const STYLE: Asset = Asset {
    body: include_str!("assets/app.css"),
    content_type: "text/css; charset=utf-8",
};

/// The page may load only its own files and talk only to its own origin
/// (the worker socket); payloads it shows are text, never markup.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// The dashboard module: routes only.
pub(crate) struct Dashboard;

impl Module for Dashboard {
    fn name(&self) -> &'static str {
        "dashboard"
    }

    fn routes(&self) -> Option<Router> {
        Some(
            Router::new()
                .route("/ui", get(to_index))
                .route("/ui/", get(|| serve(&INDEX)))
                .route("/ui/app.js", get(|| serve(&SCRIPT)))
                .route("/ui/app.css", get(|| serve(&STYLE))),
        )
    }
}

/// `/ui` → `ui/`: a relative redirect, so the page's relative links (and the
/// socket it derives from its own address) also work behind a path prefix.
async fn to_index() -> Response {
    (
        StatusCode::TEMPORARY_REDIRECT,
        [(header::LOCATION, HeaderValue::from_static("ui/"))],
    )
        .into_response()
}

async fn serve(asset: &'static Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            // Small files, and a new engine may ship new ones: always revalidate.
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        asset.body,
    )
        .into_response()
}
