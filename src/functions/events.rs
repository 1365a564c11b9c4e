//! The engine-provided trigger types `engine::workers-available` and
//! `engine::functions-available`, fired from mesh events as they happen
//! (iii polls every 5 s). Function changes are coalesced over a short window
//! so a worker registering fifty functions causes one event, not fifty.

use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use crate::mesh::state::{Key, TypeProvider};
use crate::mesh::{Mesh, MeshEvent};
use crate::protocol::{Payload, to_payload};

/// Trigger types the engine itself fires, in namespace `default`.
pub(crate) const WORKERS_AVAILABLE: &str = "engine::workers-available";
pub(crate) const FUNCTIONS_AVAILABLE: &str = "engine::functions-available";

const COALESCE: Duration = Duration::from_millis(50);

/// Runs until the mesh's event channel closes (never, while the engine runs).
pub(crate) async fn run(mesh: Mesh) {
    let mut events = mesh.subscribe();
    let mut functions_due: Option<Instant> = None;
    loop {
        let sleep = async {
            match functions_due {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(MeshEvent::WorkerConnected(id)) => fire_worker_event(&mesh, "worker_connected", id),
                Ok(MeshEvent::WorkerDisconnected(id)) => fire_worker_event(&mesh, "worker_disconnected", id),
                Ok(MeshEvent::WorkerUpdated(id)) => fire_worker_event(&mesh, "worker_metadata_updated", id),
                Ok(MeshEvent::FunctionsChanged) | Err(RecvError::Lagged(_)) => {
                    functions_due.get_or_insert_with(|| Instant::now() + COALESCE);
                }
                Ok(MeshEvent::FunctionAvailable | MeshEvent::TriggersChanged) => {}
                Err(RecvError::Closed) => return,
            },
            _ = sleep => {
                functions_due = None;
                let list = super::views::function_list(
                    &mesh.lock(),
                    super::views::this_engine(&mesh),
                    &Default::default(),
                    &super::views::all_visible,
                );
                let payload = to_payload(&serde_json::json!({ "event": "functions_changed", "functions": list }));
                fire_all(&mesh, FUNCTIONS_AVAILABLE, payload);
            }
        }
    }
}

fn fire_worker_event(mesh: &Mesh, event: &str, worker_id: uuid::Uuid) {
    let payload = to_payload(&serde_json::json!({ "event": event, "worker_id": worker_id }));
    fire_all(mesh, WORKERS_AVAILABLE, payload);
}

/// Fires every binding of an engine trigger type, fire-and-forget.
fn fire_all(mesh: &Mesh, trigger_type: &str, payload: Payload) {
    let key: Key = (
        crate::protocol::DEFAULT_NAMESPACE.to_owned(),
        trigger_type.to_owned(),
    );
    let targets: Vec<(String, String, Option<Payload>)> = {
        let st = mesh.lock();
        if st.trigger_types.get(&key).map(|t| t.provider) != Some(TypeProvider::Engine) {
            return;
        }
        st.bindings
            .values()
            .filter(|b| b.active_on.as_ref() == Some(&key))
            .map(|b| {
                (
                    b.namespace.clone(),
                    b.function_id.clone(),
                    b.metadata.clone(),
                )
            })
            .collect()
    };
    for (ns, function_id, metadata) in targets {
        if !mesh.fire(&ns, &function_id, payload.clone(), metadata) {
            tracing::debug!(
                function_id,
                trigger_type,
                "bound function has no worker; event skipped"
            );
        }
    }
}
