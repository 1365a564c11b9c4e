//! Clients of the published Rust SDK (crates.io `iii-sdk` =0.25.0).

use iii_sdk::runtime::WorkerMetadata;
use iii_sdk::{IIIClient, InitOptions, WorkerIdentityMode, register_worker};

/// An SDK worker with a fixed name (no `III_WORKER_NAME` override) and no
/// OpenTelemetry socket (its exporter is process-global and would outlive
/// the test's engine).
pub fn sdk_worker(url: &str, name: &str) -> IIIClient {
    let mut otel = InitOptions::default().otel.unwrap_or_default();
    otel.enabled = Some(false);
    register_worker(
        url,
        InitOptions {
            metadata: Some(WorkerMetadata {
                name: name.to_owned(),
                ..Default::default()
            }),
            otel: Some(otel),
            identity: WorkerIdentityMode::Explicit,
            ..Default::default()
        },
    )
}

/// `shutdown` joins the client's connection thread, so keep it off the runtime.
pub async fn stop(client: IIIClient) {
    tokio::task::spawn_blocking(move || client.shutdown())
        .await
        .expect("shutdown");
}
