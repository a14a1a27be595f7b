//! The JSON values stored under the keys [`crate::keys`] forms. Unknown fields are ignored (forward
//! compatible); invalid values are rejected by [`decode`] with an error naming the key.
use crate::names::check_name;
use crate::ops::{Operation, Outcome, Phase};
use crate::{Color, ProtoError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// A record that can check its own invariants beyond what serde's types already enforce.
pub trait Validate {
    /// Returns the first problem found, phrased as "field: what is wrong".
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Parses and validates the value stored at `key`. The error names the key and the field.
pub fn decode<T: DeserializeOwned + Validate>(key: &str, value: &[u8]) -> Result<T, ProtoError> {
    let record: T =
        serde_json::from_slice(value).map_err(|e| ProtoError::invalid(key, e.to_string()))?;
    record
        .validate()
        .map_err(|reason| ProtoError::invalid(key, reason))?;
    Ok(record)
}

/// Serializes a record for etcd. Records are plain data, so this cannot fail.
pub fn encode<T: Serialize>(record: &T) -> String {
    serde_json::to_string(record).expect("records serialize infallibly")
}

/// `<p>/<app>/lock`: who holds the deployment lock. Its create revision is the fencing token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockRecord {
    /// The operation id: the same id is in `active`, `deploy` and history for this command.
    pub deploy_id: String,
    pub holder: String,
    /// Records written before operations were typed were all deploys or said so in `version`.
    #[serde(default = "default_operation")]
    pub operation: Operation,
    /// Only for operations that install a version (deploy, migrate with --version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub acquired_at: String,
}
impl Validate for LockRecord {}

fn default_operation() -> Operation {
    Operation::Deploy
}

/// `<p>/<app>/active`: the color that takes traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveRecord {
    pub color: Color,
    pub version: String,
    pub deploy_id: String,
    pub token: i64,
    pub switched_at: String,
}
impl Validate for ActiveRecord {
    fn validate(&self) -> Result<(), String> {
        check_name("version", &self.version)
    }
}

/// The full weight: 100 % in hundredths of a percent.
pub const FULL_WEIGHT: u32 = 10_000;

/// `<p>/<app>/active/traffic`: during a canary, the share of requests every LB sends to the
/// canary color instead of the stable one (the color `active` names). Absent, or weight 0, is
/// ordinary blue-green. Fenced like `active`; sidecars ack its revision the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrafficRecord {
    pub stable: Color,
    pub canary: Color,
    /// The canary's share in hundredths of a percent: 0 ..= 10000.
    pub weight: u32,
    /// Which step of the canary this is (0 before the first).
    pub step: u32,
    /// What keeps a user on one color while the weight grows.
    #[serde(default)]
    pub sticky: Sticky,
    pub deploy_id: String,
    pub token: i64,
    pub set_at: String,
}

impl Validate for TrafficRecord {
    fn validate(&self) -> Result<(), String> {
        if self.stable == self.canary {
            return Err(format!("stable and canary are both {}", self.stable));
        }
        if self.weight > FULL_WEIGHT {
            return Err(format!(
                "weight {} is more than {FULL_WEIGHT} (100 %)",
                self.weight
            ));
        }
        self.sticky.validate()
    }
}

/// What the LBs hash to split requests, so that one user stays on one color: with the canary's
/// share growing from the bottom of the hash range, a user on the canary stays there.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "by", content = "name")]
pub enum Sticky {
    /// A cookie the LB sets when the request has none (a random id).
    #[default]
    Cookie,
    /// A request header the app's clients send (a user id).
    Header(String),
    /// The client's address.
    Address,
}

impl Sticky {
    /// A header name goes into nginx's config as `$http_<name>`: letters, digits and `-` only.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Sticky::Header(name)
                if name.is_empty()
                    || name.len() > 64
                    || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
            {
                Err(format!(
                    "sticky header {name:?}: letters, digits and '-' only, at most 64"
                ))
            }
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    pub url: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    /// argv; the first element is relative to the unpacked artifact (or absolute).
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(with = "humantime_serde", default = "default_stop_timeout")]
    pub stop_timeout: Duration,
}

fn default_stop_timeout() -> Duration {
    Duration::from_secs(30)
}

