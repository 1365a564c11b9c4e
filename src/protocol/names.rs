//! What a name on the wire may be: function ids, namespaces and queue names.
//!
//! Names become map keys, store keys and log fields. A control character
//! (a NUL above all) could make two names that print alike differ, or cut a
//! stored key short, so such names are refused where they enter the engine.

/// Longest name accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 512;

/// Why `name` (a `kind`, e.g. "function_id") cannot be used, if it cannot.
pub fn check(kind: &str, name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err(format!("{kind} must not be blank"));
    }
    check_content(kind, name)
}

/// Like [`check`], but a blank name passes (a call to `""` is simply not found).
pub fn check_content(kind: &str, name: &str) -> Result<(), String> {
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "{kind} is {} bytes long; at most {MAX_NAME_BYTES} are allowed",
            name.len()
        ));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(format!(
            "{kind} {name:?} contains the control character {c:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_pass_and_control_characters_do_not() {
        for ok in ["math::add", "orders", "tenant-7/eu", "naïve::fn"] {
            assert_eq!(check("function_id", ok), Ok(()));
        }
        for bad in ["", "  ", "a\0b", "tab\there", "line\nbreak", "\u{7f}"] {
            assert!(check("namespace", bad).is_err(), "{bad:?}");
        }
        assert!(check("queue", &"q".repeat(MAX_NAME_BYTES + 1)).is_err());
    }
}
