//! Single faults of issue 11 (reliability) on real processes: a paused LB sidecar or agent, keys deleted
//! or claimed by someone else. Each test failed on the code before its fix.
use bluegreen_tests::fleet::{finished_within, spawn_piped, text, Fleet};
use bluegreen_tests::lb::wait_ack;
use bluegreen_tests::load;
use bluegreen_tests::procs::{get_raw, keys, put_raw};
use bluegreen_tests::{wait_for, AgentProc, Etcd};
use proto::records::{decode, ActiveRecord, HostRecord};
use proto::Color;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

async fn active_color(fleet: &Fleet) -> Color {
    let key = keys().active();
    let bytes = get_raw(&fleet.client, &key).await.expect("active is set");
    decode::<ActiveRecord>(&key, &bytes).unwrap().color
}

/// The zombie LB: its sidecar is paused past its lease while its nginx keeps serving blue. Every
/// traffic move (deploy, rollback, switch) now refuses up front, naming it, with nothing written;
/// before, a deploy or rollback switched the other LB, waited 30 s and ended unsafe with the LBs
/// split. `--allow-split-lbs` moves the others knowingly, and even then blue is never restaged
/// under the zombie (before that fix, the LB vanished from the fleet, the next deploy restaged
/// blue, and most requests through that LB failed).
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_sidecar_keeps_its_lb_a_member_and_its_color_protected() {
    let fleet = Fleet::start(1, 2).await;
    let spec = fleet.spec("good", &[]);
    let out = fleet.deploy(&spec, "v1", &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    let zombie = &fleet.sidecars[1];
    zombie.pause();
    let alive_key = &keys().lb_alive(&zombie.name);
    let client = &fleet.client;
    wait_for(
        "the paused sidecar's lease to expire",
        Duration::from_secs(30),
        || async { get_raw(client, alive_key).await.is_none().then_some(()) },
    )
    .await;
    let listed = text(&fleet.run(&["lb", "list"]).await);
    assert!(listed.contains("lb-1") && listed.contains("NO"), "{listed}");

    // Load through the zombie LB only: it serves blue the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let loops = vec![load::spawn(fleet.lb_urls()[1].clone(), false, stop.clone())];
    let refused = fleet.deploy(&spec, "v2", &[]).await;
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("lb lb-1 is registered but its sidecar is silent")
            && text(&refused).contains("coordinator lb remove lb-1"),
        "{}",
        text(&refused)
    );
    assert!(
        get_raw(client, &keys().release(Color::Green))
            .await
            .is_none(),
        "nothing staged"
    );
    assert_eq!(active_color(&fleet).await, Color::Blue);
    let second = fleet.deploy(&spec, "v2", &["--allow-split-lbs"]).await;
    assert!(second.status.success(), "{}", text(&second));
    assert_eq!(active_color(&fleet).await, Color::Green);
    // A rollback or a switch would split them the same way.
    for mv in [&["rollback"][..], &["switch", "blue"]] {
        let out = fleet.run(mv).await;
        assert_eq!(out.status.code(), Some(1), "{mv:?}: {}", text(&out));
        assert!(
            text(&out).contains("--allow-split-lbs"),
            "{mv:?}: {}",
            text(&out)
        );
    }
    assert_eq!(active_color(&fleet).await, Color::Green);
    let third = fleet.deploy(&spec, "v3", &["--allow-split-lbs"]).await;
    let report = load::finish(stop, loops).await;
    assert_eq!(third.status.code(), Some(1), "{}", text(&third));
    assert!(
        text(&third).contains("blue cannot be restaged") && text(&third).contains("lb-1"),
        "{}",
        text(&third)
    );
    // Through the zombie LB: none failed.
    report.assert_none_failed();

    // The operator decides the LB is gone: removal is fenced and recorded; a live LB is refused.
    let refused = fleet.run(&["lb", "remove", "lb-0", "--yes"]).await;
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(text(&refused).contains("alive"), "{}", text(&refused));
    assert!(
        get_raw(client, &keys().lb_upstreams("lb-1"))
            .await
            .is_some(),
        "the LB wrote its upstream lists"
    );
    let removed = fleet.run(&["lb", "remove", "lb-1", "--yes"]).await;
    assert!(removed.status.success(), "{}", text(&removed));
    let history = text(&fleet.run(&["history"]).await);
    assert!(
        history.contains("lb-remove") && history.contains("removed"),
        "{history}"
    );
    assert!(get_raw(client, &keys().lb("lb-1")).await.is_none());
    assert!(
        get_raw(client, &keys().lb_upstreams("lb-1"))
            .await
            .is_none(),
        "its upstream lists go with it"
    );

    // When the sidecar wakes up it registers again and follows `active`.
    zombie.resume();
    wait_ack(client, "lb-1", "green after waking up", |a| {
        a.color == Some(Color::Green)
    })
    .await;
    let fourth = fleet.deploy(&spec, "v3", &[]).await;
    assert!(fourth.status.success(), "{}", text(&fourth));
    assert_eq!(active_color(&fleet).await, Color::Blue);
}

