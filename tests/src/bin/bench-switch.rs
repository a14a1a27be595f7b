//! Switch propagation benchmark (not a test): from the write of `active` until every LB serves the
//! new color, p50/p99 over many switches with 1 and with 8 LBs, with the sidecars in Lua mode
//! (a pushed state) and in reload mode, beside the reload floor measured in the same run (write
//! the include file + `nginx -s reload` + first response of the new color).
//!   cargo build --release --workspace --bins && target/release/bench-switch 50
//! With `--tls`, etcd requires client-certificate TLS and every agent and sidecar uses it (the
//! cost of TLS on the switch path).
use bluegreen_tests::artifacts::release;
use bluegreen_tests::lb::{set_active, wait_ack};
use bluegreen_tests::nginx::{Nginx, SidecarProc};
use bluegreen_tests::procs::{put_release, wait_healthy};
use bluegreen_tests::{percentile, poll_until, rss_kib, AgentProc, Artifacts, Etcd};
use lb_sidecar::render::{render, with_revision, View, BUILTIN_TEMPLATE};
use proto::Color;
use std::time::Duration;
use tokio::time::Instant;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tls = args.iter().any(|a| a == "--tls");
    let switches: usize = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(|a| a.parse().expect("number of switches"))
        .unwrap_or(50);
    let pki = bluegreen_tests::pki::Pki::new();
    let etcd = if tls {
        Etcd::start_tls(&pki).await
    } else {
        Etcd::start().await
    };
    println!(
        "etcd: {}",
        if tls {
            "client-certificate TLS"
        } else {
            "plain"
        }
    );
    let lines = |name: &str| etcd.config_lines(&pki, name, None);
    let client = etcd.client().await;
    let artifacts = Artifacts::default();
    let app = artifacts.demo_app();
    let hosts = [
        AgentProc::start(&etcd, 1, 10, &lines("agent-1")),
        AgentProc::start(&etcd, 2, 10, &lines("agent-2")),
    ];
    put_release(&client, Color::Blue, &release("v1", &app, &[])).await;
    put_release(&client, Color::Green, &release("v2", &app, &[])).await;
    for h in &hosts {
        wait_healthy(&client, &h.host, Color::Blue, "v1").await;
        wait_healthy(&client, &h.host, Color::Green, "v2").await;
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();

    let mut revision = set_active(&client, Color::Blue, "v1").await;
    for lb_count in [1usize, 8] {
        let floor = measure_floor(&hosts, &http, lb_count, switches).await;
        report(&format!("floor, {lb_count} nginx: write file + nginx -s reload -> first response of the new color"), &floor.first, None);
        report(&format!("floor, {lb_count} nginx: write file + nginx -s reload -> old workers stopped accepting"), &floor.complete, None);
        for mode in ["lua", "reload"] {
            let lbs: Vec<Nginx> = (0..lb_count)
                .map(|_| Nginx::start().in_mode(mode))
                .collect();
            let sidecars: Vec<SidecarProc> = lbs
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let name = format!("bench-{mode}-{lb_count}-{i}");
                    SidecarProc::start(&etcd, &name, n, &lines(&name))
                })
                .collect();
            for s in &sidecars {
                wait_ack(&client, &s.name, "initial", |a| {
                    a.applied_revision >= revision
                })
                .await;
            }
            let mut samples = Samples {
                first: Vec::new(),
                complete: Vec::new(),
            };
            for n in 0..switches {
                let (color, version) = if n % 2 == 0 {
                    (Color::Green, "v2")
                } else {
                    (Color::Blue, "v1")
                };
                let start = Instant::now();
                revision = set_active(&client, color, version).await;
                let urls: Vec<String> = lbs.iter().map(|l| l.url("/api/v1/status")).collect();
                futures::future::join_all(urls.iter().map(|u| serves(&http, u, color))).await;
                samples.first.push(start.elapsed());
                // The ack is written only after the old workers stopped accepting: the switch is complete.
                for s in &sidecars {
                    acked(&client, &s.name, revision).await;
                }
                samples.complete.push(start.elapsed());
            }
            report(&format!("{mode} mode, {lb_count} LB(s): write of active -> first response of the new color at every LB"), &samples.first, Some(&floor.first));
            report(&format!("{mode} mode, {lb_count} LB(s): write of active -> every LB acked (every worker serves it)"), &samples.complete, Some(&floor.complete));
            let rss: Vec<u64> = sidecars.iter().filter_map(|s| rss_kib(s.pid())).collect();
            println!(
                "  lb-sidecar RSS: max {:.1} MB over {} sidecars",
                rss.iter().max().copied().unwrap_or(0) as f64 / 1024.0,
                rss.len()
            );
        }
    }
}

