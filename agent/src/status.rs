//! The values that flow between the agent's tasks: what etcd wants a color to run
//! ([`DesiredRelease`]) and what the color is actually doing ([`ColorStatus`]).
use proto::records::{HealthRecord, HealthState, ReleaseRecord};
use proto::Color;
use serde_json::Value;

/// What `releases/<color>` says, as far as this agent knows.
#[derive(Debug, Clone, PartialEq)]
pub enum DesiredRelease {
    /// Not read from etcd yet: keep whatever runs (an agent restarted while etcd is down).
    Unknown,
    /// No release key: nothing should run on this color.
    Absent,
    /// The key holds something that does not parse or validate, or a release this agent refuses
    /// (unsigned); the text names key and field. `version` is the refused release's, when it is
    /// known, so the coordinator sees the failure of exactly what it staged.
    Invalid {
        version: Option<String>,
        error: String,
    },
    /// A release without a valid signature from a key this agent trusts: never started, but kept
    /// running (flagged) when it is exactly what already runs on the color.
    Unsigned {
        release: ReleaseRecord,
        error: String,
    },
    Release(ReleaseRecord),
}

/// One color's observable state, published on every change and written to `health/<host>/<color>`.
#[derive(Debug, Clone, PartialEq)]
pub struct ColorStatus {
    pub color: Color,
    pub version: String,
    pub state: HealthState,
    pub health: Value,
    pub since: String,
    pub restarts: u32,
    pub error: Option<String>,
    pub pid: Option<u32>,
    /// Why the running release would be refused now (see [`HealthRecord::unsigned`]).
    pub unsigned: Option<String>,
}

impl ColorStatus {
    pub fn new(color: Color, version: &str, state: HealthState) -> ColorStatus {
        ColorStatus {
            color,
            version: version.to_string(),
            state,
            health: Value::Null,
            since: proto::time::now_rfc3339(),
            restarts: 0,
            error: None,
            pid: None,
            unsigned: None,
        }
    }

    /// Whether `other` is a change worth writing to etcd. The app's body (uptime, timestamp) changes
    /// on every probe and is carried along, but never causes a write by itself.
    pub fn differs_from(&self, other: &ColorStatus) -> bool {
        (
            self.state,
            &self.version,
            self.restarts,
            &self.error,
            self.pid,
            &self.unsigned,
        ) != (
            other.state,
            &other.version,
            other.restarts,
            &other.error,
            other.pid,
            &other.unsigned,
        )
    }

    pub fn record(&self) -> HealthRecord {
        HealthRecord {
            version: self.version.clone(),
            state: self.state,
            health: self.health.clone(),
            since: self.since.clone(),
            restarts: self.restarts,
            error: self.error.as_deref().map(bounded_error),
            unsigned: self.unsigned.clone(),
        }
    }
}

/// Most of an error (an app's last log line can be anything) written into etcd.
const MAX_ERROR_BYTES: usize = 2048;

fn bounded_error(error: &str) -> String {
    if error.len() <= MAX_ERROR_BYTES {
        return error.to_string();
    }
    let mut end = MAX_ERROR_BYTES;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes, cut)", &error[..end], error.len())
}

pub use proto::daemon::shutdown_requested;