/// A host whose agent falls silent (paused past its lease: the same as cut off from etcd) stays a
/// member. A deploy now stops before writing anything, naming the host; before, the host simply
/// dropped out of the deploy's view and the live color was switched onto the hosts left (the
/// fault runner's seed 104, where killing the one app left was an outage). The way out is
/// `host remove`, fenced and recorded; the agent registers again when it wakes up.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_agent_keeps_its_host_a_member_and_stops_deploys() {
    let fleet = Fleet::start(2, 1).await;
    let spec = fleet.spec("good", &[]);
    let out = fleet.deploy(&spec, "v1", &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    let silent = &fleet.hosts[1];
    silent.pause();
    let client = &fleet.client;
    let host_key = keys().host(&silent.host);
    wait_for(
        "the paused agent's lease to expire",
        Duration::from_secs(30),
        || async { get_raw(client, &host_key).await.is_none().then_some(()) },
    )
    .await;
    let listed = text(&fleet.run(&["host", "list"]).await);
    assert!(
        listed.contains("host-2") && listed.contains("NO"),
        "{listed}"
    );
    let status = text(&fleet.run(&["status"]).await);
    assert!(
        status.contains("host host-2: registered, agent silent"),
        "{status}"
    );

    let refused = fleet.deploy(&spec, "v2", &[]).await;
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("host host-2 is registered but its agent is silent"),
        "{}",
        text(&refused)
    );
    assert_eq!(active_color(&fleet).await, Color::Blue);
    assert!(get_raw(client, &keys().release(Color::Green))
        .await
        .is_none());

    // host-1's agent runs: removing it would mark it leaving, refused while it is the only
    // host serving the live version.
    let alive = fleet.run(&["host", "remove", "host-1", "--yes"]).await;
    assert_eq!(alive.status.code(), Some(2), "{}", text(&alive));
    assert!(
        text(&alive).contains("the only host serving"),
        "{}",
        text(&alive)
    );
    let removed = fleet.run(&["host", "remove", "host-2", "--yes"]).await;
    assert!(removed.status.success(), "{}", text(&removed));
    let history = text(&fleet.run(&["history"]).await);
    assert!(history.contains("host-remove"), "{history}");
    let after = fleet.deploy(&spec, "v2", &[]).await;
    assert!(after.status.success(), "{}", text(&after));

    silent.resume();
    let member = keys().host_member(&silent.host);
    wait_for(
        "host-2 registered again",
        Duration::from_secs(30),
        || async { get_raw(client, &member).await.map(|_| ()) },
    )
    .await;
}

