//! The update ops of `state::update` and `stream::update` (iii's
//! `update_ops`), applied in order to one JSON value: what the ops on the
//! wire mean, shared by both modules. An op that cannot apply is skipped and reported; the
//! others still apply. Nothing here panics or recurses on caller input: paths
//! and merged values are bounded before they are walked.

use serde::Serialize;
use serde_json::{Map, Value};

use super::codes::update_op as code;

/// At most this many segments in a path.
pub const MAX_PATH_SEGMENTS: usize = 32;
/// At most this many bytes in one path segment.
pub const MAX_SEGMENT_BYTES: usize = 256;
/// A merged object has at most this many keys…
pub const MAX_MERGE_KEYS: usize = 1024;
/// …and nests at most this deep.
pub const MAX_MERGE_DEPTH: usize = 16;
/// Where the ops are described, for `errors[].doc_url`.
pub const DOC_URL: &str = "README.md#state";

const PROTOTYPE_KEYS: [&str; 3] = ["__proto__", "constructor", "prototype"];

/// One op that was skipped, as `state::update` reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpError {
    pub op_index: usize,
    pub code: String,
    pub message: String,
    pub doc_url: &'static str,
}

/// Applies `ops` to `root` in order; returns the ops that were skipped.
pub fn apply(root: &mut Value, ops: &[Value]) -> Vec<OpError> {
    let mut errors = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if let Err((op_name, suffix, message)) = apply_one(root, op) {
            errors.push(OpError {
                op_index: i,
                code: format!("{op_name}.{suffix}"),
                message,
                doc_url: DOC_URL,
            });
        }
    }
    errors
}

