//! Upgrading bluegreen one machine at a time: a fleet where one agent and one sidecar run the
//! previous release keeps deploying, rolling back and switching with the new coordinator, and
//! loses no request. Needs the previous release's binaries, so it is not part of the CI run:
//! `deploy/test-upgrade.sh COMMIT` builds them from that commit and runs it.
use bluegreen_tests::fleet::{assert_ok, Fleet};
use bluegreen_tests::{binary, load};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

fn previous(name: &str) -> PathBuf {
    let dir = std::env::var_os("BLUEGREEN_PREVIOUS_BIN_DIR")
        .map(PathBuf::from)
        .expect(
            "BLUEGREEN_PREVIOUS_BIN_DIR must name the previous release's binaries \
         (deploy/test-upgrade.sh COMMIT builds them and sets it)",
        );
    let path = dir.join(name);
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the previous release's binaries: run deploy/test-upgrade.sh COMMIT"]
async fn a_fleet_mixing_this_and_the_previous_release_keeps_deploying_and_rolling_back() {
    let mut fleet = Fleet::start(2, 2).await;
    let spec = fleet.spec("good", &[]);
    assert_ok(&fleet.deploy(&spec, "v1", &[]).await, "deploy v1");
    // Mid-upgrade: host-2's agent and lb-1's sidecar are still (or again) the previous release.
    fleet
        .restarting_agents(|fleet| fleet.hosts[1].restart_as(previous("agent")))
        .await;
    fleet.sidecars[1].restart_as(previous("lb-sidecar"));
    let stop = Arc::new(AtomicBool::new(false));
    let loops = fleet.load_every_lb(&stop);
    assert_ok(
        &fleet.deploy(&spec, "v2", &[]).await,
        "deploy v2, mixed fleet",
    );
    assert_ok(&fleet.run(&["rollback"]).await, "rollback, mixed fleet");
    assert_ok(
        &fleet.run(&["switch", "green"]).await,
        "switch, mixed fleet",
    );
    assert_ok(
        &fleet.deploy(&spec, "v3", &[]).await,
        "deploy v3, mixed fleet",
    );
    let status = fleet.run(&["status", "--output", "json"]).await;
    assert_ok(&status, "status reads both releases' records");
    // The upgrade finishes.
    fleet
        .restarting_agents(|fleet| fleet.hosts[1].restart_as(binary("agent")))
        .await;
    fleet.sidecars[1].restart_as(binary("lb-sidecar"));
    assert_ok(
        &fleet.deploy(&spec, "v4", &[]).await,
        "deploy v4, upgraded fleet",
    );
    assert_ok(&fleet.run(&["rollback"]).await, "rollback, upgraded fleet");
    load::finish(stop, loops).await.assert_none_failed();
}