/// The live color's app is killed on one host, restarts, and is killed on the other host while
/// nginx still sets the first one aside (2 s after its failed attempt): one host serves the whole
/// time, so no request may get nginx's "no live upstreams" 502. Before the backup server lines,
/// every request did until the first host's 2 s ran out (the fault runner's seed 557659).
#[tokio::test(flavor = "multi_thread")]
async fn apps_killed_on_two_hosts_in_quick_succession_leave_no_502() {
    let fleet = Fleet::start(2, 1).await;
    let spec = fleet.spec("good", &[]);
    let out = fleet.deploy(&spec, "v1", &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = (0..2)
        .map(|_| load::spawn(fleet.lb_urls()[0].clone(), false, stop.clone()))
        .collect();
    let kill = |h: usize| {
        let pid = fleet.hosts[h].app_pid(Color::Blue).expect("blue runs");
        let killed = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        pid
    };
    let answers = |h: usize| {
        let url = format!(
            "http://{}:{}/health",
            fleet.hosts[h].address, fleet.hosts[h].ports.blue
        );
        async move {
            let http = load::fresh_connections(Duration::from_millis(500));
            http.get(&url).send().await.ok().map(|_| ())
        }
    };
    let restarted = |h: usize, old: u32| {
        let pid = fleet.hosts[h].app_pid(Color::Blue);
        let answer = answers(h);
        async move {
            match pid {
                Some(p) if p != old => answer.await,
                _ => None,
            }
        }
    };
    for _ in 0..3 {
        let old = kill(0);
        wait_for("host-1's blue app back", Duration::from_secs(20), || {
            restarted(0, old)
        })
        .await;
        let old = kill(1);
        wait_for("host-2's blue app back", Duration::from_secs(20), || {
            restarted(1, old)
        })
        .await;
    }
    let report = load::finish(stop, loops).await;
    let bad_gateway: Vec<&String> = report
        .failed
        .iter()
        .filter(|e| e.starts_with("HTTP 502"))
        .collect();
    assert!(
        bad_gateway.is_empty(),
        "{} of {} requests got 502 while one host served: {:?}",
        bad_gateway.len(),
        report.ok + report.failed.len() as u64,
        &bad_gateway[..bad_gateway.len().min(3)]
    );
    assert!(report.ok > 0);
}

async fn host_record(client: &etcd_client::Client, host: &str) -> Option<HostRecord> {
    let key = keys().host(host);
    get_raw(client, &key)
        .await
        .and_then(|b| decode(&key, &b).ok())
}

/// An agent's host key deleted or overwritten by someone else is written back at once (before,
/// the host stayed invisible to deploys until the agent restarted).
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_writes_back_its_host_key_when_someone_deletes_or_changes_it() {
    let etcd = Etcd::start().await;
    let client = &etcd.client().await;
    let host = &AgentProc::start(&etcd, 1, 5, "");
    let original = wait_for("host key", Duration::from_secs(30), || async move {
        host_record(client, &host.host).await
    })
    .await;
    let key = keys().host(&host.host);
    let status = etcd.etcdctl().args(["del", &key]).status().unwrap();
    assert!(status.success());
    let restored = wait_for(
        "host key written back after del",
        Duration::from_secs(10),
        || async move { host_record(client, &host.host).await },
    )
    .await;
    assert_eq!(restored.instance, original.instance);
    put_raw(client, &key, "{\"garbage\": true}").await;
    let instance = &original.instance;
    wait_for(
        "host key written back after a stray put",
        Duration::from_secs(10),
        || async move {
            host_record(client, &host.host)
                .await
                .filter(|r| &r.instance == instance)
        },
    )
    .await;
}

/// A second agent started with the same host name (a cloned image) is refused and exits; the
/// first keeps its record. Before, both overwrote each other silently.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_agent_with_the_same_host_name_is_refused() {
    let etcd = Etcd::start().await;
    let client = &etcd.client().await;
    let first = &AgentProc::start(&etcd, 1, 5, "");
    let original = wait_for(
        "first agent's host key",
        Duration::from_secs(30),
        || async move { host_record(client, &first.host).await },
    )
    .await;
    let mut second = AgentProc::start(&etcd, 1, 5, "");
    assert_ne!(first.state_dir, second.state_dir);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = second.exit_status() {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the duplicate agent still runs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // poll until the deadline
    };
    assert!(!status.success(), "the duplicate must exit with an error");
    let log = second.log();
    assert!(log.contains("held by another process"), "{log}");
    let now = host_record(client, &first.host)
        .await
        .expect("first keeps its record");
    assert_eq!(now.instance, original.instance);
    assert_eq!(now.ports, first.ports);
}

/// An agent frozen (SIGSTOP) just after a deploy staged onto it: the deploy's health timeout is
/// a hard deadline. It fails (exit 1) within it, traffic stays on blue and the lock is free.
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_agent_cannot_hold_a_deploy_past_its_health_timeout() {
    let fleet = Fleet::start(2, 1).await;
    let spec = fleet.spec("good", &[]);
    let out = fleet.deploy(&spec, "v1", &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    let child = spawn_piped(fleet.deploy_command(&spec, "v2", &["--health-timeout", "4s"]));
    let client = &fleet.client;
    wait_for("v2 staged on green", Duration::from_secs(30), || {
        bluegreen_tests::procs::staged(client, Color::Green, "v2")
    })
    .await;
    fleet.hosts[1].pause();
    let out = finished_within(child, Duration::from_secs(30)).await;
    fleet.hosts[1].resume();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("host-2"), "{}", text(&out));
    assert_eq!(active_color(&fleet).await, Color::Blue);
    assert!(
        get_raw(client, &keys().lock()).await.is_none(),
        "lock still held"
    );
}

