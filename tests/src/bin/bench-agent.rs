//! Agent benchmark (not a test): time from a release written to etcd until every host reports it
//! healthy, and the agents' steady RSS. Run with release binaries:
//!   cargo build --release --workspace --bins && cargo run --release -p bluegreen-tests --bin bench-agent -- 10 5
//! Arguments: number of hosts (default 10), number of releases (default 5).
use bluegreen_tests::artifacts::release;
use bluegreen_tests::procs::{keys, put_release};
use bluegreen_tests::{rss_kib, wait_for, AgentProc, Artifacts, Etcd};
use proto::records::{decode, HealthRecord, HealthState};
use proto::Color;
use std::time::Duration;
use tokio::time::Instant;

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers"))
        .collect();
    let hosts = args.first().copied().unwrap_or(10);
    let rounds = args.get(1).copied().unwrap_or(5);
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let artifacts = Artifacts::default();
    let app = artifacts.demo_app();
    let agents: Vec<AgentProc> = (1..=hosts as u8)
        .map(|n| AgentProc::start(&etcd, n, 10, ""))
        .collect();
    put_release(&client, Color::Blue, &release("v0", &app, &[])).await;
    all_healthy(&client, hosts, Color::Blue, "v0").await;

    let mut samples = Vec::new();
    for round in 1..=rounds {
        let version = format!("v{round}");
        let written = Instant::now();
        put_release(&client, Color::Green, &release(&version, &app, &[])).await;
        all_healthy(&client, hosts, Color::Green, &version).await;
        samples.push(written.elapsed());
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "release written -> all {hosts} hosts healthy: median {:.0} ms, min {:.0} ms, max {:.0} ms over {rounds} releases",
        ms(samples[samples.len() / 2]),
        ms(samples[0]),
        ms(samples[samples.len() - 1])
    );

    // Steady state: both colors running and healthy, nothing changing, health polled every 500 ms.
    // A measurement window, not synchronisation: RSS is sampled after 15 s of steady polling.
    tokio::time::sleep(Duration::from_secs(15)).await; // measurement window (benchmark), no deadline wait
    let rss: Vec<u64> = agents.iter().filter_map(|a| rss_kib(a.pid())).collect();
    let max = rss.iter().max().copied().unwrap_or(0);
    let mean = rss.iter().sum::<u64>() / rss.len().max(1) as u64;
    println!(
        "agent steady RSS over {} agents: mean {:.1} MB, max {:.1} MB",
        rss.len(),
        mean as f64 / 1024.0,
        max as f64 / 1024.0
    );
}

async fn all_healthy(client: &etcd_client::Client, hosts: usize, color: Color, version: &str) {
    let prefix = keys().health_prefix();
    wait_for(
        &format!("{hosts} hosts healthy at {version}"),
        Duration::from_secs(120),
        || async {
            let kvs = bluegreen_tests::procs::read_prefix(client, &prefix).await?;
            let healthy = kvs
                .iter()
                .filter(|(key, _)| key.ends_with(color.as_str()))
                .filter_map(|(_, value)| decode::<HealthRecord>("health", value).ok())
                .filter(|h| h.state == HealthState::Healthy && h.version == version)
                .count();
            (healthy == hosts).then_some(())
        },
    )
    .await;
}
