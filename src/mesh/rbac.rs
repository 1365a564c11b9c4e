//! iii's RBAC listener at work: the auth call at connect, and the
//! registration hooks an RBAC session's registrations pass through before
//! they reach the registry. The rules themselves are in [`super::access`].
//!
//! A hook is awaited in the connection's message loop, so registrations and
//! the calls after them stay in the order the worker sent them (iii does
//! the same). Every hook call has a deadline: a hook that never answers
//! denies, it does not stall the connection for ever.

use serde_json::{Value, json};
use std::time::Duration;

use super::Mesh;
use super::access::{Access, AuthResult, RbacSession};
use crate::protocol::inbound::{
    FunctionRegistration, TriggerRegistration, TriggerTypeRegistration,
};
use crate::protocol::{DEFAULT_NAMESPACE, ErrorBody, Payload, codes, to_payload};

/// How long the auth function and each registration hook may take.
pub(crate) const HOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an RBAC connection was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("auth function failed: {0}")]
    Failed(ErrorBody),
    #[error("auth function returned nothing")]
    Empty,
    #[error("auth function returned something that is not an AuthResult: {0}")]
    Unreadable(serde_json::Error),
}

/// Calls the listener's auth function with iii's `AuthInput`
/// (`{headers, query_params, ip_address}`) and reads its `AuthResult`.
pub(crate) async fn authenticate(
    mesh: &Mesh,
    auth_function_id: &str,
    input: &Value,
) -> Result<AuthResult, AuthError> {
    let outcome = mesh
        .call(
            DEFAULT_NAMESPACE,
            auth_function_id,
            to_payload(input),
            HOOK_TIMEOUT,
        )
        .await
        .map_err(AuthError::Failed)?;
    let raw = outcome.ok_or(AuthError::Empty)?;
    if raw.get().trim() == "null" {
        return Err(AuthError::Empty);
    }
    serde_json::from_str(raw.get()).map_err(AuthError::Unreadable)
}

/// Calls a hook; its result counts only if it is a JSON object.
async fn hook(mesh: &Mesh, hook_id: &str, input: Value) -> Option<serde_json::Map<String, Value>> {
    match mesh
        .call(DEFAULT_NAMESPACE, hook_id, to_payload(&input), HOOK_TIMEOUT)
        .await
    {
        Ok(Some(raw)) => match serde_json::from_str::<Value>(raw.get()) {
            Ok(Value::Object(map)) => Some(map),
            _ => None,
        },
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(hook = hook_id, error = %e, "registration hook denied");
            None
        }
    }
}

fn raw_value(raw: &Option<Payload>) -> Value {
    raw.as_ref()
        .and_then(|r| serde_json::from_str(r.get()).ok())
        .unwrap_or(Value::Null)
}

fn string_override(map: &serde_json::Map<String, Value>, key: &str, into: &mut String) {
    if let Some(Value::String(s)) = map.get(key) {
        *into = s.clone();
    }
}

/// `<prefix>::<id>` for a prefixed session.
pub(crate) fn prefixed(access: &Access, id: &str) -> String {
    match access.registration_prefix() {
        Some(prefix) => format!("{prefix}::{id}"),
        None => id.to_owned(),
    }
}

/// A `registerfunction` from an RBAC session: refused silently unless the
/// session may register, then the hook (which may rename it, redescribe it
/// or deny it), then the prefix.
pub(crate) async fn vet_function(
    mesh: &Mesh,
    access: &Access,
    session: &RbacSession,
    namespace: &str,
    mut reg: FunctionRegistration,
) -> Option<FunctionRegistration> {
    if !session.grant.allow_function_registration {
        tracing::info!(function_id = %reg.id, "RBAC: function registration not allowed for this session; dropped");
        return None;
    }
    if let Some(hook_id) = &session.config.on_function_registration_function_id {
        let input = json!({
            "function_id": reg.id,
            "description": reg.description,
            "metadata": raw_value(&reg.metadata),
            "namespace": namespace,
            "context": session.grant.context,
        });
        let Some(answer) = hook(mesh, hook_id, input).await else {
            tracing::info!(function_id = %reg.id, "RBAC: function registration denied by the hook");
            return None;
        };
        string_override(&answer, "function_id", &mut reg.id);
        if let Some(Value::String(d)) = answer.get("description") {
            reg.description = Some(d.clone());
        }
        if let Some(m) = answer.get("metadata") {
            reg.metadata = Some(to_payload(m));
        }
    }
    reg.id = prefixed(access, &reg.id);
    Some(reg)
}