type Failure = (String, &'static str, String);

fn apply_one(root: &mut Value, op: &Value) -> Result<(), Failure> {
    let kind = op.get("type").and_then(Value::as_str).unwrap_or("op");
    let fail = |suffix: &'static str, message: String| (kind.to_owned(), suffix, message);
    let field = |name: &str| op.get(name);
    match kind {
        "set" => {
            let path = segments(field("path"), kind)?;
            let value = field("value").cloned().unwrap_or(Value::Null);
            if path.0.is_empty() {
                *root = value;
                return Ok(());
            }
            // A `set` path names one top-level field, dots and all.
            let name = path.concat_literal();
            let Value::Object(map) = root else {
                return Err(fail(
                    code::TARGET_NOT_OBJECT,
                    "the value is not an object".into(),
                ));
            };
            map.insert(name, value);
            Ok(())
        }
        "merge" => {
            let path = segments(field("path"), kind)?;
            let Some(Value::Object(value)) = field("value") else {
                return Err(fail(
                    code::VALUE_NOT_AN_OBJECT,
                    "merge needs an object value".into(),
                ));
            };
            check_merge_value(value).map_err(|(s, m)| fail(s, m))?;
            let target = walk_creating(root, &path.0);
            let Value::Object(target) = target else {
                unreachable_object()
            };
            for (k, v) in value {
                target.insert(k.clone(), v.clone());
            }
            Ok(())
        }
        "increment" | "decrement" => {
            let path = segments(field("path"), kind)?;
            let Some(by) = field("by").and_then(Value::as_i64) else {
                return Err(fail(code::INVALID_OP, "`by` must be an integer".into()));
            };
            let by = if kind == "decrement" {
                by.checked_neg()
            } else {
                Some(by)
            };
            let Some(by) = by else {
                return Err(fail(code::NOT_NUMBER, "`by` is out of range".into()));
            };
            let Some((last, parents)) = path.0.split_last() else {
                return Err(fail(
                    code::NOT_NUMBER,
                    "the whole value cannot be a counter".into(),
                ));
            };
            if root.is_null() {
                *root = Value::Object(Map::new());
            }
            if !root.is_object() {
                return Err(fail(code::NOT_NUMBER, "the value is not an object".into()));
            }
            let Value::Object(map) = walk_creating(root, parents) else {
                return Err(fail(code::NOT_NUMBER, "the value is not an object".into()));
            };
            let next = match map.get(last.as_str()) {
                None | Some(Value::Null) => Value::from(by),
                Some(Value::Number(n)) => match n.as_i64() {
                    Some(i) => match i.checked_add(by) {
                        Some(sum) => Value::from(sum),
                        None => return Err(fail(code::NOT_NUMBER, "integer overflow".into())),
                    },
                    None => serde_json::Number::from_f64(n.as_f64().unwrap_or(0.0) + by as f64)
                        .map(Value::Number)
                        .ok_or_else(|| fail(code::NOT_NUMBER, "not a finite number".into()))?,
                },
                Some(other) => {
                    return Err(fail(
                        code::NOT_NUMBER,
                        format!("`{last}` holds {}, not a number", type_name(other)),
                    ));
                }
            };
            map.insert(last.clone(), next);
            Ok(())
        }
        "append" => {
            let path = segments(field("path"), kind)?;
            let value = field("value").cloned().unwrap_or(Value::Null);
            let nested = path.0.len() > 1;
            let target = match path.0.split_last() {
                None => root,
                Some((last, parents)) => {
                    if !root.is_object() {
                        if !root.is_null() {
                            return Err(fail(
                                code::TYPE_MISMATCH,
                                "the value is not an object".into(),
                            ));
                        }
                        *root = Value::Object(Map::new());
                    }
                    let Value::Object(map) = walk_creating(root, parents) else {
                        unreachable_object()
                    };
                    map.entry(last.clone()).or_insert(Value::Null)
                }
            };
            match (target, value) {
                (Value::Array(items), v) => items.push(v),
                (Value::String(s), Value::String(more)) => s.push_str(&more),
                (t @ Value::Null, Value::String(s)) if !nested => *t = Value::String(s),
                (t @ Value::Null, v) => *t = Value::Array(vec![v]),
                (t, v) => {
                    return Err(fail(
                        code::TYPE_MISMATCH,
                        format!("cannot append {} to {}", type_name(&v), type_name(t)),
                    ));
                }
            }
            Ok(())
        }
        "remove" => {
            let path = segments(field("path"), kind)?;
            let Some((last, parents)) = path.0.split_last() else {
                *root = Value::Null;
                return Ok(());
            };
            let mut at = &mut *root;
            for seg in parents {
                match at.get_mut(seg.as_str()) {
                    Some(next) => at = next,
                    None => return Ok(()),
                }
            }
            if let Value::Object(map) = at {
                map.remove(last.as_str());
            }
            Ok(())
        }
        other => Err((
            other.chars().take(MAX_SEGMENT_BYTES).collect(),
            code::INVALID_OP,
            format!(
                "unknown op type {:?}",
                other.chars().take(64).collect::<String>()
            ),
        )),
    }
}

fn unreachable_object() -> ! {
    // `walk_creating` returns an object whenever the root is one.
    unreachable!("walk_creating always yields an object")
}

/// A checked path: its segments (empty = the whole value).
struct Path(Vec<String>);

impl Path {
    fn concat_literal(&self) -> String {
        self.0.join(".")
    }
}

/// `path` as segments: a string is one literal segment (`""` = the root), an
/// array is one segment per string.
fn segments(path: Option<&Value>, op: &str) -> Result<Path, Failure> {
    let fail = |s: &'static str, m: String| (op.to_owned(), s, m);
    let segs: Vec<String> = match path {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) if s.is_empty() => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            if items.len() > MAX_PATH_SEGMENTS {
                return Err(fail(
                    code::PATH_TOO_DEEP,
                    format!("{} segments; at most {MAX_PATH_SEGMENTS}", items.len()),
                ));
            }
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                let Value::String(s) = item else {
                    return Err(fail(
                        code::INVALID_OP,
                        "path segments must be strings".into(),
                    ));
                };
                out.push(s.clone());
            }
            out
        }
        Some(_) => {
            return Err(fail(
                code::INVALID_OP,
                "path must be a string or an array".into(),
            ));
        }
    };
    for s in &segs {
        if s.is_empty() {
            return Err(fail(code::PATH_EMPTY_SEGMENT, "empty path segment".into()));
        }
        if s.len() > MAX_SEGMENT_BYTES {
            return Err(fail(
                code::PATH_SEGMENT_TOO_LONG,
                format!(
                    "a segment of {} bytes; at most {MAX_SEGMENT_BYTES}",
                    s.len()
                ),
            ));
        }
        if PROTOTYPE_KEYS.contains(&s.as_str()) {
            return Err(fail(
                code::PATH_PROTOTYPE_KEY,
                format!("{s:?} is not allowed"),
            ));
        }
    }
    Ok(Path(segs))
}

/// The object at `path` under `root`, made objects of on the way (a root or
/// intermediate that is not an object is replaced by one).
fn walk_creating<'a>(root: &'a mut Value, path: &[String]) -> &'a mut Value {
    if !root.is_object() {
        *root = Value::Object(Map::new());
    }
    let mut at = root;
    for seg in path {
        let Value::Object(map) = at else {
            unreachable_object()
        };
        let next = map.entry(seg.clone()).or_insert(Value::Null);
        if !next.is_object() {
            *next = Value::Object(Map::new());
        }
        at = next;
    }
    at
}

