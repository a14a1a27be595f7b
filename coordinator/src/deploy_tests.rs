//! Every branch of the deploy pipeline and of switch/rollback, over the in-memory seams of
//! [`crate::testkit`]: no etcd, no processes, and tokio's paused clock instead of real waiting.
use crate::deploy::{Deploy, DeployArgs, NoMigrations};
use crate::error::CoordinatorError;
use crate::fleet::LbPolicy;
use crate::pipeline::{self, Intent, Next, Plan, Preflight, Step};
use crate::progress::Progress;
use crate::store::Write;
use crate::switch::{switch_command, SwitchRequest};
use crate::testkit::{spec, Agent, FakeMigrator, FakeProbes, MemoryStore};
use proto::records::{Artifact, DeployRecord, Desired, HealthState};
use proto::{Color, Operation, Outcome, Phase};
use std::time::Duration;

fn args(version: &str) -> DeployArgs {
    DeployArgs {
        version: version.into(),
        artifact: Artifact {
            url: "file:///app.tar.gz".into(),
            sha256: "a".repeat(64),
        },
        health_timeout: Some(Duration::from_secs(20)),
        verify_for: None,
        keep_failed: false,
        lb_policy: LbPolicy::default(),
        no_switch: false,
        canary: false,
    }
}

fn fleet() -> MemoryStore {
    MemoryStore::new(
        &[("a", Agent::Healthy), ("b", Agent::Healthy)],
        &["lb-1", "lb-2"],
    )
}

async fn deploy_with<M: crate::deploy::Migrator>(
    store: &MemoryStore,
    probes: &FakeProbes,
    migrator: Option<&M>,
    args: &DeployArgs,
) -> Result<String, CoordinatorError> {
    let spec = spec();
    let progress = Progress::new(true);
    let d = Deploy {
        store,
        probes,
        migrator,
        spec: &spec,
        progress: &progress,
        op_id: "op-1".into(),
        signing_key: None,
    };
    crate::locked::run_locked(store, "op-1", &progress, async |_, state| {
        d.run(state, args).await
    })
    .await
}

async fn deploy(
    store: &MemoryStore,
    probes: &FakeProbes,
    args: &DeployArgs,
) -> Result<String, CoordinatorError> {
    deploy_with::<NoMigrations>(store, probes, None, args).await
}

fn outcomes(store: &MemoryStore) -> Vec<(Operation, Outcome)> {
    store
        .history()
        .iter()
        .map(|h| (h.kind, h.outcome))
        .collect()
}

fn release_desired(store: &MemoryStore, color: Color) -> Option<Desired> {
    store.snapshot().releases.get(&color).map(|r| r.desired)
}

/// Websockets still open to green (kept there since the switch to blue): the next deploy,
/// which replaces green, leaves green alone until they are gone.
#[tokio::test(start_paused = true)]
async fn a_deploy_waits_for_the_color_it_replaces_to_drain() {
    let store = fleet().serving(Color::Blue, "v1");
    store.set_open("lb-1", Color::Green, 3);
    let probes = FakeProbes::default();
    let a = args("v2");
    let running = deploy(&store, &probes, &a);
    tokio::pin!(running);
    tokio::select! {
        _ = &mut running => panic!("the deploy did not wait for green's open requests"),
        _ = tokio::time::sleep(Duration::from_secs(60)) => {}
    }
    assert!(
        !store
            .writes()
            .iter()
            .any(|w| matches!(w, Write::Release(Color::Green, _))),
        "green was replaced while requests were open to it"
    );
    store.set_open("lb-1", Color::Green, 0);
    let out = running.await.unwrap();
    assert!(out.contains("traffic on green"), "{out}");
}

/// Requests that never end do not hold a deploy forever: after `[switch] drain_timeout` the
/// color is replaced anyway.
#[tokio::test(start_paused = true)]
async fn a_drain_that_never_ends_is_cut_at_drain_timeout() {
    let store = fleet().serving(Color::Blue, "v1");
    store.set_open("lb-2", Color::Green, 1);
    let started = tokio::time::Instant::now();
    let out = deploy(&store, &FakeProbes::default(), &args("v2"))
        .await
        .unwrap();
    assert!(out.contains("traffic on green"), "{out}");
    assert!(started.elapsed() >= spec().switch.drain_timeout);
}

