//! Every branch of a color's lifecycle, fed events and synthetic times: no processes, no sleeps.
use super::*;
use proto::records::{Artifact, HealthSpec, RunSpec};
use std::collections::BTreeMap;

fn release(version: &str) -> ReleaseRecord {
    ReleaseRecord {
        version: version.into(),
        artifact: Artifact {
            url: "file:///a.tar.gz".into(),
            sha256: format!("{:0>64}", version.len()),
        },
        run: RunSpec {
            command: vec!["./app".into(), version.into()],
            env: BTreeMap::new(),
            stop_timeout: Duration::from_secs(5),
        },
        health: HealthSpec {
            interval: Duration::from_secs(2),
            startup_timeout: Duration::from_secs(10),
            ..HealthSpec::default()
        },
        desired: Desired::Running,
        deploy_id: "d".into(),
        token: 1,
        signature: None,
    }
}

fn want(version: &str) -> Event {
    Event::Desired(DesiredRelease::Release(release(version)))
}

fn healthy() -> Probe {
    Probe {
        healthy: true,
        reason: None,
        body: serde_json::Value::Null,
    }
}

fn sick(why: &str) -> Probe {
    Probe {
        healthy: false,
        reason: Some(why.into()),
        body: serde_json::Value::Null,
    }
}

/// The published statuses among `actions`, as (version, state, error).
fn published(actions: &[Action]) -> Vec<(String, HealthState, Option<String>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish(s) => Some((s.version.clone(), s.state, s.error.clone())),
            _ => None,
        })
        .collect()
}

fn last_state(actions: &[Action]) -> Option<HealthState> {
    published(actions).last().map(|p| p.1)
}

fn dir(version: &str) -> PathBuf {
    PathBuf::from(format!("/artifacts/{version}"))
}

/// Drives a whole install of `version` (fetch and launch succeed) and returns the lifecycle.
fn running(version: &str, now: Instant) -> Lifecycle {
    let mut l = Lifecycle::new(Color::Green, 3);
    install(&mut l, version, 100, now);
    l.handle(Event::Probed(healthy()), now);
    l
}

fn launched(
    l: &mut Lifecycle,
    purpose: Purpose,
    version: &str,
    result: Result<u32, String>,
    now: Instant,
) -> Vec<Action> {
    l.handle(
        Event::Launched {
            purpose,
            release: release(version),
            dir: dir(version),
            result,
        },
        now,
    )
}

fn fetched(
    l: &mut Lifecycle,
    result: Result<PathBuf, String>,
    superseded: bool,
    now: Instant,
) -> Vec<Action> {
    l.handle(Event::Fetched { result, superseded }, now)
}

fn install(l: &mut Lifecycle, version: &str, pid: u32, now: Instant) -> Vec<Action> {
    let actions = l.handle(want(version), now);
    assert!(
        actions.contains(&Action::Fetch(release(version))),
        "{actions:?}"
    );
    let mut all = actions;
    let after_fetch = fetched(l, Ok(dir(version)), false, now);
    let launch = after_fetch.iter().find_map(|a| match a {
        Action::Launch { purpose, .. } => Some(purpose.clone()),
        _ => None,
    });
    all.extend(after_fetch);
    let purpose = launch.expect("a launch follows a fetch");
    all.extend(launched(l, purpose, version, Ok(pid), now));
    all
}

#[test]
fn a_new_release_is_fetched_then_launched_then_probed_healthy() {
    let now = Instant::now();
    let mut l = Lifecycle::new(Color::Green, 3);
    let actions = install(&mut l, "v1", 100, now);
    assert_eq!(
        published(&actions),
        vec![
            ("v1".into(), HealthState::Starting, None),
            ("v1".into(), HealthState::Starting, None)
        ]
    );
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::StopProcess { .. })),
        "nothing ran before"
    );
    assert_eq!(l.next_probe(now), Some(now + STARTING_PROBE));
    let actions = l.handle(Event::Probed(healthy()), now);
    assert_eq!(last_state(&actions), Some(HealthState::Healthy));
    assert_eq!(
        l.next_probe(now),
        Some(now + Duration::from_secs(2)),
        "healthy: every interval"
    );
}

#[test]
fn replacing_stops_the_old_process_first_and_keeps_it_for_restore() {
    let now = Instant::now();
    let mut l = running("v1", now);
    l.handle(want("v2"), now);
    let actions = fetched(&mut l, Ok(dir("v2")), false, now);
    assert_eq!(
        actions[0],
        Action::StopProcess {
            timeout: Duration::from_secs(5)
        }
    );
    assert_eq!(actions[1], Action::ForgetPidFile);
    assert!(matches!(
        &actions[2],
        Action::Launch { purpose: Purpose::Install { previous: Some((r, _)) }, .. } if r.version == "v1"
    ));
}

