//! Canary releases: after staging and smoke checks, `deploy --canary` sends a growing share of
//! requests to the new color through every LB (`active/traffic`), judges it against the stable
//! color from the LBs' own request counts at each step, and either goes on to the normal switch or
//! sends everyone back to the stable color. Operators steer a running canary through
//! `operator/canary` (`coordinator canary`, in the command layer).
pub mod analysis;
pub mod section;
pub mod step;

use crate::error::CoordinatorError;
use crate::history;
use crate::progress::Progress;
use crate::status::AppStatus;
use crate::store::{Store, Write};
use crate::traffic;
use analysis::{Verdict, Window};
use proto::records::{CanaryRequest, Sticky, TrafficRecord};
use proto::requests::ColorCounts;
use proto::{Color, Operation};
use section::CanarySection;
use std::collections::BTreeMap;
use step::StepEnd;
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
    /// LBs left out of the last look, with why (see [`analysis::suspect_lbs`]).
    pub suspects: Vec<String>,
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
        // A sidecar that went silent since the ramp started could not take a larger share: the
        // LBs would split. Sending everyone back (weight 0) waits only for the live ones.
        let status = self.store.latest().await?;
        self.store.remember(status.clone());
        let silent: Vec<&str> = self
            .lbs
            .iter()
            .filter(|lb| !status.lbs_alive.contains(*lb))
            .map(String::as_str)
            .collect();
        if weight > 0 && !silent.is_empty() {
            return Ok(Err(format!(
                "lb {} went silent (cut off, stopped or dead) and could not follow a new weight",
                silent.join(", ")
            )));
        }
        let following: Vec<String> = self
            .lbs
            .iter()
            .filter(|lb| status.lbs_alive.contains(*lb))
            .cloned()
            .collect();
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
            traffic::await_acks(self.store, &following, revision, self.progress)
                .await?
                .map(|_| ())
                .map_err(|why| format!("not every LB took weight {}: {why}", percent(weight))),
        )
    }

    /// Judges one step until it passes, fails, runs out of time or an operator decides: a thin
    /// loop that follows the fleet, takes a look every `interval` and carries out what
    /// [`step::Step`] decides.
    async fn hold_step(&mut self, step: u32, weight: u32) -> Result<StepEnd, CoordinatorError> {
        let mut status = self.store.latest().await?;
        let baseline: Baseline = status.lb_stats.clone();
        let started = Instant::now();
        let mut judged = step::Step::new(self.section, step, weight);
        let mut last_shown: Option<Verdict> = None;
        let end = 'step: loop {
            let tick = Instant::now() + self.section.interval;
            while Instant::now() < tick {
                self.store.follow(&mut status, tick).await?;
            }
            if let Some(request) = self.new_request(&status) {
                if let Some(decision) = judged.request(started.elapsed(), &request) {
                    self.decision(step, weight, &decision, &[]).await?;
                    if let Some(end) = decision.end {
                        break 'step end;
                    }
                }
            }
            let window = self.window(&baseline, &status);
            self.looks += 1;
            let checks = analysis::judge(&window, self.section, analysis::step_alpha(self.section));
            let verdict = analysis::overall(&checks);
            let elapsed = started.elapsed();
            if last_shown != Some(verdict) || self.looks.is_multiple_of(10) {
                last_shown = Some(verdict);
                self.progress.event(
                    "analysis",
                    None,
                    verdict.as_str(),
                    &format!(
                        "step {step} ({}), {}s: {}",
                        percent(weight),
                        judged.running(elapsed).as_secs(),
                        step::summary(&checks)
                    ),
                );
            }
            if let Some(decision) = judged.look(elapsed, &checks) {
                self.decision(step, weight, &decision, &checks).await?;
                if let Some(end) = decision.end {
                    break 'step end;
                }
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

    /// Both colors' counts since `baseline`, summed over every LB that reports, but an LB whose
    /// canary numbers stand far from all the others' ([`analysis::suspect_lbs`]): the decision
    /// records it instead of resting on it.
    fn window(&mut self, baseline: &Baseline, status: &AppStatus) -> Window {
        let one = |lb: &String, stats: &proto::records::LbStatsRecord| {
            let to: Baseline = [(lb.clone(), stats.clone())].into();
            counts_between(baseline, &to, self.canary)
        };
        let per_lb: BTreeMap<String, _> = status
            .lb_stats
            .iter()
            .map(|(lb, stats)| (lb.clone(), one(lb, stats)))
            .collect();
        let suspects = analysis::suspect_lbs(&per_lb, self.section.min_requests / 4);
        self.suspects = suspects.iter().map(|(_, why)| why.clone()).collect();
        let trusted: Baseline = status
            .lb_stats
            .iter()
            .filter(|(lb, _)| !suspects.iter().any(|(s, _)| s == *lb))
            .map(|(lb, s)| (lb.clone(), s.clone()))
            .collect();
        Window {
            canary: counts_between(baseline, &trusted, self.canary),
            stable: counts_between(baseline, &trusted, self.stable),
        }
    }

    /// Records one decision in history, with the checks' numbers when there are any.
    async fn decision(
        &self,
        step: u32,
        weight: u32,
        decision: &step::Decision,
        checks: &[analysis::Check],
    ) -> Result<(), CoordinatorError> {
        let mut record = history::record(Operation::CanaryStep, self.op_id, decision.outcome);
        record.from = Some(self.stable);
        record.to = Some(self.canary);
        record.version = Some(self.version.to_string());
        record.reason = Some(decision.reason.clone());
        record.details = serde_json::json!({
            "step": step,
            "weight": weight,
            "look": self.looks,
            "false_abort_rate": self.section.false_abort_rate,
            "test": "beta-binomial mixture confidence sequences (prior Beta(1/2, 10)), false_abort_rate split over the steps",
            "checks": decision.with_checks.then_some(checks),
            "suspect_lbs": self.suspects,
        });
        self.progress
            .event("canary", None, decision.outcome.as_str(), &decision.reason);
        self.store.append_history(&record).await.map(|_| ())
    }
}

/// A weight in hundredths of a percent, as people read it.
pub fn percent(weight: u32) -> String {
    if weight.is_multiple_of(100) {
        format!("{} %", weight / 100)
    } else {
        format!("{}.{:02} %", weight / 100, weight % 100)
    }
}