#[tokio::test(start_paused = true)]
async fn first_deploy_goes_to_blue_and_records_one_history_entry() {
    let store = fleet();
    let out = deploy(&store, &FakeProbes::default(), &args("v1"))
        .await
        .unwrap();
    assert!(out.contains("traffic on blue"), "{out}");
    let s = store.snapshot();
    assert_eq!(
        s.active.as_ref().map(|a| (a.color, a.version.as_str())),
        Some((Color::Blue, "v1"))
    );
    assert_eq!(
        s.active.unwrap().deploy_id,
        "op-1",
        "one operation id for active and the record"
    );
    assert_eq!(s.deploy.unwrap().phase, Phase::Done);
    assert_eq!(outcomes(&store), vec![(Operation::Deploy, Outcome::Done)]);
    assert_eq!(store.active_writes().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn preflight_refusals_write_nothing() {
    let cases: Vec<(MemoryStore, &str)> = vec![
        (MemoryStore::new(&[], &["lb-1"]), "no host is registered"),
        (
            MemoryStore::new(&[("a", Agent::Healthy)], &[]),
            "no LB is registered",
        ),
        (
            {
                let s = fleet().serving(Color::Blue, "v1");
                s.set_health("b", Color::Blue, HealthState::Unhealthy, "v1");
                s
            },
            "active blue (v1) is not healthy on b",
        ),
        (
            {
                let s = fleet();
                s.set_active_invalid("invalid value at /bluegreen/shop/active: expected value");
                s
            },
            "`active` is unreadable",
        ),
    ];
    for (store, expected) in cases {
        let err = deploy(&store, &FakeProbes::default(), &args("v2"))
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 1, "{err}");
        assert!(err.to_string().contains(expected), "{err}");
        assert!(
            store.writes().is_empty(),
            "{expected}: wrote {:?}",
            store.writes()
        );
        assert!(store.history().is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn no_lb_is_allowed_only_when_asked() {
    let store = MemoryStore::new(&[("a", Agent::Healthy)], &[]);
    let mut a = args("v1");
    a.lb_policy.allow_no_lb = true;
    deploy(&store, &FakeProbes::default(), &a).await.unwrap();
    assert_eq!(store.snapshot().active.unwrap().color, Color::Blue);
}

#[tokio::test(start_paused = true)]
async fn redeploying_the_active_version_is_a_no_op() {
    let store = fleet().serving(Color::Blue, "v1");
    let out = deploy(&store, &FakeProbes::default(), &args("v1"))
        .await
        .unwrap();
    assert!(out.contains("nothing to do"), "{out}");
    assert!(store.writes().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_failed_host_ends_the_wait_stops_the_color_and_attaches_logs() {
    let store = fleet().serving(Color::Blue, "v1");
    store.set_agent("b", Agent::Fails("sha256 mismatch".into()));
    let err = deploy(&store, &FakeProbes::default(), &args("v2"))
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 1);
    let text = err.to_string();
    assert!(
        text.contains("health failed for v2 on green; traffic stays on blue"),
        "{text}"
    );
    assert!(
        text.contains("b: sha256 mismatch") && text.contains("last line of b green"),
        "{text}"
    );
    assert_eq!(
        release_desired(&store, Color::Green),
        Some(Desired::Stopped)
    );
    assert_eq!(store.snapshot().active.unwrap().color, Color::Blue);
    assert!(store.active_writes().is_empty());
    assert_eq!(store.snapshot().deploy.unwrap().phase, Phase::Failed);
    assert_eq!(outcomes(&store), vec![(Operation::Deploy, Outcome::Failed)]);
}

#[tokio::test(start_paused = true)]
async fn a_silent_host_fails_at_the_health_deadline() {
    let store = fleet().serving(Color::Blue, "v1");
    store.set_agent("a", Agent::Silent);
    let started = tokio::time::Instant::now();
    let err = deploy(&store, &FakeProbes::default(), &args("v2"))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() >= Duration::from_secs(20),
        "waited the whole timeout"
    );
    assert!(
        err.to_string()
            .contains("a: not healthy at v2 in time: not reporting"),
        "{err}"
    );
    assert!(store.active_writes().is_empty());
}

#[tokio::test(start_paused = true)]
async fn keep_failed_leaves_the_color_running() {
    let store = fleet().serving(Color::Blue, "v1");
    store.set_agent("a", Agent::Fails("crashed".into()));
    let mut a = args("v2");
    a.keep_failed = true;
    deploy(&store, &FakeProbes::default(), &a)
        .await
        .unwrap_err();
    assert_eq!(
        release_desired(&store, Color::Green),
        Some(Desired::Running)
    );
}

#[tokio::test(start_paused = true)]
async fn a_reverted_migration_fails_before_the_switch() {
    let store = fleet().serving(Color::Blue, "v1");
    let migrator = FakeMigrator(Err(vec![(
        "database".into(),
        "migrations [2] were reverted".into(),
    )]));
    let err = deploy_with(&store, &FakeProbes::default(), Some(&migrator), &args("v2"))
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 1);
    assert!(
        err.to_string().contains("migrate failed") && err.to_string().contains("reverted"),
        "{err}"
    );
    assert!(store.active_writes().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_passing_migration_continues_to_the_switch() {
    let store = fleet().serving(Color::Blue, "v1");
    deploy_with(
        &store,
        &FakeProbes::default(),
        Some(&FakeMigrator(Ok(()))),
        &args("v2"),
    )
    .await
    .unwrap();
    assert_eq!(store.snapshot().active.unwrap().color, Color::Green);
}

#[tokio::test(start_paused = true)]
async fn smoke_failure_keeps_traffic_and_names_the_host() {
    let store = fleet().serving(Color::Blue, "v1");
    let probes = FakeProbes {
        smoke_fails_on: ["b".to_string()].into(),
        ..Default::default()
    };
    let err = deploy(&store, &probes, &args("v2")).await.unwrap_err();
    assert!(
        err.to_string().contains("smoke failed")
            && err.to_string().contains("b: smoke /api/v1/status"),
        "{err}"
    );
    assert_eq!(store.snapshot().active.unwrap().color, Color::Blue);
    assert_eq!(
        release_desired(&store, Color::Green),
        Some(Desired::Stopped)
    );
}

/// A deploy started while an LB's sidecar is silent switched, waited for the ack and ended
/// unsafe with the LBs split. Every traffic move now checks every LB first.
#[tokio::test(start_paused = true)]
async fn a_silent_lb_stops_the_deploy_before_anything_is_written() {
    let store = fleet().serving(Color::Blue, "v1");
    store.silence_lb("lb-2");
    let writes_before = store.writes().len();
    let err = deploy(&store, &FakeProbes::default(), &args("v2"))
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("lb lb-2 is registered but its sidecar is silent")
            && text.contains("coordinator lb remove lb-2")
            && text.contains("--allow-split-lbs"),
        "{text}"
    );
    assert_eq!(store.writes().len(), writes_before, "nothing written");
    assert_eq!(store.snapshot().active.unwrap().version, "v1");
}

/// `--allow-split-lbs`: the live LBs follow, the silent one is knowingly left on the old color.
#[tokio::test(start_paused = true)]
async fn a_split_allowed_moves_the_live_lbs_and_leaves_the_silent_one() {
    let store = fleet().serving(Color::Blue, "v1");
    store.silence_lb("lb-2");
    let mut split = args("v2");
    split.lb_policy.allow_split_lbs = true;
    deploy(&store, &FakeProbes::default(), &split)
        .await
        .unwrap();
    let s = store.snapshot();
    assert_eq!(s.active.as_ref().unwrap().color, Color::Green);
    assert_eq!(
        s.lbs_serving(Color::Blue),
        vec!["lb-2 (sidecar silent)".to_string()]
    );
}

/// A sidecar that froze after the preflight (its lease not yet expired) does not ack: the move
/// ends unsafe after the ack timeout, naming it.
#[tokio::test(start_paused = true)]
async fn an_lb_that_stops_following_mid_move_makes_the_switch_unsafe_after_the_ack_timeout() {
    let store = fleet().serving(Color::Blue, "v1");
    store.freeze_lb("lb-2");
    let err = deploy(&store, &FakeProbes::default(), &args("v2"))
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 4, "{err}");
    assert!(
        err.to_string().contains("lb-2: no ack of revision"),
        "{err}"
    );
    let s = store.snapshot();
    assert_eq!(s.active.unwrap().color, Color::Green, "traffic moved");
    assert_eq!(
        s.deploy.unwrap().phase,
        Phase::Failed,
        "terminal: no later reconcile"
    );
    assert_eq!(outcomes(&store), vec![(Operation::Deploy, Outcome::Failed)]);
}

/// The zombie LB: its sidecar is silent but its nginx may still serve what it last acked, so the
/// next deploy must not restage that color (it did, and requests through that LB failed).
#[tokio::test(start_paused = true)]
async fn a_silent_lb_keeps_the_color_it_last_acked_from_being_restaged() {
    let store = fleet().serving(Color::Blue, "v1");
    store.silence_lb("lb-2");
    let split = |version| {
        let mut a = args(version);
        a.lb_policy.allow_split_lbs = true;
        a
    };
    deploy(&store, &FakeProbes::default(), &split("v2"))
        .await
        .unwrap();
    let writes_before = store.writes().len();
    let err = deploy(&store, &FakeProbes::default(), &split("v3"))
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("blue cannot be restaged")
            && text.contains("lb-2 (sidecar silent)")
            && text.contains("coordinator lb remove"),
        "{text}"
    );
    assert_eq!(store.writes().len(), writes_before, "nothing written");
    assert_eq!(release_desired(&store, Color::Blue), Some(Desired::Running));
    assert_eq!(store.snapshot().releases[&Color::Blue].version, "v1");
}

/// Seed 104 of the fault runner: a host cut off from etcd past its lease dropped out of the
/// deploy's view, the deploy switched the live color onto the one host left, and killing that
/// host's app was an outage. A registered host whose agent is silent now stops the deploy before
/// anything is written, naming it and the way out.
#[tokio::test(start_paused = true)]
async fn a_silent_registered_host_stops_the_deploy_before_anything_is_written() {
    let store = fleet().serving(Color::Blue, "v1");
    store.silence_host("b");
    let writes_before = store.writes().len();
    let err = deploy(&store, &FakeProbes::default(), &args("v2"))
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("host b is registered but its agent is silent")
            && text.contains("coordinator host remove"),
        "{text}"
    );
    assert_eq!(store.writes().len(), writes_before, "nothing written");
    assert_eq!(store.snapshot().active.unwrap().version, "v1");
}

#[tokio::test(start_paused = true)]
async fn lbs_that_ack_but_do_not_serve_are_unsafe() {
    let store = fleet().serving(Color::Blue, "v1");
    let probes = FakeProbes {
        lbs_do_not_serve: true,
        ..Default::default()
    };
    let err = deploy(&store, &probes, &args("v2")).await.unwrap_err();
    assert_eq!(err.exit_code(), 4);
    assert!(err.to_string().contains("do not serve it"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn verify_for_switches_back_when_the_new_color_fails() {
    let store = std::sync::Arc::new(fleet().serving(Color::Blue, "v1"));
    let mut a = args("v2");
    a.verify_for = Some(Duration::from_secs(30));
    let breaker = store.clone();
    tokio::spawn(async move {
        // Green turns unhealthy on host a some time after the switch.
        breaker.until_switched_to(Color::Green).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        breaker.set_health("a", Color::Green, HealthState::Unhealthy, "v2");
    });
    let err = deploy(&store, &FakeProbes::default(), &a)
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    assert!(err.to_string().contains("switched back to blue"), "{err}");
    let actives: Vec<Color> = store.active_writes().iter().map(|a| a.color).collect();
    assert_eq!(actives, vec![Color::Green, Color::Blue]);
    let s = store.snapshot();
    assert_eq!(s.active.as_ref().unwrap().version, "v1");
    assert_eq!(s.deploy.unwrap().phase, Phase::RolledBack);
    assert_eq!(
        outcomes(&store),
        vec![(Operation::Deploy, Outcome::RolledBack)]
    );
}

#[tokio::test(start_paused = true)]
async fn verify_for_passes_when_the_new_color_holds() {
    let store = fleet().serving(Color::Blue, "v1");
    let mut a = args("v2");
    a.verify_for = Some(Duration::from_secs(30));
    let started = tokio::time::Instant::now();
    deploy(&store, &FakeProbes::default(), &a).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(30));
    assert_eq!(store.active_writes().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_lost_lock_at_the_switch_changes_nothing() {
    let store = fleet().serving(Color::Blue, "v1");
    // Staging and the `switching` record are written; then the lease is gone and the switch's
    // guard fails.
    store.lose_lock_after_writes(2);
    let err = deploy(&store, &FakeProbes::default(), &args("v2"))
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    assert!(store.active_writes().is_empty());
    assert_eq!(store.snapshot().active.unwrap().color, Color::Blue);
}

/// `active` written by someone else while the deploy stages: the switch's guard refuses, and the
/// deploy closes its record, so the next command does not reconcile it into a second history
/// record (the fault runner found two records for one operation).
#[tokio::test(start_paused = true)]
async fn a_refused_switch_closes_its_record_and_leaves_one_history_record() {
    let store = fleet().serving(Color::Blue, "v1");
    store.move_active_after_writes(1);
    let err = deploy(&store, &FakeProbes::default(), &args("v2"))
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    assert!(store.active_writes().is_empty());
    let record = store.snapshot().deploy.expect("deploy record");
    assert_eq!(
        record.phase,
        Phase::Failed,
        "the refused deploy's record is closed"
    );
    assert_eq!(store.history().len(), 1);
    // The next command finds nothing to reconcile.
    let next = deploy(&store, &FakeProbes::default(), &args("v3")).await;
    assert!(next.is_ok(), "{next:?}");
    let outcomes: Vec<Outcome> = store.history().iter().map(|h| h.outcome).collect();
    assert_eq!(
        outcomes,
        vec![Outcome::Failed, Outcome::Done],
        "no reconciliation record for the refused deploy"
    );
}

#[tokio::test(start_paused = true)]
async fn an_etcd_outage_after_the_switch_is_unsafe_not_bad_input() {
    let store = fleet().serving(Color::Blue, "v1");
    // Reads: preflight, staging wait, recheck; etcd is gone when the acks are awaited.
    store.fail_reads_after(3);
    let err = deploy(&store, &FakeProbes::default(), &args("v2"))
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 4, "{err}");
    assert!(err.to_string().contains("traffic moved to green"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn an_etcd_outage_before_anything_is_exit_5() {
    let store = fleet();
    store.fail_reads_after(0);
    let err = deploy(&store, &FakeProbes::default(), &args("v2"))
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 5, "{err}");
    assert!(store.writes().is_empty());
}

fn dead(phase: Phase, operation: Operation) -> DeployRecord {
    DeployRecord {
        deploy_id: "dead-op".into(),
        operation,
        phase,
        from: Some(Color::Blue),
        to: Color::Green,
        version: "v2".into(),
        token: 3,
        started_at: "t".into(),
        updated_at: "t".into(),
        error: None,
    }
}

#[tokio::test(start_paused = true)]
async fn reconcile_closes_each_dead_phase_once_and_never_a_finished_one() {
    let cases = [
        (Phase::Staging, false, Some(Outcome::NotSwitched)),
        (Phase::Switching, false, Some(Outcome::NotSwitched)),
        (Phase::Switching, true, Some(Outcome::Switched)),
        (Phase::Switched, true, Some(Outcome::Switched)),
        (Phase::Done, true, None),
        (Phase::Failed, false, None),
        (Phase::RolledBack, false, None),
    ];
    for (phase, switched, expected) in cases {
        let store = fleet().serving(Color::Blue, "v1");
        if switched {
            store.serving_as("dead-op", Color::Green, "v2");
        }
        store.set_deploy(dead(phase, Operation::Deploy));
        let current = if switched { Color::Green } else { Color::Blue };
        let version = if switched { "v2" } else { "v1" };
        // A deploy of the version already live: reconcile runs, then nothing else happens.
        deploy(&store, &FakeProbes::default(), &args(version))
            .await
            .unwrap();
        let history = store.history();
        match expected {
            Some(outcome) => {
                assert_eq!(history.len(), 1, "{phase}: {history:?}");
                assert_eq!(
                    (history[0].kind, history[0].outcome),
                    (Operation::Reconcile, outcome)
                );
                assert_eq!(history[0].deploy_id, "dead-op");
                assert!(store.snapshot().deploy.unwrap().phase.is_terminal());
            }
            None => assert!(history.is_empty(), "{phase}: {history:?}"),
        }
        assert_eq!(
            store.snapshot().active.unwrap().color,
            current,
            "{phase}: never switches"
        );
    }
}

async fn switch_op(
    store: &MemoryStore,
    operation: Operation,
    target: Option<Color>,
) -> Result<String, CoordinatorError> {
    let req = SwitchRequest {
        operation,
        target,
        op_id: format!("{operation}-1"),
        lb_policy: LbPolicy::default(),
    };
    let progress = Progress::new(true);
    crate::locked::run_locked(store, &req.op_id, &progress, async |store, state| {
        switch_command(store, state, &FakeProbes::default(), &req, &progress).await
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn finished_switches_and_rollbacks_are_never_reconciled() {
    let store = fleet();
    deploy(&store, &FakeProbes::default(), &args("v1"))
        .await
        .unwrap();
    deploy(&store, &FakeProbes::default(), &args("v2"))
        .await
        .unwrap();
    switch_op(&store, Operation::Rollback, None).await.unwrap();
    let s = store.snapshot();
    assert_eq!(s.active.as_ref().unwrap().deploy_id, "rollback-1");
    assert_eq!(
        s.deploy.as_ref().map(|d| (d.operation, d.phase)),
        Some((Operation::Rollback, Phase::Done))
    );
    switch_op(&store, Operation::Switch, Some(Color::Green))
        .await
        .unwrap();
    deploy(&store, &FakeProbes::default(), &args("v3"))
        .await
        .unwrap();
    let kinds: Vec<(Operation, Outcome)> = outcomes(&store);
    assert_eq!(
        kinds,
        vec![
            (Operation::Deploy, Outcome::Done),
            (Operation::Deploy, Outcome::Done),
            (Operation::Rollback, Outcome::Done),
            (Operation::Switch, Outcome::Done),
            (Operation::Deploy, Outcome::Done),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn rollback_refuses_an_unhealthy_target_and_an_unreadable_active() {
    let store = fleet().serving(Color::Blue, "v1");
    let err = switch_op(&store, Operation::Rollback, None)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("green has no running release"),
        "{err}"
    );
    store.set_active_invalid("garbage");
    let err = switch_op(&store, Operation::Rollback, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("`active` is unreadable"), "{err}");
    assert!(store.writes().is_empty());
    // Naming the color is the way out of an unreadable `active`.
    switch_op(&store, Operation::Switch, Some(Color::Blue))
        .await
        .unwrap();
    assert_eq!(store.snapshot().active.unwrap().color, Color::Blue);
}

#[test]
fn next_follows_the_pipeline_and_its_failure_branches() {
    let plan = Plan {
        from: Some(Color::Blue),
        to: Color::Green,
        hosts: vec!["a".into()],
        lbs: vec!["lb".into()],
        migrations: false,
        verify_for: Duration::ZERO,
        no_switch: false,
        canary: false,
    };
    let mut step = Step::AwaitHealthy;
    let mut path = vec![step];
    while let Next::Run(s) = pipeline::next(&plan, step, true) {
        step = s;
        path.push(s);
    }
    use Step::*;
    assert_eq!(
        path,
        vec![
            AwaitHealthy,
            RecheckActive,
            Smoke,
            Switch,
            AwaitAcks,
            VerifyLbs
        ]
    );
    let with = Plan {
        migrations: true,
        verify_for: Duration::from_secs(1),
        ..plan.clone()
    };
    assert_eq!(
        pipeline::next(&with, AwaitHealthy, true),
        Next::Run(Migrate)
    );
    assert_eq!(pipeline::next(&with, VerifyLbs, true), Next::Run(VerifyFor));
    let staged_only = Plan {
        no_switch: true,
        ..plan.clone()
    };
    assert_eq!(pipeline::next(&staged_only, Smoke, true), Next::Staged);
    let canary = Plan {
        canary: true,
        ..plan.clone()
    };
    assert_eq!(pipeline::next(&canary, Smoke, true), Next::Run(Canary));
    assert_eq!(pipeline::next(&canary, Canary, true), Next::Run(Switch));
    assert_eq!(
        pipeline::next(&canary, Canary, false),
        Next::FailBeforeSwitch,
        "a failed canary is back on the stable color: nothing switched"
    );
    for before in [AwaitHealthy, Migrate, RecheckActive, Smoke] {
        assert_eq!(pipeline::next(&plan, before, false), Next::FailBeforeSwitch);
    }
    assert_eq!(pipeline::next(&plan, Switch, false), Next::SwitchRefused);
    assert_eq!(pipeline::next(&plan, AwaitAcks, false), Next::Unsafe);
    assert_eq!(pipeline::next(&plan, VerifyLbs, false), Next::Unsafe);
    assert_eq!(pipeline::next(&plan, VerifyFor, false), Next::SwitchBack);
    let first = Plan { from: None, ..plan };
    assert_eq!(
        pipeline::next(&first, VerifyFor, false),
        Next::Unsafe,
        "nothing to go back to"
    );
}

#[test]
fn preflight_targets_the_idle_color() {
    let store = fleet().serving(Color::Green, "v1");
    let intent = Intent {
        version: "v2".into(),
        ..Default::default()
    };
    match pipeline::preflight(&store.snapshot(), &intent) {
        Preflight::Go(plan) => assert_eq!((plan.from, plan.to), (Some(Color::Green), Color::Blue)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_rollback_whose_record_fails_after_the_switch_is_unsafe_not_unreachable() {
    let store = fleet();
    deploy(&store, &FakeProbes::default(), &args("v1"))
        .await
        .unwrap();
    deploy(&store, &FakeProbes::default(), &args("v2"))
        .await
        .unwrap();
    // The switch and its acks go through; then the lease is gone before the record is closed.
    store.lose_lock_after_writes(1);
    let err = switch_op(&store, Operation::Rollback, None)
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 4, "{err}");
    assert!(err.to_string().contains("traffic moved to blue"), "{err}");
    assert_eq!(store.snapshot().active.unwrap().color, Color::Blue);
}

#[tokio::test(start_paused = true)]
async fn a_canary_without_numbers_is_sent_back_at_its_deadline_and_its_color_stopped() {
    let store = fleet();
    deploy(&store, &FakeProbes::default(), &args("v1"))
        .await
        .unwrap();
    let canary = DeployArgs {
        canary: true,
        ..args("v2")
    };
    let err = deploy(&store, &FakeProbes::default(), &canary)
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    assert!(
        err.to_string().contains("insufficient data at step 1"),
        "{err}"
    );
    let s = store.snapshot();
    let split = s.traffic.expect("the split was written");
    assert_eq!(
        (split.stable, split.canary, split.weight),
        (Color::Blue, Color::Green, 0)
    );
    assert_eq!(
        s.active.unwrap().color,
        Color::Blue,
        "traffic never switched"
    );
    assert_eq!(
        release_desired(&store, Color::Green),
        Some(Desired::Stopped)
    );
    assert_eq!(s.deploy.unwrap().phase, Phase::Failed);
    assert_eq!(
        outcomes(&store),
        vec![
            (Operation::Deploy, Outcome::Done),
            (Operation::CanaryStep, Outcome::Aborted),
            (Operation::Deploy, Outcome::Failed)
        ]
    );
    let weights: Vec<u32> = store
        .writes()
        .iter()
        .filter_map(|w| match w {
            Write::Traffic(t) => Some(t.weight),
            _ => None,
        })
        .collect();
    assert_eq!(weights, vec![100, 0], "1 % first, then everyone back");
}

#[tokio::test(start_paused = true)]
async fn a_first_deploy_cannot_be_a_canary() {
    let store = fleet();
    let canary = DeployArgs {
        canary: true,
        ..args("v1")
    };
    let err = deploy(&store, &FakeProbes::default(), &canary)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("a canary needs a stable color"),
        "{err}"
    );
    assert!(store.writes().is_empty(), "nothing written");
}

/// A canary whose coordinator died, and one LB's sidecar gone as well: whatever command takes the
/// lock next sends every user back to the stable color, waits for the live LB only (naming the
/// other) and records the reconcile. Waiting for the dead LB made every lock-taking command fail
/// after the ack timeout, `lb remove` of that very LB included, and lost the reconcile record.
#[tokio::test(start_paused = true)]
async fn a_dead_canary_is_sent_back_without_waiting_for_a_dead_lb() {
    let store = fleet().serving(Color::Blue, "v1");
    store.set_deploy(DeployRecord {
        deploy_id: "canary-1".into(),
        operation: Operation::Deploy,
        phase: Phase::Canary,
        from: Some(Color::Blue),
        to: Color::Green,
        version: "v2".into(),
        token: 1,
        started_at: "t".into(),
        updated_at: "t".into(),
        error: None,
    });
    store.set_traffic(proto::records::TrafficRecord {
        stable: Color::Blue,
        canary: Color::Green,
        weight: 500,
        step: 2,
        sticky: Default::default(),
        deploy_id: "canary-1".into(),
        token: 1,
        set_at: "t".into(),
    });
    store.silence_lb("lb-2");
    let progress = Progress::new(true);
    let ran = crate::locked::run_locked(&store, "lb-remove-1", &progress, async |_, state| {
        Ok(state.deploy.map(|d| d.phase))
    })
    .await
    .unwrap();
    assert_eq!(
        ran,
        Some(Phase::Failed),
        "the body sees the reconciled state"
    );
    let s = store.snapshot();
    assert_eq!(s.traffic.map(|t| t.weight), Some(0));
    let reconciled: Vec<Operation> = outcomes(&store).into_iter().map(|(k, _)| k).collect();
    assert_eq!(reconciled, vec![Operation::Reconcile]);
}

/// A release every host refused for its signature never started: the report says that, not
/// "health failed" (which sends an operator to the app's logs).
#[test]
fn a_release_refused_for_its_signature_is_reported_as_such() {
    let refused = format!("{}: unsigned release refused", proto::signing::REFUSED);
    let all = vec![
        ("a".to_string(), refused.clone()),
        ("b".to_string(), refused.clone()),
    ];
    let line = pipeline::failure_headline(Step::AwaitHealthy, "v4", Color::Green, &all);
    assert!(
        line.contains("v4 was refused for its signature on green")
            && line.contains("--signing-key"),
        "{line}"
    );
    let mixed = vec![
        ("a".to_string(), refused),
        ("b".to_string(), "crashed".to_string()),
    ];
    let line = pipeline::failure_headline(Step::AwaitHealthy, "v4", Color::Green, &mixed);
    assert!(line.starts_with("health failed for v4 on green"), "{line}");
}

/// An LB whose sidecar goes silent during a canary: the ramp sends everyone back waiting only
/// for the LBs that follow (before, it waited for the silent one and ended unsafe, exit 4).
#[tokio::test(start_paused = true)]
async fn a_canary_whose_lb_goes_silent_is_sent_back_without_waiting_for_it() {
    let store = std::sync::Arc::new(fleet());
    deploy(&store, &FakeProbes::default(), &args("v1"))
        .await
        .unwrap();
    let watcher = {
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                let split = store
                    .writes()
                    .iter()
                    .any(|w| matches!(w, Write::Traffic(_)));
                if split {
                    store.silence_lb("lb-2");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let canary = DeployArgs {
        canary: true,
        ..args("v2")
    };
    let err = deploy(&store, &FakeProbes::default(), &canary)
        .await
        .unwrap_err();
    watcher.await.unwrap();
    assert_eq!(err.exit_code(), 1, "{err}");
    let s = store.snapshot();
    assert_eq!(s.traffic.map(|t| t.weight), Some(0), "everyone sent back");
    assert_eq!(s.active.unwrap().color, Color::Blue);
}
