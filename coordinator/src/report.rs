//! The `result` event that ends every action command's JSON output (docs/json.md). A command
//! learns its facts as it goes (its operation id when it takes the lock, where traffic goes at
//! preflight, the revision of its switch) and may fail at any point after; so it records each
//! fact when it learns it, and `main` builds the event from whatever was recorded, whether the
//! command succeeded or not.
use proto::Color;
use serde::Serialize;
use std::sync::{Arc, Mutex};

/// A color and the version it runs (either may be unknown).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Side {
    pub color: Color,
    pub version: Option<String>,
}

/// What a command has learned about its own operation so far.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The command as typed (`deploy`, `promote`, …).
    pub command: Option<String>,
    pub op_id: Option<String>,
    pub app: Option<String>,
    pub from: Option<Side>,
    pub to: Option<Side>,
    /// The etcd revision of the write that moved traffic (or of the operation's last write).
    pub revision: Option<i64>,
    /// The spec the command loaded: its post hooks and webhooks run after the outcome.
    pub spec: Option<crate::spec::AppSpec>,
}

/// Shared by the command's [`crate::progress::Progress`] and `main`.
#[derive(Debug, Clone, Default)]
pub struct Recorder(Arc<Mutex<Facts>>);

impl Recorder {
    fn with(&self, change: impl FnOnce(&mut Facts)) {
        change(&mut self.0.lock().expect("recorder lock"));
    }

    pub fn command(&self, name: &str) {
        self.with(|f| f.command = Some(name.to_string()));
    }

    pub fn operation(&self, op_id: &str, app: &str) {
        self.with(|f| {
            f.op_id = Some(op_id.to_string());
            f.app = Some(app.to_string());
        });
    }

    pub fn movement(&self, from: Option<Side>, to: Side) {
        self.with(|f| {
            f.from = from;
            f.to = Some(to);
        });
    }

    pub fn spec(&self, spec: &crate::spec::AppSpec) {
        self.with(|f| f.spec = Some(spec.clone()));
    }

    pub fn revision(&self, revision: i64) {
        self.with(|f| f.revision = Some(revision));
    }

    pub fn facts(&self) -> Facts {
        self.0.lock().expect("recorder lock").clone()
    }
}

/// The word for an exit code (the documented exit codes), so a consumer need not know the numbers.
pub fn outcome_of(exit: i32) -> &'static str {
    match exit {
        0 => "done",
        1 => "failed",
        2 => "rejected",
        3 => "lock-timeout",
        4 => "unsafe",
        5 => "unreachable",
        6 => "not-permitted",
        _ => "unknown",
    }
}

/// The `result` event: one JSON object, the last line of an action command's output, and the
/// only line of any command that stops on bad usage or input.
pub fn result_event(
    command: Option<&str>,
    facts: &Facts,
    app: Option<&str>,
    exit: i32,
    detail: &str,
    elapsed: std::time::Duration,
) -> serde_json::Value {
    serde_json::json!({
        "step": "result",
        "command": command,
        "op_id": facts.op_id,
        "app": facts.app.as_deref().or(app),
        "from": facts.from,
        "to": facts.to,
        "revision": facts.revision,
        "outcome": outcome_of(exit),
        "exit": exit,
        "detail": proto::secrets::mask_text(detail),
        "elapsed_ms": elapsed.as_millis() as u64,
    })
}