/// etcd down for 3 s while a deploy stages: the deploy rides it out (its etcd calls are retried
/// within its deadlines) and finishes; the lock is released. Before, it exited 2 as if the
/// input were bad and the lock stayed held until its lease expired.
#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_rides_out_a_three_second_etcd_outage_while_staging() {
    let mut fleet = Fleet::start(2, 1).await;
    let spec = fleet.spec("good", &[]);
    let out = fleet.deploy(&spec, "v1", &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    let child = spawn_piped(fleet.deploy_command(&spec, "v2", &["--health-timeout", "60s"]));
    let client = fleet.client.clone();
    wait_for("v2 staged on green", Duration::from_secs(30), || {
        bluegreen_tests::procs::staged(&client, Color::Green, "v2")
    })
    .await;
    fleet.etcd.kill();
    let outage_deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    tokio::time::sleep_until(outage_deadline).await; // the fault's length, not a synchronisation
    fleet.etcd.restart().await;
    let out = finished_within(child, Duration::from_secs(60)).await;
    assert!(out.status.success(), "{}", text(&out));
    let client = fleet.etcd.client().await;
    assert_eq!(
        decode::<ActiveRecord>(
            &keys().active(),
            &get_raw(&client, &keys().active()).await.unwrap()
        )
        .unwrap()
        .color,
        Color::Green
    );
    assert!(
        get_raw(&client, &keys().lock()).await.is_none(),
        "lock still held"
    );
}

/// A watch resuming behind 6 MiB of changes (as after a break, or a sidecar paused past etcd's
/// buffers): etcd sends the backlog as one response, over the gRPC client's 4 MiB default. That
/// response used to be refused and re-requested from the same revision forever; now it is
/// decoded (or, if it still fails, the prefix is re-read), and the watcher catches up.
#[tokio::test(flavor = "multi_thread")]
async fn a_watch_resuming_behind_a_backlog_over_four_mib_catches_up() {
    use proto::watch::{PrefixWatch, WatchEvent};
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let keys = keys();
    let prefix = keys.app_prefix();
    let resp = client.clone().get("probe", None).await.unwrap();
    let from = resp.header().unwrap().revision() + 1;
    let filler = "x".repeat(100 * 1024);
    for i in 0..60 {
        put_raw(&client, &keys.history(1_000_000 + i), &filler).await;
    }
    let last_key = keys.active();
    put_raw(&client, &last_key, "the last change").await;
    let mut watch = PrefixWatch::from_revision(&client, prefix, from);
    let mut seen = 0usize;
    let caught_up = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match watch.next().await.expect("watch") {
                WatchEvent::Changes { changes, .. } => {
                    seen += changes.len();
                    if changes.iter().any(|c| c.key == last_key) {
                        return seen;
                    }
                }
                WatchEvent::Resync(snapshot) => {
                    if snapshot.entries.iter().any(|(k, _)| k == &last_key) {
                        return seen;
                    }
                }
            }
        }
    })
    .await;
    assert!(
        caught_up.is_ok(),
        "the watch never caught up with the backlog"
    );
}

/// An app whose `/health` answers 64 KiB: the agent publishes only the contract's fields and a
/// note that it cut the rest, so its writes stay far below etcd's request limit and every
/// watcher is spared the bulk. Before, the whole document went into `health/`; past 1.5 MiB
/// every write of it failed, forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_health_document_is_summarized_before_it_reaches_etcd() {
    use bluegreen_tests::artifacts::release;
    use bluegreen_tests::procs::{put_release, wait_healthy};
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let artifacts = bluegreen_tests::Artifacts::default();
    let app = artifacts.demo_app();
    let _host = AgentProc::start(&etcd, 1, 5, "");
    let padded = release("v1", &app, &[("DEMO_HEALTH_PADDING", "65536")]);
    put_release(&client, Color::Blue, &padded).await;
    let record = wait_healthy(&client, "host-1", Color::Blue, "v1").await;
    let stored = get_raw(&client, &keys().health("host-1", Color::Blue))
        .await
        .expect("health record");
    assert!(
        stored.len() <= 9 * 1024,
        "health record of {} bytes in etcd",
        stored.len()
    );
    assert!(
        record.health["bluegreen_truncated"].is_string(),
        "{:?}",
        record.health
    );
    assert_eq!(record.health["version"], "v1");
}

