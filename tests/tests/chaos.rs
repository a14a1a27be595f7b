//! The randomized fault runner with a fixed seed, briefly: CI's share of the long runs the
//! README describes (`target/release/fault-runner --seed N --ops M`). Every invariant holds. And
//! the runner's own client failing is a harness error, never a violation.
use bluegreen_tests::chaos::traffic::Traffic;
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
        rate_per_lb: 100,
    })
    .await;
    println!("{summary:?}");
    assert!(summary.ops >= 20, "only {} operations ran", summary.ops);
    assert!(summary.requests_ok > 0, "no request went through the LBs");
    assert_eq!(summary.harness_error, None);
    assert!(
        summary.violations.is_empty(),
        "seed 7: {} violation(s):\n{}",
        summary.violations.len(),
        summary.violations.join("\n")
    );
}

/// A client that cannot connect before sending anything (here: its local address is not on this
/// machine, so `bind` fails with EADDRNOTAVAIL, as `connect` does once the local ports toward an
/// LB are used up) stops the traffic with a harness error naming the cause, and counts no failed
/// request: the product never saw one.
#[tokio::test]
async fn a_client_that_cannot_connect_is_a_harness_error_not_a_failed_request() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api/v1/status", listener.local_addr().unwrap());
    // 192.0.2.1 is reserved for documentation: no interface here has it, nothing is sent to it.
    let unbindable = reqwest::Client::builder()
        .local_address("192.0.2.1".parse::<std::net::IpAddr>().unwrap())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let traffic = Traffic::start_with(vec![url], 50, unbindable);
    let error = bluegreen_tests::wait_for("the harness error", Duration::from_secs(10), || async {
        traffic.harness_error()
    })
    .await;
    assert!(error.contains("EADDRNOTAVAIL"), "{error}");
    let counts = traffic.take_step();
    assert_eq!(counts[0].failed, 0, "{:?}", counts[0].errors);
    assert_eq!(counts[0].ok, 0);
    traffic.stop().await;
}
