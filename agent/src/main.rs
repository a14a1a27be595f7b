//! `agent --config FILE`: parses settings and runs until SIGTERM or Ctrl-C. SIGHUP re-reads the
//! config file (added apps start, dropped ones are retired); a config that does not load is
//! refused and the agent goes on as it was.
#![forbid(unsafe_code)]

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    proto::daemon::init_logging("info");
    // First, so that a SIGHUP sent while the agent starts never kills it (the default action).
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let cli = <agent::config::Cli as proto::settings::Daemon>::from_env();
    let config = match agent::config::Config::load(cli.clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("agent: {e}");
            std::process::exit(2);
        }
    };
    let (reload_tx, reloads) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match agent::config::Config::load(cli.clone()) {
                Ok(config) => {
                    tracing::info!("SIGHUP: config re-read");
                    if reload_tx.send(config).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::error!(error = %e,
                    "SIGHUP: the config does not load; the running apps are unchanged"),
            }
        }
    });
    agent::run(config, proto::daemon::shutdown_on_signal(), reloads).await?;
    Ok(())
}
