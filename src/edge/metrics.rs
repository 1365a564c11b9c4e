//! `GET /metrics`: Prometheus / OpenMetrics text, gathered at scrape time
//! from the mesh and every module (`Module::metrics`). It names functions
//! and queues, so with `[auth]` tokens it asks for one (any role), as a
//! Prometheus scrape config's `authorization` sends; an RBAC listener, for
//! untrusted workers, does not serve it.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;

pub async fn metrics(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if app.policy.rules.rbac.is_some() {
        return StatusCode::NOT_FOUND.into_response();
    }
    if !app.policy.may_read_metrics(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            "a valid Authorization: Bearer token is required",
        )
            .into_response();
    }
    let text = (app.metrics)().await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
