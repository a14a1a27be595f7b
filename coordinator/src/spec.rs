//! The app spec (`bluegreen.toml`, in the app's repository), parsed strictly: an unknown field or a
//! bad duration is an error naming the file and the field, before anything is written to etcd.
use crate::error::{CoordinatorError, Subject};
use proto::records::{HealthMode, HealthSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    pub app: String,
    pub run: RunSection,
    #[serde(default, deserialize_with = "strict_health")]
    pub health: HealthSpec,
    #[serde(default)]
    pub smoke: Vec<SmokeCheck>,
    #[serde(default)]
    pub switch: SwitchSection,
    #[serde(default)]
    pub migrations: Option<MigrationsSection>,
    #[serde(default)]
    pub hooks: Option<crate::hooks::HooksSection>,
    #[serde(default)]
    pub notify: Vec<crate::notify::NotifyTarget>,
    /// `[canary]`: the steps and criteria of `deploy --canary` (defaults without it).
    #[serde(default)]
    pub canary: Option<crate::canary::section::CanarySection>,
    /// The spec file's directory: `[migrations] dir` is relative to it, like the repository it
    /// lives in.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `[migrations]`: where the app's migration files are and which database they change.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationsSection {
    pub dir: PathBuf,
    /// `sqlite://…`, `postgres://…`, or `env:NAME` to keep a password out of the repository.
    pub database_url: String,
    /// PostgreSQL: how long a migration's DDL may queue for a table lock before it gives up,
    /// so a long-running query cannot make it block every request behind it.
    #[serde(with = "humantime_serde", default = "default_lock_timeout")]
    pub lock_timeout: Duration,
    /// How long to wait for the database's migration lock (PostgreSQL advisory lock).
    #[serde(with = "humantime_serde", default = "default_migration_lock_wait")]
    pub lock_wait: Duration,
}

fn default_lock_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_migration_lock_wait() -> Duration {
    Duration::from_secs(30)
}

impl MigrationsSection {
    /// The database URL, with `env:NAME` resolved; the error names the variable.
    pub fn resolved_url(&self) -> Result<String, String> {
        match self.database_url.strip_prefix("env:") {
            Some(name) => std::env::var(name).map_err(|_| {
                format!("migrations.database_url: environment variable {name} is not set")
            }),
            None => Ok(self.database_url.clone()),
        }
    }
}

/// `[health]` as the spec's author writes it: unlike the etcd record (forward compatible), a
/// misspelt key here is a mistake to report, not a field to ignore.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthSection {
    #[serde(default)]
    mode: HealthMode,
    expect_status: Option<u16>,
    body_contains: Option<String>,
    path: Option<String>,
    #[serde(with = "humantime_serde", default)]
    interval: Option<Duration>,
    #[serde(with = "humantime_serde", default)]
    timeout: Option<Duration>,
    #[serde(with = "humantime_serde", default)]
    startup_timeout: Option<Duration>,
}

fn strict_health<'de, D: serde::Deserializer<'de>>(d: D) -> Result<HealthSpec, D::Error> {
    let section = HealthSection::deserialize(d)?;
    let default = HealthSpec::default();
    Ok(HealthSpec {
        mode: section.mode,
        expect_status: section.expect_status,
        body_contains: section.body_contains,
        path: section.path.unwrap_or(default.path),
        interval: section.interval.unwrap_or(default.interval),
        timeout: section.timeout.unwrap_or(default.timeout),
        startup_timeout: section.startup_timeout.unwrap_or(default.startup_timeout),
    })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(with = "humantime_serde", default = "default_stop_timeout")]
    pub stop_timeout: Duration,
    /// Lets a literal credential (a URL with a password) into `env`, and so into etcd. Off:
    /// such values must be `secret:NAME`, resolved on each host from its `secrets_dir`.
    #[serde(default)]
    pub allow_literal_secrets: bool,
}

