//! The app spec (`bluegreen.toml`, in the app's repository), parsed strictly: an unknown field or a
//! bad duration is an error naming the file and the field, before anything is written to etcd.
use crate::error::CoordinatorError;
use proto::records::HealthSpec;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
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
    /// Read by the migrations issue; accepted here so one spec file serves both.
    #[serde(default)]
    pub migrations: Option<toml::Value>,
}

/// `[health]` as the spec's author writes it: unlike the etcd record (forward compatible), a
/// misspelt key here is a mistake to report, not a field to ignore.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthSection {
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
}

fn default_stop_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Deserialize)]
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

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchSection {
    #[serde(with = "humantime_serde", default)]
    pub verify_for: Duration,
}

impl AppSpec {
    pub fn load(path: &Path) -> Result<AppSpec, CoordinatorError> {
        let shown = path.display();
        let text = std::fs::read_to_string(path)
            .map_err(|e| CoordinatorError::Usage(format!("spec {shown}: {e}")))?;
        let spec: AppSpec = toml::from_str(&text)
            .map_err(|e| CoordinatorError::Usage(format!("spec {shown}: {e}")))?;
        spec.validate()
            .map_err(|e| CoordinatorError::Usage(format!("spec {shown}: {e}")))?;
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
        for (i, smoke) in self.smoke.iter().enumerate() {
            if !smoke.path.starts_with('/') {
                return Err(format!(
                    "smoke[{i}].path: {:?} must start with '/'",
                    smoke.path
                ));
            }
        }
        Ok(())
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
            (GOOD.replace("path = \"/api/v1/status\"\n", ""), "path"),
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