#[test]
fn a_failed_fetch_never_touches_the_running_process() {
    let now = Instant::now();
    let mut l = running("v1", now);
    l.handle(want("v2"), now);
    let actions = fetched(&mut l, Err("sha256 mismatch".into()), false, now);
    assert_eq!(
        published(&actions),
        vec![(
            "v2".into(),
            HealthState::Failed,
            Some("sha256 mismatch".into())
        )]
    );
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::StopProcess { .. } | Action::Launch { .. })));
    // The failure stays reported while the old process keeps being probed.
    assert!(published(&l.handle(Event::Probed(healthy()), now)).is_empty());
    assert_eq!(l.running_release().map(|r| r.version.as_str()), Some("v1"));
}

#[test]
fn a_superseded_fetch_is_dropped() {
    let now = Instant::now();
    let mut l = running("v1", now);
    l.handle(want("v2"), now);
    assert!(l
        .handle(
            Event::Fetched {
                result: Ok(dir("v2")),
                superseded: true
            },
            now
        )
        .is_empty());
    assert_eq!(l.running_release().map(|r| r.version.as_str()), Some("v1"));
}

#[test]
fn the_same_release_again_changes_nothing() {
    let now = Instant::now();
    let mut l = running("v1", now);
    let mut same = release("v1");
    same.health.interval = Duration::from_secs(9);
    let actions = l.handle(Event::Desired(DesiredRelease::Release(same)), now);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::Fetch(_) | Action::StopProcess { .. })),
        "{actions:?}"
    );
    assert_eq!(
        l.next_probe(now),
        Some(now + Duration::from_secs(9)),
        "health settings apply in place"
    );
}

#[test]
fn the_live_color_is_never_replaced_until_active_moves() {
    let now = Instant::now();
    let mut l = running("v1", now);
    l.handle(Event::Active(true), now);
    let actions = l.handle(want("v2"), now);
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Fetch(_))),
        "{actions:?}"
    );
    let (version, state, error) = published(&actions).pop().unwrap();
    assert_eq!((version.as_str(), state), ("v1", HealthState::Healthy));
    assert!(error
        .unwrap()
        .contains("refusing to replace green v1 with v2: green is the active color"));
    let actions = l.handle(Event::Active(false), now);
    assert!(
        actions.contains(&Action::Fetch(release("v2"))),
        "retried once idle: {actions:?}"
    );
}

#[test]
fn the_live_color_is_never_stopped() {
    let now = Instant::now();
    let mut l = running("v1", now);
    l.handle(Event::Active(true), now);
    let mut stop = release("v1");
    stop.desired = Desired::Stopped;
    let actions = l.handle(Event::Desired(DesiredRelease::Release(stop)), now);
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::StopProcess { .. })));
    assert!(published(&actions)[0]
        .2
        .as_deref()
        .unwrap()
        .contains("refusing to stop green"));
    // Once the color is idle, the refused stop is retried without a new release.
    let actions = l.handle(Event::Active(false), now);
    assert_eq!(
        actions[0],
        Action::StopProcess {
            timeout: Duration::from_secs(5)
        }
    );
    assert_eq!(last_state(&actions), Some(HealthState::Stopped));
    assert_eq!(l.running_release(), None);
}

#[test]
fn an_invalid_release_is_reported_and_the_process_kept() {
    let now = Instant::now();
    let mut l = running("v1", now);
    let actions = l.handle(
        Event::Desired(DesiredRelease::Invalid {
            version: None,
            error: "releases/green: version".into(),
        }),
        now,
    );
    assert_eq!(
        published(&actions),
        vec![(
            "v1".into(),
            HealthState::Failed,
            Some("releases/green: version".into())
        )]
    );
    assert!(l.running_release().is_some());
}

#[test]
fn crashes_restart_with_doubling_backoff_until_max_restarts() {
    let start = Instant::now();
    let mut l = running("v1", start);
    let mut now = start;
    let mut delays = Vec::new();
    for crash in 1..=3u32 {
        let actions = l.handle(Event::Exited("exited with status 1".into()), now);
        let (_, state, error) = published(&actions).pop().unwrap();
        assert_eq!(state, HealthState::Unhealthy);
        assert!(error.unwrap().contains("restarting in"));
        let at = l.restart_at().expect("a restart is scheduled");
        delays.push(at - now);
        now = at;
        let actions = l.handle(Event::RestartDue, now);
        let Some(Action::Launch { purpose, .. }) = actions.first() else {
            panic!("{actions:?}")
        };
        assert_eq!(
            purpose,
            &Purpose::Restart {
                restarts: crash,
                crashes_in_row: crash
            }
        );
        launched(&mut l, purpose.clone(), "v1", Ok(200 + crash), now);
    }
    assert_eq!(
        delays,
        vec![
            Duration::from_millis(250),
            Duration::from_millis(500),
            Duration::from_secs(1)
        ]
    );
    let actions = l.handle(Event::Exited("exited with status 1".into()), now);
    assert!(actions.contains(&Action::ForgetPidFile));
    let (_, state, error) = published(&actions).pop().unwrap();
    assert_eq!(state, HealthState::Failed);
    assert!(error.unwrap().contains("crashed 4 times in a row"));
    assert_eq!(l.restart_at(), None, "no restart after giving up");
}

