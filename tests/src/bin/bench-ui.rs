//! Dashboard benchmark (not a test), in a real headless Chromium:
//! - paint: first paint of an app page with 1,000 hosts (from navigation to the grid drawn);
//! - event: an etcd change on screen at 5,000 hosts (write → the page drew that revision), p95;
//! - abort: the abort click → every LB acked weight 0 (3 hosts, 2 LBs, real agents and nginx);
//! - rss: the dashboard's RSS with 20 browsers open on a 1,000-host app, and etcd's watcher
//!   count with 1 browser and with 20 (it must not grow with the browsers).
//!
//! The host records of paint, event and rss are written straight into etcd (a hollow fleet: the
//! dashboard sees only etcd, and records are what 5,000 agents would write).
//!   cargo build --release --workspace --bins && target/release/bench-ui [--only paint|event|abort|rss]
use bluegreen_tests::browser::{Browser, Ui};
use bluegreen_tests::fleet::{text, Fleet};
use bluegreen_tests::lb::{set_active, wait_all_acked, wait_weight};
use bluegreen_tests::procs::{keys, APP};
use bluegreen_tests::{percentile, poll_until, rss_kib, wait_for, Etcd};
use proto::records::{encode, HealthRecord, HealthState, HostRecord, LbRecord, Ports};
use proto::Color;
use std::time::Duration;
use tokio::time::Instant;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let only = args
        .windows(2)
        .find(|w| w[0] == "--only")
        .map(|w| w[1].clone());
    let run = |part: &str| only.as_deref().is_none_or(|o| o == part);
    if run("paint") {
        paint().await;
    }
    if run("event") {
        event().await;
    }
    if run("abort") {
        abort().await;
    }
    if run("rss") {
        rss().await;
    }
}

fn health(version: &str) -> HealthRecord {
    HealthRecord {
        version: version.into(),
        state: HealthState::Healthy,
        health: serde_json::Value::Null,
        since: proto::time::now_rfc3339(),
        restarts: 0,
        error: None,
        unsigned: None,
    }
}

/// `n` hosts as their agents would register them (blue v1 and green v0 healthy), `active` on
/// blue v1, and one LB that follows it.
async fn hollow_fleet(client: &etcd_client::Client, n: usize) {
    let k = keys();
    let mut ops = Vec::new();
    for i in 0..n {
        let host = format!("host-{i:05}");
        let record = HostRecord {
            host: host.clone(),
            address: format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
            ports: Ports {
                blue: 8001,
                green: 8002,
            },
            grpc: "unix:/run/bluegreen/agent.sock".into(),
            agent_version: "0.1.0".into(),
            started_at: proto::time::now_rfc3339(),
            instance: None,
        };
        ops.push(etcd_client::TxnOp::put(
            k.host(&host),
            encode(&record),
            None,
        ));
        ops.push(etcd_client::TxnOp::put(
            k.host_member(&host),
            encode(&record),
            None,
        ));
        ops.push(etcd_client::TxnOp::put(
            k.health(&host, Color::Blue),
            encode(&health("v1")),
            None,
        ));
        ops.push(etcd_client::TxnOp::put(
            k.health(&host, Color::Green),
            encode(&health("v0")),
            None,
        ));
    }
    for chunk in ops.chunks(100) {
        client
            .clone()
            .txn(etcd_client::Txn::new().and_then(chunk.to_vec()))
            .await
            .expect("write hollow hosts");
    }
    let revision = set_active(client, Color::Blue, "v1").await;
    let lb: LbRecord = serde_json::from_value(serde_json::json!({
        "applied_revision": revision, "color": "blue", "upstream_counts": {"blue": n},
        "upstreams": [], "reloaded_at": proto::time::now_rfc3339(), "config_sha256": "",
    }))
    .unwrap();
    client
        .clone()
        .put(k.lb("lb-0"), encode(&lb), None)
        .await
        .unwrap();
}

/// What the page last drew: (etcd revision, when in ms since the epoch, hosts).
async fn drawn(browser: &Browser) -> Option<(i64, u64, u64)> {
    let v = browser
        .client
        .execute("return window.bluegreenDrawn || null;", vec![])
        .await
        .ok()?;
    Some((
        v.get("revision")?.as_i64()?,
        v.get("at")?.as_u64()?,
        v.get("hosts")?.as_u64()?,
    ))
}

async fn page_with(etcd: &Etcd, hosts: usize) -> (Ui, Browser) {
    let client = etcd.client().await;
    hollow_fleet(&client, hosts).await;
    let ui = Ui::start(
        vec![("BLUEGREEN_ETCD".into(), etcd.endpoints().join(","))],
        &[],
    )
    .await;
    (ui, Browser::start().await)
}

fn report(what: &str, mut samples: Vec<Duration>, target: &str) {
    samples.sort();
    println!(
        "{what}: p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms over {} ({target})",
        percentile(&samples, 0.5).as_secs_f64() * 1000.0,
        percentile(&samples, 0.95).as_secs_f64() * 1000.0,
        samples.last().unwrap().as_secs_f64() * 1000.0,
        samples.len()
    );
}

async fn paint() {
    let etcd = Etcd::start().await;
    let (ui, browser) = page_with(&etcd, 1000).await;
    let url = format!("{}/#/app/{APP}", ui.url);
    let mut samples = Vec::new();
    for _ in 0..10 {
        browser.goto("about:blank").await;
        browser.goto(&url).await;
        wait_for("1,000 hosts drawn", Duration::from_secs(30), || async {
            drawn(&browser).await.filter(|d| d.2 == 1000)
        })
        .await;
        let ms = browser
            .client
            .execute(
                "return performance.getEntriesByName('bluegreen-first-paint')[0].startTime;",
                vec![],
            )
            .await
            .unwrap()
            .as_f64()
            .unwrap();
        samples.push(Duration::from_secs_f64(ms / 1000.0));
    }
    report(
        "first paint of an app page with 1,000 hosts (navigation → grid drawn)",
        samples,
        "target ≤ 1 s",
    );
    browser.close().await;
}

