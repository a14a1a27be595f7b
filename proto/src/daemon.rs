//! What every long-running bluegreen binary (agent, lb-sidecar) does before its `run`: log setup
//! and a shutdown flag raised by SIGTERM or Ctrl-C.
use tokio::sync::watch;

/// Plain-text logs to stderr; the level comes from `BLUEGREEN_LOG` (default `default_level`).
/// This is the one place outside config parsing that reads the environment.
pub fn init_logging(default_level: &str) {
    // Ignored if a subscriber is already set (tests that call it twice).
    let filter = std::env::var("BLUEGREEN_LOG").unwrap_or_else(|_| default_level.to_string());
    let _ = tracing_subscriber_init(&filter);
}

fn tracing_subscriber_init(filter: &str) -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init()
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
