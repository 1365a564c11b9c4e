//! Who a worker connection is and what it may do.
//!
//! Every connection carries an [`Access`], fixed before its first message is
//! read: a principal (a token's name, an RBAC session's identity, or
//! `anonymous` on a trusted listener), a [`Role`], the rules of the listener
//! it came through, and on an RBAC listener the [`AuthResult`] its auth
//! function granted (iii's RBAC semantics, `docs/security.md`).
//!
//! This file holds the rules only (pure functions over config and grants);
//! the hooks that call functions during registration are in [`super::rbac`],
//! the checks are applied by [`super::session`], and the edge decides which
//! `Access` a connection gets.

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

use crate::protocol::DEFAULT_NAMESPACE;

/// What a principal may do beyond calling and serving functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, operator functions included (pause, purge, redrive, read
    /// payloads, message any realtime client, remove others' triggers).
    Operator,
    /// Register, serve, call and enqueue; no operator function.
    Worker,
}

/// The rules of the listener a connection came through.
#[derive(Debug, Default)]
pub struct ListenerRules {
    /// For logs and principals (`[[listeners]] name`; `main` for `listen`).
    pub name: String,
    /// Every call from this listener to a worker function goes through it.
    pub middleware_function_id: Option<String>,
    /// iii's RBAC listener: set when the listener has an `[listeners.rbac]`.
    pub rbac: Option<RbacConfig>,
}

/// `[listeners.rbac]`: iii's `rbac` block of a worker-manager listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RbacConfig {
    /// Called once per connection with `{headers, query_params, ip_address}`;
    /// its result is the session ([`AuthResult`]). Without it every
    /// connection gets an anonymous session that may register anything.
    pub auth_function_id: Option<String>,
    pub on_function_registration_function_id: Option<String>,
    pub on_trigger_registration_function_id: Option<String>,
    pub on_trigger_type_registration_function_id: Option<String>,
    /// Functions any session of this listener may call.
    pub expose_functions: Vec<ExposeRule>,
}

/// One `expose_functions` entry.
#[derive(Debug, Clone)]
pub enum ExposeRule {
    /// `match("glob")`, or `{match = "glob", namespace?}`.
    Id { pattern: String, namespace: String },
    /// `{metadata = {key = value | 'match("glob")'}, namespace?}`: every key
    /// of the target function's metadata must match.
    Metadata {
        metadata: Map<String, Value>,
        namespace: String,
    },
}

impl<'de> Deserialize<'de> for ExposeRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            #[serde(rename = "match")]
            pattern: Option<String>,
            metadata: Option<Map<String, Value>>,
            namespace: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            Table(Table),
        }
        let ns = |n: Option<String>| n.unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        match Form::deserialize(d)? {
            Form::Text(text) => Ok(ExposeRule::Id {
                pattern: unwrap_match(&text).to_owned(),
                namespace: DEFAULT_NAMESPACE.to_owned(),
            }),
            Form::Table(Table {
                pattern: Some(p),
                metadata: None,
                namespace,
            }) => Ok(ExposeRule::Id {
                pattern: unwrap_match(&p).to_owned(),
                namespace: ns(namespace),
            }),
            Form::Table(Table {
                pattern: None,
                metadata: Some(metadata),
                namespace,
            }) => Ok(ExposeRule::Metadata {
                metadata,
                namespace: ns(namespace),
            }),
            Form::Table(_) => Err(serde::de::Error::custom(
                "an expose_functions rule has exactly one of `match` or `metadata`",
            )),
        }
    }
}

/// `match("x")` or `match('x')` → `x`; anything else as written.
fn unwrap_match(text: &str) -> &str {
    let t = text.trim();
    t.strip_prefix("match(")
        .and_then(|r| r.strip_suffix(')'))
        .map(|inner| inner.trim())
        .and_then(|inner| {
            inner
                .strip_prefix('"')
                .and_then(|r| r.strip_suffix('"'))
                .or_else(|| inner.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
        })
        .unwrap_or(t)
}

/// iii's patterns: `*` matches any run of characters; everything else,
/// `?` included, matches itself. (A glob crate would also treat `?` and
/// `[` as wildcards, which iii does not.)
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty(); // no `*` at all: exact
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// What an RBAC listener's auth function grants (iii's `AuthResult`). Every
/// field is optional; an explicit `null` counts as absent.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AuthResult {
    /// `{namespace: [id or glob]}`; its keys are also the only namespaces the
    /// session may declare, when it has any.
    #[serde(deserialize_with = "null_as_default")]
    pub namespaces: HashMap<String, Vec<String>>,
    /// Exact ids, namespace `default` only.
    #[serde(deserialize_with = "null_as_default")]
    pub allowed_functions: Vec<String>,
    /// Exact ids, denied in every namespace, before anything else.
    #[serde(deserialize_with = "null_as_default")]
    pub forbidden_functions: Vec<String>,
    /// Trigger types the session may bind (`None`: all).
    pub allowed_trigger_types: Option<Vec<String>>,
    #[serde(deserialize_with = "null_as_default")]
    pub allow_trigger_type_registration: bool,
    #[serde(deserialize_with = "null_as_true")]
    pub allow_function_registration: bool,
    /// Handed to the middleware and every hook.
    #[serde(deserialize_with = "null_as_default")]
    pub context: Value,
    /// Registered ids become `<prefix>::<id>`.
    pub function_registration_prefix: Option<String>,
}