async fn event() {
    let etcd = Etcd::start().await;
    let (ui, browser) = page_with(&etcd, 5000).await;
    let client = etcd.client().await;
    browser.goto(&format!("{}/#/app/{APP}", ui.url)).await;
    wait_for("5,000 hosts drawn", Duration::from_secs(60), || async {
        drawn(&browser).await.filter(|d| d.2 == 5000)
    })
    .await;
    let k = keys();
    let mut samples = Vec::new();
    for i in 0..100 {
        let host = format!("host-{:05}", (i * 37) % 5000);
        let written = proto::time::now_rfc3339();
        let t0 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let mut record = health(&format!("e{i}"));
        record.since = written;
        let rev = client
            .clone()
            .put(k.health(&host, Color::Green), encode(&record), None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        let at = poll_until(
            "the change on screen",
            Duration::from_secs(30),
            Duration::from_millis(5),
            || async { drawn(&browser).await.filter(|d| d.0 >= rev).map(|d| d.1) },
        )
        .await;
        samples.push(Duration::from_millis(at.saturating_sub(t0)));
    }
    report(
        "an etcd change on screen at 5,000 hosts (write → the page drew its revision)",
        samples,
        "target p95 ≤ 1 s",
    );
    println!(
        "dashboard RSS with one tab on 5,000 hosts: {} MiB",
        rss_kib(ui.daemon.pid()).unwrap_or(0) / 1024
    );
    browser.close().await;
}

fn canary_spec(fleet: &Fleet) -> std::path::PathBuf {
    fleet.spec_with(
        "held",
        &[],
        "[canary]\nsteps = [2, 20]\nstep_time = \"1s\"\nstep_deadline = \"600s\"\n\
         interval = \"500ms\"\nmin_requests = 100\nmax_error_rate_increase = 0.5\n",
    )
}

async fn abort() {
    let fleet = Fleet::start(3, 2).await;
    let spec = canary_spec(&fleet);
    let v1 = fleet.deploy(&spec, "v1", &[]).await;
    assert!(v1.status.success(), "{}", text(&v1));
    let ui = Ui::start(fleet.ui_env(), &["--allow-actions"]).await;
    let browser = Browser::start().await;
    browser.goto(&format!("{}/#/app/{APP}", ui.url)).await;
    let mut samples = Vec::new();
    for round in 0..5 {
        let version = format!("c{round}");
        let mut canary = fleet
            .deploy_command(&spec, &version, &["--canary"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_weight(&fleet.client, 200, Duration::from_millis(50)).await;
        wait_for("the abort button", Duration::from_secs(30), || async {
            (browser.count("button[data-action=\"canary-abort\"]").await == 1).then_some(())
        })
        .await;
        browser.click("button[data-action=\"canary-abort\"]").await;
        let t0 = Instant::now();
        browser.click("#confirm-ok").await;
        let revision = wait_weight(&fleet.client, 0, Duration::from_millis(1)).await;
        let names: Vec<String> = fleet.sidecars.iter().map(|s| s.name.clone()).collect();
        wait_all_acked(&fleet.client, &names, revision, Duration::from_millis(1)).await;
        samples.push(t0.elapsed());
        let _ = canary.wait().await;
    }
    report(
        "abort click → every LB acked weight 0 (3 hosts, 2 LBs)",
        samples,
        "target ≤ 1.5 s",
    );
    browser.close().await;
}

/// etcd's own count of watchers (`etcd_debugging_mvcc_watcher_total`).
async fn etcd_watchers(etcd: &Etcd) -> f64 {
    let text = reqwest::get(format!("{}/metrics", etcd.endpoints()[0]))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// 20 browsers, each its own Chromium (a browser opens at most six HTTP/1.1 connections to one
/// site, and each tab's stream holds one: tabs of one browser would stall at the seventh on a
/// plain-HTTP loopback dashboard; over TLS the dashboard speaks HTTP/2 and they would not).
async fn rss() {
    let etcd = Etcd::start().await;
    let (ui, first) = page_with(&etcd, 1000).await;
    let url = format!("{}/#/app/{APP}", ui.url);
    let idle = etcd_watchers(&etcd).await;
    let mut browsers = vec![first];
    while browsers.len() < 20 {
        browsers.push(Browser::start().await);
    }
    let mut one = f64::NAN;
    for (i, browser) in browsers.iter().enumerate() {
        browser.goto(&url).await;
        wait_for("a browser drawn", Duration::from_secs(60), || async {
            drawn(browser).await.filter(|d| d.2 == 1000)
        })
        .await;
        if i == 0 {
            one = etcd_watchers(&etcd).await;
        }
    }
    let twenty = etcd_watchers(&etcd).await;
    let rss = rss_kib(ui.daemon.pid()).unwrap_or(0);
    println!(
        "20 browsers on a 1,000-host app: dashboard RSS {:.1} MiB (target ≤ 50 MB); etcd watchers: \
         {idle} before the dashboard showed the app, {one} with 1 browser, {twenty} with 20 (target: \
         one per app shown, whatever the number of browsers)",
        rss as f64 / 1024.0
    );
    for browser in browsers {
        browser.close().await;
    }
}
