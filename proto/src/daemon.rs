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
        builder.try_init()
    }
    .map_err(|e| e.to_string())
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