fn default_stop_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmokeCheck {
    pub path: String,
    #[serde(default = "default_status")]
    pub status: u16,
    /// Fields the JSON answer must have; `{color}` and `{version}` are replaced.
    #[serde(default)]
    pub json: BTreeMap<String, String>,
    #[serde(with = "humantime_serde", default = "default_smoke_timeout")]
    pub timeout: Duration,
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_status() -> u16 {
    200
}
fn default_smoke_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_retries() -> u32 {
    3
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchSection {
    #[serde(with = "humantime_serde", default)]
    pub verify_for: Duration,
    /// How long a deploy waits for the requests still open to the color it is about to replace
    /// (websockets, streams: LBs in Lua mode keep them on their color after a switch) before it
    /// replaces it anyway, which stops the old version with `run.stop_timeout`.
    #[serde(with = "humantime_serde", default = "default_drain_timeout")]
    pub drain_timeout: Duration,
}

impl Default for SwitchSection {
    fn default() -> Self {
        SwitchSection {
            verify_for: Duration::ZERO,
            drain_timeout: default_drain_timeout(),
        }
    }
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(300)
}

/// What `promote` re-checks, as the `deploy --no-switch` that staged the version kept it in its
/// history record (`details.promote`): promote then needs no spec file, so a person can promote
/// from the dashboard. Hooks and webhooks are not kept (their URLs may carry credentials): a
/// promote without `--spec` runs none.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PromoteChecks {
    pub smoke: Vec<SmokeCheck>,
    pub switch: SwitchSection,
}

impl AppSpec {
    /// The spec a promote without `--spec` runs with: the staged release's run and health, and
    /// the checks its deploy kept.
    pub fn for_promote(
        app: &str,
        release: &proto::records::ReleaseRecord,
        checks: PromoteChecks,
    ) -> AppSpec {
        AppSpec {
            app: app.to_string(),
            run: RunSection {
                command: release.run.command.clone(),
                env: release.run.env.clone(),
                stop_timeout: release.run.stop_timeout,
                allow_literal_secrets: false,
            },
            health: release.health.clone(),
            smoke: checks.smoke,
            switch: checks.switch,
            migrations: None,
            hooks: None,
            notify: Vec::new(),
            canary: None,
            base_dir: PathBuf::from("."),
        }
    }

    pub fn load(path: &Path) -> Result<AppSpec, CoordinatorError> {
        let bad = || Subject::Spec(path.to_path_buf()).usage("");
        let text = std::fs::read_to_string(path).map_err(|e| bad().because(e))?;
        let mut spec: AppSpec = toml::from_str(&text).map_err(|e| bad().because(e))?;
        spec.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        spec.validate().map_err(|e| bad().because(e))?;
        Ok(spec)
    }

    fn validate(&self) -> Result<(), String> {
        proto::keys::validate_segment("app", &self.app).map_err(|e| e.to_string())?;
        if self.run.command.first().is_none_or(|c| c.is_empty()) {
            return Err("run.command: must name a program".into());
        }
        if !self.health.path.starts_with('/') {
            return Err(format!(
                "health.path: {:?} must start with '/'",
                self.health.path
            ));
        }
        self.health
            .validate_mode()
            .map_err(|e| format!("health.{e}"))?;
        if !self.run.allow_literal_secrets {
            for (name, value) in &self.run.env {
                if let Some(why) = proto::secrets::literal_secret(name, value) {
                    return Err(format!(
                        "run.env.{name}: {why}, which would be written to etcd for every agent \
                         and sidecar to read: use \"secret:NAME\" (read by each agent from its \
                         secrets_dir) or set run.allow_literal_secrets = true"
                    ));
                }
            }
        }
        for (i, smoke) in self.smoke.iter().enumerate() {
            if !smoke.path.starts_with('/') {
                return Err(format!(
                    "smoke[{i}].path: {:?} must start with '/'",
                    smoke.path
                ));
            }
        }
        if let Some(hooks) = &self.hooks {
            hooks.validate()?;
        }
        for (i, target) in self.notify.iter().enumerate() {
            target.validate(i)?;
        }
        if let Some(canary) = &self.canary {
            canary.validate()?;
        }
        if let Some(m) = &self.migrations {
            if !m.database_url.starts_with("env:") {
                crate::migrate::files::Db::of_url(&m.database_url)
                    .map_err(|e| format!("migrations.{e}"))?;
            }
        }
        Ok(())
    }

    /// The migrations directory, resolved against the spec file's directory.
    pub fn migrations_dir(&self) -> Option<PathBuf> {
        self.migrations.as_ref().map(|m| self.base_dir.join(&m.dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<AppSpec, CoordinatorError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bluegreen.toml");
        std::fs::write(&path, text).unwrap();
        AppSpec::load(&path)
    }

    const GOOD: &str = "app = \"shop\"\n[run]\ncommand = [\"./demo-app\"]\n[health]\ninterval = \"1s\"\n[[smoke]]\npath = \"/api/v1/status\"\njson = { environment = \"{color}\" }\n";

    #[test]
    fn parses_the_example() {
        let spec = load(GOOD).unwrap();
        assert_eq!(spec.health.interval, Duration::from_secs(1));
        assert_eq!(spec.smoke[0].status, 200);
        let example = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/examples/bluegreen.toml"
        ))
        .unwrap();
        load(&example).unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                GOOD.replace("[health]", "[health]\nintervall = \"1s\""),
                "intervall",
            ),
            (GOOD.replace("\"1s\"", "\"soon\""), "interval"),
            (
                GOOD.replace("[health]", "[health]\nmode = \"grpc\""),
                "mode",
            ),
            (
                GOOD.replace("[health]", "[health]\nmode = \"tcp\"\nexpect_status = 204"),
                "health.expect_status",
            ),
            (GOOD.replace("path = \"/api/v1/status\"\n", ""), "path"),
            (
                GOOD.replace(
                    "[run]\n",
                    "[run]\nenv = { DATABASE_URL = \"postgres://shop:hunter2@db/shop\" }\n",
                ),
                "run.env.DATABASE_URL: holds a literal credential (postgres://shop:***@db/shop)",
            ),
            (
                GOOD.replace("path = \"/api/v1/status\"", "path = \"api\""),
                "smoke[0].path",
            ),
        ];
        for (text, field) in cases {
            let err = load(&text).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            assert!(
                err.to_string().contains(field) && err.to_string().contains("bluegreen.toml"),
                "{err}"
            );
        }
        let err = AppSpec::load(Path::new("/nonexistent/bluegreen.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/bluegreen.toml"), "{err}");
    }
}
