//! The agent against a real etcd, as real processes: two simulated hosts on 127.0.0.11/.12.
use bluegreen_tests::artifacts::release;
use bluegreen_tests::procs::{
    get_json, health, keys, put_raw, put_release, wait_health, wait_healthy, APP,
};
use bluegreen_tests::{wait_for, AgentProc, Artifacts, Etcd};
use proto::records::HealthState;
use proto::Color;
use std::time::Duration;

/// Blue v1 and green v2 from etcd on two hosts; each port answers with its own color and version.
#[tokio::test(flavor = "multi_thread")]
async fn two_hosts_run_blue_and_green_side_by_side() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let artifacts = Artifacts::default();
    let app = artifacts.demo_app();
    let hosts = [
        AgentProc::start(&etcd, 1, 5, ""),
        AgentProc::start(&etcd, 2, 5, ""),
    ];
    put_release(&client, Color::Blue, &release("v1", &app, &[])).await;
    put_release(&client, Color::Green, &release("v2", &app, &[])).await;
    for host in &hosts {
        let blue = wait_healthy(&client, &host.host, Color::Blue, "v1").await;
        assert_eq!(blue.health["environment"], "blue");
        wait_healthy(&client, &host.host, Color::Green, "v2").await;
        for (color, version) in [(Color::Blue, "v1"), (Color::Green, "v2")] {
            let body = get_json(&host.url(color, "/health"))
                .await
                .expect("app answers /health");
            assert_eq!(body["environment"], color.as_str(), "{}", host.host);
            assert_eq!(body["version"], version);
            assert_eq!(body["status"], "healthy");
            assert_eq!(body["database_connected"], true);
        }
        let registered = bluegreen_tests::procs::get_raw(&client, &keys().host(&host.host))
            .await
            .expect("host key");
        let registered: serde_json::Value = serde_json::from_slice(&registered).unwrap();
        assert_eq!(registered["address"], host.address.as_str());
        assert_eq!(registered["ports"]["green"], host.ports.green);
    }
}

/// One host with blue v1 and green v2 healthy: the starting point of most tests below.
async fn blue_v1_green_v2(extra_config: &str) -> (Etcd, etcd_client::Client, Artifacts, AgentProc) {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let artifacts = Artifacts::default();
    let app = artifacts.demo_app();
    let host = AgentProc::start(&etcd, 1, 5, extra_config);
    put_release(&client, Color::Blue, &release("v1", &app, &[])).await;
    put_release(&client, Color::Green, &release("v2", &app, &[])).await;
    wait_healthy(&client, &host.host, Color::Blue, "v1").await;
    wait_healthy(&client, &host.host, Color::Green, "v2").await;
    (etcd, client, artifacts, host)
}

/// Both colors still serve what they served before the bad input.
async fn assert_still_serving(host: &AgentProc, blue: &str, green: Option<&str>) {
    let body = get_json(&host.url(Color::Blue, "/health"))
        .await
        .expect("blue still answers");
    assert_eq!(body["version"], blue);
    if let Some(green) = green {
        let body = get_json(&host.url(Color::Green, "/health"))
            .await
            .expect("green still answers");
        assert_eq!(body["version"], green);
    }
}

/// Waits for green to fail at `version` and checks the error names the cause.
async fn expect_green_failure(
    client: &etcd_client::Client,
    host: &AgentProc,
    version: &str,
    cause: &str,
) -> String {
    let record = wait_health(
        client,
        &host.host,
        Color::Green,
        &format!("failed at {version}"),
        |h| h.version == version && h.state == HealthState::Failed,
    )
    .await;
    let error = record.error.expect("a failed state carries an error");
    assert!(
        error.contains(cause),
        "error {error:?} does not name {cause:?}"
    );
    error
}

