//! Canary releases: after staging and smoke checks, `deploy --canary` sends a growing share of
//! requests to the new color through every LB (`active/traffic`), judges it against the stable
//! color from the LBs' own request counts at each step, and either goes on to the normal switch or
//! sends everyone back to the stable color. Operators steer a running canary through
//! `operator/canary` (see [`control`]).
pub mod analysis;
pub mod control;
pub mod section;

use crate::error::CoordinatorError;
use crate::history;
use crate::progress::Progress;
use crate::status::AppStatus;
use crate::store::{Store, Write};
use crate::switch;
use analysis::{Verdict, Window};
use proto::records::{CanaryAction, CanaryRequest, Sticky, TrafficRecord};
use proto::requests::ColorCounts;
use proto::{Color, Operation, Outcome};
use section::CanarySection;
use std::collections::BTreeMap;
use tokio::time::Instant;

/// How a ramp ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RampEnd {
    /// Every step passed, or an operator promoted: switch to the canary.
    Promote,
    /// A criterion failed, data stayed insufficient past the deadline, an operator aborted, or
    /// an LB did not follow a step: the reason, for the report.
    Abort(String),
}

/// One canary's ramp over the store seam.
pub struct Ramp<'a, S: Store> {
    pub store: &'a S,
    pub progress: &'a Progress,
    pub section: &'a CanarySection,
    pub sticky: Sticky,
    pub op_id: &'a str,
    pub lbs: &'a [String],
    pub stable: Color,
    pub canary: Color,
    pub version: &'a str,
    /// `active`'s mod revision as the deploy decided on it: every weight is written guarded by
    /// it, so a canary never splits traffic that someone else has since switched.
    pub active_seen: i64,
    /// Looks taken so far over the whole canary (recorded with each decision).
    pub looks: u64,
    /// The last operator request acted on (its `at`), so each is acted on once.
    pub handled: Option<String>,
}

/// Per LB, the totals a window starts from.
pub type Baseline = BTreeMap<String, proto::records::LbStatsRecord>;

/// `color`'s counts from `from` to `to`, summed over every LB that reports at `to` (an LB whose
/// sidecar restarted in between counts from its restart).
pub fn counts_between(from: &Baseline, to: &Baseline, color: Color) -> ColorCounts {
    let mut total = ColorCounts::default();
    for (lb, now) in to {
        let Some(counts) = now.colors.get(&color) else {
            continue;
        };
        let earlier = from
            .get(lb)
            .filter(|b| b.instance == now.instance && b.started_at == now.started_at)
            .and_then(|b| b.colors.get(&color))
            .cloned()
            .unwrap_or_default();
        total.merge(&counts.since(&earlier));
    }
    total
}

/// `--verify-for` on the LBs' numbers: after a switch, the new color's answers are judged against
/// the old color's in the last minute before the switch (each LB's recent window), with the
/// canary's analysis and criteria. An incident already under way before the switch is in that
/// baseline: it neither triggers a switch back nor hides one, only a worsening does.
pub struct Regression {
    baseline: ColorCounts,
    since: Baseline,
    new: Color,
    section: CanarySection,
    last: Option<Instant>,
}

impl Regression {
    /// `at_switch`: the LBs' counts as the switch was acked.
    pub fn new(
        at_switch: &Baseline,
        old: Color,
        new: Color,
        section: &CanarySection,
    ) -> Regression {
        let mut baseline = ColorCounts::default();
        for stats in at_switch.values() {
            if let Some(recent) = stats.recent.get(&old) {
                baseline.merge(recent);
            }
        }
        Regression {
            baseline,
            since: at_switch.clone(),
            new,
            section: section.clone(),
            last: None,
        }
    }

    /// At most once per `interval`: Err when the new color is significantly worse.
    pub fn check(&mut self, status: &AppStatus) -> Result<(), String> {
        if self
            .last
            .is_some_and(|t| t.elapsed() < self.section.interval)
        {
            return Ok(());
        }
        self.last = Some(Instant::now());
        let window = Window {
            canary: counts_between(&self.since, &status.lb_stats, self.new),
            stable: self.baseline.clone(),
        };
        let checks = analysis::judge(&window, &self.section, self.section.false_abort_rate);
        if analysis::overall(&checks) != Verdict::Fail {
            return Ok(());
        }
        let failed: Vec<String> = checks
            .iter()
            .filter(|c| c.verdict == Verdict::Fail)
            .map(|c| format!("{}: {}", c.criterion, c.detail))
            .collect();
        Err(format!(
            "{} answers worse than the old color did before the switch ({})",
            self.new,
            failed.join("; ")
        ))
    }
}