#[test]
fn a_process_healthy_for_long_enough_starts_its_crash_count_over() {
    let start = Instant::now();
    let mut l = running("v1", start);
    l.handle(Event::Exited("killed by signal 9".into()), start);
    let at = l.restart_at().unwrap();
    let Some(Action::Launch { purpose, .. }) = l.handle(Event::RestartDue, at).first().cloned()
    else {
        panic!()
    };
    launched(&mut l, purpose, "v1", Ok(300), at);
    l.handle(Event::Probed(healthy()), at);
    l.handle(Event::Probed(healthy()), at + STABLE_AFTER);
    l.handle(
        Event::Exited("killed by signal 9".into()),
        at + STABLE_AFTER,
    );
    assert_eq!(
        l.restart_at(),
        Some(at + STABLE_AFTER + FIRST_RESTART_DELAY),
        "backoff starts over"
    );
}

#[test]
fn a_new_release_that_dies_before_healthy_puts_the_previous_back() {
    let now = Instant::now();
    let mut l = running("v1", now);
    install(&mut l, "v2", 101, now);
    let actions = l.handle(Event::Exited("exited with status 2".into()), now);
    assert!(actions.contains(&Action::ForgetPidFile));
    let (version, state, error) = published(&actions).pop().unwrap();
    assert_eq!((version.as_str(), state), ("v2", HealthState::Failed));
    assert!(error
        .unwrap()
        .contains("process exited with status 2 before it became healthy"));
    let Some(Action::Launch {
        release: r,
        purpose: Purpose::Restore,
        ..
    }) = actions.last()
    else {
        panic!("{actions:?}")
    };
    assert_eq!(r.version, "v1");
    let actions = launched(&mut l, Purpose::Restore, "v1", Ok(102), now);
    assert!(published(&actions)[0]
        .2
        .as_deref()
        .unwrap()
        .ends_with("; restored v1"));
    assert_eq!(l.running_release().map(|r| r.version.as_str()), Some("v1"));
}

#[test]
fn a_new_release_that_cannot_start_puts_the_previous_back() {
    let now = Instant::now();
    let mut l = running("v1", now);
    l.handle(want("v2"), now);
    let actions = fetched(&mut l, Ok(dir("v2")), false, now);
    let Some(Action::Launch { purpose, .. }) = actions.last().cloned() else {
        panic!()
    };
    let actions = launched(&mut l, purpose, "v2", Err("port 8081 in use".into()), now);
    assert_eq!(
        published(&actions)[0],
        (
            "v2".into(),
            HealthState::Failed,
            Some("port 8081 in use".into())
        )
    );
    assert!(matches!(
        actions.last(),
        Some(Action::Launch {
            purpose: Purpose::Restore,
            ..
        })
    ));
}

#[test]
fn a_start_that_never_turns_healthy_fails_at_startup_timeout() {
    let start = Instant::now();
    let mut l = Lifecycle::new(Color::Blue, 3);
    install(&mut l, "v1", 100, start);
    let actions = l.handle(
        Event::Probed(sick("GET /health: connection refused")),
        start + Duration::from_secs(9),
    );
    assert_eq!(last_state(&actions), Some(HealthState::Starting));
    let actions = l.handle(
        Event::Probed(sick("GET /health: connection refused")),
        start + Duration::from_secs(10),
    );
    let (_, state, error) = published(&actions).pop().unwrap();
    assert_eq!(state, HealthState::Failed);
    assert!(error
        .unwrap()
        .contains("not healthy within startup_timeout 10s: GET /health: connection refused"));
}

#[test]
fn a_healthy_process_that_fails_a_probe_is_unhealthy_not_failed() {
    let now = Instant::now();
    let mut l = running("v1", now);
    let actions = l.handle(
        Event::Probed(sick("/health answered HTTP 503")),
        now + Duration::from_secs(600),
    );
    assert_eq!(
        published(&actions),
        vec![(
            "v1".into(),
            HealthState::Unhealthy,
            Some("/health answered HTTP 503".into())
        )]
    );
}

