//! Wall-clock timestamps as RFC 3339 strings, the one format every record uses.
use std::time::SystemTime;

/// Now, as an RFC 3339 UTC timestamp with millisecond precision.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
