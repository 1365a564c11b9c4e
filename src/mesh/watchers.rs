//! The bindings of an engine-served trigger type that fires on events the
//! engine sees (state changes, stream events): a table by binding id, each
//! with its parsed config, and the fan-out that calls every binding whose
//! config wants an event, condition function first.
//!
//! `bind`/`unbind` run under the mesh lock and touch only this table; the
//! fan-out copies the matching bindings out before it calls the mesh.

use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::Mesh;
use super::state::{Binding, TriggerTypeHandler};
use crate::protocol::{ErrorBody, Payload, codes};

/// A trigger type's binding config.
pub(crate) trait WatchConfig: DeserializeOwned + Clone + Send + Sync + 'static {
    /// The config of a binding registered without one (`None`: refused, as
    /// when the type needs a field).
    fn when_absent() -> Option<Self>;
    /// The binding's condition function, if any.
    fn condition(&self) -> Option<&str>;
}

#[derive(Debug, Clone)]
struct Watcher<C> {
    namespace: String,
    function_id: String,
    metadata: Option<Payload>,
    config: C,
}

/// Every live binding of one trigger type, by binding id.
pub(crate) struct Watchers<C> {
    trigger_type: &'static str,
    table: Arc<Mutex<HashMap<String, Watcher<C>>>>,
    /// Whether a binding made on one engine of a cluster is bound on every
    /// engine (see [`TriggerTypeHandler::cluster_wide`]).
    cluster_wide: bool,
}

impl<C> Clone for Watchers<C> {
    fn clone(&self) -> Self {
        Self {
            trigger_type: self.trigger_type,
            table: self.table.clone(),
            cluster_wide: self.cluster_wide,
        }
    }
}

impl<C: WatchConfig> Watchers<C> {
    pub(crate) fn new(trigger_type: &'static str) -> Self {
        Self {
            trigger_type,
            table: Arc::default(),
            cluster_wide: false,
        }
    }

    /// Bound on every engine of a cluster: the events are seen by
    /// whichever engine they happen on (a job's progress, reported to the
    /// engine running it), and each must fire every binding.
    pub(crate) fn cluster_wide(mut self) -> Self {
        self.cluster_wide = true;
        self
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Watcher<C>>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls every binding whose config `wants` the event with the payload
    /// `payload()` makes (only when one does), from a task: the caller does
    /// not wait for handlers. Each binding's condition function runs first;
    /// only a result of exactly `false`, an error or a timeout skips it.
    pub(crate) fn fire(
        &self,
        mesh: &Mesh,
        condition_timeout: Duration,
        wants: impl Fn(&C) -> bool,
        payload: impl FnOnce() -> Payload,
    ) {
        let matching: Vec<Watcher<C>> = self
            .lock()
            .values()
            .filter(|w| wants(&w.config))
            .cloned()
            .collect();
        if matching.is_empty() {
            return;
        }
        let payload = payload();
        let (mesh, trigger_type) = (mesh.clone(), self.trigger_type);
        tokio::spawn(async move {
            for w in matching {
                mesh.fire_if_condition_allows(
                    trigger_type,
                    &w.namespace,
                    &w.function_id,
                    w.config.condition(),
                    payload.clone(),
                    w.metadata.clone(),
                    condition_timeout,
                )
                .await;
            }
        });
    }
}

impl<C: WatchConfig> TriggerTypeHandler for Watchers<C> {
    fn bind(&self, b: &Binding) -> Result<(), ErrorBody> {
        let parse_error = |e: &dyn std::fmt::Display| {
            ErrorBody::new(
                codes::TRIGGER_REGISTRATION_FAILED,
                format!("Failed to parse trigger config: {e}"),
            )
        };
        let config = match (b.config.get().trim(), C::when_absent()) {
            ("null", Some(absent)) => absent,
            (text, _) => serde_json::from_str(text).map_err(|e| parse_error(&e))?,
        };
        let watcher = Watcher {
            namespace: b.namespace.clone(),
            function_id: b.function_id.clone(),
            metadata: b.metadata.clone(),
            config,
        };
        self.lock().insert(b.id.clone(), watcher);
        Ok(())
    }

    fn unbind(&self, binding_id: &str) {
        self.lock().remove(binding_id);
    }

    fn cluster_wide(&self) -> bool {
        self.cluster_wide
    }
}