/// How the agent decides that a process is healthy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthMode {
    /// The bluegreen health contract: HTTP 200 with JSON `status == "healthy"`, `environment ==`
    /// the color, `version ==` the release version, `database_connected` not false.
    #[default]
    Contract,
    /// Plain HTTP for apps not written for bluegreen: the expected status (any 2xx when unset)
    /// and, optionally, a substring of the body. The version cannot be checked from the app.
    Http,
    /// A TCP connect to the color's port succeeds. The version cannot be checked from the app.
    Tcp,
}

impl HealthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthMode::Contract => "contract",
            HealthMode::Http => "http",
            HealthMode::Tcp => "tcp",
        }
    }

    /// Whether a healthy probe proves the version the app runs (only the contract says it).
    pub fn checks_version(self) -> bool {
        self == HealthMode::Contract
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthSpec {
    /// Absent in records written before modes existed: those are contract checks.
    #[serde(default)]
    pub mode: HealthMode,
    /// `http` mode: the status code that counts as healthy; unset means any 2xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
    /// `http` mode: a substring the body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    #[serde(default = "default_health_path")]
    pub path: String,
    #[serde(with = "humantime_serde", default = "default_interval")]
    pub interval: Duration,
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde", default = "default_startup_timeout")]
    pub startup_timeout: Duration,
}

fn default_health_path() -> String {
    "/health".into()
}
fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_startup_timeout() -> Duration {
    Duration::from_secs(60)
}

impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec {
            mode: HealthMode::default(),
            expect_status: None,
            body_contains: None,
            path: default_health_path(),
            interval: default_interval(),
            timeout: default_timeout(),
            startup_timeout: default_startup_timeout(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    Running,
    Stopped,
}

/// `<p>/<app>/releases/<color>`: what the agents should run on that color.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    pub version: String,
    pub artifact: Artifact,
    pub run: RunSpec,
    #[serde(default)]
    pub health: HealthSpec,
    pub desired: Desired,
    #[serde(default)]
    pub deploy_id: String,
    #[serde(default)]
    pub token: i64,
    /// With trusted keys configured on the agents, required: see [`crate::signing`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::signing::ReleaseSignature>,
}

impl Validate for ReleaseRecord {
    fn validate(&self) -> Result<(), String> {
        check_name("version", &self.version)?;
        validate_artifact_url(&self.artifact.url).map_err(|e| format!("artifact.url: {e}"))?;
        validate_sha256(&self.artifact.sha256).map_err(|e| format!("artifact.sha256: {e}"))?;
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
        for (field, d) in [
            ("health.interval", self.health.interval),
            ("health.timeout", self.health.timeout),
            ("health.startup_timeout", self.health.startup_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("{field}: must be greater than zero"));
            }
        }
        Ok(())
    }
}

impl HealthSpec {
    /// Checks that the mode's own settings make sense together ("field: problem").
    pub fn validate_mode(&self) -> Result<(), String> {
        if let Some(code) = self.expect_status {
            if !(100..=599).contains(&code) {
                return Err(format!("expect_status: {code} is not an HTTP status code"));
            }
        }
        match self.mode {
            HealthMode::Http => Ok(()),
            _ if self.expect_status.is_some() => Err(format!(
                "expect_status: only applies to mode \"http\", not {:?}",
                self.mode.as_str()
            )),
            _ if self.body_contains.is_some() => Err(format!(
                "body_contains: only applies to mode \"http\", not {:?}",
                self.mode.as_str()
            )),
            _ => Ok(()),
        }
    }
}

/// Accepts the schemes the agent can fetch: file://, http://, https://.
pub fn validate_artifact_url(url: &str) -> Result<(), String> {
    let ok = ["file:///", "http://", "https://"]
        .iter()
        .any(|s| url.starts_with(s) && url.len() > s.len());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{url:?} is not a file:///, http:// or https:// URL"
        ))
    }
}

/// A sha256 is exactly 64 hex digits (either case is accepted, compared case-insensitively).
pub fn validate_sha256(hex: &str) -> Result<(), String> {
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(format!("{hex:?} is not 64 hex digits"))
    }
}

