//! Lua mode's figures (not a test), each beside reload mode measured in the same run:
//!   cargo build --release --workspace --bins && target/release/bench-lua
//! Options: `--switches 200 --weights 100` (keep-alive clients that never retry, 2 LBs),
//! `--streams 500 --stream-switches 20` (server-sent-events streams, 1 LB), `--wrk-seconds 10`
//! (throughput through one LB of 2 workers, Lua balancer against the plain upstream),
//! `--upstreams 5000` (one state push of that many servers); `--only keepalive|streams|wrk|push`.
use bluegreen_tests::artifacts::release;
use bluegreen_tests::lb::{set_active, set_weight, wait_ack};
use bluegreen_tests::nginx::{lbs_serving_blue, Nginx, SidecarProc};
use bluegreen_tests::procs::{put_release, wait_healthy};
use bluegreen_tests::strict::{self, Request};
use bluegreen_tests::{percentile, AgentProc, Artifacts, Etcd};
use lb_sidecar::nginx::NginxControl;
use lb_sidecar::render::View;
use proto::Color;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

fn only(part: &str) -> bool {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--only") {
        Some(i) => args.get(i + 1).map(String::as_str) == Some(part),
        None => true,
    }
}

#[tokio::main]
async fn main() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let artifacts = Artifacts::default();
    let app = artifacts.demo_app();
    let hosts = [
        AgentProc::start(&etcd, 1, 10, ""),
        AgentProc::start(&etcd, 2, 10, ""),
    ];
    put_release(&client, Color::Blue, &release("v1", &app, &[])).await;
    put_release(&client, Color::Green, &release("v2", &app, &[])).await;
    for h in &hosts {
        wait_healthy(&client, &h.host, Color::Blue, "v1").await;
        wait_healthy(&client, &h.host, Color::Green, "v2").await;
    }
    if only("keepalive") {
        for mode in ["lua", "reload"] {
            keep_alive(
                &etcd,
                &client,
                mode,
                arg("--switches", 200),
                arg("--weights", 100),
            )
            .await;
        }
    }
    if only("streams") {
        for mode in ["lua", "reload"] {
            streams(
                &etcd,
                &client,
                mode,
                arg("--streams", 500),
                arg("--stream-switches", 20),
            )
            .await;
        }
    }
    if only("wrk") {
        throughput(&hosts, arg("--wrk-seconds", 10)).await;
    }
    if only("push") {
        push(arg("--upstreams", 5000)).await;
    }
}

/// Waits until every sidecar of `sidecars` acked `revision`.
async fn acked(client: &etcd_client::Client, sidecars: &[SidecarProc], revision: i64) {
    for s in sidecars {
        wait_ack(client, &s.name, "the change", |a| {
            a.applied_revision >= revision
        })
        .await;
    }
}

/// Keep-alive GET and POST clients that never retry, 2 per kind per LB through 2 LBs, across
/// `switches` switches and then `weights` canary weight changes; failed requests and whether
/// nginx's workers changed.
async fn keep_alive(
    etcd: &Etcd,
    client: &etcd_client::Client,
    mode: &'static str,
    switches: usize,
    weights: usize,
) {
    let (lbs, sidecars) = lbs_serving_blue(etcd, client, mode, &format!("ka-{mode}"), 2).await;
    let before: Vec<Vec<i32>> = lbs.iter().map(Nginx::workers).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let post = Request::Post("/api/v1/items".into(), "{\"name\":\"bench\"}".into());
    let loops: Vec<_> = lbs
        .iter()
        .flat_map(|lb| {
            let address = format!("127.0.0.1:{}", lb.listen);
            [
                strict::spawn(address.clone(), Request::Get("/".into()), stop.clone()),
                strict::spawn(address.clone(), Request::Get("/".into()), stop.clone()),
                strict::spawn(address.clone(), post.clone(), stop.clone()),
                strict::spawn(address, post.clone(), stop.clone()),
            ]
        })
        .collect();
    let started = Instant::now();
    for n in 0..switches {
        let (color, version) = if n % 2 == 0 {
            (Color::Green, "v2")
        } else {
            (Color::Blue, "v1")
        };
        acked(client, &sidecars, set_active(client, color, version).await).await;
    }
    if switches % 2 == 1 {
        acked(
            client,
            &sidecars,
            set_active(client, Color::Blue, "v1").await,
        )
        .await;
    }
    for n in 0..weights {
        // 0.5 % .. 100 % and back: every change moves some clients.
        let weight = [50, 500, 2500, 5000, 10000, 5000, 2500, 500, 50, 0][n % 10];
        acked(client, &sidecars, set_weight(client, weight).await).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed, mut first) = (0, 0, Vec::new());
    for handle in loops {
        let report = handle.await.unwrap();
        ok += report.ok;
        failed += report.failed.len();
        first.extend(report.failed.into_iter().take(2));
    }
    let after: Vec<Vec<i32>> = lbs.iter().map(Nginx::workers).collect();
    println!(
        "keep-alive clients that never retry, {mode} mode, 2 LBs, {switches} switches + {weights} weight changes in {:.1} s: {ok} ok, {failed} failed {:?}; nginx workers {}",
        started.elapsed().as_secs_f64(),
        &first[..first.len().min(3)],
        if before == after { "unchanged (0 reloads)" } else { "replaced (reloads)" }
    );
}

