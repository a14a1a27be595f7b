//! Partitions on a fleet whose hosts and LBs each live in a network namespace (see
//! `bluegreen_tests::netns`): an agent cut off from etcd during staging and after the switch, an
//! LB cut off from etcd during a switch, and a coordinator cut off while it holds the lock.
//! Cuts drop packets silently, as a real partition does.
use bluegreen_tests::fleet::{finished_within as finished, spawn_piped, text, Fleet};
use bluegreen_tests::lb::wait_ack;
use bluegreen_tests::load::{self, spawn_each as load_through};
use bluegreen_tests::procs::{get_raw, keys, staged};
use bluegreen_tests::wait_for;
use proto::records::ActiveRecord;
use proto::Color;
use std::time::Duration;

async fn active(client: &etcd_client::Client) -> ActiveRecord {
    bluegreen_tests::procs::active(client)
        .await
        .expect("active is set")
}

async fn serving_blue(hosts: u8, lbs: usize) -> Fleet {
    let fleet = Fleet::start_netns(hosts, lbs).await;
    let spec = fleet.spec("good", &[]);
    let out = fleet.deploy(&spec, "v1", &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    fleet
}

fn etcd_address(fleet: &Fleet) -> String {
    fleet.net.as_ref().expect("a netns fleet").etcd_address()
}

/// A host loses etcd just after a deploy staged onto it: the deploy fails at its health
/// timeout naming the host, traffic stays on blue without a failed request, and once the
/// partition heals the agent reports again and the next deploy goes through.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_cut_off_from_etcd_while_staging() {
    let fleet = serving_blue(2, 1).await;
    let (stop, loops) = load_through(fleet.lb_urls());
    let spec = fleet.spec("good", &[]);
    let child = spawn_piped(fleet.deploy_command(&spec, "v2", &["--health-timeout", "8s"]));
    let client = &fleet.client;
    wait_for("v2 staged", Duration::from_secs(30), || {
        staged(client, Color::Green, "v2")
    })
    .await;
    let cut = fleet.hosts[1].ns.clone().expect("host in a namespace");
    cut.cut_from(&etcd_address(&fleet));
    let out = finished(child, Duration::from_secs(60)).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("host-2"), "{}", text(&out));
    cut.heal();
    load::finish(stop, loops).await.assert_none_failed();
    assert_eq!(active(client).await.color, Color::Blue);
    let host_key = keys().host("host-2");
    wait_for("host-2 back in etcd", Duration::from_secs(30), || async {
        get_raw(client, &host_key).await.map(|_| ())
    })
    .await;
    let again = fleet.deploy(&spec, "v3", &[]).await;
    assert!(again.status.success(), "{}", text(&again));
}

/// A host loses etcd after the switch, past its lease: requests through the LB keep succeeding
/// (the LB reaches the host directly), and when it heals the host is routed to again.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_cut_off_from_etcd_after_the_switch() {
    let fleet = serving_blue(2, 1).await;
    let (stop, loops) = load_through(fleet.lb_urls());
    let cut = fleet.hosts[0].ns.clone().expect("host in a namespace");
    cut.cut_from(&etcd_address(&fleet));
    let client = &fleet.client;
    let health = keys().health("host-1", Color::Blue);
    wait_for(
        "host-1's lease to expire",
        Duration::from_secs(30),
        || async { get_raw(client, &health).await.is_none().then_some(()) },
    )
    .await;
    cut.heal();
    let all = {
        let mut a: Vec<String> = fleet
            .hosts
            .iter()
            .map(|h| format!("{}:{}", h.address, h.ports.blue))
            .collect();
        a.sort();
        a
    };
    bluegreen_tests::lb::wait_upstreams(client, "lb-0", Color::Blue, &all).await;
    load::finish(stop, loops).await.assert_none_failed();
}

