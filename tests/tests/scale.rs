//! The control plane's etcd traffic with a few hundred hollow hosts (the real agent and sidecar
//! code over their in-memory seams, in this process), counted by a proxy in front of etcd. These
//! are the faults that make a large fleet fall over, not speed figures (`bench-scale` has those):
//! an agent that receives every other host's health, and a deploy that re-reads the whole app on
//! every change.
use bluegreen_tests::scale::{coordinator, hollow_spec, HollowFleet};
use std::time::Duration;

const HOSTS: usize = 300;

/// Bytes of every key and value under `prefix` now.
async fn stored_bytes(client: &etcd_client::Client, prefix: &str) -> u64 {
    let snapshot = proto::watch::read_prefix(client, prefix).await.unwrap();
    snapshot
        .entries
        .iter()
        .map(|(k, v)| (k.len() + v.len()) as u64)
        .sum()
}

/// A fleet of `HOSTS` hollow hosts and one hollow LB, serving v1 on blue.
async fn serving_fleet(dir: &std::path::Path) -> (HollowFleet, std::path::PathBuf, String) {
    let mut fleet = HollowFleet::start().await;
    fleet.start_spread = Duration::from_secs(2);
    fleet.grow_hosts(HOSTS, Duration::from_millis(300)).await;
    fleet.grow_lbs(1, 0).await;
    let (spec, artifact) = hollow_spec(dir);
    deploy(&fleet.etcd.endpoint, &spec, &artifact, "v1").await;
    (fleet, spec, artifact)
}

