//! The decisions of one canary step, without etcd, clocks or output: an operator's request, the
//! pause accounting, and pass / fail / deadline on the checks of each look. The ramp
//! ([`super::Ramp`]) feeds it what it reads and carries out what it decides.
use super::analysis::{self, Check, Verdict};
use super::percent;
use super::section::CanarySection;
use proto::records::{CanaryAction, CanaryRequest};
use proto::Outcome;
use std::time::Duration;

/// How a step ended.
#[derive(Debug, Clone, PartialEq)]
pub enum StepEnd {
    Passed,
    /// An operator promoted the canary: switch to it now.
    Promoted,
    /// The reason, for the report.
    Abort(String),
}

/// A history record the ramp writes for a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub outcome: Outcome,
    pub reason: String,
    /// The record carries the look's checks with their numbers.
    pub with_checks: bool,
    /// The step ends with it.
    pub end: Option<StepEnd>,
}

/// One step of one canary: which step, at which weight, and how long it has been paused.
#[derive(Debug, Clone)]
pub struct Step<'a> {
    pub section: &'a CanarySection,
    pub step: u32,
    pub weight: u32,
    paused_total: Duration,
    /// The step's elapsed time when the current pause began.
    paused_at: Option<Duration>,
}

impl<'a> Step<'a> {
    pub fn new(section: &'a CanarySection, step: u32, weight: u32) -> Step<'a> {
        Step {
            section,
            step,
            weight,
            paused_total: Duration::ZERO,
            paused_at: None,
        }
    }

    pub fn paused(&self) -> bool {
        self.paused_at.is_some()
    }

    /// How long the step has been judged at `elapsed` since it began: pauses do not count, so
    /// a paused canary neither passes nor runs into its deadline.
    pub fn running(&self, elapsed: Duration) -> Duration {
        let current_pause = self
            .paused_at
            .map_or(Duration::ZERO, |at| elapsed.saturating_sub(at));
        elapsed
            .saturating_sub(self.paused_total)
            .saturating_sub(current_pause)
    }

    /// An operator's request, new to this coordinator, at `elapsed`. `None`: nothing to record
    /// (a pause of a paused canary, a resume of a running one).
    pub fn request(&mut self, elapsed: Duration, request: &CanaryRequest) -> Option<Decision> {
        let reason = request_reason(request);
        let (outcome, end) = match request.action {
            CanaryAction::Abort => (Outcome::Aborted, Some(StepEnd::Abort(reason.clone()))),
            CanaryAction::Promote => (Outcome::Promoted, Some(StepEnd::Promoted)),
            CanaryAction::Pause if self.paused_at.is_none() => {
                self.paused_at = Some(elapsed);
                (Outcome::Paused, None)
            }
            CanaryAction::Resume => {
                let at = self.paused_at.take()?;
                self.paused_total += elapsed.saturating_sub(at);
                (Outcome::Resumed, None)
            }
            CanaryAction::Pause => return None,
        };
        Some(Decision {
            outcome,
            reason,
            with_checks: false,
            end,
        })
    }

    /// The look at `elapsed` with these checks: a failed check aborts at once (paused or not);
    /// otherwise, unless paused, the step passes once every check passes after `step_time` of
    /// running, and ends as insufficient data at `step_deadline`.
    pub fn look(&self, elapsed: Duration, checks: &[Check]) -> Option<Decision> {
        let at = format!("step {} ({})", self.step, percent(self.weight));
        let verdict = analysis::overall(checks);
        let running = self.running(elapsed);
        let (outcome, reason) = if verdict == Verdict::Fail {
            let failed = listed(checks, |v| v == Verdict::Fail);
            (Outcome::Aborted, format!("canary failed at {at}: {failed}"))
        } else if self.paused() {
            return None;
        } else if verdict == Verdict::Pass && running >= self.section.step_time {
            (Outcome::Passed, format!("{at} passed: {}", summary(checks)))
        } else if running >= self.section.step_deadline {
            let waiting = listed(checks, |v| v != Verdict::Pass);
            let deadline = humantime::format_duration(self.section.step_deadline);
            (
                Outcome::Aborted,
                format!("insufficient data at {at} after {deadline}: {waiting}"),
            )
        } else {
            return None;
        };
        let end = match outcome {
            Outcome::Passed => StepEnd::Passed,
            _ => StepEnd::Abort(reason.clone()),
        };
        Some(Decision {
            outcome,
            reason,
            with_checks: true,
            end: Some(end),
        })
    }
}

/// "criterion: detail" of the checks whose verdict `pick` selects.
fn listed(checks: &[Check], pick: impl Fn(Verdict) -> bool) -> String {
    checks
        .iter()
        .filter(|c| pick(c.verdict))
        .map(|c| format!("{}: {}", c.criterion, c.detail))
        .collect::<Vec<_>>()
        .join("; ")
}

fn request_reason(request: &CanaryRequest) -> String {
    format!(
        "{} requested by {} at {}",
        request.action.as_str(),
        request.actor,
        request.at
    )
}

/// "criterion verdict, …" of every check.
pub fn summary(checks: &[Check]) -> String {
    checks
        .iter()
        .map(|c| format!("{} {}", c.criterion, c.verdict.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
#[path = "step_tests.rs"]
mod tests;
