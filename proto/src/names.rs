//! The one rule for names: app, host and LB names and versions are letters, digits, `.`, `_` and
//! `-`, 1 to 128 characters. They become etcd key segments, nginx config text, file names and log
//! fields, so a value that breaks the rule is refused where it enters (flag, config file, etcd
//! record) rather than escaped in each of those places.

/// The longest name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// The rule in words, for errors and docs.
pub const NAME_RULE: &str = "1 to 128 letters, digits, '.', '_' or '-'";

/// Checks `value` against the rule; the error names `what` (a flag, field or key) and the value.
pub fn check_name(what: &str, value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= MAX_NAME_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        // "." and ".." are path components, not names.
        && value != "."
        && value != "..";
    if ok {
        Ok(())
    } else {
        let shown: String = value.chars().take(MAX_NAME_LEN + 8).collect();
        Err(format!(
            "{what} {shown:?} is not a valid name ({NAME_RULE})"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names_and_versions() {
        for ok in [
            "shop",
            "host-a",
            "lb_1",
            "v1.2.3",
            "2026-11-29.1",
            "A",
            &"x".repeat(128),
        ] {
            assert!(check_name("version", ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_what_could_break_a_key_or_a_config() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "v1;",
            "v1}",
            "v1\n",
            "v1\"",
            "ä",
            "$host",
            &"x".repeat(129),
        ] {
            let err = check_name("version", bad).unwrap_err();
            assert!(err.starts_with("version "), "{err}");
        }
    }
}
