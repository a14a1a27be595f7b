//! One canary step's decisions over made-up checks and times: pause accounting, operator
//! requests, pass, fail and the deadline.
use super::{Decision, Step, StepEnd};
use crate::canary::analysis::{Check, Verdict};
use crate::canary::section::CanarySection;
use proto::records::{CanaryAction, CanaryRequest};
use proto::Outcome;
use std::time::Duration;

fn section() -> CanarySection {
    CanarySection {
        step_time: Duration::from_secs(60),
        step_deadline: Duration::from_secs(300),
        ..CanarySection::default()
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn checks(verdict: Verdict) -> Vec<Check> {
    vec![
        Check {
            criterion: "error_rate",
            verdict,
            detail: "canary 1/100, stable 1/1000".into(),
            numbers: serde_json::Value::Null,
        },
        Check {
            criterion: "p99",
            verdict: Verdict::Pass,
            detail: "fine".into(),
            numbers: serde_json::Value::Null,
        },
    ]
}

fn asked(action: CanaryAction) -> CanaryRequest {
    CanaryRequest {
        deploy_id: "d-1".into(),
        action,
        actor: "ops@example".into(),
        at: "2026-12-07T10:00:00Z".into(),
    }
}

fn outcome(decision: Option<Decision>) -> Option<(Outcome, Option<StepEnd>)> {
    decision.map(|d| (d.outcome, d.end))
}

#[test]
fn a_step_passes_once_every_check_passed_for_step_time() {
    let section = section();
    let step = Step::new(&section, 2, 500);
    assert_eq!(step.look(secs(59), &checks(Verdict::Pass)), None);
    let passed = step.look(secs(60), &checks(Verdict::Pass)).unwrap();
    assert_eq!(passed.outcome, Outcome::Passed);
    assert_eq!(passed.end, Some(StepEnd::Passed));
    assert!(passed.with_checks);
    assert_eq!(
        passed.reason,
        "step 2 (5 %) passed: error_rate pass, p99 pass"
    );
}

#[test]
fn a_failed_check_aborts_at_once_naming_it_even_while_paused() {
    let section = section();
    let mut step = Step::new(&section, 1, 100);
    let failed = step.look(secs(3), &checks(Verdict::Fail)).unwrap();
    assert_eq!(failed.outcome, Outcome::Aborted);
    assert_eq!(
        failed.reason,
        "canary failed at step 1 (1 %): error_rate: canary 1/100, stable 1/1000"
    );
    assert_eq!(failed.end, Some(StepEnd::Abort(failed.reason.clone())));
    step.request(secs(4), &asked(CanaryAction::Pause)).unwrap();
    assert_eq!(
        outcome(step.look(secs(5), &checks(Verdict::Fail))).map(|o| o.0),
        Some(Outcome::Aborted)
    );
}

#[test]
fn insufficient_data_ends_the_step_at_its_deadline() {
    let section = section();
    let step = Step::new(&section, 1, 100);
    let waiting = checks(Verdict::InsufficientData);
    assert_eq!(step.look(secs(299), &waiting), None);
    let ended = step.look(secs(300), &waiting).unwrap();
    assert_eq!(ended.outcome, Outcome::Aborted);
    assert_eq!(
        ended.reason,
        "insufficient data at step 1 (1 %) after 5m: error_rate: canary 1/100, stable 1/1000"
    );
}

#[test]
fn pauses_stop_the_step_clock_and_hold_a_passing_step() {
    let section = section();
    let mut step = Step::new(&section, 1, 100);
    let paused = step.request(secs(10), &asked(CanaryAction::Pause)).unwrap();
    assert_eq!((paused.outcome, paused.end), (Outcome::Paused, None));
    assert!(!paused.with_checks);
    assert!(
        paused.reason.contains("pause requested by ops@example"),
        "{}",
        paused.reason
    );
    // Paused for 1000 s: no pass, no deadline, and the running time stays at 10 s.
    assert_eq!(step.look(secs(1010), &checks(Verdict::Pass)), None);
    assert_eq!(
        step.look(secs(1010), &checks(Verdict::InsufficientData)),
        None
    );
    assert_eq!(step.running(secs(1010)), secs(10));
    // A second pause changes nothing and records nothing.
    assert_eq!(step.request(secs(1020), &asked(CanaryAction::Pause)), None);
    let resumed = step
        .request(secs(1030), &asked(CanaryAction::Resume))
        .unwrap();
    assert_eq!(resumed.outcome, Outcome::Resumed);
    assert_eq!(step.running(secs(1030)), secs(10));
    // 50 s more of running: 60 s in all, the step time.
    assert_eq!(step.look(secs(1079), &checks(Verdict::Pass)), None);
    assert_eq!(
        outcome(step.look(secs(1080), &checks(Verdict::Pass))),
        Some((Outcome::Passed, Some(StepEnd::Passed)))
    );
    // The deadline counts running time too: 300 s of it ends at 1320 s.
    assert_eq!(
        step.look(secs(1319), &checks(Verdict::InsufficientData)),
        None
    );
    assert!(step
        .look(secs(1320), &checks(Verdict::InsufficientData))
        .is_some());
}

#[test]
fn a_resume_of_a_running_canary_records_nothing() {
    let section = section();
    let mut step = Step::new(&section, 1, 100);
    assert_eq!(step.request(secs(5), &asked(CanaryAction::Resume)), None);
    assert_eq!(step.running(secs(5)), secs(5));
}

#[test]
fn operators_abort_and_promote_end_the_step() {
    let section = section();
    let mut step = Step::new(&section, 3, 2500);
    let aborted = step.request(secs(1), &asked(CanaryAction::Abort)).unwrap();
    assert_eq!(aborted.outcome, Outcome::Aborted);
    assert_eq!(
        aborted.end,
        Some(StepEnd::Abort(
            "abort requested by ops@example at 2026-12-07T10:00:00Z".into()
        ))
    );
    let promoted = step
        .request(secs(1), &asked(CanaryAction::Promote))
        .unwrap();
    assert_eq!(
        (promoted.outcome, promoted.end),
        (Outcome::Promoted, Some(StepEnd::Promoted))
    );
}
