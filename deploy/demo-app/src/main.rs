//! The example app bluegreen deploys: small, but honest about its health, its color and its database.
#![forbid(unsafe_code)]

mod config;
mod faults;
mod routes;

use config::Config;
use sqlx::any::AnyPoolOptions;
use std::time::Duration;

/// What `demo-app --help` prints: it takes no arguments, only the environment the agent sets.
const HELP: &str =
    "demo-app: the example app bluegreen deploys. It takes no arguments; it reads the
environment the agent sets:
  APPLICATION_HOST, APPLICATION_PORT   where to listen (default 127.0.0.1:8080)
  ENVIRONMENT_COLOR, APP_VERSION       reported by /health and /api/v1/status
  HEALTH_CHECK_PATH                    the health route (default /health)
  DATABASE_URL                         sqlite:// or postgres:// (default sqlite://demo-app.db)
  LOG_LEVEL                            default info
and knobs for tests and demos:
  FEATURE_FLAG_NEW_API, DEMO_AUTO_SCHEMA, DEMO_FAIL_HEALTH, DEMO_FAIL_SMOKE, DEMO_FAIL_HOSTS,
  DEMO_HEALTH_PADDING, DEMO_START_DELAY_MS, DEMO_CRASH_AFTER_MS,
  DEMO_ERROR_RATE (fraction of requests answered 500), DEMO_LATENCY_MS and DEMO_LATENCY_JITTER_PCT
  (added latency, spread either way); these three spare the health route
";

#[tokio::main]
async fn main() {
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("--help" | "-h") => {
            print!("{HELP}");
            return;
        }
        Some("--version" | "-V") => {
            println!("demo-app {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        Some(other) => {
            eprintln!("demo-app: unknown argument {other:?} (it is configured through its environment; see --help)");
            std::process::exit(2);
        }
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("demo-app: {e}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&config.log_level))
        .with_ansi(false)
        .init();
    if let Err(e) = run(config).await {
        tracing::error!("demo-app: {e:#}");
        std::process::exit(1);
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    if !config.start_delay.is_zero() {
        tracing::info!(
            delay_ms = config.start_delay.as_millis() as u64,
            "delaying start (DEMO_START_DELAY_MS)"
        );
        tokio::time::sleep(config.start_delay).await;
    }
    if let Some(after) = config.crash_after {
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            tracing::error!(
                after_ms = after.as_millis() as u64,
                "crashing on purpose (DEMO_CRASH_AFTER_MS)"
            );
            std::process::exit(1);
        });
    }
    sqlx::any::install_default_drivers();
    // Lazy: the app starts (and reports database_connected=false) even while the database is down.
    let pool = AnyPoolOptions::new()
        .max_connections(5)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(&config.database_url)
        .map_err(|e| anyhow::anyhow!("DATABASE_URL is not usable: {e}"))?;
    if config.auto_schema {
        if let Err(e) = routes::ensure_schema(&pool).await {
            tracing::warn!("could not create the items table: {e}");
        }
    }
    let addr = format!("{}:{}", config.host, config.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    tracing::info!(color = %config.color, version = %config.version, %addr, "demo-app listening");
    let app = routes::router(config.clone(), pool);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!(color = %config.color, version = %config.version, "demo-app stopped gracefully");
    Ok(())
}

/// SIGTERM (what the agent sends) or Ctrl-C: stop accepting, let in-flight requests finish.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutdown requested, draining in-flight requests");
}
