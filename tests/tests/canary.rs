//! Canary traffic on real nginx: the `active/traffic` record splits the public listener's
//! requests between the stable and the canary color on every LB, by a sticky key, and the LBs ack
//! its revision as they ack `active`. (The coordinator's canary command and its analysis build on
//! this; here the record is written as the coordinator will write it.)
use bluegreen_tests::fleet::{text, Fleet};
use bluegreen_tests::lb::wait_ack;
use bluegreen_tests::procs::keys;
use proto::records::{encode, Sticky, TrafficRecord};
use proto::Color;
use std::collections::BTreeMap;

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

/// Writes the split and waits until the LB acks its revision.
async fn set_weight(fleet: &Fleet, weight: u32, step: u32) {
    let record = TrafficRecord {
        stable: Color::Blue,
        canary: Color::Green,
        weight,
        step,
        sticky: Sticky::Cookie,
        deploy_id: "canary-test".into(),
        token: 0,
        set_at: proto::time::now_rfc3339(),
    };
    let put = fleet
        .client
        .clone()
        .put(keys().traffic(), encode(&record), None)
        .await
        .expect("write active/traffic");
    let revision = put.header().expect("header").revision();
    let name = fleet.sidecars[0].name.clone();
    wait_ack(
        &fleet.client,
        &name,
        &format!("traffic at {revision}"),
        |a| a.applied_revision >= revision && a.error.is_none(),
    )
    .await;
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
        set_weight(&fleet, weight, step).await;
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
        // ±1 percentage point: more than 4 standard deviations at 10,000 clients.
        assert!(
            (share - target).abs() < 0.01,
            "weight {weight}: measured {share:.4}, target {target}"
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
    set_weight(&fleet, 0, 4).await;
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
