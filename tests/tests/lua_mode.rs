//! The LB's Lua mode with real nginx, sidecars, agents and the demo app: switches and canary
//! weights that reload nothing and lose no request of a client that never retries, long-lived
//! connections kept on their color, pushes nginx refuses, and nginx serving its last state
//! without its sidecar.
use crate::sidecar::fleet;
use bluegreen_tests::lb::{set_active, set_weight, wait_ack, wait_color};
use bluegreen_tests::nginx::{lbs_serving_blue, Nginx, SidecarProc};
use bluegreen_tests::procs::{get_raw, keys};
use bluegreen_tests::strict::{self, Request};
use bluegreen_tests::wait::wait_for;
use proto::Color;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The acceptance test of reload-free switching: keep-alive clients that never retry (GET, and
/// POST with a body, which no client may resend) through 2 LBs across switches and canary
/// weight changes lose nothing, and nginx's workers are the same ones at the end. In reload
/// mode each switch retired the workers and cost about one such request per LB.
#[tokio::test(flavor = "multi_thread")]
async fn switches_and_weights_reload_nothing_and_lose_no_request_that_is_never_retried() {
    let (_etcd, client, _artifacts, _hosts) = fleet(&[]).await;
    let (lbs, _sidecars) = lbs_serving_blue(&_etcd, &client, "lua", "lb", 2).await;
    let before: Vec<Vec<i32>> = lbs.iter().map(Nginx::workers).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let post = Request::Post("/api/v1/items".into(), "{\"name\":\"kept\"}".into());
    let loops: Vec<_> = lbs
        .iter()
        .flat_map(|lb| {
            let address = format!("127.0.0.1:{}", lb.listen);
            [
                strict::spawn(
                    address.clone(),
                    Request::Get("/api/v1/status".into()),
                    stop.clone(),
                ),
                strict::spawn(address, post.clone(), stop.clone()),
            ]
        })
        .collect();
    let acked = |revision: i64| {
        let client = client.clone();
        async move {
            for i in 0..2 {
                wait_ack(&client, &format!("lb-{i}"), "the change", |a| {
                    a.applied_revision >= revision && a.error.is_none()
                })
                .await;
            }
        }
    };
    for round in 0..10u32 {
        let (color, version) = if round % 2 == 0 {
            (Color::Green, "v2")
        } else {
            (Color::Blue, "v1")
        };
        acked(set_active(&client, color, version).await).await;
    }
    // Blue is live again: ramp green as its canary, then take it back.
    for weight in [100, 1000, 2500, 5000, 10000, 5000, 0] {
        acked(set_weight(&client, weight).await).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut colors = std::collections::BTreeSet::new();
    for handle in loops {
        let report = handle.await.unwrap();
        report.assert_none_failed();
        colors.extend(report.colors.into_keys());
    }
    assert_eq!(
        colors.into_iter().collect::<Vec<_>>(),
        vec!["blue".to_string(), "green".to_string()],
        "traffic moved both ways"
    );
    let after: Vec<Vec<i32>> = lbs.iter().map(Nginx::workers).collect();
    assert_eq!(before, after, "nginx reloaded: its workers changed");
}

/// A server-sent-events stream opened on blue stays on blue across a switch to green (no
/// reload cuts it), new streams go to green, and the LB publishes blue's open request until the
/// stream ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_keeps_its_color_across_a_switch_and_is_counted_until_it_ends() {
    let (_etcd, client, _artifacts, _hosts) = fleet(&[]).await;
    let (lbs, _sidecars) = lbs_serving_blue(&_etcd, &client, "lua", "lb", 2).await;
    let lb = &lbs[0];
    let open_stream = || async {
        let response = reqwest::get(lb.url("/api/v1/events")).await.unwrap();
        assert_eq!(response.status(), 200);
        response
    };
    let mut stream = open_stream().await;
    let first = stream.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("\"environment\":\"blue\""));
    // A stream through the preview server (green, idle now) is a check, not traffic a deploy
    // waits for: it is never counted.
    let mut preview = reqwest::get(lb.preview_url("/api/v1/events"))
        .await
        .unwrap();
    let first_preview = preview.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first_preview).contains("\"environment\":\"green\""));

    let revision = set_active(&client, Color::Green, "v2").await;
    wait_ack(&client, "lb-0", "the switch", |a| {
        a.applied_revision >= revision
    })
    .await;
    wait_color(&lb.url("/api/v1/status"), Color::Green).await;
    // The stream's next event still comes from blue, over the same connection.
    let next = stream
        .chunk()
        .await
        .unwrap()
        .expect("the LB closed the stream");
    assert!(String::from_utf8_lossy(&next).contains("\"environment\":\"blue\""));

    // The sidecar publishes blue's open request (the one stream) and none for green (the
    // preview stream is not counted), then none for blue once its stream ends.
    let open = |n: u64| {
        let client = client.clone();
        async move {
            wait_for(
                &format!("lb-0 to publish {n} open to blue"),
                Duration::from_secs(15),
                || {
                    let client = client.clone();
                    async move {
                        let bytes = get_raw(&client, &keys().lb_stats("lb-0")).await?;
                        let stats: proto::records::LbStatsRecord =
                            proto::records::decode("lb-stats", &bytes).ok()?;
                        let open = stats.open?;
                        (open.get(&Color::Blue) == Some(&n) && open.get(&Color::Green) == Some(&0))
                            .then_some(())
                    }
                },
            )
            .await
        }
    };
    open(1).await;
    let mut newer = open_stream().await;
    let first_new = newer.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first_new).contains("\"environment\":\"green\""));
    drop(newer);
    drop(stream);
    open(0).await;
    drop(preview);
}

