//! Canaries on real nginx. The `active/traffic` record splits the public listener's requests
//! between the stable and the canary color on every LB, by a sticky key, and the LBs ack its
//! revision as they ack `active`; `deploy --canary` ramps it by the spec's steps, judged from the
//! LBs' own request logs, and promotes or sends everyone back.
use bluegreen_tests::fleet::{text, Fleet};
use bluegreen_tests::lb::{wait_ack, wait_all_acked, wait_weight};
use bluegreen_tests::load::{self, LoadReport};
use bluegreen_tests::procs::{history, keys, traffic};
use bluegreen_tests::wait_for;
use proto::records::{Desired, HistoryRecord};
use proto::{Color, Operation, Outcome};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// A fleet with v1 live on blue and v2 staged and healthy on green.
async fn staged_canary() -> Fleet {
    let fleet = Fleet::start(2, 1).await;
    let spec = fleet.spec("good", &[]);
    let v1 = fleet.deploy(&spec, "v1", &[]).await;
    assert!(v1.status.success(), "{}", text(&v1));
    let v2 = fleet.deploy(&spec, "v2", &["--no-switch"]).await;
    assert!(v2.status.success(), "{}", text(&v2));
    fleet
}

/// One request through the LB: the color that answered and the sticky cookie it set, if any.
async fn request(
    client: &reqwest::Client,
    url: &str,
    cookie: Option<&str>,
) -> (String, Option<String>) {
    let mut req = client.get(url);
    if let Some(c) = cookie {
        req = req.header(reqwest::header::COOKIE, c);
    }
    let answer = req.send().await.expect("request through the LB");
    assert!(answer.status().is_success(), "{}", answer.status());
    let color = answer.headers()["x-bluegreen-color"]
        .to_str()
        .unwrap()
        .to_string();
    let cookie = answer
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string());
    (color, cookie)
}

/// The canary's share of `n` new clients (no cookie), and the cookies of those it got.
async fn sample(fleet: &Fleet, n: usize) -> (f64, Vec<String>) {
    let client = reqwest::Client::new();
    let url = fleet.lbs[0].url("/api/v1/status");
    let mut on_canary = Vec::new();
    for _ in 0..n {
        let (color, cookie) = request(&client, &url, None).await;
        let cookie = cookie.expect("a new client gets the sticky cookie");
        if color == "green" {
            on_canary.push(cookie);
        }
    }
    (on_canary.len() as f64 / n as f64, on_canary)
}

/// Measured share at each weight over 10,000 new clients (printed: the README's figure), the
/// stickiness of canary users while the weight grows, weight 0 as plain blue-green, and a
/// sidecar killed mid-canary coming back to the same split.
#[tokio::test(flavor = "multi_thread")]
async fn the_split_follows_the_weight_and_keeps_each_user_on_one_color() {
    let mut fleet = staged_canary().await;
    let mut shares = BTreeMap::new();
    let mut sticky_users: Vec<String> = Vec::new();
    for (step, weight) in [(1, 100u32), (2, 500), (3, 2500)] {
        fleet.set_split(weight, step).await;
        // Users the canary got at an earlier step stay on it: the canary's range only grows.
        let client = reqwest::Client::new();
        let url = fleet.lbs[0].url("/api/v1/status");
        for cookie in &sticky_users {
            let (color, _) = request(&client, &url, Some(cookie)).await;
            assert_eq!(
                color, "green",
                "a canary user went back to stable at weight {weight}"
            );
        }
        let (share, on_canary) = sample(&fleet, 10_000).await;
        let target = f64::from(weight) / 10_000.0;
        // Each new client's id is random, so the share is binomial: 4.5 standard deviations
        // (±0.45 points at 1 %, ±1.95 at 25 %) fail a correct split once in ~150,000 runs.
        let tolerance = 4.5 * (target * (1.0 - target) / 10_000.0).sqrt();
        assert!(
            (share - target).abs() < tolerance,
            "weight {weight}: measured {share:.4}, target {target} ± {tolerance:.4}"
        );
        shares.insert(weight, share);
        sticky_users.extend(on_canary.into_iter().take(50));
    }
    for (weight, share) in &shares {
        println!(
            "canary share at {:.2} %: {:.2} % of 10,000 new clients",
            f64::from(*weight) / 100.0,
            share * 100.0
        );
    }

    // Killed mid-canary, the sidecar comes back serving the same split.
    fleet.sidecars[0].kill9();
    fleet.sidecars[0].restart();
    let name = fleet.sidecars[0].name.clone();
    let revision = fleet
        .client
        .clone()
        .status()
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    wait_ack(&fleet.client, &name, "after its restart", |a| {
        a.applied_revision >= revision
    })
    .await;
    let client = reqwest::Client::new();
    let url = fleet.lbs[0].url("/api/v1/status");
    for cookie in &sticky_users {
        assert_eq!(request(&client, &url, Some(cookie)).await.0, "green");
    }

    // Weight 0 is ordinary blue-green: everyone on the stable color, canary users included.
    // New connections: the ack promises the new split to every connection made after it, while
    // a kept-alive one may still be answered by a draining worker with the old config (the
    // client above kept its connections, and once met green after the ack).
    fleet.set_split(0, 4).await;
    let client = bluegreen_tests::load::fresh_connections(Duration::from_secs(5));
    for cookie in sticky_users.iter().take(20) {
        assert_eq!(request(&client, &url, Some(cookie)).await.0, "blue");
    }
    for _ in 0..200 {
        let (color, cookie) = request(&client, &url, None).await;
        assert_eq!(
            (color.as_str(), cookie),
            ("blue", None),
            "weight 0 still splits"
        );
    }
}

