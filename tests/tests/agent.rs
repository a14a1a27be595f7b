//! The agent against a real etcd, as real processes: two simulated hosts on 127.0.0.11/.12.
use bluegreen_tests::artifacts::release;
use bluegreen_tests::procs::{get_json, health, keys, put_raw, put_release, wait_health, wait_healthy};
use bluegreen_tests::{wait_for, AgentProc, Artifacts, Etcd};
use proto::records::HealthState;
use proto::Color;
use std::time::Duration;

/// Blue v1 and green v2 from etcd on two hosts; each port answers with its own color and version.
#[tokio::test(flavor = "multi_thread")]
async fn two_hosts_run_blue_and_green_side_by_side() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let artifacts = Artifacts::default();
    let app = artifacts.demo_app();
    let hosts = [AgentProc::start(&etcd, 1, 5, ""), AgentProc::start(&etcd, 2, 5, "")];
    put_release(&client, Color::Blue, &release("v1", &app, &[])).await;
    put_release(&client, Color::Green, &release("v2", &app, &[])).await;
    for host in &hosts {
        let blue = wait_healthy(&client, &host.host, Color::Blue, "v1").await;
        assert_eq!(blue.health["environment"], "blue");
        wait_healthy(&client, &host.host, Color::Green, "v2").await;
        for (color, version) in [(Color::Blue, "v1"), (Color::Green, "v2")] {
            let body = get_json(&host.url(color, "/health")).await.expect("app answers /health");
            assert_eq!(body["environment"], color.as_str(), "{}", host.host);
            assert_eq!(body["version"], version);
            assert_eq!(body["status"], "healthy");
            assert_eq!(body["database_connected"], true);
        }
        let registered = bluegreen_tests::procs::get_raw(&client, &keys().host(&host.host)).await.expect("host key");
        let registered: serde_json::Value = serde_json::from_slice(&registered).unwrap();
        assert_eq!(registered["address"], host.address.as_str());
        assert_eq!(registered["ports"]["green"], host.ports.green);
    }
}
