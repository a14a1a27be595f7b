//! The deploy pipeline as pure decisions: what a deploy may do given what etcd says (preflight),
//! what a dead predecessor left behind (reconcile), and which step follows which outcome (next).
//! No I/O here: `deploy.rs` is the thin loop that runs each step through the store and probe seams
//! and asks [`next`] where to go.
use crate::fleet::{unhealthy, LbPolicy};
use crate::status::AppStatus;
use proto::records::{ActiveRecord, DeployRecord};
use proto::{Color, Operation, Outcome, Phase};
use std::time::Duration;

/// What this deploy will do, fixed at preflight.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub from: Option<Color>,
    pub to: Color,
    pub hosts: Vec<String>,
    pub lbs: Vec<String>,
    pub migrations: bool,
    pub verify_for: Duration,
    /// `deploy --no-switch`: stop once staged and checked.
    pub no_switch: bool,
    /// `deploy --canary`: ramp a share of the traffic to the new color before the switch.
    pub canary: bool,
}

/// Preflight's verdict.
#[derive(Debug, Clone, PartialEq)]
pub enum Preflight {
    /// The version already serves on the active color everywhere: nothing to do (exit 0).
    AlreadyActive(String),
    /// The deploy must not start; nothing was written (exit 1).
    Refuse(String),
    Go(Plan),
}

/// The settings preflight needs besides the observed state.
#[derive(Debug, Clone, Default)]
pub struct Intent {
    pub version: String,
    pub lb_policy: LbPolicy,
    pub migrations: bool,
    pub verify_for: Duration,
    pub no_switch: bool,
    pub canary: bool,
}

/// The first line of a failed deploy's report. A release every failing host refused for its
/// signature never started: saying "health failed" would send the operator to the app's logs.
pub fn failure_headline(
    step: Step,
    version: &str,
    to: Color,
    failures: &[(String, String)],
) -> String {
    let refused = !failures.is_empty()
        && failures
            .iter()
            .all(|(_, why)| why.contains(proto::signing::REFUSED));
    if refused {
        format!(
            "{version} was {} on {to} by the agents (trusted_keys), so it never started: deploy \
             it with --signing-key and a key they trust",
            proto::signing::REFUSED
        )
    } else {
        format!("{} failed for {version} on {to}", step.as_str())
    }
}

/// Decides whether and where a deploy of `intent.version` goes.
pub fn preflight(state: &AppStatus, intent: &Intent) -> Preflight {
    if let Some(problem) = &state.active_invalid {
        // LBs fail static on whatever they served; staging onto "the idle color" would be a guess.
        return Preflight::Refuse(format!(
            "`active` is unreadable ({problem}); the LBs keep serving what they served, so the idle \
             color is unknown: fix the key (e.g. `coordinator switch <color>` after checking what the LBs serve)"
        ));
    }
    let hosts: Vec<String> = state.hosts.keys().cloned().collect();
    if hosts.is_empty() {
        return Preflight::Refuse("no host is registered: start the agents first".into());
    }
    let silent = state.silent_hosts();
    if !silent.is_empty() {
        // Its agent cannot stage it; switching without it would leave the live color on fewer
        // hosts and the silent one on a version nobody checked when it comes back.
        return Preflight::Refuse(format!(
            "host {} is registered but its agent is silent (cut off, stopped or dead): wait for \
             it to come back, or remove a host that is gone for good with `coordinator host remove NAME`",
            silent.join(", ")
        ));
    }
    if state.lbs.is_empty() && !intent.lb_policy.allow_no_lb {
        return Preflight::Refuse(
            "no LB is registered: nothing would serve the new version and nothing could verify it; \
             start the lb-sidecars first, or pass --allow-no-lb to switch anyway"
                .into(),
        );
    }
    let lbs = match crate::fleet::lbs_to_follow(state, intent.lb_policy) {
        Ok(lbs) => lbs,
        Err(why) => return Preflight::Refuse(why),
    };
    let from = state.active.as_ref().map(|a| a.color);
    if intent.canary && from.is_none() {
        return Preflight::Refuse(
            "a canary needs a stable color to compare with, and nothing serves yet: the first \
             deploy of an app is a plain deploy"
                .into(),
        );
    }
    if let Some(active) = &state.active {
        let sick = unhealthy(state, active.color, &active.version);
        if active.version == intent.version && sick.is_empty() {
            return Preflight::AlreadyActive(format!(
                "{} is already active and healthy on every host ({}); nothing to do",
                intent.version, active.color
            ));
        }
        if !sick.is_empty() {
            return Preflight::Refuse(format!(
                "preflight: active {} ({}) is not healthy on {}",
                active.color,
                active.version,
                sick.join(", ")
            ));
        }
    }
    let to = from.map_or(Color::Blue, Color::other);
    let serving = state.lbs_serving(to);
    if !serving.is_empty() {
        return Preflight::Refuse(format!(
            "{to} cannot be restaged: LB {} last acked serving it; wait for it to ack {}, or \
             remove an LB that is gone for good with `coordinator lb remove NAME`",
            serving.join(", "),
            to.other()
        ));
    }
    Preflight::Go(Plan {
        from,
        to,
        hosts,
        lbs,
        migrations: intent.migrations,
        verify_for: intent.verify_for,
        no_switch: intent.no_switch,
        canary: intent.canary,
    })
}

