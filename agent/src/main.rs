//! `agent --config FILE`: parses settings and runs until SIGTERM or Ctrl-C.
#![forbid(unsafe_code)]

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    proto::daemon::init_logging("info");
    let config = match agent::config::Config::load(
        <agent::config::Cli as proto::settings::Daemon>::from_env(),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("agent: {e}");
            std::process::exit(2);
        }
    };
    agent::run(config, proto::daemon::shutdown_on_signal()).await?;
    Ok(())
}
