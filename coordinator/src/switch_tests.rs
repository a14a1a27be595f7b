//! Every refusal of `switch` and `rollback`, decided by [`super::preflight`] from a state alone.
use super::{preflight, SwitchPlan, SwitchPreflight};
use crate::fleet::LbPolicy;
use crate::status::AppStatus;

const NO_LB_OK: LbPolicy = LbPolicy {
    allow_no_lb: true,
    allow_split_lbs: false,
};
use crate::testkit::{Agent, MemoryStore};
use proto::records::{DeployRecord, HealthState};
use proto::{Color, Operation, Phase};

/// Two healthy hosts and two LBs, blue serving v1 and green running v2, healthy.
fn both_running() -> MemoryStore {
    let store = MemoryStore::new(
        &[("a", Agent::Healthy), ("b", Agent::Healthy)],
        &["lb-1", "lb-2"],
    )
    .serving(Color::Green, "v2");
    store.serving_as("earlier", Color::Blue, "v1");
    store
}

fn why(decision: SwitchPreflight) -> String {
    match decision {
        SwitchPreflight::Refuse { why, .. } => why,
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn rollback_goes_to_the_other_color_and_every_lb_must_ack() {
    let state = both_running().snapshot();
    assert_eq!(
        preflight(&state, None, LbPolicy::default()),
        SwitchPreflight::Go(SwitchPlan {
            current: Some(Color::Blue),
            target: Color::Green,
            version: "v2".into(),
            lbs: vec!["lb-1".into(), "lb-2".into()],
        })
    );
}

#[test]
fn the_active_color_is_already_done() {
    let state = both_running().snapshot();
    assert!(matches!(
        preflight(&state, Some(Color::Blue), LbPolicy::default()),
        SwitchPreflight::AlreadyActive(_)
    ));
}

#[test]
fn rollback_needs_a_readable_active_color() {
    let store = both_running();
    store.set_active_invalid("not JSON");
    let why = why(preflight(&store.snapshot(), None, LbPolicy::default()));
    assert!(why.contains("`active` is unreadable (not JSON)"), "{why}");
    // A named color needs no `active`.
    assert!(matches!(
        preflight(&store.snapshot(), Some(Color::Green), LbPolicy::default()),
        SwitchPreflight::Go(_)
    ));
    let empty = AppStatus::default();
    assert!(why_of(&empty).contains("nothing to roll back"));
}

fn why_of(state: &AppStatus) -> String {
    why(preflight(state, None, LbPolicy::default()))
}

#[test]
fn rollback_onto_a_staged_never_promoted_version_is_refused() {
    let store = both_running();
    store.set_deploy(DeployRecord {
        deploy_id: "d-1".into(),
        operation: Operation::Deploy,
        phase: Phase::Staged,
        from: Some(Color::Blue),
        to: Color::Green,
        version: "v2".into(),
        token: 1,
        started_at: "t".into(),
        updated_at: "t".into(),
        error: None,
    });
    let why = why_of(&store.snapshot());
    assert!(why.contains("staged by d-1 and never promoted"), "{why}");
    // Naming the color is what the operator means: allowed.
    assert!(matches!(
        preflight(&store.snapshot(), Some(Color::Green), LbPolicy::default()),
        SwitchPreflight::Go(_)
    ));
}

#[test]
fn a_target_without_a_running_release_is_refused() {
    let store = MemoryStore::new(&[("a", Agent::Healthy)], &["lb-1"]).serving(Color::Blue, "v1");
    let why = why(preflight(
        &store.snapshot(),
        Some(Color::Green),
        LbPolicy::default(),
    ));
    assert!(why.contains("green has no running release"), "{why}");
}

#[test]
fn an_unhealthy_target_is_refused_naming_the_host_and_reporting_the_move() {
    let store = both_running();
    store.set_health("b", Color::Green, HealthState::Unhealthy, "v2");
    match preflight(&store.snapshot(), None, LbPolicy::default()) {
        SwitchPreflight::Refuse { movement, why } => {
            assert!(why.contains("green (v2) is not healthy on b"), "{why}");
            assert!(why.contains("traffic stays on blue"), "{why}");
            let (from, to) = movement.expect("the move it would have been");
            assert_eq!(from.map(|s| s.color), Some(Color::Blue));
            assert_eq!(
                (to.color, to.version.as_deref()),
                (Color::Green, Some("v2"))
            );
        }
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn no_lb_is_refused_unless_allowed() {
    let store = MemoryStore::new(&[("a", Agent::Healthy)], &[]).serving(Color::Green, "v2");
    store.serving_as("earlier", Color::Blue, "v1");
    let why = why(preflight(&store.snapshot(), None, LbPolicy::default()));
    assert!(why.contains("pass --allow-no-lb"), "{why}");
    assert!(matches!(
        preflight(&store.snapshot(), None, NO_LB_OK),
        SwitchPreflight::Go(SwitchPlan { ref lbs, .. }) if lbs.is_empty()
    ));
}

#[test]
fn a_silent_lb_refuses_the_move_naming_it_unless_a_split_is_allowed() {
    let store = both_running();
    store.silence_lb("lb-2");
    let why = why(preflight(&store.snapshot(), None, LbPolicy::default()));
    assert!(
        why.contains("lb lb-2 is registered but its sidecar is silent")
            && why.contains("coordinator lb remove lb-2")
            && why.contains("--allow-split-lbs")
            && why.contains("traffic stays on blue"),
        "{why}"
    );
    let split = LbPolicy {
        allow_split_lbs: true,
        ..LbPolicy::default()
    };
    match preflight(&store.snapshot(), None, split) {
        SwitchPreflight::Go(plan) => assert_eq!(plan.lbs, vec!["lb-1".to_string()]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_rollback_target_written_outside_a_deploy_is_refused() {
    use super::replaced_since_deployed;
    use proto::records::Desired;
    let mut deployed = crate::history::record(Operation::Deploy, "deploy-2", proto::Outcome::Done);
    deployed.to = Some(Color::Green);
    deployed.version = Some("v2".into());
    let mut release = crate::testkit::release("v2", Desired::Running);
    release.deploy_id = "deploy-2".into();
    assert_eq!(
        replaced_since_deployed(Color::Green, &release, Some(&deployed), None),
        None
    );
    // No deploy to compare with (history trimmed, or none yet): not questioned.
    assert_eq!(
        replaced_since_deployed(Color::Green, &release, None, None),
        None
    );
    // An older operation's record copied there, or one with another version.
    let mut replayed = crate::testkit::release("v1", Desired::Running);
    replayed.deploy_id = "deploy-1".into();
    let why = replaced_since_deployed(Color::Green, &replayed, Some(&deployed), None).unwrap();
    assert!(
        why.contains("releases/green holds v1 (operation deploy-1)")
            && why.contains("last deploy to green is deploy-2 (v2)")
            && why.contains("coordinator switch green"),
        "{why}"
    );
    let mut same_id = release.clone();
    same_id.version = "v9".into();
    assert!(replaced_since_deployed(Color::Green, &same_id, Some(&deployed), None).is_some());
    // A record from before operation ids were kept matches on its version.
    // A deploy whose history record was never written: its own `deploy` record vouches.
    let mut unrecorded = crate::testkit::release("v3", Desired::Running);
    unrecorded.deploy_id = "deploy-3".into();
    let staged = DeployRecord {
        deploy_id: "deploy-3".into(),
        operation: Operation::Deploy,
        phase: Phase::Failed,
        from: Some(Color::Blue),
        to: Color::Green,
        version: "v3".into(),
        token: 3,
        started_at: "t".into(),
        updated_at: "t".into(),
        error: None,
    };
    assert_eq!(
        replaced_since_deployed(Color::Green, &unrecorded, Some(&deployed), Some(&staged)),
        None
    );
    let mut other = staged.clone();
    other.deploy_id = "deploy-9".into();
    assert!(
        replaced_since_deployed(Color::Green, &unrecorded, Some(&deployed), Some(&other)).is_some()
    );
    let mut old = release.clone();
    old.deploy_id = String::new();
    assert_eq!(
        replaced_since_deployed(Color::Green, &old, Some(&deployed), None),
        None
    );
}

#[test]
fn deploys_and_reconciled_deploys_place_releases_switches_do_not() {
    use crate::history::{placed_release, record};
    let to_green = |kind, details: serde_json::Value| {
        let mut r = record(kind, "op-1", proto::Outcome::Done);
        r.to = Some(Color::Green);
        r.details = details;
        r
    };
    let none = serde_json::Value::Null;
    assert!(placed_release(
        &to_green(Operation::Deploy, none.clone()),
        Color::Green
    ));
    assert!(!placed_release(
        &to_green(Operation::Deploy, none.clone()),
        Color::Blue
    ));
    // A deploy whose coordinator died staged, and only its reconciliation is recorded.
    let dead_deploy = serde_json::json!({ "operation": Operation::Deploy, "phase": "staged" });
    assert!(placed_release(
        &to_green(Operation::Reconcile, dead_deploy),
        Color::Green
    ));
    let dead_switch = serde_json::json!({ "operation": Operation::Switch, "phase": "switched" });
    assert!(!placed_release(
        &to_green(Operation::Reconcile, dead_switch),
        Color::Green
    ));
    for kind in [
        Operation::Switch,
        Operation::Rollback,
        Operation::Promote,
        Operation::Stop,
    ] {
        assert!(
            !placed_release(&to_green(kind, none.clone()), Color::Green),
            "{kind}"
        );
    }
}