/// The bare nginx floor on `count` nginx of its own: both variants rendered once, then per switch,
/// for every nginx at once: write the file, `nginx -s reload`, poll until the new color answers.
async fn measure_floor(
    hosts: &[AgentProc],
    http: &reqwest::Client,
    count: usize,
    switches: usize,
) -> Samples {
    let fleet: Vec<Nginx> = (0..count).map(|_| Nginx::start()).collect();
    let mut samples = Samples {
        first: vec![Duration::ZERO; switches],
        complete: vec![Duration::ZERO; switches],
    };
    let runs = fleet
        .iter()
        .map(|nginx| floor_of_one(nginx, hosts, http, switches));
    for one in futures::future::join_all(runs).await {
        for (i, (first, complete)) in one.into_iter().enumerate() {
            samples.first[i] = samples.first[i].max(first);
            samples.complete[i] = samples.complete[i].max(complete);
        }
    }
    samples
}

/// Per switch: when the first response of the new color came, and when every worker of the old
/// generation had stopped accepting (nginx keeps old workers accepting ~100 ms after a reload).
struct Samples {
    first: Vec<Duration>,
    complete: Vec<Duration>,
}

async fn old_workers_gone(old: &[i32]) {
    poll_until(
        "old nginx workers to stop accepting",
        Duration::from_secs(30),
        Duration::from_millis(1),
        || async {
            (!old
                .iter()
                .any(|&pid| lb_sidecar::nginx::accepting_worker(pid)))
            .then_some(())
        },
    )
    .await
}

/// One nginx's floor samples. All nginx of a run switch in lockstep: each sample starts together.
async fn floor_of_one(
    nginx: &Nginx,
    hosts: &[AgentProc],
    http: &reqwest::Client,
    switches: usize,
) -> Vec<(Duration, Duration)> {
    let floor_status_port = nginx.status;
    let addresses = |color: Color| -> Vec<String> {
        hosts
            .iter()
            .map(|h| format!("{}:{}", h.address, h.ports.of(color)))
            .collect()
    };
    let variant = |color: Color| {
        let view = View {
            app: "shop".into(),
            listen: format!("127.0.0.1:{}", nginx.listen),
            preview_listen: format!("127.0.0.1:{}", nginx.preview),
            status_listen: format!("127.0.0.1:{floor_status_port}"),
            color,
            version: "floor".into(),
            live: addresses(color),
            preview: addresses(color.other()),
            live_fallback: addresses(color),
            preview_fallback: addresses(color.other()),
            split: None,
            request_log: None,
            server_names: Vec::new(),
            tls: None,
            status_host: None,
        };
        with_revision(&render(BUILTIN_TEMPLATE, &view).unwrap(), 1)
    };
    let texts = [variant(Color::Blue), variant(Color::Green)];
    let url = nginx.url("/api/v1/status");
    std::fs::write(&nginx.include_file, &texts[0]).unwrap();
    reload(nginx).await;
    serves(http, &url, Color::Blue).await;
    let mut samples = Vec::new();
    for n in 0..switches {
        let color = if n % 2 == 0 {
            Color::Green
        } else {
            Color::Blue
        };
        let old = lb_sidecar::nginx::workers_of(nginx.master_pid() as i32);
        let start = Instant::now();
        std::fs::write(
            &nginx.include_file,
            &texts[if color == Color::Blue { 0 } else { 1 }],
        )
        .unwrap();
        reload(nginx).await;
        serves(http, &url, color).await;
        let first = start.elapsed();
        old_workers_gone(&old).await;
        samples.push((first, start.elapsed()));
    }
    samples
}

async fn reload(nginx: &Nginx) {
    let status = tokio::process::Command::from(nginx.command())
        .args(["-s", "reload"])
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .expect("nginx -s reload");
    assert!(status.success());
}

/// Polls the ack every millisecond until it names `revision`.
async fn acked(client: &etcd_client::Client, name: &str, revision: i64) {
    poll_until(
        &format!("{name} to ack {revision}"),
        Duration::from_secs(30),
        Duration::from_millis(1),
        || async {
            bluegreen_tests::lb::ack(client, name)
                .await
                .filter(|a| a.applied_revision == revision)
                .map(|_| ())
        },
    )
    .await
}

/// Polls `url` over fresh connections until it answers with `color`.
async fn serves(http: &reqwest::Client, url: &str, color: Color) {
    poll_until(
        &format!("{url} to serve {color}"),
        Duration::from_secs(30),
        Duration::from_millis(1),
        || async {
            let body: serde_json::Value = http
                .get(url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (body["environment"] == color.as_str()).then_some(())
        },
    )
    .await
}

fn report(what: &str, samples: &[Duration], floor: Option<&[Duration]>) {
    let mut s = samples.to_vec();
    s.sort();
    let (p50, p99) = (percentile(&s, 0.5), percentile(&s, 0.99));
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut line = format!(
        "{what}: p50 {:.1} ms, p99 {:.1} ms over {} switches",
        ms(p50),
        ms(p99),
        s.len()
    );
    if let Some(floor) = floor {
        let mut f = floor.to_vec();
        f.sort();
        line.push_str(&format!(
            " = {:.2}x / {:.2}x the floor (target 1.25x / 1.5x)",
            ms(p50) / ms(percentile(&f, 0.5)),
            ms(p99) / ms(percentile(&f, 0.99))
        ));
    }
    println!("{line}");
}