/// A `[canary]` section: `steps`, each at least `step_time` and at most `deadline`, judged every
/// 500 ms with 100 requests per color at least and 0.5 points of error-rate increase at most.
pub(crate) fn canary_section(steps: &str, step_time: &str, deadline: &str) -> String {
    format!(
        "[canary]\nsteps = {steps}\nstep_time = \"{step_time}\"\nstep_deadline = \"{deadline}\"\n\
         interval = \"500ms\"\nmin_requests = 100\nmax_error_rate_increase = 0.5\n"
    )
}

/// Three keep-alive request loops through each LB (new users every request: no cookie kept).
pub(crate) fn load_through_every_lb(
    fleet: &Fleet,
) -> (Arc<AtomicBool>, Vec<tokio::task::JoinHandle<LoadReport>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let loops = fleet
        .lb_urls()
        .into_iter()
        .flat_map(|url| std::iter::repeat_n(url, 3))
        .map(|url| load::spawn(url, true, stop.clone()))
        .collect();
    (stop, loops)
}

fn canary_steps(records: &[HistoryRecord]) -> Vec<(Outcome, u64)> {
    records
        .iter()
        .filter(|r| r.kind == Operation::CanaryStep)
        .map(|r| (r.outcome, r.details["step"].as_u64().unwrap_or(0)))
        .collect()
}

/// Every LB has acked `revision` or later.
pub(crate) async fn every_lb_acked(fleet: &Fleet, revision: i64) {
    let names: Vec<String> = fleet.sidecars.iter().map(|s| s.name.clone()).collect();
    wait_all_acked(&fleet.client, &names, revision, POLL).await;
}

/// How often the tests look (as `wait_for` does).
pub(crate) const POLL: Duration = Duration::from_millis(50);

