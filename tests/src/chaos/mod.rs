//! The randomized fault runner: deploys, rollbacks and switches under load through every LB of a
//! fleet on a 3-member etcd whose hosts and LBs live in network namespaces, with a fault drawn
//! from a menu before or during each operation, and every invariant checked after it. A run is
//! reproduced by its seed: the draws depend on nothing else (timings may differ).
//!
//! `target/release/fault-runner --seed 7 --ops 200` (see the README); CI runs a fixed seed briefly.
pub mod faults;
pub mod invariants;
pub mod traffic;

use crate::fleet::{text, Fleet};
use faults::{Fault, Injected};
use proto::rng::Rng;
use proto::Color;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::Instant;

/// The longest any command of the runner may take: its lock wait (30 s), health timeout (20 s),
/// the ack timeout (30 s) and staging, with margin. A command still running then is a violation.
const COMMAND_DEADLINE: Duration = Duration::from_secs(150);
/// How long after a fault heals every LB must serve `active` again.
const CONVERGENCE_BOUND: Duration = Duration::from_secs(45);
/// The lock's TTL (15 s) plus a margin for etcd to expire it.
const LOCK_BOUND: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub seed: u64,
    pub ops: usize,
    /// Stop drawing new operations after this long.
    pub max_time: Duration,
    /// Percent of operations with a fault.
    pub fault_percent: u64,
    /// Only faults whose name contains one of these (all when empty): to reproduce one class.
    pub only_faults: Vec<String>,
    /// Requests per second through each LB, each on a fresh connection (at most
    /// [`crate::load::FRESH_PER_SECOND`]): a fixed rate, so a release build's speed cannot use up
    /// the client's local ports.
    pub rate_per_lb: u32,
}

#[derive(Debug, Default)]
pub struct Summary {
    pub seed: u64,
    pub ops: usize,
    pub ops_by_kind: BTreeMap<String, usize>,
    pub exits: BTreeMap<String, usize>,
    pub faults: BTreeMap<String, usize>,
    pub requests_ok: u64,
    pub requests_failed: u64,
    pub requests_excused: u64,
    /// Requests per second per LB the traffic was paced at, and how long it ran.
    pub rate_per_lb: u32,
    /// Requests sent through each LB (ok, failed and excused).
    pub requests_per_lb: Vec<u64>,
    pub traffic_time: Duration,
    pub violations: Vec<String>,
    /// The run stopped because the runner itself failed (its client ran out of local ports, …):
    /// nothing after that was judged.
    pub harness_error: Option<String>,
}

#[derive(Debug, Clone)]
enum Op {
    Deploy,
    Rollback,
    Switch(Color),
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Deploy => "deploy",
            Op::Rollback => "rollback",
            Op::Switch(_) => "switch",
        }
    }
}

