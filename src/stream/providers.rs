//! Custom stream providers (iii's rule): before using the store, `set`,
//! `get`, `delete`, `list`, `list_groups` and `update` look for a function
//! named `stream::<op>(<stream_name>)` in namespace `default`. If a worker
//! provides one, the engine calls it with the op's typed input re-serialised
//! (so no `_caller_worker_id`) and waits for it: the reply is the provider's
//! answer, decoded as the op requires (`JSON_ERROR` when it does not fit).
//! Events and triggers fire as for the store.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::time::Duration;

use crate::mesh::Mesh;
use crate::protocol::{DEFAULT_NAMESPACE, ErrorBody, codes, to_payload};

/// A provider function found for one call.
pub(super) struct Provider {
    function_id: String,
}

/// The provider of `op` on `stream`, if a worker registered one.
pub(super) fn find(mesh: &Mesh, op: &str, stream: &str) -> Option<Provider> {
    let function_id = format!("stream::{op}({stream})");
    mesh.inspect(|st| {
        st.function(DEFAULT_NAMESPACE, &function_id)
            .is_some_and(|f| !f.providers.is_empty())
    })
    .then_some(Provider { function_id })
}

/// What `set` and `update` providers answer (`errors` only from `update`).
#[derive(Debug, Deserialize)]
pub(super) struct Written {
    #[serde(default)]
    pub old_value: Option<Value>,
    pub new_value: Value,
    #[serde(default)]
    pub errors: Option<Value>,
}

/// What a `delete` provider answers.
#[derive(Debug, Deserialize)]
pub(super) struct Deleted {
    #[serde(default)]
    pub old_value: Option<Value>,
}

impl Provider {
    /// Calls the provider with `input` and returns its answer as is (null
    /// when it returned nothing): what `get`, `list` and `list_groups` reply.
    pub(super) async fn call(
        &self,
        mesh: &Mesh,
        input: &impl serde::Serialize,
        timeout: Duration,
    ) -> Result<Value, ErrorBody> {
        let answer = mesh
            .call(
                DEFAULT_NAMESPACE,
                &self.function_id,
                to_payload(input),
                timeout,
            )
            .await?;
        Ok(answer
            .and_then(|r| serde_json::from_str(r.get()).ok())
            .unwrap_or(Value::Null))
    }

    /// Calls the provider and decodes its answer as `T`.
    pub(super) async fn call_as<T: DeserializeOwned>(
        &self,
        mesh: &Mesh,
        input: &impl serde::Serialize,
        timeout: Duration,
    ) -> Result<T, ErrorBody> {
        let answer = self.call(mesh, input, timeout).await?;
        serde_json::from_value(answer).map_err(|e| {
            ErrorBody::new(
                codes::JSON_ERROR,
                format!(
                    "{} answered something that is not the expected shape: {e}",
                    self.function_id
                ),
            )
        })
    }
}