#[tokio::test(flavor = "multi_thread")]
async fn redeploying_green_never_disturbs_blue() {
    let (_etcd, client, artifacts, host) = blue_v1_green_v2("").await;
    let app = artifacts.demo_app();
    let blue_pid = host.app_pid(Color::Blue).expect("blue pid");
    let url = host.url(Color::Blue, "/api/v1/status");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn({
        let stop = stop.clone();
        async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match http.get(&url).timeout(Duration::from_secs(2)).send().await {
                    Ok(r) if r.status().is_success() => ok += 1,
                    Ok(r) => failed.push(format!("HTTP {}", r.status())),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }
    });
    for version in ["v3", "v4", "v5"] {
        put_release(&client, Color::Green, &release(version, &app, &[])).await;
        wait_healthy(&client, &host.host, Color::Green, version).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    println!(
        "blue served {ok} requests during three green redeploys, {} failed",
        failed.len()
    );
    assert!(ok > 0, "the load loop never reached blue");
    assert!(failed.is_empty(), "blue requests failed: {failed:?}");
    assert_eq!(
        host.app_pid(Color::Blue),
        Some(blue_pid),
        "blue was restarted"
    );
    assert_still_serving(&host, "v1", Some("v5")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sha256_mismatch_fails_and_keeps_the_old_process() {
    let (_etcd, client, artifacts, host) = blue_v1_green_v2("").await;
    let mut bad = artifacts.demo_app();
    bad.sha256 = "0".repeat(64);
    put_release(&client, Color::Green, &release("v3", &bad, &[])).await;
    expect_green_failure(&client, &host, "v3", "sha256 mismatch").await;
    assert_still_serving(&host, "v1", Some("v2")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn artifact_url_that_404s_fails_and_keeps_the_old_process() {
    let (_etcd, client, artifacts, host) = blue_v1_green_v2("").await;
    let mut missing = artifacts.demo_app();
    // The blue app itself answers 404 for this path: a real HTTP server saying "not found".
    missing.url = host.url(Color::Blue, "/artifacts/app-v3.tar.gz");
    // A sha the agent has not cached yet (artifacts are content-addressed), so it must download.
    missing.sha256 = "ab".repeat(32);
    put_release(&client, Color::Green, &release("v3", &missing, &[])).await;
    let error = expect_green_failure(&client, &host, "v3", "404").await;
    assert!(error.contains("/artifacts/app-v3.tar.gz"), "{error}");
    assert_still_serving(&host, "v1", Some("v2")).await;
}

/// An artifact server that accepts the connection and never sends a byte holds neither the other
/// color nor a newer release of the same color (before: one agent-wide download lock and no
/// timeout left every later release `starting` until the agent was restarted).
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_download_holds_neither_the_other_color_nor_a_newer_release() {
    // A long idle timeout: only cancelling the stalled fetch can make this pass in time.
    let (_etcd, client, artifacts, host) = blue_v1_green_v2("download_timeout = \"10m\"\n").await;
    let stall = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stall_url = format!("http://{}/app.tar.gz", stall.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = stall.accept().await {
            held.push(stream);
        }
    });
    let mut stalled = artifacts.demo_app();
    stalled.url = stall_url;
    stalled.sha256 = "cd".repeat(32);
    put_release(&client, Color::Green, &release("v3", &stalled, &[])).await;
    wait_health(&client, &host.host, Color::Green, "v3 starting", |h| {
        h.version == "v3" && h.state == HealthState::Starting
    })
    .await;
    let app = artifacts.demo_app();
    put_release(&client, Color::Blue, &release("v4", &app, &[])).await;
    wait_healthy(&client, &host.host, Color::Blue, "v4").await;
    put_release(&client, Color::Green, &release("v5", &app, &[])).await;
    wait_healthy(&client, &host.host, Color::Green, "v5").await;
    assert_still_serving(&host, "v4", Some("v5")).await;
}

/// A release whose pid file cannot be written (the fault runner's seed 135720 hit it on a full
/// state disk; here a directory stands where the file goes, which fails the same write every
/// time): the app would run with no pid file naming it, so a restarted agent could neither adopt
/// nor stop it, and it would hold the color's port for good. The agent now kills it and fails the
/// release naming the cause; blue keeps serving, and once the write works again the next release
/// runs. Before, the app ran untracked.
#[tokio::test(flavor = "multi_thread")]
async fn an_app_whose_pid_cannot_be_recorded_is_not_left_running() {
    let (_etcd, client, artifacts, host) = blue_v1_green_v2("").await;
    let app = artifacts.demo_app();
    let blocker = host.state_dir.join("green.pid.tmp");
    std::fs::create_dir(&blocker).unwrap();
    put_release(&client, Color::Green, &release("v3", &app, &[])).await;
    expect_green_failure(&client, &host, "v3", "cannot record the app's pid").await;
    let green = host.url(Color::Green, "/health");
    assert!(
        get_json(&green).await.is_none(),
        "an app runs on green with no pid file naming it"
    );
    assert_still_serving(&host, "v1", None).await;
    std::fs::remove_dir(&blocker).unwrap();
    put_release(&client, Color::Green, &release("v4", &app, &[])).await;
    wait_healthy(&client, &host.host, Color::Green, "v4").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tarball_escaping_its_directory_is_refused() {
    let (_etcd, client, artifacts, host) = blue_v1_green_v2("").await;
    for (version, path, cause) in [
        ("v3", "../escape", "'..'"),
        ("v4", "/tmp/bluegreen-escape", "absolute"),
    ] {
        let evil = artifacts.tarball(
            &format!("evil-{version}.tar.gz"),
            &[(path, b"#!/bin/sh\n", 0o755)],
        );
        put_release(&client, Color::Green, &release(version, &evil, &[])).await;
        expect_green_failure(&client, &host, version, cause).await;
        assert!(!std::path::Path::new("/tmp/bluegreen-escape").exists());
        assert_still_serving(&host, "v1", Some("v2")).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_release_json_is_reported_and_never_acted_on() {
    let (_etcd, client, artifacts, host) = blue_v1_green_v2("").await;
    let k = keys();
    put_raw(
        &client,
        &k.release(Color::Green),
        r#"{"version":"v3","desired":"running"}"#,
    )
    .await;
    let record = wait_health(&client, &host.host, Color::Green, "failed", |h| {
        h.state == HealthState::Failed
    })
    .await;
    let error = record.error.unwrap();
    assert!(
        error.contains(&k.release(Color::Green)) && error.contains("missing field"),
        "{error}"
    );
    assert_still_serving(&host, "v1", Some("v2")).await;

    // Unknown colors, in a release key or in `active`, are ignored; the agent stays responsive.
    put_raw(&client, &format!("{}releases/purple", k.app_prefix()), "{}").await;
    put_raw(
        &client,
        &k.active(),
        r#"{"color":"purple","version":"v1","deploy_id":"d","token":1,"switched_at":"x"}"#,
    )
    .await;
    put_release(
        &client,
        Color::Green,
        &release("v4", &artifacts.demo_app(), &[]),
    )
    .await;
    wait_healthy(&client, &host.host, Color::Green, "v4").await;
    assert_still_serving(&host, "v1", Some("v4")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn command_that_exits_at_once_fails_and_the_previous_release_comes_back() {
    let (_etcd, client, artifacts, host) = blue_v1_green_v2("").await;
    let broken = artifacts.tarball(
        "broken.tar.gz",
        &[(
            "start.sh",
            b"#!/bin/sh\necho 'cannot open config' >&2\nexit 3\n",
            0o755,
        )],
    );
    let mut r = release("v3", &broken, &[]);
    r.run.command = vec!["./start.sh".into()];
    put_release(&client, Color::Green, &r).await;
    let error = expect_green_failure(&client, &host, "v3", "exited with status 3").await;
    assert!(
        error.contains("cannot open config"),
        "the app's last words are in the error: {error}"
    );
    wait_for(
        "green v2 to be restored",
        Duration::from_secs(30),
        || async {
            get_json(&host.url(Color::Green, "/health"))
                .await
                .filter(|b| b["version"] == "v2")
        },
    )
    .await;
    assert_still_serving(&host, "v1", Some("v2")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn port_already_in_use_is_named() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let artifacts = Artifacts::default();
    let app = artifacts.demo_app();
    let host = AgentProc::start(&etcd, 1, 5, "");
    put_release(&client, Color::Blue, &release("v1", &app, &[])).await;
    wait_healthy(&client, &host.host, Color::Blue, "v1").await;
    let _squatter = std::net::TcpListener::bind((host.address.as_str(), host.ports.green)).unwrap();
    put_release(&client, Color::Green, &release("v2", &app, &[])).await;
    let error = expect_green_failure(&client, &host, "v2", "already in use").await;
    assert!(error.contains(&host.ports.green.to_string()), "{error}");
    assert_still_serving(&host, "v1", None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_loop_is_restarted_with_backoff_then_failed() {
    let (_etcd, client, artifacts, host) = blue_v1_green_v2("max_restarts = 2").await;
    let crashing = release(
        "v3",
        &artifacts.demo_app(),
        &[("DEMO_CRASH_AFTER_MS", "1500")],
    );
    put_release(&client, Color::Green, &crashing).await;
    let restarted = wait_health(&client, &host.host, Color::Green, "restarted once", |h| {
        h.version == "v3" && h.restarts >= 1
    })
    .await;
    assert_ne!(restarted.state, HealthState::Failed);
    let error = expect_green_failure(&client, &host, "v3", "crashed 3 times in a row").await;
    assert!(error.contains("exited with status 1"), "{error}");
    let record = health(&client, &host.host, Color::Green).await.unwrap();
    assert_eq!(record.restarts, 2);
    assert_still_serving(&host, "v1", None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_active_color_is_never_replaced() {
    let (_etcd, client, artifacts, host) = blue_v1_green_v2("").await;
    let active = proto::records::ActiveRecord {
        color: Color::Blue,
        version: "v1".into(),
        deploy_id: "d1".into(),
        token: 1,
        switched_at: proto::time::now_rfc3339(),
    };
    put_raw(&client, &keys().active(), &proto::records::encode(&active)).await;
    let blue_pid = host.app_pid(Color::Blue);
    put_release(
        &client,
        Color::Blue,
        &release("v3", &artifacts.demo_app(), &[]),
    )
    .await;
    let record = wait_health(&client, &host.host, Color::Blue, "refusal", |h| {
        h.error.as_deref().is_some_and(|e| e.contains("refusing"))
    })
    .await;
    assert!(record.error.unwrap().contains("blue is the active color"));
    assert_eq!(host.app_pid(Color::Blue), blue_pid);
    assert_still_serving(&host, "v1", Some("v2")).await;

    // Once traffic moves to green, blue is idle and the pending release applies.
    let green = proto::records::ActiveRecord {
        color: Color::Green,
        version: "v2".into(),
        ..active
    };
    put_raw(&client, &keys().active(), &proto::records::encode(&green)).await;
    wait_healthy(&client, &host.host, Color::Blue, "v3").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_agent_keys_expire_apps_keep_serving_and_are_adopted_again() {
    let (_etcd, client, _artifacts, mut host) = blue_v1_green_v2("").await;
    let pids = (
        host.app_pid(Color::Blue).unwrap(),
        host.app_pid(Color::Green).unwrap(),
    );
    let k = keys();
    host.kill9();
    let killed = tokio::time::Instant::now();
    wait_for(
        "the dead agent's keys to expire",
        Duration::from_secs(5 + 10),
        || async {
            let kvs = bluegreen_tests::procs::read_prefix(&client, k.app_prefix()).await?;
            let left = kvs.iter().filter(|(key, _)| {
                key.starts_with(&k.hosts_prefix()) || key.starts_with(&k.health_prefix())
            });
            (left.count() == 0).then_some(())
        },
    )
    .await;
    println!(
        "keys of a kill -9'd agent gone {:?} after the kill (lease TTL 5s)",
        killed.elapsed()
    );
    assert_still_serving(&host, "v1", Some("v2")).await;

    host.restart();
    wait_healthy(&client, &host.host, Color::Blue, "v1").await;
    wait_healthy(&client, &host.host, Color::Green, "v2").await;
    let mut api = host.api().await;
    let status = api
        .status(proto::agent_api::StatusRequest { app: APP.into() })
        .await
        .unwrap()
        .into_inner();
    let pid_of = |c: &str| status.colors.iter().find(|s| s.color == c).map(|s| s.pid);
    assert_eq!(
        (pid_of("blue"), pid_of("green")),
        (Some(pids.0), Some(pids.1)),
        "apps were re-adopted, not restarted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_stream_returns_the_apps_last_lines() {
    let (_etcd, _client, _artifacts, host) = blue_v1_green_v2("").await;
    let mut api = host.api().await;
    let request = proto::agent_api::LogsRequest {
        color: "green".into(),
        tail: 5,
        follow: false,
        app: APP.into(),
    };
    let mut stream = api.logs(request).await.unwrap().into_inner();
    let mut lines = Vec::new();
    while let Some(line) = stream.message().await.unwrap() {
        lines.push(line.line);
    }
    assert!(!lines.is_empty() && lines.len() <= 5, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("demo-app listening") && l.contains("version=v2")),
        "{lines:?}"
    );
    let bad = api
        .logs(proto::agent_api::LogsRequest {
            color: "red".into(),
            tail: 1,
            follow: false,
            app: String::new(),
        })
        .await
        .unwrap_err();
    assert!(bad.message().contains("\"red\""), "{}", bad.message());
    // Asked about another app, the agent says which one it runs instead of answering for it.
    let other = api
        .logs(proto::agent_api::LogsRequest {
            color: "green".into(),
            tail: 1,
            follow: false,
            app: "api".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), tonic::Code::NotFound, "{other:?}");
    assert!(
        other.message().contains("runs shop, not api"),
        "{}",
        other.message()
    );
}

/// Installing a large artifact (the debug demo-app, packed uncompressed: tens of MB) never holds
/// it in memory: the agent's resident size stays far below the artifact's size throughout.
/// Before, the whole download was read into memory (a 300 MB artifact took the agent from 10 MB
/// to 317 MB).
#[tokio::test(flavor = "multi_thread")]
async fn installing_a_large_artifact_keeps_the_agent_small() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let artifacts = Artifacts::default();
    let app = artifacts.large_demo_app(100);
    let path = app.url.trim_start_matches("file://").to_string();
    let size_kib = std::fs::metadata(&path).unwrap().len() / 1024;
    assert!(
        size_kib > 40 * 1024,
        "the artifact must be large for this test: {size_kib} KiB"
    );
    let host = AgentProc::start(&etcd, 1, 5, "");
    put_release(&client, Color::Blue, &release("v1", &app, &[])).await;
    let peak = std::sync::atomic::AtomicU64::new(0);
    let (peak_ref, client_ref, pid) = (&peak, &client, host.pid());
    bluegreen_tests::poll_until(
        "v1 installed and healthy",
        Duration::from_secs(60),
        Duration::from_millis(5),
        || async move {
            if let Some(rss) = bluegreen_tests::rss_kib(pid) {
                peak_ref.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
            }
            health(client_ref, "host-1", Color::Blue)
                .await
                .filter(|h| h.version == "v1" && h.state == HealthState::Healthy)
        },
    )
    .await;
    let peak = peak.into_inner();
    println!("agent peak RSS {peak} KiB while installing a {size_kib} KiB artifact");
    assert!(
        peak < size_kib / 2,
        "agent peak RSS {peak} KiB for a {size_kib} KiB artifact"
    );
}
