//! Many-apps benchmark (not a test): real agents and sidecars serving N apps each, on this machine.
//! Every host's one agent runs every app (`[[apps]]`), every LB's one sidecar serves every app by
//! host name on one shared listener; every app deploys twice (so both colors run), all apps at
//! once. Prints each agent's and sidecar's resident memory after that, and the peak.
//!   cargo build --release --workspace --bins && target/release/bench-apps
//! Options: --apps 10  --hosts 3  --lbs 2
use bluegreen_tests::fleet::{Fleet, Setup};
use bluegreen_tests::nginx::{Nginx, SidecarProc};
use bluegreen_tests::procs::{AppEntry, APP};
use bluegreen_tests::{free_port, hwm_kib, rss_kib, wait_for, Etcd};
use proto::records::Ports;
use proto::Keys;
use std::time::Duration;

fn main_options() -> (usize, u8, usize) {
    let (mut apps, mut hosts, mut lbs) = (10, 3, 2);
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).and_then(|v| v.parse::<usize>().ok());
        match (pair[0].as_str(), value) {
            ("--apps", Some(n)) => apps = n,
            ("--hosts", Some(n)) => hosts = n as u8,
            ("--lbs", Some(n)) => lbs = n,
            (other, _) => {
                eprintln!(
                    "bench-apps: unknown or incomplete argument {other:?}\nusage: bench-apps [--apps 10] [--hosts 3] [--lbs 2]"
                );
                std::process::exit(2)
            }
        }
    }
    (apps, hosts, lbs)
}

fn app_name(i: usize) -> String {
    match i {
        0 => APP.to_string(),
        i => format!("app-{:02}", i + 1),
    }
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

#[tokio::main]
async fn main() {
    let (apps, hosts, lbs) = main_options();
    let names: Vec<String> = (0..apps).map(app_name).collect();
    let setup = Setup {
        etcd: Etcd::start().await,
        agent_extra: &|_| String::new(),
        sidecar_extra: &|_, _| String::new(),
        coordinator_env: Vec::new(),
    };
    let mut fleet = Fleet::start_setup(hosts, 0, setup).await;
    // Every host's one agent runs every app, each on its own ports.
    for host in &mut fleet.hosts {
        let entries: Vec<AppEntry> = names
            .iter()
            .enumerate()
            .map(|(i, name)| AppEntry {
                name: name.clone(),
                ports: match i {
                    0 => host.ports,
                    _ => Ports {
                        blue: free_port(&host.address),
                        green: free_port(&host.address),
                    },
                },
                state_dir: (i == 0).then(|| host.state_dir.clone()),
            })
            .collect();
        host.use_apps(&entries);
        host.restart();
    }
    // Every LB's one sidecar serves every app by its host name on one listener.
    let host_names: Vec<[String; 1]> = names.iter().map(|n| [format!("{n}.test")]).collect();
    let host_names: Vec<[&str; 1]> = host_names.iter().map(|[n]| [n.as_str()]).collect();
    let entries: Vec<(&str, &[&str])> = names
        .iter()
        .zip(&host_names)
        .map(|(n, h)| (n.as_str(), &h[..]))
        .collect();
    let mut lb_procs: Vec<(Nginx, SidecarProc)> = Vec::new();
    for i in 0..lbs {
        let nginx = Nginx::start();
        nginx.include_every_app();
        let sidecar = SidecarProc::start_apps(&fleet.etcd, &format!("lb-{i}"), &nginx, &entries);
        lb_procs.push((nginx, sidecar));
    }
    for name in &names {
        let keys = Keys::new(bluegreen_tests::procs::PREFIX, name).expect("keys");
        wait_for(
            &format!("{name}: {hosts} hosts and {lbs} LBs registered"),
            Duration::from_secs(60),
            || {
                let (client, keys) = (fleet.client.clone(), keys.clone());
                async move {
                    let count = |prefix: String| {
                        let mut client = client.clone();
                        async move {
                            let options = etcd_client::GetOptions::new()
                                .with_prefix()
                                .with_count_only();
                            client
                                .get(prefix, Some(options))
                                .await
                                .ok()
                                .map(|r| r.count())
                        }
                    };
                    let registered = count(keys.hosts_prefix()).await? as usize;
                    let acked = count(keys.lbs_prefix()).await? as usize;
                    (registered >= hosts as usize && acked >= lbs).then_some(())
                }
            },
        )
        .await;
    }
    println!(
        "bench-apps: {apps} apps on {hosts} agents (one per host) and {lbs} sidecars (one per LB)"
    );
    let specs: Vec<std::path::PathBuf> = names.iter().map(|n| fleet.demo_spec_as(n)).collect();
    for round in 1..=2 {
        let started = tokio::time::Instant::now();
        let deploys = names.iter().zip(&specs).map(|(name, spec)| {
            let mut command = fleet.deploy_command(spec, &format!("v{round}"), &[]);
            command.env("BLUEGREEN_APP", name);
            async move {
                let out = command.output().await.expect("run coordinator");
                assert!(
                    out.status.success(),
                    "{name} v{round}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        });
        futures::future::join_all(deploys).await;
        println!(
            "  every app deployed v{round} at once in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    for host in &fleet.hosts {
        println!(
            "  agent {}: RSS {} MiB (peak {} MiB)",
            host.host,
            mib(rss_kib(host.pid())),
            mib(hwm_kib(host.pid()))
        );
    }
    for (_, sidecar) in &lb_procs {
        println!(
            "  sidecar {}: RSS {} MiB (peak {} MiB)",
            sidecar.name,
            mib(rss_kib(sidecar.pid())),
            mib(hwm_kib(sidecar.pid()))
        );
    }
}