impl Default for AuthResult {
    fn default() -> Self {
        Self {
            namespaces: HashMap::new(),
            allowed_functions: Vec::new(),
            forbidden_functions: Vec::new(),
            allowed_trigger_types: None,
            allow_trigger_type_registration: false,
            allow_function_registration: true,
            context: Value::Object(Map::new()),
            function_registration_prefix: None,
        }
    }
}

impl AuthResult {
    /// A listener without an auth function: anonymous, may register
    /// anything (trigger types included), may call only what is exposed.
    pub fn anonymous() -> Self {
        Self {
            allow_trigger_type_registration: true,
            ..Self::default()
        }
    }
}

fn null_as_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn null_as_true<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(true))
}

/// The SDKs' own plumbing, callable from any session (iii's infrastructure
/// carve-out): without it a restricted worker could not log or open a channel.
const INFRASTRUCTURE: &[&str] = &[
    "engine::channels::create",
    "engine::workers::register",
    "engine::log::info",
    "engine::log::warn",
    "engine::log::error",
    "engine::log::debug",
    "engine::log::trace",
    "engine::baggage::get",
    "engine::baggage::set",
    "engine::baggage::get_all",
];

/// Why a session may not call a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// Named in `forbidden_functions`.
    Forbidden,
    /// Neither granted nor exposed.
    NotExposed,
}

impl Denied {
    /// iii's FORBIDDEN message, with the remedy an operator needs.
    pub fn message(self, function_id: &str) -> String {
        let remedy = match self {
            Denied::Forbidden => "remove from rbac.forbidden_functions",
            Denied::NotExposed => "add to rbac.expose_functions",
        };
        format!("function '{function_id}' not allowed ({remedy})")
    }
}

/// An RBAC listener's session: the listener's rules and what auth granted.
#[derive(Debug)]
pub struct RbacSession {
    pub config: RbacConfig,
    pub grant: AuthResult,
}

impl RbacSession {
    /// iii's `is_function_allowed`, in its order. `metadata` is the target
    /// function's registered metadata, for `metadata` expose rules.
    pub fn may_call(
        &self,
        function_id: &str,
        namespace: &str,
        metadata: Option<&Value>,
    ) -> Result<(), Denied> {
        let g = &self.grant;
        if g.forbidden_functions.iter().any(|f| f == function_id) {
            return Err(Denied::Forbidden);
        }
        if g.namespaces.get(namespace).is_some_and(|patterns| {
            patterns
                .iter()
                .any(|p| glob_matches(unwrap_match(p), function_id))
        }) {
            return Ok(());
        }
        if namespace == DEFAULT_NAMESPACE && g.allowed_functions.iter().any(|f| f == function_id) {
            return Ok(());
        }
        if INFRASTRUCTURE.contains(&function_id) {
            return Ok(());
        }
        let exposed = self.config.expose_functions.iter().any(|rule| match rule {
            ExposeRule::Id {
                pattern,
                namespace: ns,
            } => ns == namespace && glob_matches(pattern, function_id),
            ExposeRule::Metadata {
                metadata: wanted,
                namespace: ns,
            } => ns == namespace && metadata.is_some_and(|m| metadata_matches(wanted, m)),
        });
        if exposed {
            Ok(())
        } else {
            Err(Denied::NotExposed)
        }
    }

    /// Whether the session may declare `namespace` in `engine::workers::register`.
    pub fn may_use_namespace(&self, namespace: &str) -> Result<(), String> {
        let granted = &self.grant.namespaces;
        if granted.is_empty() || granted.contains_key(namespace) {
            return Ok(());
        }
        let mut permitted: Vec<&str> = granted.keys().map(String::as_str).collect();
        permitted.sort_unstable();
        Err(format!(
            "namespace '{namespace}' not allowed for this session (permitted: {})",
            permitted.join(", ")
        ))
    }

    /// Whether the session may bind a trigger of this type.
    pub fn may_bind(&self, trigger_type: &str) -> bool {
        self.grant
            .allowed_trigger_types
            .as_ref()
            .is_none_or(|types| types.iter().any(|t| t == trigger_type))
    }
}

/// Every wanted key present with an equal value, or a string value matching
/// a `match("glob")`.
fn metadata_matches(wanted: &Map<String, Value>, metadata: &Value) -> bool {
    wanted.iter().all(|(key, want)| {
        let Some(have) = metadata.get(key) else {
            return false;
        };
        match want {
            Value::String(w) if unwrap_match(w) != w.trim() => have
                .as_str()
                .is_some_and(|h| glob_matches(unwrap_match(w), h)),
            _ => have == want,
        }
    })
}