/// A merged value's bounds, checked without recursion.
fn check_merge_value(value: &Map<String, Value>) -> Result<(), (&'static str, String)> {
    if value.len() > MAX_MERGE_KEYS {
        return Err((
            code::VALUE_TOO_MANY_KEYS,
            format!("{} keys; at most {MAX_MERGE_KEYS}", value.len()),
        ));
    }
    let mut stack: Vec<(&Value, usize)> = value.values().map(|v| (v, 1)).collect();
    for k in value.keys() {
        if PROTOTYPE_KEYS.contains(&k.as_str()) {
            return Err((code::VALUE_PROTOTYPE_KEY, format!("{k:?} is not allowed")));
        }
    }
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Object(m) => {
                if let Some(k) = m.keys().find(|k| PROTOTYPE_KEYS.contains(&k.as_str())) {
                    return Err((code::VALUE_PROTOTYPE_KEY, format!("{k:?} is not allowed")));
                }
                Box::new(m.values())
            }
            Value::Array(a) => Box::new(a.iter()),
            _ => continue,
        };
        if depth >= MAX_MERGE_DEPTH {
            return Err((
                code::VALUE_TOO_DEEP,
                format!("nested deeper than {MAX_MERGE_DEPTH}"),
            ));
        }
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    Ok(())
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(mut v: Value, ops: Value) -> (Value, Vec<String>) {
        let errs = apply(&mut v, ops.as_array().unwrap());
        (v, errs.into_iter().map(|e| e.code).collect())
    }

    #[test]
    fn set_names_one_literal_field_and_keeps_the_others() {
        let (v, e) = run(
            json!({"count": 0, "name": "initial"}),
            json!([{"type": "set", "path": "count", "value": 5}, {"type": "set", "path": "a.b", "value": 1}]),
        );
        assert_eq!(v, json!({"count": 5, "name": "initial", "a.b": 1}));
        assert!(e.is_empty());
        let (v, e) = run(json!(3), json!([{"type": "set", "path": "x", "value": 1}]));
        assert_eq!((v, e), (json!(3), vec!["set.target_not_object".to_owned()]));
        let (v, _) = run(
            json!({"a": 1}),
            json!([{"type": "set", "path": "", "value": [1]}]),
        );
        assert_eq!(v, json!([1]));
    }

    #[test]
    fn merge_creates_intermediates_and_refuses_bad_values() {
        let (v, e) = run(
            json!({"a": 1}),
            json!([{"type": "merge", "path": ["p", "q"], "value": {"x": 1}}, {"type": "merge", "value": {"b": 2}}]),
        );
        assert_eq!(v, json!({"a": 1, "b": 2, "p": {"q": {"x": 1}}}));
        assert!(e.is_empty());
        let mut deep = json!(1);
        for _ in 0..20 {
            deep = json!({ "d": deep });
        }
        let many: Map<String, Value> = (0..1100).map(|i| (i.to_string(), json!(i))).collect();
        let (_, e) = run(
            json!({}),
            json!([
                {"type": "merge", "value": 1},
                {"type": "merge", "value": deep},
                {"type": "merge", "value": many},
                {"type": "merge", "value": {"__proto__": {}}},
                {"type": "merge", "path": vec!["x"; 40], "value": {}},
                {"type": "merge", "path": ["a", ""], "value": {}},
            ]),
        );
        assert_eq!(
            e,
            [
                "merge.value.not_an_object",
                "merge.value.too_deep",
                "merge.value.too_many_keys",
                "merge.value.prototype_key",
                "merge.path.too_deep",
                "merge.path.empty_segment"
            ]
        );
    }

    #[test]
    fn counters_append_and_remove() {
        let (v, e) = run(
            json!({"n": 1, "f": 1.5, "s": "x", "list": [], "text": "hello"}),
            json!([
                {"type": "increment", "path": "n", "by": 2},
                {"type": "decrement", "path": "missing", "by": 3},
                {"type": "increment", "path": "f", "by": 1},
                {"type": "increment", "path": "s", "by": 1},
                {"type": "append", "path": "list", "value": {"kind": "chunk"}},
                {"type": "append", "path": "text", "value": " world"},
                {"type": "append", "path": "new", "value": "s"},
                {"type": "append", "path": ["deep", "leaf"], "value": "s"},
                {"type": "append", "path": "n", "value": 1},
                {"type": "remove", "path": "f"},
                {"type": "explode"},
            ]),
        );
        assert_eq!(
            v,
            json!({"n": 3, "missing": -3, "s": "x", "list": [{"kind": "chunk"}],
                   "text": "hello world", "new": "s", "deep": {"leaf": ["s"]}})
        );
        assert_eq!(
            e,
            [
                "increment.not_number",
                "append.type_mismatch",
                "explode.invalid_op"
            ]
        );
        let (v, _) = run(json!({"a": 1}), json!([{"type": "remove", "path": ""}]));
        assert_eq!(v, Value::Null);
    }
}
