//! What every bluegreen binary does before its `run`: log setup, and for the long-running ones
//! a shutdown flag raised by SIGTERM or Ctrl-C.
use tokio::sync::watch;

/// Logs to stderr; the level comes from `BLUEGREEN_LOG` (default `default_level`), and
/// `BLUEGREEN_LOG_FORMAT=json` makes each line one JSON object (for Loki, Elasticsearch, …).
/// This is the one place outside config parsing that reads the environment.
pub fn init_logging(default_level: &str) {
    // Ignored if a subscriber is already set (tests that call it twice).
    let filter = std::env::var("BLUEGREEN_LOG").unwrap_or_else(|_| default_level.to_string());
    let format = std::env::var("BLUEGREEN_LOG_FORMAT").unwrap_or_default();
    if !matches!(format.as_str(), "" | "text" | "json") {
        eprintln!("BLUEGREEN_LOG_FORMAT={format:?}: expected text or json; logging text");
    }
    let _ = tracing_subscriber_init(&filter, format == "json");
}

fn tracing_subscriber_init(filter: &str, json: bool) -> Result<(), String> {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(false);
    if json {
        builder.json().try_init()
    } else {
        builder.fmt_fields(escaped_fields()).try_init()
    }
    .map_err(|e| e.to_string())
}

/// Text log fields as the default formatter writes them (`%` fields by Display, `?` by Debug),
/// with every control character escaped ([`crate::text::escaped`]): a value from etcd (a
/// version, a host's address, an error quoting a record) can never end a line early or carry
/// terminal escapes, whichever log line it lands in. JSON lines are escaped by their encoder.
fn escaped_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static
{
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let text = format!("{value:?}");
        let text = crate::text::escaped(&text);
        if field.name() == "message" {
            write!(w, "{text}")
        } else {
            write!(w, "{field}={text}")
        }
    })
    .delimited(" ")
}

/// A flag that becomes true on SIGTERM or Ctrl-C.
pub fn shutdown_on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        let _ = tx.send(true);
    });
    rx
}

/// Resolves once the shutdown flag is set (or its sender is gone). The borrow of the flag ends
/// here, so futures that select on it stay `Send` and can be spawned.
pub async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// This process's resident memory in bytes (from /proc/self/statm), for `/metrics`.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The content type of the OpenMetrics text both daemons' `/metrics` answer with.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    /// Every log line's buffer, for the test to read back.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Before, the default formatter wrote the newline and the ESC as they were: one forged
    /// line more, and a terminal escape.
    #[test]
    fn a_logged_value_with_control_characters_stays_on_its_line() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .fmt_fields(super::escaped_fields())
            .finish();
        let forged = "v1\n2026-01-01T00:00:00Z  INFO agent: all good\u{1b}[2J";
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(version = %forged, record = ?forged, "release {forged} refused");
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(!text.contains('\u{1b}'), "{text:?}");
        assert!(
            text.contains("version=v1\\n2026") && text.contains("release v1\\n2026"),
            "{text}"
        );
    }
}