/// An LB loses etcd, then a rollback runs: the rollback cannot verify that LB and exits 4
/// naming it; the LB keeps serving green without a failed request; when it heals, it converges
/// to blue on its own.
#[tokio::test(flavor = "multi_thread")]
async fn an_lb_cut_off_from_etcd_during_a_switch() {
    let fleet = serving_blue(2, 2).await;
    let spec = fleet.spec("good", &[]);
    let out = fleet.deploy(&spec, "v2", &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    let (stop, loops) = load_through(vec![fleet.lb_urls()[1].clone()]);
    let cut = fleet.lbs[1].ns.clone().expect("LB in a namespace");
    cut.cut_from(&etcd_address(&fleet));
    let back = fleet.run(&["rollback"]).await;
    assert_eq!(back.status.code(), Some(4), "{}", text(&back));
    assert!(text(&back).contains("lb-1"), "{}", text(&back));
    let report_cut = load::finish(stop, loops).await;
    report_cut.assert_none_failed();
    cut.heal();
    wait_ack(&fleet.client, "lb-1", "blue after healing", |a| {
        a.color == Some(Color::Blue)
    })
    .await;
}

/// A coordinator (a CI runner) is cut off from everything while it holds the lock mid-deploy.
/// It stops on its own once its lease can no longer be renewed, before etcd expires it; a second
/// coordinator then takes the lock and deploys; when the first is reachable again nothing of
/// its deploy is written after the second's.
#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_cut_off_while_holding_the_lock_is_fenced_out() {
    let mut fleet = serving_blue(2, 1).await;
    fleet.short_lock_lease();
    let runner = fleet.net.as_ref().unwrap().ns(50);
    let spec = fleet.spec("good", &[]);
    let first = spawn_piped(fleet.deploy_command_in(
        Some(&runner),
        &spec,
        "v2",
        &["--health-timeout", "120s", "--verify-for", "60s"],
    ));
    let client = &fleet.client;
    wait_for("v2 staged", Duration::from_secs(30), || {
        staged(client, Color::Green, "v2")
    })
    .await;
    runner.cut_all();
    let lock_key = keys().lock();
    wait_for(
        "the cut-off coordinator's lock to expire",
        Duration::from_secs(40),
        || async { get_raw(client, &lock_key).await.is_none().then_some(()) },
    )
    .await;
    let second = fleet.deploy(&spec, "v3", &[]).await;
    assert!(second.status.success(), "{}", text(&second));
    let after_second = active(client).await;
    assert_eq!(after_second.version, "v3");
    runner.heal();
    let out = finished(first, Duration::from_secs(60)).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("lock lost"), "{}", text(&out));
    let now = active(client).await;
    assert_eq!(now.version, "v3", "the fenced-out coordinator wrote active");
    assert_eq!(now.deploy_id, after_second.deploy_id);
}

/// One host's link drops 20 % of its packets (to etcd and to the LB) during a deploy: the deploy
/// still goes through and no request through the LB fails (nginx's retries cover what is lost).
#[tokio::test(flavor = "multi_thread")]
async fn a_lossy_host_link_loses_no_request_and_no_deploy() {
    let fleet = serving_blue(2, 1).await;
    let (stop, loops) = load_through(fleet.lb_urls());
    let lossy = fleet.hosts[1].ns.clone().expect("host in a namespace");
    lossy.lose(20);
    let spec = fleet.spec("good", &[]);
    let out = fleet.deploy(&spec, "v2", &[]).await;
    lossy.heal();
    assert!(out.status.success(), "{}", text(&out));
    load::finish(stop, loops).await.assert_none_failed();
    assert_eq!(active(&fleet.client).await.version, "v2");
}

/// Attaching a namespace to the bridge after traffic has flowed (the test above adds the CI
/// runner's) must not change the address the others reach the test's side by. A bridge that
/// chose its own address took the new port's when it was lower, the hosts' neighbour caches kept
/// the old one, and their answers to the coordinator's smoke checks were dropped for up to a
/// minute (a deploy failed with "no answer within 5s" while both hosts were healthy).
#[test]
fn attaching_a_namespace_keeps_the_bridge_address() {
    let net = bluegreen_tests::netns::Net::new();
    let _host = net.ns(1);
    let before = net.bridge_mac();
    let runner = net.ns(2);
    // The lowest unicast address there is: a bridge choosing its own would take it.
    runner.set_bridge_port_mac("02:00:00:00:00:01");
    assert_eq!(net.bridge_mac(), before, "the bridge changed its address");
}