impl<S: Store> Ramp<'_, S> {
    /// Runs every step; Ok(RampEnd) is the canary's outcome, Err an error of the control plane.
    pub async fn run(&mut self) -> Result<RampEnd, CoordinatorError> {
        let weights = self.section.weights();
        for (index, weight) in weights.iter().enumerate() {
            let step = index as u32 + 1;
            if let Err(why) = self.set_weight(*weight, step).await? {
                return Ok(RampEnd::Abort(why));
            }
            match self.hold_step(step, *weight).await? {
                StepEnd::Passed => {}
                StepEnd::Promoted => return Ok(RampEnd::Promote),
                StepEnd::Abort(why) => return Ok(RampEnd::Abort(why)),
            }
        }
        Ok(RampEnd::Promote)
    }

    /// Writes the weight (fenced, guarded by `active` not having moved) and waits for every LB.
    /// Ok(Err) names what went wrong.
    pub async fn set_weight(
        &self,
        weight: u32,
        step: u32,
    ) -> Result<Result<(), String>, CoordinatorError> {
        let record = TrafficRecord {
            stable: self.stable,
            canary: self.canary,
            weight,
            step,
            sticky: self.sticky.clone(),
            deploy_id: self.op_id.to_string(),
            token: self.store.token(),
            set_at: proto::time::now_rfc3339(),
        };
        let revision = match self
            .store
            .put(&[Write::Traffic(record)], Some(self.active_seen))
            .await
        {
            Ok(revision) => revision,
            Err(CoordinatorError::Proto(e @ proto::ProtoError::FenceLost { .. })) => {
                return Ok(Err(format!(
                    "the weight could not be set: the lock or `active` changed ({e})"
                )))
            }
            Err(e) => return Err(e),
        };
        self.progress.event(
            "canary",
            None,
            "weight",
            &format!(
                "step {step}: {} of requests to {} at revision {revision}",
                percent(weight),
                self.canary
            ),
        );
        Ok(
            switch::await_acks(self.store, self.lbs, revision, self.progress)
                .await?
                .map(|_| ())
                .map_err(|why| format!("not every LB took weight {}: {why}", percent(weight))),
        )
    }

    /// Judges one step until it passes, fails, runs out of time or an operator decides.
    async fn hold_step(&mut self, step: u32, weight: u32) -> Result<StepEnd, CoordinatorError> {
        let mut status = self.store.latest().await?;
        let baseline: Baseline = status.lb_stats.clone();
        let started = Instant::now();
        let mut paused_since: Option<Instant> = None;
        let mut paused_total = std::time::Duration::ZERO;
        let mut last_shown: Option<Verdict> = None;
        let end = loop {
            let tick = Instant::now() + self.section.interval;
            while Instant::now() < tick {
                self.store.follow(&mut status, tick).await?;
            }
            if let Some(request) = self.new_request(&status) {
                // An operator's request is recorded once, as the outcome it leads to.
                let outcome = match request.action {
                    CanaryAction::Abort => Some(Outcome::Aborted),
                    CanaryAction::Promote => Some(Outcome::Promoted),
                    CanaryAction::Pause if paused_since.is_none() => {
                        paused_since = Some(Instant::now());
                        Some(Outcome::Paused)
                    }
                    CanaryAction::Resume if paused_since.is_some() => {
                        paused_total +=
                            paused_since.take().map(|p| p.elapsed()).unwrap_or_default();
                        Some(Outcome::Resumed)
                    }
                    _ => None,
                };
                if let Some(outcome) = outcome {
                    let why = request_reason(&request);
                    self.decision(step, weight, outcome, &why, None).await?;
                    match outcome {
                        Outcome::Aborted => break StepEnd::Abort(why),
                        Outcome::Promoted => break StepEnd::Promoted,
                        _ => {}
                    }
                }
            }
            let window = self.window(&baseline, &status);
            self.looks += 1;
            let checks = analysis::judge(&window, self.section, analysis::step_alpha(self.section));
            let verdict = analysis::overall(&checks);
            let running = started
                .elapsed()
                .saturating_sub(paused_total)
                .saturating_sub(paused_since.map(|p| p.elapsed()).unwrap_or_default());
            if last_shown != Some(verdict) || self.looks.is_multiple_of(10) {
                last_shown = Some(verdict);
                self.progress.event(
                    "analysis",
                    None,
                    verdict.as_str(),
                    &format!(
                        "step {step} ({}), {}s: {}",
                        percent(weight),
                        running.as_secs(),
                        summary(&checks)
                    ),
                );
            }
            if verdict == Verdict::Fail {
                let failed: Vec<String> = checks
                    .iter()
                    .filter(|c| c.verdict == Verdict::Fail)
                    .map(|c| format!("{}: {}", c.criterion, c.detail))
                    .collect();
                let why = format!(
                    "canary failed at step {step} ({}): {}",
                    percent(weight),
                    failed.join("; ")
                );
                self.decision(step, weight, Outcome::Aborted, &why, Some(&checks[..]))
                    .await?;
                break StepEnd::Abort(why);
            }
            if paused_since.is_some() {
                continue;
            }
            if verdict == Verdict::Pass && running >= self.section.step_time {
                let why = format!(
                    "step {step} ({}) passed: {}",
                    percent(weight),
                    summary(&checks)
                );
                self.decision(step, weight, Outcome::Passed, &why, Some(&checks[..]))
                    .await?;
                break StepEnd::Passed;
            }
            if running >= self.section.step_deadline {
                let waiting: Vec<String> = checks
                    .iter()
                    .filter(|c| c.verdict != Verdict::Pass)
                    .map(|c| format!("{}: {}", c.criterion, c.detail))
                    .collect();
                let why = format!(
                    "insufficient data at step {step} ({}) after {}: {}",
                    percent(weight),
                    humantime::format_duration(self.section.step_deadline),
                    waiting.join("; ")
                );
                self.decision(step, weight, Outcome::Aborted, &why, Some(&checks[..]))
                    .await?;
                break StepEnd::Abort(why);
            }
        };
        self.store.remember(status);
        Ok(end)
    }

    /// An operator request for this canary not acted on yet.
    fn new_request(&mut self, status: &AppStatus) -> Option<CanaryRequest> {
        let request = status
            .canary_request
            .clone()
            .filter(|r| r.deploy_id == self.op_id)?;
        if self.handled.as_deref() == Some(request.at.as_str()) {
            return None;
        }
        self.handled = Some(request.at.clone());
        Some(request)
    }

    /// Both colors' counts since `baseline`, summed over every LB that reports.
    fn window(&self, baseline: &Baseline, status: &AppStatus) -> Window {
        Window {
            canary: counts_between(baseline, &status.lb_stats, self.canary),
            stable: counts_between(baseline, &status.lb_stats, self.stable),
        }
    }

    /// Records one decision in history, with the checks' numbers when there are any.
    async fn decision(
        &self,
        step: u32,
        weight: u32,
        outcome: Outcome,
        reason: &str,
        checks: Option<&[analysis::Check]>,
    ) -> Result<(), CoordinatorError> {
        let mut record = history::record(Operation::CanaryStep, self.op_id, outcome);
        record.from = Some(self.stable);
        record.to = Some(self.canary);
        record.version = Some(self.version.to_string());
        record.reason = Some(reason.to_string());
        record.details = serde_json::json!({
            "step": step,
            "weight": weight,
            "look": self.looks,
            "false_abort_rate": self.section.false_abort_rate,
            "test": "beta-binomial mixture confidence sequences (prior Beta(1/2, 10)), false_abort_rate split over the steps",
            "checks": checks,
        });
        self.progress
            .event("canary", None, outcome.as_str(), reason);
        self.store.append_history(&record).await.map(|_| ())
    }
}

enum StepEnd {
    Passed,
    Promoted,
    Abort(String),
}

fn request_reason(request: &CanaryRequest) -> String {
    format!(
        "{} requested by {} at {}",
        request.action.as_str(),
        request.actor,
        request.at
    )
}

/// A weight in hundredths of a percent, as people read it.
pub fn percent(weight: u32) -> String {
    if weight.is_multiple_of(100) {
        format!("{} %", weight / 100)
    } else {
        format!("{}.{:02} %", weight / 100, weight % 100)
    }
}

fn summary(checks: &[analysis::Check]) -> String {
    checks
        .iter()
        .map(|c| format!("{} {}", c.criterion, c.verdict.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}
