//! The demo app's settings, read once from the environment the agent injects (README, "Deploy your own app").
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    pub color: String,
    pub host: String,
    pub port: u16,
    pub version: String,
    pub database_url: String,
    pub feature_new_api: bool,
    pub health_path: String,
    pub log_level: String,
    /// Test knobs, so tests can ship deliberately bad versions.
    pub fail_health: bool,
    pub fail_smoke: bool,
    pub start_delay: Duration,
    pub crash_after: Option<Duration>,
    /// Bytes of filler in the `/health` answer (`DEMO_HEALTH_PADDING`): an app whose health
    /// document is larger than anything etcd would take as a value.
    pub health_padding: usize,
    /// Create the `items` table at start when missing (off when migrations own the schema).
    pub auto_schema: bool,
    /// Errors and latency on every route but health (`DEMO_ERROR_RATE`, `DEMO_LATENCY_MS`).
    pub faults: crate::faults::Faults,
}

impl Config {
    pub fn from_env() -> Result<Config, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let flag = |name: &str| {
            var(name).is_some_and(|v| matches!(v.as_str(), "1" | "true" | "yes" | "on"))
        };
        let millis = |name: &str| -> Result<Option<Duration>, String> {
            var(name)
                .map(|v| {
                    v.parse::<u64>()
                        .map(Duration::from_millis)
                        .map_err(|_| format!("{name}={v:?} is not a whole number of milliseconds"))
                })
                .transpose()
        };
        let port = match var("APPLICATION_PORT") {
            Some(p) => p
                .parse()
                .map_err(|_| format!("APPLICATION_PORT={p:?} is not a port number"))?,
            None => 8080,
        };
        let color = var("ENVIRONMENT_COLOR").unwrap_or_else(|| "blue".into());
        if color != "blue" && color != "green" {
            return Err(format!("ENVIRONMENT_COLOR={color:?} must be blue or green"));
        }
        // DEMO_FAIL_HOSTS limits the failure knobs to these APPLICATION_HOST values, so a test can
        // ship a version that is bad on one host of three.
        // Loopback unless told otherwise: the agent always sets APPLICATION_HOST to the host's address.
        let host = var("APPLICATION_HOST").unwrap_or_else(|| "127.0.0.1".into());
        let failing_here =
            var("DEMO_FAIL_HOSTS").is_none_or(|hosts| hosts.split(',').any(|h| h.trim() == host));
        let health_path = var("HEALTH_CHECK_PATH").unwrap_or_else(|| "/health".into());
        if !health_path.starts_with('/') {
            return Err(format!(
                "HEALTH_CHECK_PATH={health_path:?} must start with '/'"
            ));
        }
        let health_padding = match var("DEMO_HEALTH_PADDING") {
            Some(n) => n
                .parse()
                .map_err(|_| format!("DEMO_HEALTH_PADDING={n:?} is not a number of bytes"))?,
            None => 0,
        };
        Ok(Config {
            color,
            host,
            port,
            version: var("APP_VERSION").unwrap_or_else(|| "dev".into()),
            database_url: var("DATABASE_URL")
                .unwrap_or_else(|| "sqlite://demo-app.db?mode=rwc".into()),
            feature_new_api: flag("FEATURE_FLAG_NEW_API"),
            health_path,
            log_level: var("LOG_LEVEL").unwrap_or_else(|| "info".into()),
            health_padding,
            fail_health: failing_here && flag("DEMO_FAIL_HEALTH"),
            fail_smoke: failing_here && flag("DEMO_FAIL_SMOKE"),
            start_delay: if failing_here {
                millis("DEMO_START_DELAY_MS")?.unwrap_or_default()
            } else {
                Duration::ZERO
            },
            crash_after: if failing_here {
                millis("DEMO_CRASH_AFTER_MS")?
            } else {
                None
            },
            auto_schema: var("DEMO_AUTO_SCHEMA").is_none_or(|v| v != "0"),
            faults: if failing_here {
                crate::faults::Faults::from_vars(var)?
            } else {
                crate::faults::Faults::default()
            },
        })
    }
}