/// `count` server-sent-events streams opened through one LB on blue, across `switches`
/// switches: how many the LB closed (counted 12 s after the last switch, past the test nginx's
/// 10 s worker_shutdown_timeout), and whether each new stream opened after a switch got the
/// new color.
async fn streams(
    etcd: &Etcd,
    client: &etcd_client::Client,
    mode: &'static str,
    count: usize,
    switches: usize,
) {
    let (lbs, sidecars) = lbs_serving_blue(etcd, client, mode, &format!("sse-{mode}"), 1).await;
    let lb = &lbs[0];
    let url = lb.url("/api/v1/events");
    let http = reqwest::Client::new();
    let closed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..count {
        let mut response = http.get(&url).send().await.expect("a stream");
        response.chunk().await.expect("first event");
        let (closed, stop) = (closed.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                match response.chunk().await {
                    Ok(Some(_)) if !stop.load(Ordering::Relaxed) => {}
                    Ok(Some(_)) => return,
                    _ => {
                        closed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }));
    }
    let mut wrong = 0;
    for n in 0..switches {
        let (color, version) = if n % 2 == 0 {
            (Color::Green, "v2")
        } else {
            (Color::Blue, "v1")
        };
        acked(client, &sidecars, set_active(client, color, version).await).await;
        let mut fresh = http.get(&url).send().await.expect("a new stream");
        let first = fresh.chunk().await.ok().flatten().unwrap_or_default();
        if !String::from_utf8_lossy(&first).contains(&format!("\"environment\":\"{color}\"")) {
            wrong += 1;
        }
    }
    let workers_now = lb.workers().len();
    // Until every stream is closed, or 12 s have passed: the test nginx's worker_shutdown_timeout
    // (10 s) ends a reload's retired workers and their streams within that.
    let deadline = Instant::now() + Duration::from_secs(12);
    while (closed.load(Ordering::Relaxed) as usize) < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    println!(
        "{count} server-sent-events streams through 1 LB, {mode} mode, {switches} switches: {} closed by the LB, {wrong} new streams not on the new color; nginx processes under the master after the switches: {workers_now}",
        closed.load(Ordering::Relaxed)
    );
    drop(tasks);
}

/// The upstream servers of the two demo hosts' blue.
fn blue_view(nginx: &Nginx, hosts: &[AgentProc]) -> View {
    let blue: Vec<String> = hosts
        .iter()
        .map(|h| format!("{}:{}", h.address, h.ports.of(Color::Blue)))
        .collect();
    let green: Vec<String> = hosts
        .iter()
        .map(|h| format!("{}:{}", h.address, h.ports.of(Color::Green)))
        .collect();
    View {
        app: "shop".into(),
        listen: format!("127.0.0.1:{}", nginx.listen),
        preview_listen: format!("127.0.0.1:{}", nginx.preview),
        status_listen: format!("127.0.0.1:{}", nginx.status),
        color: Color::Blue,
        version: "v1".into(),
        live: blue.clone(),
        preview: green.clone(),
        live_fallback: blue,
        preview_fallback: green,
        split: None,
        request_log: None,
        server_names: Vec::new(),
        tls: None,
        status_host: None,
    }
}

/// Installs Lua mode's include for `view` on `nginx`, reloads it and pushes the state at
/// `revision`; returns the control and the token.
async fn lua_nginx(
    nginx: &Nginx,
    view: &View,
    revision: i64,
) -> (lb_sidecar::nginx::Nginx, String) {
    let control = nginx.control(lb_sidecar::config::Mode::Lua);
    let token = lb_sidecar::lua::new_token().unwrap();
    let state_file = nginx.dir.join("lua-state.json");
    let module_file = nginx.dir.join("balancer.lua");
    std::fs::write(
        &module_file,
        lb_sidecar::lua::module("shop", &state_file.display().to_string()),
    )
    .unwrap();
    control
        .install(&lb_sidecar::lua::render(
            view,
            &token,
            &module_file.display().to_string(),
        ))
        .unwrap();
    let old = control.reload().unwrap();
    assert!(
        control
            .wait_old_workers(&old, Duration::from_secs(10))
            .await
    );
    push_state(&control, &token, view, revision).await;
    (control, token)
}

/// Pushes `view`'s state at `revision` and waits until every worker serves it.
async fn push_state(control: &lb_sidecar::nginx::Nginx, token: &str, view: &View, revision: i64) {
    let (state, _) = lb_sidecar::lua::state(view, revision, lb_sidecar::lua::literal);
    let text = serde_json::to_string(&state).unwrap();
    // Right after a reload the new workers' status server may not answer yet.
    bluegreen_tests::poll_until(
        "nginx to take the state",
        Duration::from_secs(10),
        Duration::from_millis(5),
        || async { control.push(token, &text).await.ok() },
    )
    .await;
    let expected = format!("{revision} {}", view.color);
    assert!(
        control
            .wait_serving(&expected, Duration::from_secs(10))
            .await,
        "not served: {expected}"
    );
}