/// A healthy canary under load through both LBs: every step passes on the LBs' counts, the
/// switch follows, no request fails, and the split is reset with the switch.
#[tokio::test(flavor = "multi_thread")]
async fn a_healthy_canary_ramps_through_every_step_and_promotes_with_no_failed_request() {
    let fleet = Fleet::start(3, 2).await;
    let spec = fleet.spec_with(
        "canary",
        &[],
        &canary_section("[1, 5, 25, 50]", "2s", "120s"),
    );
    let v1 = fleet.deploy(&spec, "v1", &[]).await;
    assert!(v1.status.success(), "{}", text(&v1));
    let (stop, loops) = load_through_every_lb(&fleet);
    let v2 = fleet.deploy(&spec, "v2", &["--canary"]).await;
    let report = load::finish(stop, loops).await;
    assert!(v2.status.success(), "{}", text(&v2));
    report.assert_none_failed();
    println!("{} requests, by color: {:?}", report.ok, report.colors);
    let active = bluegreen_tests::procs::active(&fleet.client).await.unwrap();
    assert_eq!(
        (active.color, active.version.as_str()),
        (Color::Green, "v2")
    );
    let steps = canary_steps(&history(&fleet.client).await);
    let passed: Vec<(Outcome, u64)> = (1..=4).map(|s| (Outcome::Passed, s)).collect();
    assert_eq!(steps, passed, "{}", text(&v2));
    let records = history(&fleet.client).await;
    let last_step = records
        .iter()
        .rfind(|r| r.kind == Operation::CanaryStep)
        .unwrap();
    let checks = last_step.details["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 3, "{checks:?}");
    assert!(checks.iter().all(|c| c["verdict"] == "pass"), "{checks:?}");
    let (split, _) = traffic(&fleet.client).await.unwrap();
    assert_eq!((split.stable, split.weight), (Color::Green, 0));
    // Both LBs counted both colors from their request logs.
    for sidecar in &fleet.sidecars {
        let key = keys().lb_stats(&sidecar.name);
        let stats: proto::records::LbStatsRecord = proto::records::decode(
            &key,
            &bluegreen_tests::procs::get_raw(&fleet.client, &key)
                .await
                .expect("the LB published its counts"),
        )
        .unwrap();
        for color in [Color::Blue, Color::Green] {
            assert!(
                stats.colors.get(&color).is_some_and(|c| c.requests > 0),
                "{} counted no {color} request: {stats:?}",
                sidecar.name
            );
        }
        // The same counts on the sidecar's /metrics.
        let series = "bluegreen_lb_upstream_requests_total{color=\"green\"}";
        let green = sidecar.metric(series).await;
        assert!(green.is_some_and(|n| n > 0.0), "{series}: {green:?}");
    }
}

/// A canary answering 5 % of its requests with errors at a 1 % step fails on its error rate:
/// every LB goes back to weight 0, the canary color is stopped, the stable color keeps serving.
/// The step needs 400 canary requests to pass: with the other tests' 100, a fast load gave the
/// 1 % step its 100 within `step_time`, and 0 errors in 100 (a 0.6 % chance at 5 %) rightly
/// passed it; 2 or fewer errors in 400, the most a pass allows, has a chance below one in a
/// million.
#[tokio::test(flavor = "multi_thread")]
async fn a_canary_returning_errors_is_aborted_and_every_lb_goes_back_to_stable() {
    let fleet = Fleet::start(3, 2).await;
    let section =
        canary_section("[1, 50]", "5s", "240s").replace("min_requests = 100", "min_requests = 400");
    assert!(section.contains("min_requests = 400"), "{section}");
    let good = fleet.spec_with("good", &[], &section);
    let v1 = fleet.deploy(&good, "v1", &[]).await;
    assert!(v1.status.success(), "{}", text(&v1));
    let bad = fleet.spec_with("bad", &[("DEMO_ERROR_RATE", "0.05")], &section);
    let (stop, loops) = load_through_every_lb(&fleet);
    let v2 = fleet.deploy(&bad, "v2", &["--canary"]).await;
    let report = load::finish(stop, loops).await;
    println!("{} requests ok, {} failed", report.ok, report.failed.len());
    assert_eq!(v2.status.code(), Some(1), "{}", text(&v2));
    assert!(
        text(&v2).contains("canary failed at step 1 (1 %)") && text(&v2).contains("error rate"),
        "{}",
        text(&v2)
    );
    let (split, revision) = traffic(&fleet.client).await.unwrap();
    assert_eq!(
        (split.stable, split.canary, split.weight),
        (Color::Blue, Color::Green, 0)
    );
    every_lb_acked(&fleet, revision).await;
    let active = bluegreen_tests::procs::active(&fleet.client).await.unwrap();
    assert_eq!((active.color, active.version.as_str()), (Color::Blue, "v1"));
    let green = bluegreen_tests::procs::release(&fleet.client, Color::Green)
        .await
        .unwrap();
    assert_eq!(green.desired, Desired::Stopped);
    let records = history(&fleet.client).await;
    assert_eq!(canary_steps(&records), vec![(Outcome::Aborted, 1)]);
    let aborted = records
        .iter()
        .rfind(|r| r.kind == Operation::CanaryStep)
        .unwrap();
    let error_check = aborted.details["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["criterion"] == "error rate")
        .cloned()
        .unwrap();
    assert_eq!(error_check["verdict"], "fail", "{error_check}");
    assert!(error_check["numbers"]["canary"]["errors"].as_u64().unwrap() > 0);
    // Whatever failed was the canary's: afterwards nobody meets it.
    let mut after = LoadReport::default();
    for url in fleet.lb_urls() {
        let r = load::requests(&url, 200).await;
        after.ok += r.ok;
        after.failed.extend(r.failed);
        for (c, n) in r.colors {
            *after.colors.entry(c).or_default() += n;
        }
    }
    after.assert_none_failed();
    assert_eq!(after.colors.keys().collect::<Vec<_>>(), vec!["blue"]);
}

/// Without traffic there is nothing to judge: the step ends "insufficient data" at its deadline,
/// never "passed", and the canary fails with that reason.
#[tokio::test(flavor = "multi_thread")]
async fn a_canary_without_traffic_ends_with_insufficient_data_never_passed() {
    let fleet = Fleet::start(2, 1).await;
    let spec = fleet.spec_with("quiet", &[], &canary_section("[10]", "1s", "4s"));
    let v1 = fleet.deploy(&spec, "v1", &[]).await;
    assert!(v1.status.success(), "{}", text(&v1));
    let v2 = fleet.deploy(&spec, "v2", &["--canary"]).await;
    assert_eq!(v2.status.code(), Some(1), "{}", text(&v2));
    assert!(
        text(&v2).contains("insufficient data at step 1"),
        "{}",
        text(&v2)
    );
    let records = history(&fleet.client).await;
    assert_eq!(canary_steps(&records), vec![(Outcome::Aborted, 1)]);
    let aborted = records
        .iter()
        .rfind(|r| r.kind == Operation::CanaryStep)
        .unwrap();
    let verdicts: Vec<&str> = aborted.details["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["verdict"].as_str().unwrap())
        .collect();
    assert!(
        verdicts.iter().all(|v| *v == "insufficient_data"),
        "{verdicts:?}"
    );
    let (split, _) = traffic(&fleet.client).await.unwrap();
    assert_eq!(split.weight, 0);
    let active = bluegreen_tests::procs::active(&fleet.client).await.unwrap();
    assert_eq!(active.version, "v1");
}

/// Operators steer a running canary: pause and resume are carried out and recorded by its
/// coordinator; once that coordinator is killed, `canary abort` takes the lock and sends every
/// LB back to the stable color.
/// Starts a canary of `version` in the background and waits until every LB serves its first
/// step (weight 2 %).
pub(crate) async fn canary_at_first_step(
    fleet: &Fleet,
    spec: &std::path::PathBuf,
    version: &str,
) -> tokio::process::Child {
    let canary = fleet
        .deploy_command(spec, version, &["--canary"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let revision = wait_weight(&fleet.client, 200, POLL).await;
    every_lb_acked(fleet, revision).await;
    canary
}

/// The operator commands against a running canary (pause, resume, promote: its coordinator acts
/// and records each), then against one whose coordinator was killed (promote refused, abort
/// takes the lock and sends every LB back).
#[tokio::test(flavor = "multi_thread")]
async fn operators_pause_and_promote_a_canary_and_abort_one_whose_coordinator_died() {
    let mut fleet = Fleet::start(2, 2).await;
    fleet.short_lock_lease();
    let spec = fleet.spec_with("held", &[], &canary_section("[2, 20]", "1s", "600s"));
    let v1 = fleet.deploy(&spec, "v1", &[]).await;
    assert!(v1.status.success(), "{}", text(&v1));

    // A live canary: no traffic, so only an operator can move it on.
    let canary = canary_at_first_step(&fleet, &spec, "v2").await;
    let paused = fleet.run(&["canary", "pause"]).await;
    assert!(paused.status.success(), "{}", text(&paused));
    assert!(
        text(&paused).contains("pause requested by"),
        "{}",
        text(&paused)
    );
    let status = fleet.run(&["--output", "json", "canary", "status"]).await;
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(doc["running"], true, "{doc}");
    assert_eq!(doc["traffic"]["weight"], 200, "{doc}");
    let resumed = fleet.run(&["canary", "resume"]).await;
    assert!(resumed.status.success(), "{}", text(&resumed));
    let promoted = fleet.run(&["canary", "promote"]).await;
    assert!(promoted.status.success(), "{}", text(&promoted));
    let v2 = canary.wait_with_output().await.unwrap();
    assert!(v2.status.success(), "{}", text(&v2));
    let active = bluegreen_tests::procs::active(&fleet.client).await.unwrap();
    assert_eq!(
        (active.color, active.version.as_str()),
        (Color::Green, "v2")
    );
    let (split, revision) = traffic(&fleet.client).await.unwrap();
    assert_eq!((split.stable, split.weight), (Color::Green, 0));
    every_lb_acked(&fleet, revision).await;
    let outcomes: Vec<Outcome> = canary_steps(&history(&fleet.client).await)
        .into_iter()
        .map(|(o, _)| o)
        .collect();
    assert_eq!(
        outcomes,
        vec![Outcome::Paused, Outcome::Resumed, Outcome::Promoted]
    );

    // A canary whose coordinator died: promote is refused, abort reconciles.
    let mut canary = canary_at_first_step(&fleet, &spec, "v3").await;
    canary.kill().await.unwrap();
    let promote = fleet.run(&["canary", "promote"]).await;
    assert_eq!(promote.status.code(), Some(1), "{}", text(&promote));
    let aborted = fleet.run(&["canary", "abort", "--lock-wait", "60s"]).await;
    assert!(aborted.status.success(), "{}", text(&aborted));
    assert!(
        text(&aborted).contains("had no coordinator"),
        "{}",
        text(&aborted)
    );
    let (split, revision) = traffic(&fleet.client).await.unwrap();
    assert_eq!((split.stable, split.weight), (Color::Green, 0));
    every_lb_acked(&fleet, revision).await;
    let records = history(&fleet.client).await;
    assert_eq!(
        canary_steps(&records).len(),
        3,
        "no canary decision without its coordinator"
    );
    assert!(
        records.iter().any(|r| r.kind == Operation::Reconcile),
        "the dead canary is reconciled"
    );
    let active = bluegreen_tests::procs::active(&fleet.client).await.unwrap();
    assert_eq!(active.version, "v2", "the stable version keeps the traffic");
}

/// `--verify-for` judges the new color on the LBs' numbers too: a version whose health probes
/// pass but which answers 20 % of its requests with errors is switched back; while an incident is
/// already under way (the old version answering as badly), a version no worse is kept.
#[tokio::test(flavor = "multi_thread")]
async fn verify_for_switches_back_on_worse_answers_but_not_on_an_ongoing_incident() {
    let fleet = Fleet::start(2, 2).await;
    let section = canary_section("[1]", "1s", "60s");
    let good = fleet.spec_with("good", &[], &section);
    // The smoke checks meet the 20 % errors too: with 2 retries all three attempts failed on
    // one host in about 1 deploy of 60 (0.2³ = 0.8 % per host), and the deploy stopped before
    // what this test is about. 9 attempts fail together once in two million.
    let failing = fleet.spec_with("failing", &[("DEMO_ERROR_RATE", "0.2")], &section);
    let failing_text = std::fs::read_to_string(&failing).unwrap();
    assert!(failing_text.contains("retries = 2"), "{failing_text}");
    std::fs::write(&failing, failing_text.replace("retries = 2", "retries = 8")).unwrap();
    let v1 = fleet.deploy(&good, "v1", &[]).await;
    assert!(v1.status.success(), "{}", text(&v1));
    let (stop, loops) = load_through_every_lb(&fleet);
    // What the verification compares with: each LB's last minute of blue answers, published
    // (between operations a sidecar publishes once a minute).
    wait_for(
        "every LB to publish a baseline of blue answers",
        Duration::from_secs(120),
        || async {
            for sidecar in &fleet.sidecars {
                let key = keys().lb_stats(&sidecar.name);
                let raw = bluegreen_tests::procs::get_raw(&fleet.client, &key).await?;
                let stats: proto::records::LbStatsRecord =
                    proto::records::decode(&key, &raw).ok()?;
                if stats
                    .recent
                    .get(&Color::Blue)
                    .is_none_or(|c| c.requests < 300)
                {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;

    let v2 = fleet.deploy(&failing, "v2", &["--verify-for", "30s"]).await;
    assert_eq!(v2.status.code(), Some(1), "{}", text(&v2));
    assert!(
        text(&v2).contains("answers worse than the old color did before the switch")
            && text(&v2).contains("switched back to blue"),
        "{}",
        text(&v2)
    );
    let active = bluegreen_tests::procs::active(&fleet.client).await.unwrap();
    assert_eq!((active.color, active.version.as_str()), (Color::Blue, "v1"));

    // The incident: v3 answers 20 % errors and takes the traffic (no verification).
    let v3 = fleet.deploy(&failing, "v3", &[]).await;
    assert!(v3.status.success(), "{}", text(&v3));
    // A fix that is no worse than what runs is kept through its verification.
    let v4 = fleet.deploy(&failing, "v4", &["--verify-for", "5s"]).await;
    load::finish(stop, loops).await;
    assert!(v4.status.success(), "{}", text(&v4));
    let active = bluegreen_tests::procs::active(&fleet.client).await.unwrap();
    assert_eq!(active.version, "v4");
}