/// Who a connection is and what it may do, fixed at connect.
#[derive(Debug)]
pub struct Access {
    /// Workers may share a function id only with the same principal.
    pub principal: String,
    pub role: Role,
    pub listener: Arc<ListenerRules>,
    /// Set on an RBAC listener.
    pub rbac: Option<RbacSession>,
}

impl Access {
    /// A trusted listener without authentication: everyone is the same
    /// anonymous operator (the engine's behaviour on loopback by default).
    pub fn trusted(listener: Arc<ListenerRules>) -> Self {
        Self {
            principal: "anonymous".to_owned(),
            role: Role::Operator,
            listener,
            rbac: None,
        }
    }

    /// Whether operator-only engine functions are open to this connection.
    /// An RBAC session was already checked against its grant, which is the
    /// operator's explicit decision.
    pub fn may_operate(&self) -> bool {
        self.role == Role::Operator || self.rbac.is_some()
    }

    /// The prefix an RBAC session's registered ids get.
    pub fn registration_prefix(&self) -> Option<&str> {
        self.rbac
            .as_ref()
            .and_then(|s| s.grant.function_registration_prefix.as_deref())
            .filter(|p| !p.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn globs_match_like_iii() {
        assert!(glob_matches(
            "test::ew::public::*",
            "test::ew::public::echo"
        ));
        assert!(!glob_matches("test::ew::public::*", "test::ew::private"));
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("a*c*e", "abcde"));
        assert!(!glob_matches("a*c*e", "abcdf"));
        assert!(glob_matches("exact", "exact"));
        assert!(!glob_matches("exact", "exactly"));
        assert!(!glob_matches("a?c", "abc"), "`?` is literal");
        assert!(!glob_matches("ab*b", "ab"));
        assert!(glob_matches("ab*b", "abb"));
    }

    #[test]
    fn rules_parse_from_every_form() {
        #[derive(Deserialize)]
        struct R {
            expose_functions: Vec<ExposeRule>,
        }
        let r: R = toml::from_str(
            r#"expose_functions = [
                'match("test::ew::public::*")',
                { match = "engine::functions::list" },
                { metadata = { ew_public = true } },
                { match = "x::*", namespace = "billing" },
            ]"#,
        )
        .unwrap();
        assert_eq!(r.expose_functions.len(), 4);
        assert!(
            matches!(&r.expose_functions[0], ExposeRule::Id { pattern, .. } if pattern == "test::ew::public::*")
        );
        assert!(
            matches!(&r.expose_functions[3], ExposeRule::Id { namespace, .. } if namespace == "billing")
        );
        let bad: Result<R, _> =
            toml::from_str(r#"expose_functions = [{ match = "a", metadata = { b = 1 } }]"#);
        assert!(bad.is_err());
        let unknown: Result<R, _> = toml::from_str(r#"expose_functions = [{ mach = "a" }]"#);
        assert!(unknown.is_err());
    }

    fn session(grant: Value) -> RbacSession {
        let config: RbacConfig = toml::from_str(
            r#"expose_functions = ['match("pub::*")', { metadata = { public = true } }]"#,
        )
        .unwrap();
        RbacSession {
            config,
            grant: serde_json::from_value(grant).unwrap(),
        }
    }

    #[test]
    fn may_call_follows_iiis_order() {
        let s = session(json!({
            "allowed_functions": ["a::b"],
            "forbidden_functions": ["pub::secret", "engine::log::info"],
            "namespaces": {"billing": ["match(\"inv::*\")"]},
            "allowed_trigger_types": null,
            "function_registration_prefix": null,
        }));
        assert_eq!(s.may_call("a::b", "default", None), Ok(()));
        assert_eq!(s.may_call("a::b", "other", None), Err(Denied::NotExposed));
        assert_eq!(s.may_call("pub::x", "default", None), Ok(()));
        assert_eq!(
            s.may_call("pub::secret", "default", None),
            Err(Denied::Forbidden)
        );
        assert_eq!(
            s.may_call("engine::log::info", "default", None),
            Err(Denied::Forbidden),
            "forbidden wins over the carve-out"
        );
        assert_eq!(s.may_call("engine::log::warn", "default", None), Ok(()));
        assert_eq!(s.may_call("inv::1", "billing", None), Ok(()));
        assert_eq!(
            s.may_call("m", "default", Some(&json!({"public": true}))),
            Ok(())
        );
        assert_eq!(
            s.may_call("m", "default", Some(&json!({"public": false}))),
            Err(Denied::NotExposed)
        );
        assert!(s.may_use_namespace("billing").is_ok());
        assert!(
            s.may_use_namespace("default")
                .unwrap_err()
                .contains("permitted: billing")
        );
        assert!(
            Denied::NotExposed
                .message("x")
                .contains("rbac.expose_functions")
        );
    }

    #[test]
    fn a_grant_of_nulls_is_the_default() {
        let g: AuthResult = serde_json::from_value(json!({
            "namespaces": null, "allowed_functions": null, "allow_function_registration": null,
            "context": null
        }))
        .unwrap();
        assert!(g.allow_function_registration);
        assert!(!g.allow_trigger_type_registration);
        assert!(g.namespaces.is_empty());
    }
}