/// What the next command records about an operation whose coordinator died mid-way.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconciliation {
    pub operation: Operation,
    /// Whether the dead operation had moved traffic (its id is in `active`).
    pub outcome: Outcome,
    /// The phase its `deploy` record is closed with.
    pub phase: Phase,
}

/// Only an operation left in a non-terminal phase is reconciled; a finished one never is.
pub fn reconcile(
    previous: Option<&DeployRecord>,
    active: Option<&ActiveRecord>,
) -> Option<Reconciliation> {
    let previous = previous.filter(|p| !p.phase.is_terminal())?;
    let switched = active.is_some_and(|a| a.deploy_id == previous.deploy_id);
    Some(Reconciliation {
        operation: previous.operation,
        outcome: if switched {
            Outcome::Switched
        } else {
            Outcome::NotSwitched
        },
        phase: if switched { Phase::Done } else { Phase::Failed },
    })
}

/// The steps after staging, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Every host reports the new color healthy at the new version.
    AwaitHealthy,
    /// Pending expand migrations, and the old color proven on the expanded schema.
    Migrate,
    /// The active color still serves everywhere (nothing broke it while staging).
    RecheckActive,
    Smoke,
    /// `--canary`: growing shares of traffic to the new color, judged at each step; a failure
    /// sends everyone back to the stable color before the step ends.
    Canary,
    /// The fenced write of `active`.
    Switch,
    /// Every registered LB acks the switch revision.
    AwaitAcks,
    /// Each LB serves the new color, by the sidecar's own header.
    VerifyLbs,
    /// `--verify-for`: the new color keeps serving for that long.
    VerifyFor,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::AwaitHealthy => "health",
            Step::Migrate => "migrate",
            Step::RecheckActive => "preflight",
            Step::Smoke => "smoke",
            Step::Canary => "canary",
            Step::Switch => "switch",
            Step::AwaitAcks => "ack",
            Step::VerifyLbs => "verify",
            Step::VerifyFor => "verify-for",
        }
    }
}

/// Where the pipeline goes after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Run(Step),
    /// Traffic never moved: stop the new color, report, exit 1.
    FailBeforeSwitch,
    /// The switch's guard failed: another writer moved `active` or took the lock; nothing changed.
    SwitchRefused,
    /// Traffic moved but not every LB follows or serves it: exit 4, a human must look.
    Unsafe,
    /// The new color stopped serving during `--verify-for`: switch back to the old one.
    SwitchBack,
    /// Record success.
    Finish,
    /// `--no-switch`: staged and checked; record it and leave the switch to `promote`.
    Staged,
}

/// The pipeline's transition function: the step that ran and whether it passed → what comes next.
pub fn next(plan: &Plan, done: Step, passed: bool) -> Next {
    use Step::*;
    match (done, passed) {
        (AwaitHealthy, true) if plan.migrations => Next::Run(Migrate),
        (AwaitHealthy, true) | (Migrate, true) => Next::Run(RecheckActive),
        (RecheckActive, true) => Next::Run(Smoke),
        (Smoke, true) if plan.no_switch => Next::Staged,
        (Smoke, true) if plan.canary => Next::Run(Canary),
        (Smoke, true) | (Canary, true) => Next::Run(Switch),
        (AwaitHealthy | Migrate | RecheckActive | Smoke | Canary, false) => Next::FailBeforeSwitch,
        (Switch, true) => Next::Run(AwaitAcks),
        (Switch, false) => Next::SwitchRefused,
        (AwaitAcks, true) => Next::Run(VerifyLbs),
        (VerifyLbs, true) if !plan.verify_for.is_zero() => Next::Run(VerifyFor),
        (VerifyLbs, true) | (VerifyFor, true) => Next::Finish,
        (AwaitAcks | VerifyLbs, false) => Next::Unsafe,
        (VerifyFor, false) if plan.from.is_some() => Next::SwitchBack,
        (VerifyFor, false) => Next::Unsafe,
    }
}