/// Serves connections that never get a byte: the stalled artifact.
async fn stalled_server(address: &str) -> String {
    let listener = tokio::net::TcpListener::bind(format!("{address}:0"))
        .await
        .unwrap();
    let url = format!("http://{}/stalled.tar.gz", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    url
}

pub async fn run(config: RunConfig) -> Summary {
    let mut fleet = Fleet::start_netns_members(2, 2, 3, true).await;
    let mut summary = Summary {
        seed: config.seed,
        ..Default::default()
    };
    let mut rng = Rng::new(config.seed);
    let spec = fleet.spec("good", &[]);
    let start_revision = {
        let client = fleet.etcd.live_client().await;
        let resp = client.clone().get("x", None).await.unwrap();
        resp.header().unwrap().revision()
    };
    let (writes, watcher) =
        invariants::ActiveWrites::follow(fleet.etcd.admin_access(), start_revision);
    let first = fleet
        .deploy(&spec, &format!("s{}-0", config.seed), &[])
        .await;
    assert!(first.status.success(), "first deploy: {}", text(&first));
    let stalled = stalled_server(&fleet.net.as_ref().unwrap().gateway()).await;
    let traffic = traffic::Traffic::start(fleet.lb_urls(), config.rate_per_lb);
    summary.rate_per_lb = config.rate_per_lb;
    let mut reported = BTreeSet::new();
    let started = Instant::now();
    for step in 1..=config.ops {
        if started.elapsed() > config.max_time {
            break;
        }
        let op = rng
            .pick(&[
                (4, Op::Deploy),
                (3, Op::Rollback),
                (2, Op::Switch(Color::Blue)),
                (2, Op::Switch(Color::Green)),
            ])
            .clone();
        let wanted = |f: &Fault| {
            config.only_faults.is_empty()
                || config
                    .only_faults
                    .iter()
                    .any(|o| f.name().contains(o.as_str()))
        };
        let fault = if rng.chance(config.fault_percent) {
            // With `only_faults`, draw again until one of those comes up (bounded).
            (0..200)
                .map(|_| {
                    let (h, l, m) = (
                        fleet.hosts.len(),
                        fleet.lbs.len(),
                        fleet.etcd.member_count(),
                    );
                    Fault::draw(&mut rng, h, l, m)
                })
                .find(|f| wanted(f))
        } else {
            None
        };
        let during = rng.chance(50);
        let delay = Duration::from_millis(rng.below(1500));
        let hold = Duration::from_millis(rng.below(20_000));
        let fault = fault.filter(|f| !f.is_artifact() || matches!(op, Op::Deploy));
        let violations = step_once(
            &mut fleet,
            &traffic,
            &spec,
            &stalled,
            &config,
            step,
            &op,
            fault.as_ref(),
            during,
            delay,
            hold,
            &mut summary,
        )
        .await;
        let client = fleet.etcd.live_client().await;
        let mut found = violations;
        found.extend(
            invariants::active_written_once(&writes)
                .into_iter()
                .filter(|v| reported.insert(v.clone())),
        );
        found.extend(invariants::history_is_true(&client, &writes, &mut reported).await);
        let harness_error = traffic.harness_error();
        let counts = traffic.take_step();
        summary.requests_per_lb.resize(counts.len(), 0);
        for (i, c) in counts.iter().enumerate() {
            summary.requests_per_lb[i] += c.ok + c.failed + c.excused_failed;
            summary.requests_ok += c.ok;
            summary.requests_failed += c.failed;
            summary.requests_excused += c.excused_failed;
            if c.failed > 0 {
                found.push(format!(
                    "{} of {} requests through lb-{i} failed: {:?}",
                    c.failed,
                    c.ok + c.failed,
                    c.errors
                ));
            }
        }
        *summary
            .ops_by_kind
            .entry(op.name().to_string())
            .or_default() += 1;
        if let Some(f) = &fault {
            *summary.faults.entry(f.name().to_string()).or_default() += 1;
        }
        summary.ops = step;
        for v in &found {
            println!(
                "VIOLATION seed={} step={step} op={} fault={:?}: {v}",
                config.seed,
                op.name(),
                fault
            );
        }
        if !found.is_empty() {
            print_logs(&fleet);
        }
        summary.violations.extend(
            found
                .into_iter()
                .map(|v| format!("seed {} step {step}: {v}", config.seed)),
        );
        // The step's own findings are kept; nothing after the runner's failure can be judged.
        if let Some(e) = harness_error {
            println!("HARNESS ERROR seed={} step={step}: {e}", config.seed);
            summary.harness_error = Some(format!("step {step}: {e}"));
            break;
        }
    }
    summary.traffic_time = started.elapsed();
    traffic.stop().await;
    watcher.abort();
    summary
}

#[allow(clippy::too_many_arguments)]
async fn step_once(
    fleet: &mut Fleet,
    traffic: &traffic::Traffic,
    spec: &std::path::Path,
    stalled: &str,
    config: &RunConfig,
    step: usize,
    op: &Op,
    fault: Option<&Fault>,
    during: bool,
    delay: Duration,
    hold: Duration,
    summary: &mut Summary,
) -> Vec<String> {
    let mut violations = Vec::new();
    let before = invariants::active(&fleet.etcd.live_client().await).await;
    if let Some(l) = fault.and_then(Fault::excuses_lb) {
        traffic.excuse(l, true);
    }
    if fault.is_some_and(Fault::excuses_timeouts) {
        traffic.excuse_timeouts();
    }
    if fault.is_some_and(Fault::excuses_in_flight) {
        traffic.excuse_in_flight();
    }
    let mut injected = Injected::default();
    if let Some(f) = fault.filter(|f| !during && !f.hits_coordinator()) {
        injected = faults::inject(fleet, f).await;
    }
    let version = format!("s{}-{step}", config.seed);
    let mut cmd = fleet.coordinator();
    match op {
        Op::Deploy => {
            let (url, sha) = match fault {
                // A checksum no agent has cached, so that each one really fetches from the
                // server that never answers.
                Some(Fault::StalledArtifact) => {
                    use sha2::Digest;
                    let sha = hex::encode(sha2::Sha256::digest(version.as_bytes()));
                    (stalled.to_string(), sha)
                }
                Some(Fault::CorruptArtifact) => {
                    let mut sha = fleet.app.sha256.clone();
                    let flipped = if sha.starts_with('0') { "1" } else { "0" };
                    sha.replace_range(0..1, flipped);
                    (fleet.app.url.clone(), sha)
                }
                _ => (fleet.app.url.clone(), fleet.app.sha256.clone()),
            };
            cmd.arg("deploy").arg("--spec").arg(spec).args([
                "--version",
                &version,
                "--artifact",
                &url,
                "--sha256",
                &sha,
            ]);
            cmd.args(["--health-timeout", "20s", "--lock-wait", "30s"]);
        }
        Op::Rollback => {
            cmd.args(["rollback", "--lock-wait", "30s"]);
        }
        Op::Switch(color) => {
            cmd.args(["switch", color.as_str(), "--lock-wait", "30s"]);
        }
    }
    let began = Instant::now();
    let child = crate::fleet::spawn_piped(cmd);
    let pid = child.id().unwrap_or(0) as i32;
    let mut killed = false;
    if let Some(f) = fault.filter(|f| during || f.hits_coordinator()) {
        // When in the command's life the fault strikes: part of the drawn fault, not a wait.
        let strike_deadline = began + delay;
        tokio::time::sleep_until(strike_deadline).await;
        match f {
            Fault::CoordinatorKill => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                killed = true;
            }
            Fault::CoordinatorPause => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGSTOP,
                );
                // The pause's length, drawn from the seed: the fault, not a synchronisation.
                let resume_deadline = Instant::now() + hold;
                tokio::time::sleep_until(resume_deadline).await;
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGCONT,
                );
            }
            _ => injected = faults::inject(fleet, f).await,
        }
    }
    let remaining = COMMAND_DEADLINE.saturating_sub(began.elapsed());
    let (code, output) = match tokio::time::timeout(remaining, child.wait_with_output()).await {
        Ok(Ok(out)) => (out.status.code(), text(&out)),
        Ok(Err(e)) => (None, e.to_string()),
        Err(_) => {
            violations.push(format!(
                "{} still ran after {COMMAND_DEADLINE:?}",
                op.name()
            ));
            (None, String::new())
        }
    };
    let exit = match (code, killed) {
        (_, true) => "killed".to_string(),
        (Some(c), _) => format!("exit {c}"),
        (None, _) => "signal".to_string(),
    };
    *summary
        .exits
        .entry(format!("{} {exit}", op.name()))
        .or_default() += 1;
    if let Some(f) = fault {
        faults::heal(fleet, f, &injected).await;
    }
    let client = fleet.etcd.live_client().await;
    // The operator's repairs for what the fault left: a garbage `active` is overwritten by an
    // explicit switch, a garbage lock is broken. Both are commands a human would run.
    if injected.garbage_lock {
        let out = fleet.run(&["lock", "break", "--yes"]).await;
        if !out.status.success() {
            violations.push(format!(
                "lock break of a garbage lock failed: {}",
                text(&out)
            ));
        }
    }
    if injected.garbage_active && invariants::active(&client).await.is_none() {
        if let Some(before) = &before {
            let out = fleet
                .run(&["switch", before.color.as_str(), "--lock-wait", "30s"])
                .await;
            if !out.status.success() {
                violations.push(format!(
                    "switch to repair a garbage active failed: {}",
                    text(&out)
                ));
            }
        }
    }
    violations.extend(invariants::lock_freed(&client, LOCK_BOUND).await);
    violations.extend(invariants::live_color_kept(&client).await);
    violations.extend(invariants::lbs_converge(fleet, &client, CONVERGENCE_BOUND).await);
    violations.extend(invariants::fleet_settles(fleet, &client, CONVERGENCE_BOUND).await);
    violations.extend(
        invariants::processes_match_releases(fleet, &client, Duration::from_secs(30)).await,
    );
    let after = invariants::active(&client).await;
    println!(
        "step {step:>4} {:<8} {:<24} {:<6} {:>6.1}s {:<10} active {} -> {}{}",
        op.name(),
        fault.map_or("-", Fault::name),
        if during { "during" } else { "before" },
        began.elapsed().as_secs_f64(),
        exit,
        before
            .as_ref()
            .map_or("?".into(), |a| format!("{} {}", a.color, a.version)),
        after
            .as_ref()
            .map_or("?".into(), |a| format!("{} {}", a.color, a.version)),
        if violations.is_empty() {
            String::new()
        } else {
            format!("  [{} violation(s)]", violations.len())
        }
    );
    if !violations.is_empty() {
        println!(
            "  output: {}",
            output
                .lines()
                .take(12)
                .collect::<Vec<_>>()
                .join("\n          ")
        );
    }
    violations
}

/// The last lines each agent, sidecar and nginx logged: what a violation is read against.
fn print_logs(fleet: &Fleet) {
    let tail = |label: &str, log: String| {
        println!("  --- last lines of {label} ---");
        let lines: Vec<&str> = log.lines().collect();
        for line in &lines[lines.len().saturating_sub(25)..] {
            println!("  {line}");
        }
    };
    for h in &fleet.hosts {
        tail(&format!("{}'s agent", h.host), h.log());
    }
    for (s, lb) in fleet.sidecars.iter().zip(&fleet.lbs) {
        tail(&format!("sidecar {}", s.name), s.log());
        tail(&format!("nginx of {}", s.name), lb.error_log());
    }
}