/// The app's prefix grows past etcd's 4 MiB response size (60 records of 100 KiB): `status`
/// still reads it, a restarted sidecar still starts and acks, and a deploy still goes through.
/// Before, one unpaginated read over the client's 4 MiB limit failed all three.
#[tokio::test(flavor = "multi_thread")]
async fn a_prefix_over_four_mib_is_still_read_by_everyone() {
    let mut fleet = Fleet::start(1, 1).await;
    let spec = fleet.spec("good", &[]);
    let out = fleet.deploy(&spec, "v1", &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    let filler = "x".repeat(100 * 1024);
    for i in 0..60 {
        let record = format!(
            "{{\"kind\":\"deploy\",\"deploy_id\":\"filler-{i}\",\"outcome\":\"done\",\"at\":\"t\",\"reason\":\"{filler}\"}}"
        );
        put_raw(&fleet.client, &keys().history(1_000_000 + i), &record).await;
    }
    let status = fleet.run(&["status"]).await;
    assert!(status.status.success(), "{}", text(&status));
    let before = bluegreen_tests::lb::ack(&fleet.client, "lb-0")
        .await
        .expect("ack");
    fleet.sidecars[0].kill9();
    fleet.sidecars[0].restart();
    wait_ack(&fleet.client, "lb-0", "from the restarted sidecar", |a| {
        a.reloaded_at != before.reloaded_at
    })
    .await;
    let out = fleet.deploy(&spec, "v2", &[]).await;
    assert!(out.status.success(), "{}", text(&out));
}

/// `active` holding garbage while the LBs serve blue: deploy refuses (it cannot know which color
/// is live) without staging anything, requests keep succeeding, and `switch blue` is the way out,
/// after which the deploy goes through. Before, the deploy took garbage for "no traffic yet",
/// staged onto blue under the LBs, and most requests failed.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_active_stops_a_deploy_and_switch_repairs_it() {
    let fleet = Fleet::start(2, 1).await;
    let spec = fleet.spec("good", &[]);
    let out = fleet.deploy(&spec, "v1", &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    let (stop, loops) = load::spawn_each(fleet.lb_urls());
    put_raw(&fleet.client, &keys().active(), "{\"color\": \"purple\"").await;
    let refused = fleet.deploy(&spec, "v2", &[]).await;
    assert_ne!(refused.status.code(), Some(0), "{}", text(&refused));
    assert!(text(&refused).contains("active"), "{}", text(&refused));
    assert!(text(&refused).contains("switch"), "{}", text(&refused));
    let blue = bluegreen_tests::procs::release(&fleet.client, Color::Blue).await;
    assert_eq!(
        blue.map(|r| r.version).as_deref(),
        Some("v1"),
        "blue was restaged"
    );
    let green = bluegreen_tests::procs::release(&fleet.client, Color::Green).await;
    assert!(green.is_none(), "green was staged: {green:?}");
    let repaired = fleet.run(&["switch", "blue"]).await;
    assert!(repaired.status.success(), "{}", text(&repaired));
    let out = fleet.deploy(&spec, "v2", &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    load::finish(stop, loops).await.assert_none_failed();
}

/// etcd's gRPC server enforces a keepalive policy: a client that pings with no request in flight,
/// or more often than `--grpc-keepalive-min-time` (5 s by default), collects a strike per ping,
/// and at the third etcd sends GOAWAY "too_many_pings" and closes the connection. A request sent
/// as it closes fails ("broken pipe"); CI hit it in a test whose client sat idle for 8 s while an
/// agent worked. Every bluegreen process keeps connections that sit idle between events, so a
/// connection made the way they all make it must still be open after three times etcd's minimum.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_etcd_connection_is_not_closed_by_etcds_keepalive_policy() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    put_raw(&client, "idle-probe", "before").await;
    let open_before = etcd.client_connections();
    assert!(!open_before.is_empty(), "no connection to etcd seen");
    let idle_deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    tokio::time::sleep_until(idle_deadline).await;
    let open_after = etcd.client_connections();
    let closed: Vec<_> = open_before.difference(&open_after).collect();
    assert!(
        closed.is_empty(),
        "etcd closed idle connections from {closed:?}"
    );
    put_raw(&client, "idle-probe", "after").await;
}
