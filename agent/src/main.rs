//! `agent --config FILE`: parses settings and runs the agent until SIGTERM or Ctrl-C.
#![forbid(unsafe_code)]
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("BLUEGREEN_LOG").unwrap_or_else(|_| "info".into()))
        .with_ansi(false)
        .init();
    let config = match agent::config::Config::load(agent::config::Cli::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("agent: {e}");
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
    agent::run(config, rx).await?;
    Ok(())
}