/// Only the sidecar may move traffic: a push without the token (any local user can reach the
/// loopback status listener), with a wrong one, or older than what nginx serves is refused, and
/// nginx keeps serving what it served.
#[tokio::test(flavor = "multi_thread")]
async fn nginx_refuses_a_push_without_the_token_or_older_than_it_serves() {
    let (_etcd, client, _artifacts, _hosts) = fleet(&[]).await;
    let (lbs, _sidecars) = lbs_serving_blue(&_etcd, &client, "lua", "lb", 2).await;
    let lb = &lbs[0];
    let served = wait_ack(&client, "lb-0", "served", |a| a.applied_revision > 0)
        .await
        .applied_revision;
    let url = format!("http://127.0.0.1:{}/.bluegreen/state", lb.status);
    let include = std::fs::read_to_string(&lb.include_file).unwrap();
    let token = lb_sidecar::lua::token_in(&include).expect("the include holds the token");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&lb.include_file)
            .unwrap()
            .permissions()
            .mode()
            & 0o077,
        0,
        "only its owner may read the file that holds the token"
    );
    // No other file on the LB that holds the token is readable by anyone but its owner (the
    // sidecar's `nginx -t` candidate of the include was 0644 in its state directory).
    let mut dirs = vec![lb.dir.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                dirs.push(path);
            } else if meta.is_file()
                && std::fs::read_to_string(&path).is_ok_and(|t| t.contains(&token))
            {
                assert_eq!(
                    meta.permissions().mode() & 0o077,
                    0,
                    "{} holds the token",
                    path.display()
                );
            }
        }
    }
    // Everything to an address nginx cannot reach, at a newer revision.
    let hijack = |revision: i64| {
        serde_json::json!({
            "revision": revision, "color": "green", "version": "v2",
            "pools": {"live": {"color": "green", "primary": [["127.0.0.1", 9]], "backup": []}}
        })
        .to_string()
    };
    let http = reqwest::Client::new();
    let put = |token: Option<String>, body: String| {
        let mut request = http.put(&url).body(body);
        if let Some(token) = token {
            request = request.header("X-Bluegreen-Token", token);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(put(None, hijack(served + 100)).await, 403);
    assert_eq!(put(Some("0".repeat(64)), hijack(served + 100)).await, 403);
    assert_eq!(
        put(Some(token.clone()), hijack(served - 1)).await,
        409,
        "a stale state"
    );
    assert_eq!(
        put(Some(token.clone()), "{\"revision\": 1e9}".into()).await,
        400
    );
    let status = reqwest::get(format!("http://127.0.0.1:{}/.bluegreen/status", lb.status))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(status.trim(), format!("{served} blue"));
    wait_color(&lb.url("/api/v1/status"), Color::Blue).await;
}

/// nginx restarted while its sidecar is down serves the last state it was given (its workers
/// load it from the sidecar's state file), not a 503; the sidecar that comes back finds its
/// file in place and moves traffic without reloading nginx.
#[tokio::test(flavor = "multi_thread")]
async fn nginx_restarted_without_its_sidecar_serves_the_last_state() {
    let (_etcd, client, _artifacts, _hosts) = fleet(&[]).await;
    let (mut lbs, mut sidecars) = lbs_serving_blue(&_etcd, &client, "lua", "lb", 2).await;
    let revision = set_active(&client, Color::Green, "v2").await;
    wait_ack(&client, "lb-0", "green", |a| a.applied_revision >= revision).await;
    sidecars[0].kill9();
    let lb = &mut lbs[0];
    lb.stop();
    lb.spawn();
    wait_color(&lb.url("/api/v1/status"), Color::Green).await;
    let restarted = lb.workers();
    sidecars[0].restart();
    let revision = set_active(&client, Color::Blue, "v1").await;
    wait_ack(&client, "lb-0", "blue after the restart", |a| {
        a.applied_revision >= revision && a.error.is_none()
    })
    .await;
    wait_color(&lb.url("/api/v1/status"), Color::Blue).await;
    assert_eq!(
        lb.workers(),
        restarted,
        "the returning sidecar reloaded nginx"
    );
}

/// Without the Lua module the sidecar says so and runs in reload mode; asked for Lua mode
/// there, it refuses to start and names the setting and nginx's complaint.
#[tokio::test(flavor = "multi_thread")]
async fn without_the_lua_module_the_sidecar_reloads_or_refuses_when_told_lua() {
    let (_etcd, client, _artifacts, _hosts) = fleet(&[]).await;
    let plain = |dir: &std::path::Path, include: &std::path::Path, pid: &std::path::Path| {
        format!(
            "daemon off;\nworker_processes 1;\npid {};\nerror_log {}/error.log warn;\nevents {{}}\n\
             http {{\n    access_log off;\n    include {};\n}}\n",
            pid.display(),
            dir.display(),
            include.display()
        )
    };
    let lb = Nginx::start_with(true, plain);
    let sidecar = SidecarProc::start(&_etcd, "lb-0", &lb, "");
    let revision = set_active(&client, Color::Blue, "v1").await;
    wait_ack(&client, "lb-0", "blue", |a| {
        a.applied_revision >= revision && a.error.is_none()
    })
    .await;
    wait_color(&lb.url("/api/v1/status"), Color::Blue).await;
    assert!(
        sidecar.log().contains("nginx mode: reload"),
        "{}",
        sidecar.log()
    );

    let told = Nginx::start_with(true, plain).in_mode("lua");
    let mut refused = SidecarProc::start(&_etcd, "lb-1", &told, "");
    let status = wait_for(
        "the sidecar told lua to exit",
        Duration::from_secs(20),
        || {
            let status = refused.exit_status();
            async move { status }
        },
    )
    .await;
    assert!(!status.success());
    let log = refused.log();
    assert!(
        log.contains("nginx.mode") && log.contains("unknown directive"),
        "{log}"
    );
}
