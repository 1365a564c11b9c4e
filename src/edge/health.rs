//! `GET /health`: liveness plus the counts an operator checks first.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;

pub async fn health(State(app): State<AppState>) -> (StatusCode, Json<Value>) {
    let stats = app.mesh.stats();
    let draining = app.mesh.is_draining();
    let status = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let parts = (app.health)();
    // A degraded part (a full disk) keeps 200: the engine still routes calls,
    // and a liveness probe restarting it cannot make room on the disk;
    // `status` says `degraded`, and the part says why, for those who watch.
    let degraded = parts.iter().any(|(_, v)| v["state"] == "degraded");
    let mut body = json!({
            "status": if draining { "draining" } else if degraded { "degraded" } else { "ok" },
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_ms": app.mesh.uptime().as_millis() as u64,
            "workers": stats.workers,
            "functions": stats.functions,
            "pending_invocations": stats.pending_invocations,
            "memory_budget": {
                "used_bytes": app.mesh.budget().used(),
                "limit_bytes": app.mesh.budget().limit(),
            },
    });
    for (key, value) in parts {
        body[key] = value;
    }
    (status, Json(body))
}
