//! Canary benchmarks (not tests), on 3 hosts and 2 real nginx LBs with paced load through both:
//! - abort time: a canary answering 5 % errors at a 1 % step, from the first erroring canary
//!   request a client sees to every LB acking weight 0;
//! - false aborts over healthy canaries whose answers (both colors) carry ±20 % latency noise;
//! - nginx reloads per canary step per LB;
//! - the canary's measured share of new clients at 1, 5 and 25 %.
//!   cargo build --release --workspace --bins && target/release/bench-canary
//!   options: --rate 500 (requests/s through the LBs) --abort-runs 10 --healthy-runs 50
//!   --share-clients 100000 (new clients per weight)
use bluegreen_tests::fleet::{text, Fleet};
use bluegreen_tests::lb::ack;
use bluegreen_tests::procs::traffic;
use bluegreen_tests::wait_for;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

fn flag(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: {v:?} is not a number"))
        })
        .unwrap_or(default)
}

/// What the paced clients saw.
#[derive(Default)]
struct Seen {
    ok: AtomicU64,
    /// No answer at all, by what the client was told (a refused or closed connection, a timeout).
    unanswered: Mutex<std::collections::BTreeMap<String, u64>>,
    /// An error status from the color that is not the canary now.
    stable_errors: AtomicU64,
    canary_errors: AtomicU64,
    /// When a client first got an error from the canary color since the last reset.
    first_canary_error: Mutex<Option<Instant>>,
    /// The color that counts as the canary now.
    canary: Mutex<Option<String>>,
}

/// `rate` requests per second in total, spread over 10 keep-alive clients and both LBs; new
/// users each time (no cookie kept), so each request is split by the weight.
fn paced_load(urls: Vec<String>, rate: u64, seen: Arc<Seen>, stop: Arc<AtomicBool>) {
    let clients = 10u64;
    let period = Duration::from_secs_f64(clients as f64 / rate as f64);
    for i in 0..clients {
        let url = urls[i as usize % urls.len()].clone();
        let (seen, stop) = (seen.clone(), stop.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let answer = match http.get(&url).send().await {
                    Ok(answer) => answer,
                    Err(error) => {
                        *seen
                            .unanswered
                            .lock()
                            .unwrap()
                            .entry(why(&error))
                            .or_default() += 1;
                        continue;
                    }
                };
                let color = answer
                    .headers()
                    .get("x-bluegreen-color")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                if answer.status().is_success() {
                    seen.ok.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if seen.canary.lock().unwrap().as_deref() != Some(color.as_str()) {
                    seen.stable_errors.fetch_add(1, Ordering::Relaxed);
                } else {
                    seen.canary_errors.fetch_add(1, Ordering::Relaxed);
                    seen.first_canary_error
                        .lock()
                        .unwrap()
                        .get_or_insert_with(Instant::now);
                }
            }
        });
    }
}

