//! The randomized fault runner (a benchmark binary, not a test): operations under load with
//! faults drawn from a seed, every invariant checked after each step.
//!   cargo build --release --workspace --bins
//!   target/release/fault-runner --seed 42 --ops 300 --minutes 60
//! Without `--seed`, one is drawn from the clock and printed first. Exit 1 on any violation, 3 when
//! the runner itself failed (its client could not connect before sending anything).
//! `--faults "SIGSTOP agent,garbage"` draws only faults whose name contains one of those words.
use bluegreen_tests::chaos::{run, RunConfig};
use std::time::Duration;

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

const USAGE: &str = "usage: fault-runner [--seed N] [--ops N] [--minutes N] [--fault-percent 0..100] [--faults \"word,word\"] [--rate N]
  --seed           the run is reproducible by seed (default: drawn from the clock, printed first)
  --ops            stop after this many operations (default 100)
  --minutes        or after this long (default 60)
  --fault-percent  share of operations with a fault (default 70)
  --faults         draw only faults whose name contains one of these words
  --rate           requests per second through each LB, each on a new connection (default 100,
                   at most 250: closed connections hold their local port for a minute)
Runs as root (network namespaces, tmpfs). Exit 0: every invariant held; 1: a violation; 2: bad
usage; 3: the runner itself failed and nothing it judged was violated (a harness error, named;
nothing after it was judged).";

const KNOWN: [&str; 6] = [
    "--seed",
    "--ops",
    "--minutes",
    "--fault-percent",
    "--faults",
    "--rate",
];

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return;
    }
    let unknown = args
        .iter()
        .skip(1)
        .step_by(2)
        .find(|a| !KNOWN.contains(&a.as_str()));
    if let Some(a) = unknown {
        eprintln!("fault-runner: unknown argument {a:?}\n{USAGE}");
        std::process::exit(2);
    }
    let seed = flag(&args, "--seed").map_or_else(
        || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                % 1_000_000
        },
        |s| s.parse().expect("--seed takes a number"),
    );
    let ops = flag(&args, "--ops").map_or(100, |s| s.parse().expect("--ops takes a number"));
    let minutes: u64 =
        flag(&args, "--minutes").map_or(60, |s| s.parse().expect("--minutes takes a number"));
    let fault_percent = flag(&args, "--fault-percent")
        .map_or(70, |s| s.parse().expect("--fault-percent takes 0..100"));
    let only_faults: Vec<String> = flag(&args, "--faults")
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let rate_per_lb: u32 =
        flag(&args, "--rate").map_or(100, |s| s.parse().expect("--rate takes a number"));
    if rate_per_lb == 0 || rate_per_lb > bluegreen_tests::load::FRESH_PER_SECOND {
        eprintln!(
            "fault-runner: --rate {rate_per_lb}: must be 1..={} (requests per second per LB)",
            bluegreen_tests::load::FRESH_PER_SECOND
        );
        std::process::exit(2);
    }
    println!("fault-runner: seed {seed}, up to {ops} operations or {minutes} min, faults on {fault_percent}% of them, {rate_per_lb} requests/s per LB");
    let summary = run(RunConfig {
        seed,
        ops,
        max_time: Duration::from_secs(minutes * 60),
        fault_percent,
        only_faults,
        rate_per_lb,
    })
    .await;
    println!(
        "\nseed {}: {} operations {:?}",
        summary.seed, summary.ops, summary.ops_by_kind
    );
    println!("outcomes: {:?}", summary.exits);
    println!("faults: {:?}", summary.faults);
    println!(
        "requests through the LBs: {} ok, {} failed, {} failed and excused (the step's fault stopped that LB's nginx, cut off or made lossy a host it routes to, or killed the app answering)",
        summary.requests_ok, summary.requests_failed, summary.requests_excused
    );
    let seconds = summary.traffic_time.as_secs_f64().max(0.001);
    for (i, n) in summary.requests_per_lb.iter().enumerate() {
        println!(
            "traffic through lb-{i}: {n} requests in {seconds:.0} s, {:.0} requests/s (paced at {})",
            *n as f64 / seconds,
            summary.rate_per_lb
        );
    }
    println!("invariant violations: {}", summary.violations.len());
    for v in &summary.violations {
        println!("  {v}");
    }
    if let Some(e) = &summary.harness_error {
        println!("HARNESS ERROR (the runner's own failure, not the product's): {e}");
    }
    // A violation found before a harness error is still one.
    let exit = match (summary.violations.is_empty(), &summary.harness_error) {
        (false, _) => 1,
        (true, Some(_)) => 3,
        (true, None) => 0,
    };
    std::process::exit(exit);
}
