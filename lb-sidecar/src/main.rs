//! `lb-sidecar --config FILE`: parses settings and runs until SIGTERM or Ctrl-C.
#![forbid(unsafe_code)]

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    proto::daemon::init_logging("info");
    let config = match lb_sidecar::config::Config::load(
        <lb_sidecar::config::Cli as proto::settings::Daemon>::from_env(),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lb-sidecar: {e}");
            std::process::exit(2);
        }
    };
    lb_sidecar::run(config, proto::daemon::shutdown_on_signal()).await?;
    Ok(())
}