/// Runs of each side in the throughput comparison: this 2-core machine runs wrk, nginx and the
/// apps together, and one run differs from the next by up to 20 %.
const RUNS: usize = 5;

/// `wrk` through one LB (2 workers) to the two hosts' blue: the plain upstream (reload mode's
/// rendered config) against the Lua balancer, alternating [`RUNS`] runs each; the median run's
/// requests per second and p99.
async fn throughput(hosts: &[AgentProc], seconds: usize) {
    let plain = Nginx::start();
    let view = blue_view(&plain, hosts);
    let text = lb_sidecar::render::with_revision(
        &lb_sidecar::render::render(lb_sidecar::render::BUILTIN_TEMPLATE, &view).unwrap(),
        1,
    );
    let plain_control = plain.control(lb_sidecar::config::Mode::Reload);
    plain_control.install(&text).unwrap();
    let old = plain_control.reload().unwrap();
    assert!(
        plain_control
            .wait_old_workers(&old, Duration::from_secs(10))
            .await
    );
    let lua = Nginx::start();
    let lua_view = blue_view(&lua, hosts);
    lua_nginx(&lua, &lua_view, 1).await;
    let mut runs: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..RUNS {
        for (i, nginx) in [&plain, &lua].iter().enumerate() {
            runs[i].push(wrk(&nginx.url("/"), seconds).await);
        }
    }
    let mut medians = Vec::new();
    for (i, name) in ["plain upstream", "Lua balancer"].iter().enumerate() {
        let mut r = runs[i].clone();
        r.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (rps, p99) = r[RUNS / 2];
        medians.push((rps, p99));
        println!(
            "wrk -t1 -c32 -d{seconds}s through 1 LB (2 workers), {name}: {rps:.0} requests/s, p99 {p99:.2} ms (the median run of {RUNS}; all: {:?})",
            runs[i].iter().map(|(r, p)| format!("{r:.0}/s p99 {p:.2} ms")).collect::<Vec<_>>()
        );
    }
    println!(
        "  Lua balancer: {:+.1} % requests/s, p99 {:+.2} ms against the plain upstream",
        (medians[1].0 / medians[0].0 - 1.0) * 100.0,
        medians[1].1 - medians[0].1
    );
}

/// One `wrk` run: (requests per second, p99 in ms).
async fn wrk(url: &str, seconds: usize) -> (f64, f64) {
    let out = tokio::process::Command::new("wrk")
        .args(["-t1", "-c32", &format!("-d{seconds}s"), "--latency", url])
        .output()
        .await
        .expect("wrk (Debian's wrk package; deploy/install-deps.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    if let Some(line) = text
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
    {
        println!("  wrk {url}: {}", line.trim());
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("wrk said: {text}"));
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| to_ms(v.trim()))
        .unwrap_or_else(|| panic!("wrk said: {text}"));
    (rps, p99)
}

/// wrk's latency ("812.00us", "1.20ms", "2.01s") in milliseconds.
fn to_ms(text: &str) -> f64 {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

/// One state of `count` upstream servers per list (live, preview and both backup lists):
/// building and serializing it in the sidecar, and pushing it until every worker serves it,
/// p50 / p99 over 20 pushes that alternate the color.
async fn push(count: usize) {
    let nginx = Nginx::start();
    let servers = |port: u16| -> Vec<String> {
        (0..count)
            .map(|i| format!("127.1.{}.{}:{port}", i / 250, i % 250 + 1))
            .collect()
    };
    let mut view = blue_view(&nginx, &[]);
    view.live = servers(8081);
    view.live_fallback = servers(8081);
    view.preview = servers(8082);
    view.preview_fallback = servers(8082);
    let (control, token) = lua_nginx(&nginx, &view, 1).await;
    let (mut build, mut pushed) = (Vec::new(), Vec::new());
    let mut size = 0;
    for revision in 2..22 {
        view.color = view.color.other();
        std::mem::swap(&mut view.live, &mut view.preview);
        let started = Instant::now();
        let (state, _) = lb_sidecar::lua::state(&view, revision, lb_sidecar::lua::literal);
        size = serde_json::to_string(&state).unwrap().len();
        build.push(started.elapsed());
        let started = Instant::now();
        push_state(&control, &token, &view, revision).await;
        pushed.push(started.elapsed());
    }
    build.sort();
    pushed.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "state push of {count} servers per list ({:.0} KB): built in p50 {:.1} ms; pushed until every worker serves it p50 {:.1} ms, p99 {:.1} ms over {} pushes",
        size as f64 / 1024.0,
        ms(percentile(&build, 0.5)),
        ms(percentile(&pushed, 0.5)),
        ms(percentile(&pushed, 0.99)),
        pushed.len()
    );
}