/// A `registertriggertype` from an RBAC session: ignored unless the session
/// may register trigger types, then the hook.
pub(crate) async fn vet_trigger_type(
    mesh: &Mesh,
    session: &RbacSession,
    mut reg: TriggerTypeRegistration,
) -> Option<TriggerTypeRegistration> {
    if !session.grant.allow_trigger_type_registration {
        tracing::info!(trigger_type = %reg.id, "RBAC: trigger type registration not allowed for this session; dropped");
        return None;
    }
    if let Some(hook_id) = &session.config.on_trigger_type_registration_function_id {
        let input = json!({
            "trigger_type_id": reg.id,
            "description": reg.description,
            "context": session.grant.context,
        });
        let Some(answer) = hook(mesh, hook_id, input).await else {
            tracing::info!(trigger_type = %reg.id, "RBAC: trigger type registration denied by the hook");
            return None;
        };
        string_override(&answer, "trigger_type_id", &mut reg.id);
        string_override(&answer, "description", &mut reg.description);
    }
    Some(reg)
}

/// What became of a `registertrigger` from an RBAC session.
pub(crate) enum TriggerVetting {
    Bind(TriggerRegistration),
    /// Dropped without a word (iii's behaviour for a denial by type or hook).
    Dropped,
    /// Refused with a `triggerregistrationresult` carrying this error.
    Refused(TriggerRegistration, ErrorBody),
}

/// iii's order: blank namespaces, the allowed trigger types, the hook (which
/// may rewrite the binding), the prefix, then may the session call the
/// target function at all.
pub(crate) async fn vet_trigger(
    mesh: &Mesh,
    access: &Access,
    session: &RbacSession,
    mut reg: TriggerRegistration,
) -> TriggerVetting {
    let blank = |ns: &Option<String>| ns.as_ref().is_some_and(|n| n.trim().is_empty());
    if blank(&reg.namespace) || blank(&reg.trigger_namespace) {
        let err = ErrorBody::new(codes::INVALID_NAMESPACE, "namespace must not be blank");
        return TriggerVetting::Refused(reg, err);
    }
    if !session.may_bind(&reg.trigger_type) {
        tracing::info!(trigger_type = %reg.trigger_type, "RBAC: trigger type not allowed for this session; binding dropped");
        return TriggerVetting::Dropped;
    }
    let namespace = reg
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    if let Some(hook_id) = &session.config.on_trigger_registration_function_id {
        let input = json!({
            "trigger_id": reg.id,
            "trigger_type": reg.trigger_type,
            "function_id": reg.function_id,
            "config": raw_value(&reg.config),
            "metadata": raw_value(&reg.metadata),
            "namespace": namespace,
            "context": session.grant.context,
        });
        let Some(answer) = hook(mesh, hook_id, input).await else {
            tracing::info!(trigger_id = %reg.id, "RBAC: binding denied by the hook");
            return TriggerVetting::Dropped;
        };
        string_override(&answer, "trigger_id", &mut reg.id);
        string_override(&answer, "trigger_type", &mut reg.trigger_type);
        string_override(&answer, "function_id", &mut reg.function_id);
        if let Some(c) = answer.get("config") {
            reg.config = Some(to_payload(c));
        }
    }
    reg.function_id = prefixed(access, &reg.function_id);
    let metadata = mesh.function_metadata(&namespace, &reg.function_id);
    if session
        .may_call(&reg.function_id, &namespace, metadata.as_ref())
        .is_err()
    {
        let msg = format!(
            "function '{}' not allowed in namespace '{namespace}'",
            reg.function_id
        );
        return TriggerVetting::Refused(reg, ErrorBody::new(codes::FORBIDDEN, msg));
    }
    TriggerVetting::Bind(reg)
}