/// `<p>/<app>/deploy`: the phase of the current or last deploy, for reconciliation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployRecord {
    /// The operation id (the lock, `active` and history of the same command carry it too).
    pub deploy_id: String,
    /// What wrote this record; records written before operations were typed are deploys.
    #[serde(default = "default_operation")]
    pub operation: Operation,
    pub phase: Phase,
    pub from: Option<Color>,
    pub to: Color,
    pub version: String,
    pub token: i64,
    pub started_at: String,
    pub updated_at: String,
    #[serde(default)]
    pub error: Option<String>,
}
impl Validate for DeployRecord {
    fn validate(&self) -> Result<(), String> {
        check_name("version", &self.version)
    }
}

/// `<p>/<app>/history/<revision>`: one immutable record per deploy, switch, rollback, migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRecord {
    pub kind: Operation,
    /// The operation id.
    pub deploy_id: String,
    pub outcome: Outcome,
    pub at: String,
    #[serde(default)]
    pub from: Option<Color>,
    #[serde(default)]
    pub to: Option<Color>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub details: serde_json::Value,
    /// Who ran the command (`BLUEGREEN_ACTOR`, else the CI user and job, else user@host); absent
    /// in records written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The command line that made the record (masked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// What a deploy or promote ran, kept so that `rollback --to VERSION` can run it again;
    /// absent in other records and in records written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleaseSnapshot>,
}
impl Validate for HistoryRecord {}

/// A deployed version as its history record keeps it: enough to deploy it again through the
/// normal pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseSnapshot {
    /// The artifact. Credentials and query values in its URL are masked (`***`): a redeploy of
    /// such a URL is given it again (`--artifact`), checked against this sha256.
    pub artifact: Artifact,
    pub run: RunSpec,
    pub health: HealthSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ports {
    pub blue: u16,
    pub green: u16,
}

impl Ports {
    pub fn of(&self, color: Color) -> u16 {
        match color {
            Color::Blue => self.blue,
            Color::Green => self.green,
        }
    }
}

/// `<p>/<app>/hosts/<host>`: an agent's registration, under the agent's lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    pub host: String,
    pub address: String,
    pub ports: Ports,
    /// Where the agent's gRPC API answers, as [`GrpcEndpoint`] writes it: `unix:<path>` (a
    /// root-only socket on that host) or `<address>:<port>` (mutual TLS).
    pub grpc: String,
    pub agent_version: String,
    pub started_at: String,
    /// Which agent process holds this host name (see [`crate::leased::instance_id`]): a second
    /// agent claiming the same name is refused instead of overwriting this record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

impl Validate for HostRecord {
    fn validate(&self) -> Result<(), String> {
        check_name("host", &self.host)?;
        check_address(&self.address).map_err(|e| format!("address: {e}"))?;
        if self.ports.blue == self.ports.green {
            return Err(format!(
                "ports: blue and green are both {}",
                self.ports.blue
            ));
        }
        Ok(())
    }
}

/// Where an agent's gRPC API answers. Without mutual TLS it is a unix socket only root on that
/// host can open, so reading an app's logs takes either root there or a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcEndpoint {
    Socket(std::path::PathBuf),
    Tcp(String),
}

impl GrpcEndpoint {
    const SOCKET: &'static str = "unix:";

    /// Reads a host record's `grpc`; anything not `unix:` is an address:port.
    pub fn parse(text: &str) -> GrpcEndpoint {
        match text.strip_prefix(Self::SOCKET) {
            Some(path) => GrpcEndpoint::Socket(path.into()),
            None => GrpcEndpoint::Tcp(text.to_string()),
        }
    }
}

impl std::fmt::Display for GrpcEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GrpcEndpoint::Socket(path) => write!(f, "{}{}", Self::SOCKET, path.display()),
            GrpcEndpoint::Tcp(address) => f.write_str(address),
        }
    }
}

