//! The `stream:join` and `stream:leave` trigger types: bindings kept one by
//! one (their config is ignored, as in iii), and what firing them means.
//! Both get `{subscription_id, stream_name, group_id, id, context}`.
//!
//! A join asks every join binding in turn; one answering
//! `{"unauthorized": true}` refuses the subscription. Unlike iii, a join
//! handler that fails or does not answer in `join_timeout` refuses it too:
//! these handlers are the authorisation of a subscription, so they fail
//! closed. Leaves are fire and forget. Both carry the binding's metadata,
//! as iii's module fires do.
//!
//! `bind`/`unbind` run under the mesh lock and touch only this table.

use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::mesh::Mesh;
use crate::mesh::router::CallExtras;
use crate::mesh::state::{Binding, TriggerTypeHandler};
use crate::protocol::{ErrorBody, Payload};

pub(super) const JOIN: &str = "stream:join";
pub(super) const LEAVE: &str = "stream:leave";

#[derive(Debug, Clone)]
struct Handler {
    namespace: String,
    function_id: String,
    metadata: Option<Payload>,
}

/// The bindings of one of the two types, by binding id (ordered, so joins
/// ask handlers in a stable order).
#[derive(Clone, Default)]
pub(super) struct Bindings {
    table: Arc<Mutex<BTreeMap<String, Handler>>>,
}

impl Bindings {
    fn handlers(&self) -> Vec<Handler> {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

impl TriggerTypeHandler for Bindings {
    fn bind(&self, b: &Binding) -> Result<(), ErrorBody> {
        let handler = Handler {
            namespace: b.namespace.clone(),
            function_id: b.function_id.clone(),
            metadata: b.metadata.clone(),
        };
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(b.id.clone(), handler);
        Ok(())
    }

    fn unbind(&self, binding_id: &str) {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(binding_id);
    }
}

#[derive(Clone, Default)]
pub(super) struct Lifecycle {
    pub joins: Bindings,
    pub leaves: Bindings,
}

/// What the join handlers decided.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Allowed,
    /// Refused by `function_id`: it answered `unauthorized`, failed or timed out.
    Refused {
        function_id: String,
    },
}

impl Lifecycle {
    /// Asks every `stream:join` handler, in turn, until one refuses.
    pub(super) async fn join(&self, mesh: &Mesh, payload: &Payload, timeout: Duration) -> Verdict {
        for h in self.joins.handlers() {
            let extras = CallExtras {
                metadata: h.metadata.clone(),
                ..CallExtras::default()
            };
            match mesh
                .call_with(
                    &h.namespace,
                    &h.function_id,
                    payload.clone(),
                    extras,
                    timeout,
                )
                .await
            {
                Ok(answer) if !unauthorized(answer.as_deref()) => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::info!(function_id = %h.function_id, error = %e, "stream:join handler failed; the join is refused");
                }
            }
            return Verdict::Refused {
                function_id: h.function_id,
            };
        }
        Verdict::Allowed
    }

    /// Fires every `stream:leave` handler without waiting.
    pub(super) fn leave(&self, mesh: &Mesh, payload: &Payload) {
        for h in self.leaves.handlers() {
            if !mesh.fire(
                &h.namespace,
                &h.function_id,
                payload.clone(),
                h.metadata.clone(),
            ) {
                tracing::debug!(function_id = %h.function_id, "stream:leave handler has no worker; skipped");
            }
        }
    }
}

/// Whether a join handler's answer is `{"unauthorized": true}`.
fn unauthorized(answer: Option<&serde_json::value::RawValue>) -> bool {
    answer
        .and_then(|r| serde_json::from_str::<Value>(r.get()).ok())
        .is_some_and(|v| v.get("unauthorized") == Some(&Value::Bool(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unauthorized_true_refuses() {
        let raw = |s: &str| serde_json::value::RawValue::from_string(s.to_owned()).unwrap();
        assert!(unauthorized(Some(&raw(r#"{"unauthorized":true}"#))));
        for allowed in [
            r#"{"unauthorized":false}"#,
            r#"{"unauthorized":"yes"}"#,
            "null",
            "{}",
        ] {
            assert!(!unauthorized(Some(&raw(allowed))), "{allowed}");
        }
        assert!(!unauthorized(None));
    }
}
