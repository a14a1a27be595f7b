//! The randomized fault runner with a fixed seed, briefly: CI's share of the long runs the
//! README describes (`target/release/fault-runner --seed N --ops M`). Every invariant holds.
use bluegreen_tests::chaos::{run, RunConfig};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn forty_operations_with_faults_from_a_fixed_seed_break_no_invariant() {
    let summary = run(RunConfig {
        seed: 7,
        ops: 40,
        max_time: Duration::from_secs(240),
        fault_percent: 70,
        only_faults: Vec::new(),
    })
    .await;
    println!("{summary:?}");
    assert!(summary.ops >= 20, "only {} operations ran", summary.ops);
    assert!(summary.requests_ok > 0, "no request went through the LBs");
    assert!(
        summary.violations.is_empty(),
        "seed 7: {} violation(s):\n{}",
        summary.violations.len(),
        summary.violations.join("\n")
    );
}
