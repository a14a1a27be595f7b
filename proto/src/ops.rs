//! Typed operations: what the coordinator did (history kinds), how it ended (outcomes), and where a
//! deploy stands (phases). Their serde names are the strings earlier versions wrote, so existing
//! etcd data parses; a name this version does not know is an error naming the key, not a guess.
use serde::{Deserialize, Serialize};
use std::fmt;

/// A coordinator command that takes the lock and writes history. One operation id covers the
/// lock record, `active`, `deploy` and the history record of one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    Deploy,
    Rollback,
    Switch,
    Stop,
    Migrate,
    /// A later command finishing the record of a deploy whose coordinator died.
    Reconcile,
    LockBreak,
    /// An operator removed an LB's membership (`coordinator lb remove`).
    LbRemove,
    /// An operator removed a host's membership (`coordinator host remove`).
    HostRemove,
    /// `coordinator promote`: the switch to a version `deploy --no-switch` staged.
    Promote,
    /// One decision of a canary's analysis or of an operator about it (a step passed, a
    /// criterion failed, paused, promoted, aborted), with its numbers in `details`.
    CanaryStep,
}

impl Operation {
    /// Every kind, in the order `history --kind` lists them.
    pub const ALL: [Operation; 11] = [
        Operation::Deploy,
        Operation::Rollback,
        Operation::Switch,
        Operation::Stop,
        Operation::Migrate,
        Operation::Reconcile,
        Operation::LockBreak,
        Operation::LbRemove,
        Operation::HostRemove,
        Operation::Promote,
        Operation::CanaryStep,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Deploy => "deploy",
            Operation::Rollback => "rollback",
            Operation::Switch => "switch",
            Operation::Stop => "stop",
            Operation::Migrate => "migrate",
            Operation::Reconcile => "reconcile",
            Operation::LockBreak => "lock-break",
            Operation::LbRemove => "lb-remove",
            Operation::HostRemove => "host-remove",
            Operation::Promote => "promote",
            Operation::CanaryStep => "canary-step",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// How an operation (or one migration inside it) ended, as recorded in history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    #[serde(rename = "done")]
    Done,
    #[serde(rename = "failed")]
    Failed,
    /// `--verify-for` saw the new color fail and traffic went back.
    #[serde(rename = "rolled_back")]
    RolledBack,
    /// Reconcile: the dead deploy had moved traffic.
    #[serde(rename = "switched")]
    Switched,
    /// Reconcile: the dead deploy had not moved traffic.
    #[serde(rename = "not switched")]
    NotSwitched,
    #[serde(rename = "stopped")]
    Stopped,
    #[serde(rename = "broken")]
    Broken,
    #[serde(rename = "applied")]
    Applied,
    #[serde(rename = "reverted")]
    Reverted,
    #[serde(rename = "revert-failed")]
    RevertFailed,
    #[serde(rename = "removed")]
    Removed,
    /// `host remove` of a host whose agent still runs the app: marked leaving, retired by its
    /// agent once its config drops the app.
    #[serde(rename = "leaving")]
    Leaving,
    /// `deploy --no-switch`: staged and checked, waiting for `promote`.
    #[serde(rename = "staged")]
    Staged,
    /// A canary step whose every check passed.
    #[serde(rename = "passed")]
    Passed,
    /// A canary an operator paused, resumed or promoted.
    #[serde(rename = "paused")]
    Paused,
    #[serde(rename = "resumed")]
    Resumed,
    #[serde(rename = "promoted")]
    Promoted,
    /// A canary sent back to weight 0 (a failed criterion, no data by the deadline, an operator).
    #[serde(rename = "aborted")]
    Aborted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Failed => "failed",
            Outcome::RolledBack => "rolled_back",
            Outcome::Switched => "switched",
            Outcome::NotSwitched => "not switched",
            Outcome::Stopped => "stopped",
            Outcome::Broken => "broken",
            Outcome::Applied => "applied",
            Outcome::Reverted => "reverted",
            Outcome::RevertFailed => "revert-failed",
            Outcome::Staged => "staged",
            Outcome::Removed => "removed",
            Outcome::Leaving => "leaving",
            Outcome::Passed => "passed",
            Outcome::Paused => "paused",
            Outcome::Resumed => "resumed",
            Outcome::Promoted => "promoted",
            Outcome::Aborted => "aborted",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Where the operation recorded in `deploy` stands. A later coordinator reconciles only a record
/// that is not terminal: its writer died mid-way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Releases written; waiting for hosts, migrations, smoke checks.
    Staging,
    /// About to write `active`: the outcome of a death here is read from `active`.
    Switching,
    /// `active` written; waiting for LB acks, verification, `--verify-for`.
    Switched,
    Done,
    Failed,
    RolledBack,
    /// `deploy --no-switch` ended here: the new color is staged and checked, and the preview
    /// listener serves it; `promote` switches to it. Nothing is left to reconcile.
    Staged,
    /// `deploy --canary`: part of the traffic goes to the new color (`active/traffic`). A death
    /// here is reconciled by sending everyone back to the stable color.
    Canary,
}

impl Phase {
    /// True when the operation ended and nothing is left to reconcile.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Done | Phase::Failed | Phase::RolledBack | Phase::Staged
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Staging => "staging",
            Phase::Switching => "switching",
            Phase::Switched => "switched",
            Phase::Done => "done",
            Phase::Failed => "failed",
            Phase::RolledBack => "rolled_back",
            Phase::Staged => "staged",
            Phase::Canary => "canary",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_names_are_the_strings_already_in_etcd() {
        let cases: Vec<(String, &str)> = vec![
            (
                serde_json::to_string(&Operation::LockBreak).unwrap(),
                "\"lock-break\"",
            ),
            (
                serde_json::to_string(&Operation::Rollback).unwrap(),
                "\"rollback\"",
            ),
            (
                serde_json::to_string(&Outcome::NotSwitched).unwrap(),
                "\"not switched\"",
            ),
            (
                serde_json::to_string(&Outcome::RevertFailed).unwrap(),
                "\"revert-failed\"",
            ),
            (
                serde_json::to_string(&Outcome::RolledBack).unwrap(),
                "\"rolled_back\"",
            ),
            (
                serde_json::to_string(&Phase::RolledBack).unwrap(),
                "\"rolled_back\"",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn as_str_matches_serde_for_every_variant() {
        for op in Operation::ALL {
            assert_eq!(serde_json::to_string(&op).unwrap(), format!("\"{op}\""));
        }
        for o in [
            Outcome::Done,
            Outcome::Failed,
            Outcome::RolledBack,
            Outcome::Switched,
            Outcome::NotSwitched,
            Outcome::Stopped,
            Outcome::Broken,
            Outcome::Applied,
            Outcome::Reverted,
            Outcome::RevertFailed,
            Outcome::Passed,
            Outcome::Aborted,
        ] {
            assert_eq!(serde_json::to_string(&o).unwrap(), format!("\"{o}\""));
        }
        for p in [
            Phase::Staging,
            Phase::Switching,
            Phase::Switched,
            Phase::Done,
            Phase::Failed,
            Phase::RolledBack,
            Phase::Canary,
        ] {
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
        }
    }

    #[test]
    fn only_finished_phases_are_terminal() {
        assert!(
            Phase::Done.is_terminal()
                && Phase::Failed.is_terminal()
                && Phase::RolledBack.is_terminal()
        );
        assert!(
            !Phase::Staging.is_terminal()
                && !Phase::Switching.is_terminal()
                && !Phase::Switched.is_terminal()
        );
    }

    #[test]
    fn unknown_names_are_errors() {
        assert!(serde_json::from_str::<Phase>("\"paused\"").is_err());
        assert!(serde_json::from_str::<Operation>("\"nuke\"").is_err());
    }
}
