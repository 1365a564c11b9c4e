//! Clients of the published Rust SDK (crates.io `iii-sdk` =0.25.0), and what
//! the `tests/sdk_rust_*.rs` files share to drive them.

use iii_sdk::protocol::TriggerRequest;
use iii_sdk::runtime::WorkerMetadata;
use iii_sdk::{
    Error as SdkError, IIIClient, InitOptions, RegisterFunction, WorkerIdentityMode,
    register_worker,
};
use serde_json::Value;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a test waits for one expected event before failing.
pub const DEADLINE: Duration = Duration::from_secs(5);

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

/// A sync call with a short SDK timeout, so a missing answer fails fast.
pub async fn call(
    client: &IIIClient,
    function_id: &str,
    payload: Value,
) -> Result<Value, SdkError> {
    client
        .trigger(TriggerRequest {
            function_id: function_id.to_owned(),
            payload,
            action: None,
            timeout_ms: Some(5_000),
        })
        .await
}

/// The `code` of an error the engine (or the executing SDK) sent back.
pub fn remote_code(err: &SdkError) -> &str {
    match err {
        SdkError::Remote { code, .. } => code,
        other => panic!("expected a remote error, got {other:?}"),
    }
}

/// Next item from a handler's channel, or a failure naming what was awaited.
pub async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("channel closed while waiting for {what}"))
}

/// An async handler that forwards its input to `tx` and answers `reply(input)`.
pub fn recording(tx: mpsc::UnboundedSender<Value>, reply: fn(&Value) -> Value) -> RegisterFunction {
    RegisterFunction::new_async(move |input: Value| {
        let out = reply(&input);
        let _ = tx.send(input);
        async move { Ok::<_, SdkError>(out) }
    })
}
