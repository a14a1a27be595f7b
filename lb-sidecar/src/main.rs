//! `lb-sidecar --config FILE`: parses settings and follows etcd until SIGTERM or Ctrl-C.
#![forbid(unsafe_code)]
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("BLUEGREEN_LOG").unwrap_or_else(|_| "info".into()))
        .with_ansi(false)
        .init();
    let config = match lb_sidecar::config::Config::load(lb_sidecar::config::Cli::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lb-sidecar: {e}");
            std::process::exit(2);
        }
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        let _ = tx.send(true);
    });
    lb_sidecar::run(config, rx).await?;
    Ok(())
}
