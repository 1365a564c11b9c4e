//! Output shared by every subcommand: aligned text tables for people, one
//! line of JSON for scripts, and the formatting of the values in them.

use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where a subcommand's answer goes: a table (or other text) by default, the
/// JSON value with `--json`.
pub fn emit(json: bool, value: &Value, text: impl FnOnce() -> String) {
    if json {
        println!("{value}");
    } else {
        let text = text();
        print!("{text}");
        if !text.ends_with('\n') {
            println!();
        }
    }
}

/// Columns aligned on the widest cell; `(none)` when there are no rows.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        if self.rows.is_empty() {
            return "(none)\n".to_owned();
        }
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let line = |cells: &mut dyn Iterator<Item = &str>| {
            let mut out = String::new();
            for (i, cell) in cells.enumerate() {
                let w = widths.get(i).copied().unwrap_or(0);
                out.push_str(cell);
                out.extend(std::iter::repeat_n(
                    ' ',
                    w.saturating_sub(cell.chars().count()) + 2,
                ));
            }
            out.truncate(out.trim_end().len());
            out.push('\n');
            out
        };
        let mut out = line(&mut self.headers.iter().copied());
        for row in &self.rows {
            out.push_str(&line(&mut row.iter().map(String::as_str)));
        }
        out
    }
}

/// `key  value` lines, keys aligned.
pub fn pairs(items: &[(&str, String)]) -> String {
    let width = items.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    items
        .iter()
        .map(|(k, v)| format!("{k:width$}  {v}\n"))
        .collect()
}

/// A JSON value as a table cell: strings bare, null as `-`, the rest as JSON.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Milliseconds since the epoch as a UTC time (`2026-11-23T18:20:00Z`), or `-`.
pub fn when(ms: &Value) -> String {
    match ms.as_u64() {
        Some(ms) if ms > 0 => {
            let t = UNIX_EPOCH + Duration::from_millis(ms);
            humantime::format_rfc3339_seconds(t).to_string()
        }
        _ => "-".to_owned(),
    }
}

/// Milliseconds as a short duration (`1m 3s`, `250ms`), or `-`.
pub fn age(ms: &Value) -> String {
    match ms.as_u64() {
        Some(ms) if ms >= 1000 => {
            humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
        }
        Some(ms) => format!("{ms}ms"),
        None => "-".to_owned(),
    }
}

/// How long ago a time in milliseconds since the epoch was.
pub fn ago(ms: &Value) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    match ms.as_u64() {
        Some(t) if t > 0 => format!("{} ago", age(&Value::from(now.saturating_sub(t)))),
        _ => "-".to_owned(),
    }
}

/// The array under `key` (or the value itself when it is an array).
pub fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.as_array()
        .or_else(|| v[key].as_array())
        .map_or(&[], Vec::as_slice)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns_and_trim_line_ends() {
        let mut t = Table::new(&["NAME", "N"]);
        t.row(vec!["alpha".into(), "1".into()]);
        t.row(vec!["b".into(), "22".into()]);
        assert_eq!(t.render(), "NAME   N\nalpha  1\nb      22\n");
        assert_eq!(Table::new(&["X"]).render(), "(none)\n");
    }

    #[test]
    fn values_format_for_people() {
        assert_eq!(cell(&json!(null)), "-");
        assert_eq!(cell(&json!("x")), "x");
        assert_eq!(cell(&json!({"a":1})), r#"{"a":1}"#);
        assert_eq!(when(&json!(0)), "-");
        assert_eq!(when(&json!(1_000)), "1970-01-01T00:00:01Z");
        assert_eq!(age(&json!(250)), "250ms");
        assert_eq!(age(&json!(63_500)), "1m 3s");
        assert_eq!(
            pairs(&[("a", "1".into()), ("bbb", "2".into())]),
            "a    1\nbbb  2\n"
        );
        assert_eq!(list(&json!({"xs":[1,2]}), "xs").len(), 2);
        assert_eq!(list(&json!([1]), "xs").len(), 1);
        assert!(list(&json!({}), "xs").is_empty());
    }
}
