//! Values read from etcd (or from an app) are data, not terminal output: a record holding a
//! newline or an escape sequence must not forge a line in a log or in `coordinator status`, nor
//! drive the reader's terminal. Everything such a value contributes to a line goes through
//! [`escaped`]; JSON output is escaped by its encoder already.
use std::borrow::Cow;

/// `text` with every control character (newline and ESC included) written the way Rust's Debug
/// does (`\n`, `\u{1b}`); other characters as they are. Borrowed when nothing needed escaping.
pub fn escaped(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_nothing_else_changes() {
        assert_eq!(escaped("plain ünïcode"), "plain ünïcode");
        assert!(matches!(escaped("plain"), Cow::Borrowed(_)));
        assert_eq!(
            escaped("ok\nhost-9 healthy\u{1b}[2J\r\t"),
            "ok\\nhost-9 healthy\\u{1b}[2J\\r\\t"
        );
        assert!(!escaped("\u{7f}\u{9b}\0").chars().any(char::is_control));
    }
}