/// A host address as LBs and the coordinator use it: an IP address or a DNS name, never anything
/// that could carry config syntax (it is rendered into nginx's `server` lines).
pub fn check_address(address: &str) -> Result<(), String> {
    if address.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let dns_name = !address.is_empty()
        && address.len() <= 253
        && address.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
        });
    if dns_name {
        Ok(())
    } else {
        Err(format!(
            "{address:?} is neither an IP address nor a host name"
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    Starting,
    Healthy,
    Unhealthy,
    Failed,
    Stopped,
}

impl HealthState {
    /// Every state, for metrics that export one series per state.
    pub const ALL: [HealthState; 5] = [
        HealthState::Starting,
        HealthState::Healthy,
        HealthState::Unhealthy,
        HealthState::Failed,
        HealthState::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Starting => "starting",
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy => "unhealthy",
            HealthState::Failed => "failed",
            HealthState::Stopped => "stopped",
        }
    }

    /// Whether a process of this color is (or is about to be) running on the host: what the
    /// contract gate and `stop` must both count, so it is decided here once.
    pub fn is_running(self) -> bool {
        matches!(
            self,
            HealthState::Starting | HealthState::Healthy | HealthState::Unhealthy
        )
    }
}

/// `<p>/<app>/health/<host>/<color>`: what one color on one host is doing, under the agent's lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthRecord {
    pub version: String,
    pub state: HealthState,
    /// The app's own /health JSON as last seen (null if none yet).
    #[serde(default)]
    pub health: serde_json::Value,
    pub since: String,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default)]
    pub error: Option<String>,
    /// Set while the color runs a release this agent would not start now: it was running before
    /// the agent began to require signatures (`trusted_keys`). An agent never stops an app it
    /// runs because its own configuration changed; the next signed release replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsigned: Option<String>,
}

impl Validate for HealthRecord {
    fn validate(&self) -> Result<(), String> {
        // Empty while a color has never run anything.
        if self.version.is_empty() {
            return Ok(());
        }
        check_name("version", &self.version)
    }
}

impl HealthRecord {
    /// THE rule "this host serves this color at `version`": the agent reports healthy for exactly
    /// that version. The coordinator waits on it, switches only to colors it holds for on every
    /// host, and the sidecars route live traffic to the hosts it holds for.
    pub fn serves(&self, version: &str) -> bool {
        self.state == HealthState::Healthy && self.version == version
    }
}

/// [`HealthRecord::serves`] for a record that may be missing (a host not reporting serves nothing).
pub fn serves(record: Option<&HealthRecord>, version: &str) -> bool {
    record.is_some_and(|r| r.serves(version))
}

/// `<p>/<app>/lbs/<name>`: a sidecar's acknowledgement of what nginx serves, under its lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LbRecord {
    pub applied_revision: i64,
    pub color: Option<Color>,
    /// How many upstreams nginx serves per color: the ack's digest of the lists, which are in
    /// [`LbUpstreamsRecord`] (an ack is written at every reload of every LB and every deploy
    /// receives it; the lists were nearly all of those bytes at thousands of hosts).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub upstream_counts: BTreeMap<Color, u32>,
    /// The live upstreams, as sidecars before [`LbUpstreamsRecord`] wrote them in the ack; read
    /// only for those.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<String>,
    pub config_sha256: String,
    pub reloaded_at: String,
    #[serde(default)]
    pub error: Option<String>,
    /// Where clients reach this LB (`http://host:port`), so a deploy can verify through it.
    #[serde(default)]
    pub url: Option<String>,
    /// The `Host` a verification through `url` must send: one of the app's server names when
    /// the LB routes several apps on one listener by host name (without it, nginx would answer
    /// for whichever server is its default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}
impl Validate for LbRecord {}

/// `~detail/lb-upstreams/<name>`: the upstreams an LB's nginx serves, per color (the live color,
/// and a canary's while one runs); durable, written only when a list changes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LbUpstreamsRecord {
    pub upstreams: BTreeMap<Color, Vec<String>>,
}
impl Validate for LbUpstreamsRecord {}

impl LbUpstreamsRecord {
    /// The ack's digest of these lists.
    pub fn counts(&self) -> BTreeMap<Color, u32> {
        self.upstreams
            .iter()
            .map(|(color, list)| (*color, list.len() as u32))
            .collect()
    }
}

/// `lb-stats/<name>`: what this LB's nginx answered per color since its sidecar started (under
/// the sidecar's lease). Running totals: a window is the difference of two readings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LbStatsRecord {
    /// The sidecar process (see [`crate::leased::instance_id`] and `started_at`): totals only
    /// compare within one.
    pub instance: String,
    pub started_at: String,
    /// When these totals were taken.
    pub at: String,
    pub colors: BTreeMap<Color, crate::requests::ColorCounts>,
    /// The same counts over only the last `recent_seconds` before `at`: what a deploy compares a
    /// newly switched color with (the old color's answers just before the switch).
    #[serde(default)]
    pub recent: BTreeMap<Color, crate::requests::ColorCounts>,
    #[serde(default)]
    pub recent_seconds: u32,
    /// Log lines naming an upstream the sidecar could not place (a host it does not know yet).
    #[serde(default)]
    pub unattributed: u64,
    /// Requests open to each color's upstreams when taken (websockets and streams for as long
    /// as they last), from an LB in Lua mode; none from one that reloads, which cannot count
    /// them. A deploy waits for the color it replaces to have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open: Option<BTreeMap<Color, u64>>,
}