/// The innermost cause of a failed request, which says what happened on the wire.
fn why(error: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// The canary's (green's) share of `clients` new clients (no cookie) through every LB.
async fn canary_share(urls: &[String], clients: u64) -> f64 {
    let tasks = 16u64;
    let http = reqwest::Client::new();
    let mut counting = Vec::new();
    for i in 0..tasks {
        let (http, url) = (http.clone(), urls[i as usize % urls.len()].clone());
        counting.push(tokio::spawn(async move {
            let mut green = 0u64;
            for _ in 0..clients / tasks {
                let answer = http.get(&url).send().await.expect("request through the LB");
                assert!(answer.status().is_success(), "{}", answer.status());
                green += u64::from(answer.headers()["x-bluegreen-color"] == "green");
            }
            green
        }));
    }
    let mut green = 0;
    for task in counting {
        green += task.await.unwrap();
    }
    green as f64 / (clients / tasks * tasks) as f64
}

fn canary_spec(
    fleet: &Fleet,
    name: &str,
    env: &[(&str, &str)],
    steps: &str,
    step_time: &str,
) -> std::path::PathBuf {
    let section = format!(
        "[canary]\nsteps = {steps}\nstep_time = \"{step_time}\"\nstep_deadline = \"5m\"\n\
         interval = \"1s\"\nmin_requests = 50\nmax_error_rate_increase = 0.5\nmax_p99_ratio = 1.5\n\
         false_abort_rate = 0.01\n"
    );
    fleet.spec_with(name, env, &section)
}

/// When every LB has acked a split of weight 0 for the canary `deploy_id` started.
async fn every_lb_back_at_zero(fleet: &Fleet) -> Instant {
    let names: Vec<String> = fleet.sidecars.iter().map(|s| s.name.clone()).collect();
    bluegreen_tests::wait::poll_until(
        "every LB at weight 0",
        Duration::from_secs(600),
        Duration::from_millis(5),
        || {
            let names = names.clone();
            async move {
                let (split, revision) = traffic(&fleet.client).await?;
                if split.weight != 0 {
                    return None;
                }
                for name in &names {
                    if ack(&fleet.client, name).await?.applied_revision < revision {
                        return None;
                    }
                }
                Some(Instant::now())
            }
        },
    )
    .await
}

/// Every sidecar's `bluegreen_lb_reloads_total`, per LB.
async fn reloads(fleet: &Fleet) -> Vec<f64> {
    let mut out = Vec::new();
    for sidecar in &fleet.sidecars {
        let value = sidecar.metric("bluegreen_lb_reloads_total").await;
        out.push(value.unwrap_or(0.0));
    }
    out
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let rate = flag("--rate", 500);
    let abort_runs = flag("--abort-runs", 10);
    let healthy_runs = flag("--healthy-runs", 50);
    let fleet = Fleet::start(3, 2).await;
    let noise = [("DEMO_LATENCY_MS", "20"), ("DEMO_LATENCY_JITTER_PCT", "20")];
    let healthy = canary_spec(&fleet, "healthy", &noise, "[1, 5]", "3s");
    let erroring = canary_spec(
        &fleet,
        "erroring",
        &[("DEMO_ERROR_RATE", "0.05")],
        "[1, 50]",
        "60s",
    );
    let plain = canary_spec(&fleet, "plain", &[], "[1]", "5s");
    let first = fleet.deploy(&plain, "v0", &[]).await;
    assert!(first.status.success(), "{}", text(&first));
    for url in fleet.lb_urls() {
        wait_for(&format!("{url} to answer"), Duration::from_secs(10), || {
            bluegreen_tests::procs::get_json(&url)
        })
        .await;
    }

    // The split alone, written by hand over a staged green: measured share vs weight.
    let share_clients = flag("--share-clients", 100_000);
    if share_clients > 0 {
        let staged = fleet.deploy(&plain, "v0-split", &["--no-switch"]).await;
        assert!(staged.status.success(), "{}", text(&staged));
        for (step, weight) in [(1, 100u32), (2, 500), (3, 2500)] {
            fleet.set_split(weight, step).await;
            let share = canary_share(&fleet.lb_urls(), share_clients).await;
            let target = f64::from(weight) / 10_000.0;
            println!(
                "canary share at {:.0} %: {:.2} % of {share_clients} new clients through 2 LBs \
                 ({:+.2} points; sampling alone ± {:.2} at 2σ; target within ±0.5)",
                target * 100.0,
                share * 100.0,
                (share - target) * 100.0,
                200.0 * (target * (1.0 - target) / share_clients as f64).sqrt()
            );
        }
        fleet.set_split(0, 4).await;
    }
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    paced_load(fleet.lb_urls(), rate, seen.clone(), stop.clone());
    let mut version = 0;

    // Abort time.
    let mut abort_ms = Vec::new();
    for run in 1..=abort_runs {
        let stable = bluegreen_tests::procs::active(&fleet.client).await.unwrap();
        *seen.canary.lock().unwrap() = Some(stable.color.other().to_string());
        *seen.first_canary_error.lock().unwrap() = None;
        let errors_before = seen.canary_errors.load(Ordering::Relaxed);
        version += 1;
        let out = fleet
            .deploy(&erroring, &format!("v{version}"), &["--canary"])
            .await;
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let back = every_lb_back_at_zero(&fleet).await;
        let first_error = seen
            .first_canary_error
            .lock()
            .unwrap()
            .expect("a client met an erroring canary request");
        let took = back.duration_since(first_error).as_secs_f64() * 1000.0;
        let why = text(&out)
            .lines()
            .find(|l| l.contains("canary failed at step"))
            .unwrap_or("")
            .trim()
            .to_string();
        println!(
            "abort run {run}: first erroring canary request -> every LB at weight 0: {took:.0} ms \
             ({} canary errors seen by clients); {why}",
            seen.canary_errors.load(Ordering::Relaxed) - errors_before
        );
        abort_ms.push(took);
    }
    if !abort_ms.is_empty() {
        let max = abort_ms.iter().cloned().fold(0.0, f64::max);
        println!(
            "abort time, 5 % errors at 1 % weight, ~{rate} req/s through 2 LBs: median {:.1} s, max {:.1} s over {} runs (target <= 60 s)",
            median(&mut abort_ms) / 1000.0,
            max / 1000.0,
            abort_ms.len()
        );
    }

    // False aborts, and reloads per step. The stable version carries the same latency noise as
    // the canaries (a canary slower than what it replaces is a true regression, not a false abort).
    let (mut false_aborts, mut reloads_per_step) = (0, Vec::new());
    *seen.canary.lock().unwrap() = None;
    if healthy_runs > 0 {
        version += 1;
        let noisy_stable = fleet.deploy(&healthy, &format!("v{version}"), &[]).await;
        assert!(noisy_stable.status.success(), "{}", text(&noisy_stable));
    }
    for run in 1..=healthy_runs {
        version += 1;
        let deploy = fleet
            .deploy_command(&healthy, &format!("v{version}"), &["--canary"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Reloads from the first step's ack to the second's: one weight change.
        let after = traffic(&fleet.client).await.map_or(0, |(_, r)| r);
        let step_acked = |step: u32| {
            let fleet = &fleet;
            async move {
                bluegreen_tests::wait::poll_until(
                    &format!("step {step} acked"),
                    Duration::from_secs(300),
                    Duration::from_millis(20),
                    || async move {
                        let (split, revision) = traffic(&fleet.client).await?;
                        if revision <= after {
                            return None;
                        }
                        if split.weight == 0 || split.step > step {
                            return Some(false); // over before this step was seen
                        }
                        if split.step < step {
                            return None;
                        }
                        for s in &fleet.sidecars {
                            if ack(&fleet.client, &s.name).await?.applied_revision < revision {
                                return None;
                            }
                        }
                        Some(true)
                    },
                )
                .await
            }
        };
        let measured = if step_acked(1).await {
            let before = reloads(&fleet).await;
            if step_acked(2).await {
                let after = reloads(&fleet).await;
                Some(
                    before
                        .iter()
                        .zip(&after)
                        .map(|(b, a)| a - b)
                        .collect::<Vec<f64>>(),
                )
            } else {
                None
            }
        } else {
            None
        };
        let out = deploy.wait_with_output().await.unwrap();
        if out.status.success() {
            if let Some(per_lb) = measured {
                reloads_per_step.extend(per_lb);
            }
        } else {
            false_aborts += 1;
            println!("healthy run {run}: aborted: {}", text(&out));
        }
        if run % 10 == 0 {
            println!("healthy runs: {run} done, {false_aborts} aborted");
        }
    }
    stop.store(true, Ordering::Relaxed);
    if healthy_runs > 0 {
        println!(
            "false aborts: {false_aborts} of {healthy_runs} healthy canaries (latency 20 ms ± 20 % on both colors, steps 1 and 5 %, ~{rate} req/s; target 0)"
        );
        if !reloads_per_step.is_empty() {
            let max = reloads_per_step.iter().cloned().fold(0.0, f64::max);
            println!(
                "nginx reloads per canary step per LB: median {:.1}, max {:.1} over {} LB-steps (target 1)",
                median(&mut reloads_per_step),
                max,
                reloads_per_step.len()
            );
        }
    }
    println!(
        "requests through the LBs: {} ok; {} error answers from the erroring canaries; {} error \
         answers not from the canary (the stable color's or nginx's own); without an answer: {:?}",
        seen.ok.load(Ordering::Relaxed),
        seen.canary_errors.load(Ordering::Relaxed),
        seen.stable_errors.load(Ordering::Relaxed),
        seen.unanswered.lock().unwrap()
    );
}
