//! Scale benchmark (not a test): the control plane at 10, 1,000 and 5,000 hollow hosts with 1, 10
//! and 50 LBs (up to 5 of them real nginx, the rest hollow). Hollow hosts and LBs are the real
//! agent and sidecar code over their in-memory seams, in this process; the coordinator is the
//! real binary, talking to etcd through a byte-counting proxy.
//!   cargo build --release --workspace --bins && target/release/bench-scale
//! Options: --hosts 10,1000,5000  --lbs 1,10,50  --real-lbs 5  --rollbacks 20  --start-delay 2s
//! --apps 20 (every host and LB serves 20 apps; the measured deploy and rollbacks are the first
//! app's, and then 1 % of the hosts crash, to count each LB's reloads for every app's change)
use bluegreen_tests::scale::{coordinator, coordinator_for, hollow_spec_for, metrics, HollowFleet};
use bluegreen_tests::{percentile, rss_kib};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

struct Options {
    hosts: Vec<usize>,
    lbs: Vec<usize>,
    real_lbs: usize,
    rollbacks: usize,
    start_delay: Duration,
    apps: usize,
}

impl Options {
    fn parse() -> Options {
        let mut o = Options {
            hosts: vec![10, 1000, 5000],
            lbs: vec![1, 10, 50],
            real_lbs: 5,
            rollbacks: 20,
            start_delay: Duration::from_secs(2),
            apps: 1,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let list = |v: &str| -> Vec<usize> {
            v.split(',').map(|n| n.parse().expect("a number")).collect()
        };
        for pair in args.chunks(2) {
            let value = pair
                .get(1)
                .map(String::as_str)
                .unwrap_or_else(|| usage(&pair[0]));
            match pair[0].as_str() {
                "--hosts" => o.hosts = list(value),
                "--lbs" => o.lbs = list(value),
                "--real-lbs" => o.real_lbs = value.parse().expect("--real-lbs N"),
                "--rollbacks" => o.rollbacks = value.parse().expect("--rollbacks N"),
                "--apps" => o.apps = value.parse().expect("--apps N"),
                "--start-delay" => {
                    o.start_delay = humantime::parse_duration(value).expect("--start-delay 2s")
                }
                other => usage(other),
            }
        }
        o
    }
}

fn usage(arg: &str) -> ! {
    eprintln!("bench-scale: unknown or incomplete argument {arg:?}\nusage: bench-scale [--hosts 10,1000,5000] [--lbs 1,10,50] [--real-lbs 5] [--rollbacks 20] [--start-delay 2s] [--apps 1]");
    std::process::exit(2)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Every `<field>=<ms>` a sidecar logged in its "reload timings" (reload mode) or "push
/// timings" (Lua mode) lines.
fn logged_ms(log: &str, field: &str) -> Vec<f64> {
    let marker = format!("{field}=");
    log.lines()
        .filter(|l| l.contains("reload timings") || l.contains("push timings"))
        .filter_map(|l| {
            let rest = &l[l.find(&marker)? + marker.len()..];
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

/// etcd's requests per second and CPU share over `window` with nothing deploying.
async fn steady_state(fleet: &HollowFleet, hosts: usize, window: Duration) {
    let pid = fleet.etcd.pid().expect("etcd runs");
    let before = metrics::received_by_method(&fleet.etcd.endpoint).await;
    let me = std::process::id();
    let cpu_before = (metrics::cpu_seconds(pid), metrics::cpu_seconds(me));
    tokio::time::sleep(window).await; // the measuring window, not a wait: nothing to poll for
    let after = metrics::received_by_method(&fleet.etcd.endpoint).await;
    let cpu = metrics::cpu_seconds(pid) - cpu_before.0;
    let fleet_cpu = metrics::cpu_seconds(me) - cpu_before.1;
    let secs = window.as_secs_f64();
    let mut total = 0.0;
    let mut parts = Vec::new();
    for (method, n) in &after {
        let rate = (n - before.get(method).copied().unwrap_or(0.0)) / secs;
        if rate > 0.0 {
            total += rate;
            parts.push(format!("{method} {rate:.0}/s"));
        }
    }
    println!(
        "  steady state, {hosts} hosts: etcd receives {total:.0} req/s ({:.3} per host per s: {}), etcd CPU {:.0} % of one core, the hollow fleet's {:.0} %",
        total / hosts as f64,
        parts.join(", "),
        cpu / secs * 100.0,
        fleet_cpu / secs * 100.0
    );
}

/// `nginx -t` of a real LB's current config, and a bare reload of it (SIGHUP until every old
/// worker stopped accepting): the floor a switch is compared against.
async fn nginx_floor(fleet: &HollowFleet) -> Option<(f64, f64)> {
    let (nginx, _) = fleet.real_lbs.first()?;
    let mut tests = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let ok = std::process::Command::new("nginx")
            .args(["-t", "-q", "-c"])
            .arg(&nginx.main_config)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "nginx -t of {}", nginx.main_config.display());
        tests.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let mut reloads = Vec::new();
    for _ in 0..5 {
        let master = nginx.master_pid() as i32;
        let old = lb_sidecar::nginx::workers_of(master);
        let started = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(master),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("SIGHUP nginx");
        bluegreen_tests::poll_until(
            "old nginx workers to stop accepting",
            Duration::from_secs(30),
            Duration::from_millis(1),
            || async {
                old.iter()
                    .all(|&p| !lb_sidecar::nginx::accepting_worker(p))
                    .then_some(())
            },
        )
        .await;
        reloads.push(started.elapsed().as_secs_f64() * 1000.0);
        // Let the old generation exit before the next reload is timed.
        bluegreen_tests::wait_for(
            "old nginx workers to exit",
            Duration::from_secs(30),
            || async {
                old.iter()
                    .all(|&p| !Path::new(&format!("/proc/{p}")).exists())
                    .then_some(())
            },
        )
        .await;
    }
    Some((median(tests), median(reloads)))
}

/// With BENCH_PERF_FLEET=<file>, `perf record` of this process (the hollow fleet) during each
/// measured deploy (the last one is kept).
fn fleet_perf() -> Option<std::process::Child> {
    let file = std::env::var("BENCH_PERF_FLEET").ok()?;
    std::process::Command::new("perf")
        .args([
            "record",
            "-F",
            "299",
            "--call-graph",
            "dwarf,16384",
            "-o",
            &file,
            "-p",
        ])
        .arg(std::process::id().to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()
}

/// `n` hosts crash: every app's view changes in one revision, and each LB should reload once for
/// all of them.
async fn hosts_crash_under_every_app(fleet: &mut HollowFleet, n: usize) {
    let signals_before: Vec<u64> = fleet
        .hollow_lbs
        .iter()
        .map(|m| m.signals.load(Ordering::Relaxed))
        .collect();
    let mut real_before = Vec::new();
    for (_, sidecar) in &fleet.real_lbs {
        real_before.push(reload_signals(sidecar).await);
    }
    let revision = fleet.crash_hosts(n).await;
    fleet.await_lbs_applied(revision).await;
    let signals: Vec<u64> = fleet
        .hollow_lbs
        .iter()
        .zip(signals_before)
        .map(|(m, before)| m.signals.load(Ordering::Relaxed) - before)
        .collect();
    let mut real = Vec::new();
    for ((_, sidecar), before) in fleet.real_lbs.iter().zip(real_before) {
        real.push(format!("{:.0}", reload_signals(sidecar).await - before));
    }
    println!(
        "         {n} host(s) crashed under {} apps: reload signals per hollow LB until every LB of every app applied it: {}–{}; per real LB: {}",
        fleet.apps.len(),
        signals.iter().min().unwrap_or(&0),
        signals.iter().max().unwrap_or(&0),
        real.join(" ")
    );
}

/// Every reload signal a sidecar sent its nginx (each app's series shows the same count).
async fn reload_signals(sidecar: &bluegreen_tests::nginx::SidecarProc) -> f64 {
    let text = reqwest::get(sidecar.metrics_url())
        .await
        .expect("sidecar metrics")
        .text()
        .await
        .expect("sidecar metrics text");
    text.lines()
        .filter(|l| l.starts_with("bluegreen_lb_nginx_reload_signals"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, f64::max)
}

#[tokio::main]
async fn main() {
    let o = Options::parse();
    let dir = tempfile::tempdir().unwrap();
    println!(
        "bench-scale: hollow hosts start their app in {:?}; {} rollbacks per row; up to {} real nginx LBs; {} app(s) on every host and LB",
        o.start_delay, o.rollbacks, o.real_lbs, o.apps
    );
    println!(
        "{:>6} {:>4} {:>5} | {:>9} {:>9} | {:>8} {:>8} | {:>9} {:>7} {:>7} | {:>8} {:>8} | {:>8} {:>8}",
        "hosts", "LBs", "real", "deploy", "overhead", "rb p50", "rb p99", "B/host", "calls", "KB rx",
        "coordMB", "agentKB", "switch", "valid."
    );
    for &hosts in &o.hosts {
        let mut fleet = HollowFleet::start_with_apps(o.apps).await;
        let specs: Vec<(PathBuf, String)> = fleet
            .apps
            .iter()
            .enumerate()
            // The measured app's hosts probe it every second; the other apps' every 10 s, or
            // 20,000 hollow apps' probes would take a core from the control plane on 2 cores.
            .map(|(i, app)| hollow_spec_for(dir.path(), app, if i == 0 { "1s" } else { "10s" }))
            .collect();
        let (spec, artifact_url) = specs[0].clone();
        let me = std::process::id();
        let rss_before = rss_kib(me).unwrap_or(0);
        let started = Instant::now();
        fleet.grow_hosts(hosts, o.start_delay).await;
        let agent_kib = (rss_kib(me).unwrap_or(0).saturating_sub(rss_before)) as f64 / hosts as f64;
        eprintln!(
            "  {hosts} hollow hosts registered in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let (etcd, counters) = fleet.counted_endpoint().await;
        // One deploy before the measured ones, so that both colors run and rollback has a target.
        fleet.grow_lbs(o.lbs[0], o.real_lbs).await;
        let deploy_args = |(spec, artifact_url): &(PathBuf, String), v: &str| -> Vec<String> {
            [
                "deploy",
                "--spec",
                spec.to_str().unwrap(),
                "--version",
                v,
                "--artifact",
                artifact_url,
            ]
            .map(String::from)
            .to_vec()
        };
        for (app, spec) in fleet.apps.iter().zip(&specs) {
            let args = deploy_args(spec, "v0");
            coordinator_for(
                &etcd,
                app,
                &args.iter().map(String::as_str).collect::<Vec<_>>(),
            )
            .await;
        }
        let mut version = 0;
        let mut steady_measured = false;
        for &lbs in &o.lbs {
            fleet.grow_lbs(lbs, o.real_lbs).await;
            version += 1;
            let v = format!("v{version}");
            let before = counters.now();
            let etcd_pid = fleet.etcd.pid().expect("etcd runs");
            let cpu_before = (metrics::cpu_seconds(etcd_pid), metrics::cpu_seconds(me));
            let args = deploy_args(&(spec.clone(), artifact_url.clone()), &v);
            let recording = fleet_perf();
            let deploy =
                coordinator(&etcd, &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
            if let Some(mut perf) = recording {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(perf.id() as i32),
                    nix::sys::signal::Signal::SIGINT,
                );
                let _ = perf.wait();
            }
            let mut coordinator_kib = deploy.peak_rss_kib;
            let cpu = format!(
                "etcd {:.1}, hollow fleet {:.1}, coordinator {:.1} CPU-s",
                metrics::cpu_seconds(etcd_pid) - cpu_before.0,
                metrics::cpu_seconds(me) - cpu_before.1,
                deploy.cpu_seconds
            );
            let deploy = deploy.took;
            let traffic = counters.now().since(before);
            if !steady_measured {
                steady_state(&fleet, hosts, Duration::from_secs(10)).await;
                steady_measured = true;
            }
            let mut rollbacks = Vec::new();
            for _ in 0..o.rollbacks {
                let run = coordinator(&etcd, &["rollback"]).await;
                coordinator_kib = coordinator_kib.max(run.peak_rss_kib);
                rollbacks.push(run.took);
            }
            rollbacks.sort();
            let status = coordinator(&etcd, &["status", "--output", "json"])
                .await
                .took;
            let logs: Vec<String> = fleet.real_lbs.iter().map(|(_, s)| s.log()).collect();
            let switch_ms = median(logs.iter().flat_map(|l| logged_ms(l, "done_ms")).collect());
            let validated_ms = median(
                logs.iter()
                    .flat_map(|l| logged_ms(l, "validated_ms"))
                    .collect(),
            );
            println!(
                "{:>6} {:>4} {:>5} | {:>7.0}ms {:>7.0}ms | {:>6.0}ms {:>6.0}ms | {:>9.0} {:>7} {:>7.0} | {:>8.1} {:>8.1} | {:>6.1}ms {:>6.1}ms",
                hosts,
                lbs,
                fleet.real_lbs.len(),
                ms(deploy),
                ms(deploy.saturating_sub(o.start_delay)),
                ms(percentile(&rollbacks, 0.5)),
                ms(percentile(&rollbacks, 0.99)),
                traffic.received as f64 / hosts as f64,
                traffic.calls,
                traffic.received as f64 / 1024.0,
                coordinator_kib as f64 / 1024.0,
                agent_kib,
                switch_ms,
                validated_ms,
            );
            println!(
                "         deploy {:.1} s used {cpu} of {:.1} on 2 cores; `status` {:.0} ms",
                deploy.as_secs_f64(),
                deploy.as_secs_f64() * 2.0,
                ms(status)
            );
        }
        if fleet.apps.len() > 1 {
            hosts_crash_under_every_app(&mut fleet, (hosts / 100).max(1)).await;
        }
        let sidecar_mib: Vec<String> = fleet
            .real_lbs
            .iter()
            .filter_map(|(_, s)| rss_kib(s.pid()))
            .map(|k| format!("{:.1}", k as f64 / 1024.0))
            .collect();
        if let Some((test_ms, reload_ms)) = nginx_floor(&fleet).await {
            println!(
                "  {hosts} hosts, real LB: nginx -t {test_ms:.0} ms, bare reload {reload_ms:.1} ms; real sidecars' RSS MiB: {}",
                sidecar_mib.join(" ")
            );
        }
    }
}