impl Validate for LbStatsRecord {
    fn validate(&self) -> Result<(), String> {
        for (color, counts) in &self.colors {
            counts
                .validate()
                .map_err(|e| format!("colors.{color}: {e}"))?;
        }
        for (color, counts) in &self.recent {
            counts
                .validate()
                .map_err(|e| format!("recent.{color}: {e}"))?;
        }
        Ok(())
    }
}

/// What an operator asks of a running canary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryAction {
    /// Hold the current weight: no further step (the analysis still aborts on a failure).
    Pause,
    Resume,
    /// Skip the remaining steps: switch to the canary now.
    Promote,
    /// Send every user back to the stable color and fail the canary.
    Abort,
}

impl CanaryAction {
    pub fn as_str(self) -> &'static str {
        match self {
            CanaryAction::Pause => "pause",
            CanaryAction::Resume => "resume",
            CanaryAction::Promote => "promote",
            CanaryAction::Abort => "abort",
        }
    }
}

/// `operator/canary`: the last request to the canary `deploy_id`, written by
/// `coordinator canary pause|resume|promote|abort` and acted on by the coordinator running it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryRequest {
    pub deploy_id: String,
    pub action: CanaryAction,
    pub actor: String,
    pub at: String,
}
impl Validate for CanaryRequest {}

/// `lb-alive/<name>`: the LB's sidecar is running (held under its lease).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LbAliveRecord {
    /// Which sidecar process holds this LB name (see [`crate::leased::instance_id`]).
    pub instance: String,
    pub started_at: String,
}
impl Validate for LbAliveRecord {}

/// `host-leaving/<host>`: an operator removes this app from a host whose agent still runs it
/// (`coordinator host remove`). Durable: LBs stop routing to the host and deploys leave it out
/// from the moment it is written; the agent, once its config no longer lists the app, stops the
/// app's colors and deletes the app's keys for that host, this one last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostLeavingRecord {
    /// The `host remove` operation that wrote it.
    pub operation: String,
    pub at: String,
}
impl Validate for HostLeavingRecord {}

#[cfg(test)]
mod traffic_tests {
    use super::*;

    #[test]
    fn a_traffic_record_names_what_is_wrong() {
        let good = TrafficRecord {
            stable: Color::Blue,
            canary: Color::Green,
            weight: 500,
            step: 1,
            sticky: Sticky::Header("X-User-Id".into()),
            deploy_id: "d".into(),
            token: 1,
            set_at: "t".into(),
        };
        assert!(good.validate().is_ok());
        let same = TrafficRecord {
            canary: Color::Blue,
            ..good.clone()
        };
        assert!(same.validate().unwrap_err().contains("both blue"));
        let heavy = TrafficRecord {
            weight: 10_001,
            ..good.clone()
        };
        assert!(heavy.validate().unwrap_err().contains("10001"));
        // A header name becomes `$http_<name>` in nginx's config: nothing else gets through.
        for nasty in ["", "x;", "x y", "x{", "a\nb", "$x", "x_y", &"x".repeat(65)] {
            let bad = TrafficRecord {
                sticky: Sticky::Header(nasty.into()),
                ..good.clone()
            };
            assert!(bad.validate().is_err(), "{nasty:?} accepted");
        }
        let json = encode(&good);
        assert!(
            json.contains("\"sticky\":{\"by\":\"header\",\"name\":\"X-User-Id\"}"),
            "{json}"
        );
        let cookie: TrafficRecord = decode("k", br#"{"stable":"blue","canary":"green","weight":1,"step":0,"deploy_id":"d","token":1,"set_at":"t"}"#).unwrap();
        assert_eq!(cookie.sticky, Sticky::Cookie);
    }
}