#[test]
fn a_stopped_or_absent_release_stops_an_idle_color() {
    let now = Instant::now();
    let mut l = running("v1", now);
    let actions = l.handle(Event::Desired(DesiredRelease::Absent), now);
    assert_eq!(
        actions[0],
        Action::StopProcess {
            timeout: Duration::from_secs(5)
        }
    );
    assert_eq!(
        published(&actions),
        vec![("v1".into(), HealthState::Stopped, None)]
    );
    let actions = l.handle(Event::Desired(DesiredRelease::Absent), now);
    assert_eq!(
        published(&actions),
        vec![(String::new(), HealthState::Stopped, None)],
        "never a made-up version"
    );
}

#[test]
fn an_adopted_process_is_probed_like_its_own() {
    let now = Instant::now();
    let mut l = Lifecycle::new(Color::Blue, 3);
    let actions = l.handle(
        Event::Adopted {
            pid: 7,
            release: release("v1"),
            dir: dir("v1"),
            restarts: 2,
        },
        now,
    );
    assert_eq!(
        published(&actions),
        vec![("v1".into(), HealthState::Starting, None)]
    );
    // The same release from etcd keeps the adopted process.
    assert!(!l
        .handle(want("v1"), now)
        .iter()
        .any(|a| matches!(a, Action::Fetch(_))));
    assert_eq!(
        last_state(&l.handle(Event::Probed(healthy()), now)),
        Some(HealthState::Healthy)
    );
}

#[test]
fn unknown_desired_state_keeps_whatever_runs() {
    let now = Instant::now();
    let mut l = running("v1", now);
    let actions = l.handle(Event::Desired(DesiredRelease::Unknown), now);
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::StopProcess { .. } | Action::Fetch(_))));
}

#[test]
fn a_refused_release_fails_at_its_own_version_and_keeps_the_process() {
    let now = Instant::now();
    let mut l = running("v1", now);
    let actions = l.handle(
        Event::Desired(DesiredRelease::Invalid {
            version: Some("v2".into()),
            error: "releases/green: unsigned release refused".into(),
        }),
        now,
    );
    assert_eq!(
        published(&actions),
        vec![(
            "v2".into(),
            HealthState::Failed,
            Some("releases/green: unsigned release refused".into())
        )]
    );
    assert_eq!(l.running_release().map(|r| r.version.as_str()), Some("v1"));
}

fn unsigned(version: &str) -> Event {
    Event::Desired(DesiredRelease::Unsigned {
        release: release(version),
        error: format!("releases/green: {version} has no signature from a trusted key"),
    })
}

/// Turning on `trusted_keys` restarts the agent: the release it adopts was never signed. Before,
/// it was reported failed, the active color "not healthy", and every deploy and rollback stopped.
#[test]
fn an_unsigned_release_that_already_runs_keeps_running_flagged() {
    let now = Instant::now();
    let mut l = running("v1", now);
    let actions = l.handle(unsigned("v1"), now);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::StopProcess { .. } | Action::Fetch(_))),
        "{actions:?}"
    );
    assert!(published(&actions)
        .iter()
        .all(|p| p.1 != HealthState::Failed));
    let actions = l.handle(Event::Probed(healthy()), now);
    let flagged = actions.iter().find_map(|a| match a {
        Action::Publish(s) => Some(s.clone()),
        _ => None,
    });
    let flagged = flagged.unwrap_or_else(|| l.status(HealthState::Healthy));
    assert_eq!(flagged.state, HealthState::Healthy);
    assert!(
        flagged
            .unsigned
            .as_deref()
            .is_some_and(|u| u.contains("no signature")),
        "{flagged:?}"
    );
    // The next signed release replaces it as usual, and carries no flag.
    install(&mut l, "v2", 101, now);
    assert_eq!(l.status(HealthState::Healthy).unsigned, None);
}

#[test]
fn an_unsigned_release_is_never_started() {
    let now = Instant::now();
    let mut l = running("v1", now);
    let actions = l.handle(unsigned("v2"), now);
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::Fetch(_) | Action::StopProcess { .. })));
    assert_eq!(last_state(&actions), Some(HealthState::Failed));
    assert_eq!(l.running_release().map(|r| r.version.as_str()), Some("v1"));
    let mut fresh = Lifecycle::new(Color::Blue, 3);
    let actions = fresh.handle(unsigned("v1"), now);
    assert!(!actions.iter().any(|a| matches!(a, Action::Fetch(_))));
    assert_eq!(last_state(&actions), Some(HealthState::Failed));
}
