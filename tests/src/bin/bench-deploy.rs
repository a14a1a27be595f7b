//! Coordinator benchmarks (not tests): `rollback` wall time, deploy wall time for 1/10/50 hosts,
//! and failed requests through the LBs during one full deploy under load.
//!   cargo build --release --workspace --bins && target/release/bench-deploy
//! With `--tls`, the rollback and the 3-host deploy run against a client-certificate TLS etcd.
use bluegreen_tests::fleet::{text, Fleet};
use bluegreen_tests::load;
use bluegreen_tests::wait_for;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn timed_deploy(fleet: &Fleet, version: &str) -> Duration {
    let start = Instant::now();
    let out = fleet.deploy(&fleet.spec("good", &[]), version, &[]).await;
    assert!(out.status.success(), "deploy {version}: {}", text(&out));
    start.elapsed()
}

#[tokio::main]
async fn main() {
    let tls = std::env::args().any(|a| a == "--tls");
    let pki = bluegreen_tests::pki::Pki::new();
    // Rollback: process start -> every LB acked (the command returns only then).
    let fleet = if tls {
        let etcd = bluegreen_tests::Etcd::start_tls(&pki).await;
        let agent_lines: Vec<String> = (1..=3)
            .map(|n| etcd.config_lines(&pki, &format!("agent-{n}"), None))
            .collect();
        let sidecar_lines = etcd.config_lines(&pki, "sidecar", None);
        let coordinator_env = etcd.coordinator_env(&pki, "coordinator", None);
        let agent_extra = move |n: u8| agent_lines[n as usize - 1].clone();
        let sidecar_extra = move |_: &str, _: &bluegreen_tests::nginx::Nginx| sidecar_lines.clone();
        let setup = bluegreen_tests::fleet::Setup {
            etcd,
            agent_extra: &agent_extra,
            sidecar_extra: &sidecar_extra,
            coordinator_env,
        };
        println!("etcd: client-certificate TLS");
        Fleet::start_setup(3, 2, setup).await
    } else {
        Fleet::start(3, 2).await
    };
    timed_deploy(&fleet, "v1").await;
    timed_deploy(&fleet, "v2").await;
    let mut rollbacks = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        let out = fleet.run(&["rollback"]).await;
        assert!(out.status.success(), "{}", text(&out));
        rollbacks.push(start.elapsed());
    }
    rollbacks.sort();
    println!(
        "coordinator rollback (3 hosts, 2 LBs), process start -> every LB acked: p50 {:.0} ms, max {:.0} ms over {}",
        ms(rollbacks[rollbacks.len() / 2]),
        ms(rollbacks[rollbacks.len() - 1]),
        rollbacks.len()
    );

    // Zero downtime under load: four fresh-connection loops through the two LBs during one deploy.
    // Every LB answers before the loops start, so no failure is a warm-up artefact.
    for url in fleet.lb_urls() {
        wait_for(&format!("{url} to answer"), Duration::from_secs(10), || {
            bluegreen_tests::procs::get_json(&url)
        })
        .await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load_started = Instant::now();
    let loops: Vec<_> = fleet
        .lb_urls()
        .into_iter()
        .flat_map(|u| [u.clone(), u])
        .map(|u| load::spawn(u, false, stop.clone()))
        .collect();
    let took = timed_deploy(&fleet, "v3").await;
    stop.store(true, Ordering::Relaxed);
    let total_secs = load_started.elapsed().as_secs_f64();
    let (mut ok, mut failed) = (0, 0);
    for l in loops {
        let r = l.await.unwrap();
        ok += r.ok;
        failed += r.failed.len();
    }
    println!("one full deploy under load: {ok} ok, {failed} failed, {:.0} req/s through the LBs, deploy took {:.0} ms", ok as f64 / total_secs, ms(took));
    drop(fleet);
    if tls {
        return; // the host-count scaling below is about the coordinator's waits, not TLS
    }

    // Fleet size: the second deploy (idle color already running the previous version).
    let mut base = None;
    for hosts in [1u8, 10, 50] {
        let fleet = Fleet::start(hosts, 1).await;
        timed_deploy(&fleet, "v1").await;
        let took = timed_deploy(&fleet, "v2").await;
        let ratio = base
            .map(|b: Duration| took.as_secs_f64() / b.as_secs_f64())
            .unwrap_or(1.0);
        base.get_or_insert(took);
        println!(
            "deploy to {hosts} host(s): {:.0} ms ({ratio:.2}x the 1-host deploy)",
            ms(took)
        );
    }
}
