//! `coordinator` as a process against a whole fleet: real etcd, agents, nginx and lb-sidecars.
use bluegreen_tests::fleet::{text, Fleet};
use bluegreen_tests::lb::ack;
use bluegreen_tests::load::{self, LoadReport};
use bluegreen_tests::procs::{get_raw, keys};
use bluegreen_tests::wait_for;
use proto::records::{decode, ActiveRecord, Desired, ReleaseRecord};
use proto::Color;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

async fn active(fleet: &Fleet) -> Option<ActiveRecord> {
    let key = keys().active();
    get_raw(&fleet.client, &key)
        .await
        .map(|b| decode(&key, &b).unwrap())
}

async fn release(fleet: &Fleet, color: Color) -> Option<ReleaseRecord> {
    let key = keys().release(color);
    get_raw(&fleet.client, &key)
        .await
        .map(|b| decode(&key, &b).unwrap())
}

/// Fresh-connection load loops through every LB until the returned flag is set.
fn load_through_lbs(fleet: &Fleet) -> (Arc<AtomicBool>, Vec<tokio::task::JoinHandle<LoadReport>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let loops = fleet.load_every_lb(&stop);
    (stop, loops)
}

/// A fleet of 3 hosts and 2 LBs with v1 deployed (blue, the first deploy's color).
async fn fleet_with_v1() -> Fleet {
    let fleet = Fleet::start(3, 2).await;
    let out = fleet.deploy(&fleet.spec("good", &[]), "v1", &[]).await;
    assert!(out.status.success(), "first deploy failed: {}", text(&out));
    assert_eq!(active(&fleet).await.unwrap().color, Color::Blue);
    fleet
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_v2_under_load_drops_nothing_and_records_history() {
    let fleet = fleet_with_v1().await;
    let (stop, loops) = load_through_lbs(&fleet);
    let out = fleet
        .deploy(&fleet.spec("good", &[]), "v2", &["--output", "json"])
        .await;
    let report = load::finish(stop, loops).await;
    assert!(out.status.success(), "{}", text(&out));
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["step"] == "stage" && e["host"] == "host-2" && e["state"] == "healthy"),
        "{events:?}"
    );
    assert!(events
        .iter()
        .all(|e| e["elapsed_ms"].is_u64() || e["step"] == "result"));
    println!(
        "through the LBs during the deploy: {} ok, {} failed, colors {:?}",
        report.ok,
        report.failed.len(),
        report.colors
    );
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert!(
        report.colors.contains_key("green"),
        "traffic never reached green: {:?}",
        report.colors
    );
    let a = active(&fleet).await.unwrap();
    assert_eq!((a.color, a.version.as_str()), (Color::Green, "v2"));
    for lb in &fleet.lbs {
        assert_eq!(
            bluegreen_tests::procs::get_json(&lb.url("/"))
                .await
                .unwrap()["version"],
            "v2"
        );
    }
    let history = text(&fleet.run(&["history"]).await);
    assert_eq!(
        history
            .lines()
            .filter(|l| l.contains("deploy") && l.contains("done"))
            .count(),
        2,
        "{history}"
    );
    // The same version again is a no-op that says so.
    let again = fleet.deploy(&fleet.spec("good", &[]), "v2", &[]).await;
    assert!(
        again.status.success() && text(&again).contains("nothing to do"),
        "{}",
        text(&again)
    );
    let status = text(&fleet.run(&["status"]).await);
    assert!(
        status.contains("active: green (v2)") && status.contains("lb lb-1: serving green"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_exits_2_and_writes_nothing() {
    let fleet = Fleet::start(1, 0).await;
    let good = fleet.spec("good", &[]);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let spec_text = std::fs::read_to_string(&good).unwrap();
    let unknown = write(
        "unknown.toml",
        spec_text.replace("[health]", "[health]\nintervall = \"1s\""),
    );
    let duration = write(
        "duration.toml",
        spec_text.replace("interval = \"500ms\"", "interval = \"soon\""),
    );
    let no_path = write(
        "nopath.toml",
        spec_text.replace("path = \"/api/v1/status\"\n", ""),
    );
    let missing = dir.path().join("missing.toml");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--spec".into(), missing.display().to_string()],
            "missing.toml",
        ),
        (
            vec!["--spec".into(), unknown.display().to_string()],
            "intervall",
        ),
        (
            vec!["--spec".into(), duration.display().to_string()],
            "interval",
        ),
        (vec!["--spec".into(), no_path.display().to_string()], "path"),
    ];
    for (args, expect) in cases {
        let out = fleet
            .coordinator()
            .arg("deploy")
            .args(&args)
            .args([
                "--version",
                "v1",
                "--artifact",
                &fleet.app.url,
                "--sha256",
                &fleet.app.sha256,
            ])
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(expect), "{expect}: {}", text(&out));
    }
    let bad_sha = fleet.deploy(&good, "v1", &["--sha256", "xyz"]).await;
    assert_eq!(bad_sha.status.code(), Some(2));
    assert!(text(&bad_sha).contains("--sha256"), "{}", text(&bad_sha));
    let bad_url = fleet
        .coordinator()
        .arg("deploy")
        .arg("--spec")
        .arg(&good)
        .args(["--version", "v1", "--artifact", "ftp://x/app.tgz"])
        .output()
        .await
        .unwrap();
    assert_eq!(bad_url.status.code(), Some(2));
    assert!(
        text(&bad_url).contains("ftp://x/app.tgz"),
        "{}",
        text(&bad_url)
    );
    let unreachable = fleet
        .coordinator()
        .env("BLUEGREEN_ETCD", "http://127.0.0.1:1")
        .arg("deploy")
        .arg("--spec")
        .arg(&good)
        .args([
            "--version",
            "v1",
            "--artifact",
            &fleet.app.url,
            "--sha256",
            &fleet.app.sha256,
        ])
        .output()
        .await
        .unwrap();
    // An etcd outage is not bad input: exit 5, "control plane unreachable".
    assert_eq!(unreachable.status.code(), Some(5), "{}", text(&unreachable));
    assert!(
        text(&unreachable).contains("127.0.0.1:1"),
        "{}",
        text(&unreachable)
    );
    // Nothing was written: no lock, release, active, deploy or history key exists.
    let k = keys();
    for key in [k.lock(), k.active(), k.release(Color::Blue), k.deploy()] {
        assert!(
            get_raw(&fleet.client, &key).await.is_none(),
            "{key} was written"
        );
    }
    let history = fleet
        .client
        .clone()
        .get(
            k.history_prefix(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(history.kvs().len(), 0);
}

/// A version bad on one host of three, for each kind of check: exit 1, traffic never left blue.
async fn one_bad_host(knob: &str, step: &str) {
    let fleet = fleet_with_v1().await;
    let (stop, loops) = load_through_lbs(&fleet);
    let spec = fleet.spec("bad", &[(knob, "1"), ("DEMO_FAIL_HOSTS", "127.0.0.12")]);
    let out = fleet.deploy(&spec, "v2", &["--health-timeout", "8s"]).await;
    let report = load::finish(stop, loops).await;
    let output = text(&out);
    assert_eq!(out.status.code(), Some(1), "{output}");
    assert!(
        output.contains(&format!("{step} failed")) && output.contains("host-2"),
        "{output}"
    );
    assert!(
        output.contains("| "),
        "the failing host's log lines are attached: {output}"
    );
    assert_eq!(
        report.colors.keys().collect::<Vec<_>>(),
        vec!["blue"],
        "traffic left blue: {report:?}"
    );
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(active(&fleet).await.unwrap().color, Color::Blue);
    assert_eq!(
        release(&fleet, Color::Green).await.unwrap().desired,
        Desired::Stopped
    );
    let history = text(&fleet.run(&["history"]).await);
    assert!(
        history.lines().last().unwrap().contains("failed"),
        "{history}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_health_on_one_host_keeps_traffic_on_the_old_color() {
    one_bad_host("DEMO_FAIL_HEALTH", "health").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_smoke_on_one_host_keeps_traffic_on_the_old_color() {
    one_bad_host("DEMO_FAIL_SMOKE", "smoke").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_deploys_take_turns_or_give_up() {
    let fleet = fleet_with_v1().await;
    // Staging v2 takes a few seconds (slow start), long enough for the others to meet the lock.
    let slow = fleet.spec("slow", &[("DEMO_START_DELAY_MS", "3000")]);
    let mut first = fleet.deploy_command(&slow, "v2", &[]).spawn().unwrap();
    let lock_key = keys().lock();
    wait_for(
        "the first deploy to hold the lock",
        Duration::from_secs(20),
        || async { get_raw(&fleet.client, &lock_key).await.map(|_| ()) },
    )
    .await;
    let impatient = fleet
        .deploy(&fleet.spec("good", &[]), "v3", &["--lock-wait", "0s"])
        .await;
    assert_eq!(impatient.status.code(), Some(3), "{}", text(&impatient));
    assert!(text(&impatient).contains("held by"), "{}", text(&impatient));
    let patient = fleet
        .deploy_command(&fleet.spec("good", &[]), "v3", &["--lock-wait", "2m"])
        .output();
    let (first, patient) = tokio::join!(first.wait(), patient);
    assert!(first.unwrap().success());
    let patient = patient.unwrap();
    assert!(patient.status.success(), "{}", text(&patient));
    assert!(
        text(&patient).contains("waiting"),
        "the second deploy waited for the lock: {}",
        text(&patient)
    );
    let a = active(&fleet).await.unwrap();
    assert_eq!((a.color, a.version.as_str()), (Color::Blue, "v3"));
}

#[tokio::test(flavor = "multi_thread")]
async fn paused_coordinator_is_fenced_out() {
    let fleet = fleet_with_v1().await;
    let slow = fleet.spec("slow", &[("DEMO_START_DELAY_MS", "4000")]);
    let paused = fleet.deploy_command(&slow, "v2", &[]).spawn().unwrap();
    let pid = nix::unistd::Pid::from_raw(paused.id().unwrap() as i32);
    let deploy_key = keys().deploy();
    wait_for(
        "the first deploy to start staging",
        Duration::from_secs(20),
        || async {
            get_raw(&fleet.client, &deploy_key)
                .await
                .filter(|v| String::from_utf8_lossy(v).contains("staging"))
                .map(|_| ())
        },
    )
    .await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let status = fleet.run(&["lock", "status"]).await;
    assert!(
        text(&status).contains("held by") && text(&status).contains("version v2"),
        "{}",
        text(&status)
    );
    // A live lease does not prove a live holder (anyone may keep a lease alive): the status says
    // when the holder last wrote, and the remedy.
    assert!(
        text(&status).contains("its operation last wrote")
            && text(&status).contains("coordinator lock break --yes"),
        "{}",
        text(&status)
    );
    // An operator breaks the stuck lock (confirmation required) instead of waiting for the TTL.
    let unconfirmed = fleet.run(&["lock", "break"]).await;
    assert_eq!(unconfirmed.status.code(), Some(2), "{}", text(&unconfirmed));
    let broken = fleet.run(&["lock", "break", "--yes"]).await;
    assert!(
        broken.status.success() && text(&broken).contains("broken"),
        "{}",
        text(&broken)
    );
    assert_eq!(
        text(&fleet.run(&["lock", "status"]).await).trim(),
        "lock: free"
    );
    let second = fleet.deploy(&fleet.spec("good", &[]), "v3", &[]).await;
    assert!(second.status.success(), "{}", text(&second));
    let after_second = active(&fleet).await.unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let first = paused.wait_with_output().await.unwrap();
    assert!(
        !first.status.success(),
        "the fenced-out coordinator must fail: {}",
        text(&first)
    );
    assert_eq!(
        active(&fleet).await.unwrap(),
        after_second,
        "the paused coordinator changed traffic"
    );
    assert_eq!(after_second.version, "v3");
    assert!(text(&fleet.run(&["history"]).await).contains("lock-break"));
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_for_switches_back_when_the_new_version_turns_unhealthy() {
    let fleet = fleet_with_v1().await;
    let crashing = fleet.spec("crash", &[("DEMO_CRASH_AFTER_MS", "4000")]);
    let out = fleet
        .deploy(&crashing, "v2", &["--verify-for", "20s"])
        .await;
    let output = text(&out);
    assert_eq!(out.status.code(), Some(1), "{output}");
    assert!(output.contains("switched back to blue"), "{output}");
    let a = active(&fleet).await.unwrap();
    assert_eq!(a.color, Color::Blue);
    for lb in &fleet.lbs {
        assert_eq!(
            bluegreen_tests::procs::get_json(&lb.url("/"))
                .await
                .unwrap()["environment"],
            "blue"
        );
    }
    assert!(text(&fleet.run(&["history"]).await).contains("rolled_back"));
}

/// Rollbacks and switches move every LB. Then an etcd writer replays an older deploy's release
/// record onto the idle color (as read from an old revision; the fleet signs nothing) and its
/// agents run it: a rollback refuses to send traffic there, since history's last deploy to that
/// color placed something else. Before, the rollback went to the replayed version.
#[tokio::test(flavor = "multi_thread")]
async fn rollback_right_after_a_deploy_moves_every_lb_back() {
    let fleet = fleet_with_v1().await;
    let v1_on_blue = get_raw(&fleet.client, &keys().release(Color::Blue))
        .await
        .unwrap();
    let out = fleet.deploy(&fleet.spec("good", &[]), "v2", &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    let rollback = fleet.run(&["rollback"]).await;
    assert!(rollback.status.success(), "{}", text(&rollback));
    let a = active(&fleet).await.unwrap();
    assert_eq!((a.color, a.version.as_str()), (Color::Blue, "v1"));
    for (i, lb) in fleet.lbs.iter().enumerate() {
        assert_eq!(
            ack(&fleet.client, &format!("lb-{i}")).await.unwrap().color,
            Some(Color::Blue)
        );
        let after = load::requests(&lb.url("/api/v1/status"), 20).await;
        assert_eq!(after.colors.keys().collect::<Vec<_>>(), vec!["blue"]);
    }
    // A manual switch has the same checks and acks.
    let switch = fleet.run(&["switch", "green"]).await;
    assert!(switch.status.success(), "{}", text(&switch));
    assert_eq!(active(&fleet).await.unwrap().color, Color::Green);
    let json: serde_json::Value =
        serde_json::from_slice(&fleet.run(&["--output", "json", "status"]).await.stdout).unwrap();
    assert_eq!(json["active"]["color"], "green");
    assert_eq!(json["lbs"]["lb-0"]["color"], "green");
    let logs = fleet
        .run(&[
            "logs", "--host", "host-1", "--color", "green", "--tail", "5",
        ])
        .await;
    assert!(
        logs.status.success() && text(&logs).contains("demo-app listening"),
        "{}",
        text(&logs)
    );

    // v3 goes to blue; green, idle, holds v2. v1's old record is written over it.
    let out = fleet.deploy(&fleet.spec("good", &[]), "v3", &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    let replayed = String::from_utf8(v1_on_blue).unwrap();
    bluegreen_tests::procs::put_raw(&fleet.client, &keys().release(Color::Green), &replayed).await;
    for host in &fleet.hosts {
        bluegreen_tests::procs::wait_healthy(&fleet.client, &host.host, Color::Green, "v1").await;
    }
    let refused = fleet.run(&["rollback"]).await;
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("releases/green holds v1")
            && text(&refused).contains("written outside a deploy"),
        "{}",
        text(&refused)
    );
    let a = active(&fleet).await.unwrap();
    assert_eq!((a.color, a.version.as_str()), (Color::Blue, "v3"));
}

/// Every value `active` ever had, from etcd's own history (the test never compacts).
async fn active_history(fleet: &Fleet) -> Vec<ActiveRecord> {
    let key = keys().active();
    let mut stream = fleet
        .client
        .clone()
        .watch(
            key.as_str(),
            Some(etcd_client::WatchOptions::new().with_start_revision(1)),
        )
        .await
        .unwrap();
    let now = fleet
        .client
        .clone()
        .get("\0", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let mut values = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        for event in message.events() {
            if let Some(kv) = event.kv() {
                if !kv.value().is_empty() {
                    values.push(decode(&key, kv.value()).unwrap());
                }
            }
        }
        let seen = message.header().map(|h| h.revision()).unwrap_or(0);
        if message.events().is_empty() && !values.is_empty()
            || seen >= now && !message.events().is_empty()
        {
            break;
        }
    }
    values
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_coordinator_is_reconciled_and_never_switches_twice() {
    let mut fleet = fleet_with_v1().await;
    fleet.short_lock_lease();
    let deploy_key = keys().deploy();
    let lock_key = keys().lock();
    let slow = fleet.spec("slow", &[("DEMO_START_DELAY_MS", "3000")]);

    // Killed while staging: nothing switched; the next deploy says so and completes.
    let mut staging = fleet.deploy_command(&slow, "v2", &[]).spawn().unwrap();
    wait_for("staging", Duration::from_secs(20), || async {
        get_raw(&fleet.client, &deploy_key)
            .await
            .filter(|v| String::from_utf8_lossy(v).contains("\"staging\""))
            .map(|_| ())
    })
    .await;
    staging.kill().await.unwrap();
    let killed = tokio::time::Instant::now();
    wait_for("the lock to free", Duration::from_secs(30), || async {
        get_raw(&fleet.client, &lock_key)
            .await
            .is_none()
            .then_some(())
    })
    .await;
    println!(
        "lock of a kill -9'd coordinator freed after {:?} (lease TTL 6 s, --lock-ttl)",
        killed.elapsed()
    );
    let next = fleet.deploy(&fleet.spec("good", &[]), "v3", &[]).await;
    assert!(next.status.success(), "{}", text(&next));
    assert!(
        text(&next).contains("reconcile: not switched"),
        "{}",
        text(&next)
    );

    // Killed right after its switch, before the acks: the next deploy finds it switched. The
    // sidecars are frozen first, so no ack can come before the kill: a reload-free LB acks within
    // milliseconds of the write, faster than this test can see the write and kill.
    for sidecar in &fleet.sidecars {
        sidecar.pause();
    }
    let mut switching = fleet
        .deploy_command(&fleet.spec("good", &[]), "v4", &[])
        .spawn()
        .unwrap();
    let v4 = wait_for("the v4 switch", Duration::from_secs(40), || async {
        active(&fleet).await.filter(|a| a.version == "v4")
    })
    .await;
    switching.kill().await.unwrap();
    for sidecar in &fleet.sidecars {
        sidecar.resume();
    }
    wait_for("the lock to free", Duration::from_secs(30), || async {
        get_raw(&fleet.client, &lock_key)
            .await
            .is_none()
            .then_some(())
    })
    .await;
    let last = fleet.deploy(&fleet.spec("good", &[]), "v5", &[]).await;
    assert!(last.status.success(), "{}", text(&last));
    assert!(
        text(&last).contains("reconcile: switched"),
        "{}",
        text(&last)
    );
    assert_eq!(active(&fleet).await.unwrap().version, "v5");

    let history = active_history(&fleet).await;
    let mut per_deploy = std::collections::BTreeMap::new();
    for a in &history {
        *per_deploy.entry(a.deploy_id.clone()).or_insert(0) += 1;
    }
    assert!(
        per_deploy.values().all(|n| *n == 1),
        "a deploy id switched twice: {per_deploy:?}"
    );
    assert!(per_deploy.contains_key(&v4.deploy_id));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_lock_can_be_seen_and_broken() {
    let fleet = Fleet::start(0, 0).await;
    let key = keys().lock();
    // Garbage under a lease (a writer of another version) and without one (written by hand).
    for leased in [true, false] {
        let options = if leased {
            let lease = fleet
                .client
                .clone()
                .lease_grant(60, None)
                .await
                .unwrap()
                .id();
            Some(etcd_client::PutOptions::new().with_lease(lease))
        } else {
            None
        };
        fleet
            .client
            .clone()
            .put(key.as_str(), "{not json", options)
            .await
            .unwrap();
        let out = fleet.run(&["lock", "status"]).await;
        assert!(out.status.success(), "lock status: {}", text(&out));
        assert!(
            text(&out).contains("unreadable value") && text(&out).contains(&key),
            "{}",
            text(&out)
        );
        let out = fleet.run(&["lock", "break", "--yes"]).await;
        assert!(out.status.success(), "lock break: {}", text(&out));
        assert!(
            get_raw(&fleet.client, &key).await.is_none(),
            "leased={leased}: the lock is still there"
        );
    }
    let history = text(&fleet.run(&["history"]).await);
    assert_eq!(history.matches("lock-break").count(), 2, "{history}");
}