async fn deploy(etcd: &str, spec: &std::path::Path, artifact: &str, version: &str) {
    let spec = spec.to_str().unwrap();
    coordinator(
        etcd,
        &[
            "deploy",
            "--spec",
            spec,
            "--version",
            version,
            "--artifact",
            artifact,
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_receives_its_releases_and_active_but_not_other_hosts_health() {
    let dir = tempfile::tempdir().unwrap();
    let (mut fleet, spec, artifact) = serving_fleet(dir.path()).await;
    let (client, counters) = fleet.counted_client().await;
    let observed = fleet.add_host_on(client).await;
    // It joins a fleet serving v1 on blue, and must serve it too before the next deploy.
    let admin = fleet.etcd.client().await;
    let key = fleet.keys().health(&observed, proto::Color::Blue);
    bluegreen_tests::wait_for(
        &format!("{observed} to serve v1"),
        Duration::from_secs(30),
        || {
            let (admin, key) = (admin.clone(), key.clone());
            async move {
                let resp = admin.clone().get(key.as_str(), None).await.ok()?;
                let kv = resp.kvs().first()?;
                let record: proto::records::HealthRecord =
                    proto::records::decode(&key, kv.value()).ok()?;
                proto::records::serves(Some(&record), "v1").then_some(())
            }
        },
    )
    .await;

    let before = counters.now();
    deploy(&fleet.etcd.endpoint, &spec, &artifact, "v2").await;
    deploy(&fleet.etcd.endpoint, &spec, &artifact, "v3").await;
    let received = counters.now().since(before).received;

    let health = stored_bytes(&admin, &fleet.keys().health_prefix()).await;
    eprintln!("{observed} received {received} bytes over two deploys; the fleet's health records alone are {health} bytes");
    // Two deploys rewrite every host's health several times over; an agent that watched the
    // app prefix received all of it (several times `health`). Its own keys, two releases and two
    // switches are a small fraction of one copy.
    assert!(
        received < health / 2,
        "{observed} received {received} bytes during two deploys, more than half of all the fleet's health records ({health} bytes): it follows other hosts' keys"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_reads_the_app_a_few_times_not_once_per_change() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, spec, artifact) = serving_fleet(dir.path()).await;
    let (through, counters) = fleet.counted_endpoint().await;

    let admin = fleet.etcd.client().await;
    let one_read = stored_bytes(&admin, fleet.keys().app_prefix()).await;
    let before = counters.now();
    deploy(&through, &spec, &artifact, "v2").await;
    let traffic = counters.now().since(before);
    let reads = traffic.received as f64 / one_read as f64;
    eprintln!(
        "one deploy over {HOSTS} hosts: the coordinator received {} bytes in {} calls, {reads:.1} times the app's {one_read} bytes",
        traffic.received, traffic.calls
    );
    // The waits read the app once each and then follow the watch's events: a handful of reads in
    // all. Re-reading the app on every change is one read per batch of health reports, and the
    // hosts here become healthy at 20 different moments.
    assert!(
        reads < 14.0,
        "the coordinator received {reads:.1} times the app's size during one deploy: it re-reads the app on changes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_reads_the_live_hosts_health_not_their_membership_records() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, spec, artifact) = serving_fleet(dir.path()).await;
    // Green runs too, so that rollbacks have somewhere to go.
    deploy(&fleet.etcd.endpoint, &spec, &artifact, "v2").await;
    let (through, counters) = fleet.counted_endpoint().await;
    let admin = fleet.etcd.client().await;
    let keys = fleet.keys();
    let read = stored_bytes(&admin, keys.app_prefix()).await
        - stored_bytes(&admin, &keys.history_prefix()).await;
    let members = stored_bytes(&admin, &keys.host_members_prefix()).await;
    let before = counters.now();
    for _ in 0..2 {
        coordinator(&through, &["rollback"]).await;
    }
    let per_rollback = counters.now().since(before).received / 2;
    eprintln!(
        "one rollback over {HOSTS} hosts received {per_rollback} bytes; the app without its history is {read} bytes, of which the membership records {members}"
    );
    // A rollback reads the app once (and a history page, its lock, the LBs' acks). Reading the
    // membership records too, a copy of every host's record, it received more than the app
    // without them.
    assert!(
        per_rollback < read - members / 2,
        "a rollback received {per_rollback} bytes: it reads the hosts' membership records ({members} of the app's {read} bytes)"
    );
}

/// etcd's current revision.
async fn revision(client: &etcd_client::Client) -> i64 {
    let resp = client.clone().get("/", None).await.unwrap();
    resp.header().unwrap().revision()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_health_change_rewrites_one_key_not_every_key_the_agent_holds() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, spec, artifact) = serving_fleet(dir.path()).await;
    let admin = fleet.etcd.client().await;
    let before = revision(&admin).await;
    deploy(&fleet.etcd.endpoint, &spec, &artifact, "v2").await;
    let per_host = (revision(&admin).await - before) as f64 / HOSTS as f64;
    eprintln!("one deploy over {HOSTS} hosts: {per_host:.1} etcd writes per host");
    // A deploy changes a host's staged color a few times (fetching, starting, healthy). Each
    // change rewrote all four keys an agent holds (its claim, membership and both colors'
    // health): every write is an fsync in etcd and an event to every watcher of the app.
    assert!(
        per_host < 6.0,
        "{per_host:.1} etcd writes per host for one deploy: agents rewrite keys that did not change"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_lb_receives_active_and_health_but_not_the_other_lbs_acks() {
    let dir = tempfile::tempdir().unwrap();
    let (mut fleet, spec, artifact) = serving_fleet(dir.path()).await;
    fleet.grow_lbs(10, 0).await;
    // Green runs too, so that rollbacks have somewhere to go.
    deploy(&fleet.etcd.endpoint, &spec, &artifact, "v2").await;
    let (client, counters) = fleet.counted_client().await;
    let observed = fleet.add_lb_on(client).await;

    let before = counters.now();
    for _ in 0..4 {
        coordinator(&fleet.etcd.endpoint, &["rollback"]).await;
    }
    let received = counters.now().since(before).received;
    let admin = fleet.etcd.client().await;
    let acks = stored_bytes(&admin, &fleet.keys().lbs_prefix()).await;
    let lists = stored_bytes(&admin, &fleet.keys().lb_upstreams_prefix()).await;
    eprintln!(
        "{observed} received {received} bytes over four switches; the LBs' acks are {acks} bytes, their upstream lists {lists}"
    );
    // Every switch makes every LB write its ack and its upstream list (300 servers here): a
    // sidecar that watched the app prefix received all of them four times.
    assert!(
        received < acks + lists,
        "{observed} received {received} bytes during four switches, more than all the LBs' acks and upstream lists ({} bytes): it follows keys it does not render",
        acks + lists
    );
}

/// The LBs' upstream lists (`Keys::lb_upstreams`) are kept out of every coordinator read and
/// watch: with three 1 MB lists in etcd, `status` and `status --watch` (through a proxy that
/// counts) receive a small fraction of one, while the watch still sees a change of `active`.
#[tokio::test(flavor = "multi_thread")]
async fn the_coordinator_never_receives_the_lbs_upstream_lists() {
    use bluegreen_tests::lb::set_active;
    use std::process::Stdio;
    use tokio::io::AsyncBufReadExt;
    const LIST_BYTES: usize = 1 << 20;
    let fleet = HollowFleet::start().await;
    let admin = fleet.etcd.client().await;
    set_active(&admin, proto::Color::Blue, "v1").await;
    let keys = fleet.keys();
    let write_lists = |fill: char| {
        let admin = admin.clone();
        let keys = keys.clone();
        async move {
            for lb in ["lb-1", "lb-2", "lb-3"] {
                let list = fill.to_string().repeat(LIST_BYTES);
                admin
                    .clone()
                    .put(keys.lb_upstreams(lb), list, None)
                    .await
                    .unwrap();
            }
        }
    };
    write_lists('a').await;
    let (through, counters) = fleet.counted_endpoint().await;

    let before = counters.now();
    coordinator(&through, &["status"]).await;
    let read = counters.now().since(before).received;
    assert!(
        (read as usize) < LIST_BYTES / 4,
        "`status` received {read} bytes with three 1 MB lists in etcd: it reads them"
    );

    let before = counters.now();
    let mut watch = tokio::process::Command::new(bluegreen_tests::binary("coordinator"))
        .env("BLUEGREEN_ETCD", &through)
        .env("BLUEGREEN_APP", bluegreen_tests::procs::APP)
        .args(["status", "--watch"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    until(&mut lines, &mut seen, "active: blue (v1)").await;
    write_lists('b').await;
    set_active(&admin, proto::Color::Green, "v2").await;
    until(&mut lines, &mut seen, "active: green (v2)").await;
    drop(watch);
    let watched = counters.now().since(before).received;
    assert!(
        (watched as usize) < LIST_BYTES / 4,
        "`status --watch` received {watched} bytes while three 1 MB lists were rewritten: it watches them"
    );
}

/// Reads `status --watch` lines into `seen` until one contains `wanted` (20 s at most).
async fn until(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    seen: &mut String,
    wanted: &str,
) {
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(wanted) {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "status --watch never showed {wanted:?}: {seen}"
    );
}
