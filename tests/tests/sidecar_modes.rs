// lb-sidecar tests that hold in both nginx modes, included once per mode by `sidecar.rs`
// (which sets `MODE`).
use super::{fleet, lb_serving_blue, upstreams};
use bluegreen_tests::lb::{ack, set_active, wait_ack, wait_color, wait_upstreams};
use bluegreen_tests::load;
use bluegreen_tests::nginx::{Nginx, SidecarProc};
use bluegreen_tests::procs::{get_json, put_raw};
use proto::Color;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// An nginx whose sidecars run in this module's mode.
fn lb() -> Nginx {
    Nginx::start().in_mode(MODE)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_lb_follows_active_and_acks_the_revision() {
    let (etcd, client, _artifacts, hosts) = fleet(&[]).await;
    let revision = set_active(&client, Color::Blue, "v1").await;
    let lbs = [lb(), lb()];
    let _sidecars: Vec<SidecarProc> = lbs
        .iter()
        .enumerate()
        .map(|(i, n)| SidecarProc::start(&etcd, &format!("lb-{i}"), n, ""))
        .collect();
    for (i, lb) in lbs.iter().enumerate() {
        let a = wait_ack(&client, &format!("lb-{i}"), "of the first active", |a| {
            a.applied_revision >= revision
        })
        .await;
        assert_eq!(a.color, Some(Color::Blue));
        assert_eq!(
            a.upstream_counts.get(&Color::Blue),
            Some(&(hosts.len() as u32))
        );
        let name = format!("lb-{i}");
        wait_upstreams(&client, &name, Color::Blue, &upstreams(&hosts, Color::Blue)).await;
        wait_color(&lb.url("/api/v1/status"), Color::Blue).await;
        // The preview listener serves the idle color.
        assert_eq!(
            get_json(&lb.preview_url("/api/v1/status")).await.unwrap()["environment"],
            "green"
        );
    }
    let revision = set_active(&client, Color::Green, "v2").await;
    for (i, lb) in lbs.iter().enumerate() {
        let a = wait_ack(&client, &format!("lb-{i}"), "of the switch", |a| {
            a.applied_revision >= revision
        })
        .await;
        assert_eq!(a.color, Some(Color::Green));
        assert!(a.error.is_none(), "{a:?}");
        // Acked means served: every new connection from now on goes to green, on every worker.
        let after = load::requests(&lb.url("/api/v1/status"), 50).await;
        assert_eq!(
            after.colors.keys().collect::<Vec<_>>(),
            vec!["green"],
            "{after:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_switches_drop_no_request() {
    let (etcd, client, _artifacts, _hosts) = fleet(&[]).await;
    let lbs = [lb(), lb()];
    let _sidecars: Vec<SidecarProc> = lbs
        .iter()
        .enumerate()
        .map(|(i, n)| SidecarProc::start(&etcd, &format!("lb-{i}"), n, ""))
        .collect();
    let revision = set_active(&client, Color::Blue, "v1").await;
    for i in 0..lbs.len() {
        wait_ack(&client, &format!("lb-{i}"), "first active", |a| {
            a.applied_revision >= revision
        })
        .await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = lbs
        .iter()
        .flat_map(|lb| {
            [
                (lb.url("/api/v1/status"), false),
                (lb.url("/api/v1/status"), true),
            ]
        })
        .map(|(url, keep_alive)| (keep_alive, load::spawn(url, keep_alive, stop.clone())))
        .collect();
    for n in 0..20 {
        let (color, version) = if n % 2 == 0 {
            (Color::Green, "v2")
        } else {
            (Color::Blue, "v1")
        };
        let revision = set_active(&client, color, version).await;
        for i in 0..lbs.len() {
            wait_ack(&client, &format!("lb-{i}"), "switch", |a| {
                a.applied_revision >= revision
            })
            .await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for (keep_alive, handle) in loops {
        let report = handle.await.unwrap();
        let mode = if keep_alive {
            "keep-alive"
        } else {
            "fresh connections"
        };
        println!(
            "{mode}: {} ok, {} failed, {} raw resets retried once, colors {:?}",
            report.ok,
            report.failed.len(),
            report.resets_retried,
            report.colors
        );
        assert!(
            report.failed.is_empty(),
            "{mode}: failed requests: {:?}",
            &report.failed[..report.failed.len().min(5)]
        );
        assert!(
            report.colors.len() == 2,
            "{mode}: traffic never moved: {:?}",
            report.colors
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_down_keeps_traffic_flowing_and_the_next_switch_applies() {
    let (mut etcd, client, _artifacts, _hosts) = fleet(&[]).await;
    let lb = lb();
    let _sidecar = SidecarProc::start(&etcd, "lb-0", &lb, "");
    let revision = set_active(&client, Color::Blue, "v1").await;
    wait_ack(&client, "lb-0", "first active", |a| {
        a.applied_revision >= revision
    })
    .await;
    etcd.kill();
    // While etcd is down the sidecar's watch fails and retries; nginx must not notice.
    let report = load::requests(&lb.url("/api/v1/status"), 500).await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.colors.keys().collect::<Vec<_>>(), vec!["blue"]);

    etcd.restart().await;
    let client = etcd.client().await;
    let revision = set_active(&client, Color::Green, "v2").await;
    // At or after the switch's revision: agents re-writing their keys under new leases after the
    // restart can land in the same watch batch as the switch.
    wait_ack(&client, "lb-0", "switch after etcd came back", |a| {
        a.applied_revision >= revision && a.color == Some(Color::Green)
    })
    .await;
    wait_color(&lb.url("/api/v1/status"), Color::Green).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_active_and_dead_hosts_never_empty_the_upstream() {
    let (etcd, client, _artifacts, mut hosts) = fleet(&[]).await;
    let (lb, _sidecar, _) = lb_serving_blue(&etcd, &client, MODE).await;

    put_raw(
        &client,
        &bluegreen_tests::procs::keys().active(),
        "{\"color\": \"purple\"",
    )
    .await;
    let a = wait_ack(&client, "lb-0", "garbage reported", |a| a.error.is_some()).await;
    assert!(a.error.unwrap().contains("/bluegreen/shop/active"));
    assert_eq!(
        get_json(&lb.url("/api/v1/status")).await.unwrap()["environment"],
        "blue"
    );

    // Host 2's agent dies: its keys expire and it leaves the upstream (its apps still run).
    hosts[1].kill9();
    wait_ack(&client, "lb-0", "host-2 removed", |a| {
        a.upstream_counts.get(&Color::Blue) == Some(&1)
    })
    .await;
    wait_upstreams(
        &client,
        "lb-0",
        Color::Blue,
        &upstreams(&hosts[..1], Color::Blue),
    )
    .await;
    assert_eq!(
        get_json(&lb.url("/api/v1/status")).await.unwrap()["environment"],
        "blue"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unhealthy_active_color_keeps_all_registered_hosts() {
    // Green never becomes healthy (its /health fails), yet traffic switched to it must go somewhere.
    let (etcd, client, _artifacts, hosts) = fleet(&[("DEMO_FAIL_HEALTH", "1")]).await;
    let lb = lb();
    let _sidecar = SidecarProc::start(&etcd, "lb-0", &lb, "");
    let revision = set_active(&client, Color::Green, "v2").await;
    wait_ack(&client, "lb-0", "green", |a| a.applied_revision >= revision).await;
    // All registered hosts, not an empty upstream.
    wait_upstreams(
        &client,
        "lb-0",
        Color::Green,
        &upstreams(&hosts, Color::Green),
    )
    .await;
    wait_color(&lb.url("/api/v1/status"), Color::Green).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn restarted_sidecar_rereads_and_acks_while_nginx_keeps_serving() {
    let (etcd, client, _artifacts, _hosts) = fleet(&[]).await;
    let lb = lb();
    let mut sidecar = SidecarProc::start(&etcd, "lb-0", &lb, "");
    let revision = set_active(&client, Color::Blue, "v1").await;
    let first = wait_ack(&client, "lb-0", "first active", |a| {
        a.applied_revision >= revision
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load::spawn(lb.url("/api/v1/status"), false, stop.clone());
    sidecar.kill9();
    sidecar.restart();
    wait_ack(&client, "lb-0", "re-acked by the new sidecar", |a| {
        a.reloaded_at != first.reloaded_at
    })
    .await;
    let revision = set_active(&client, Color::Green, "v2").await;
    wait_ack(&client, "lb-0", "switch", |a| {
        a.applied_revision >= revision
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let report = traffic.await.unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert!(ack(&client, "lb-0").await.unwrap().error.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_address_carrying_config_syntax_is_refused_and_never_rendered() {
    let (etcd, client, _artifacts, _hosts) = fleet(&[]).await;
    let (lb, _sidecar, _) = lb_serving_blue(&etcd, &client, MODE).await;
    let before = std::fs::read_to_string(&lb.include_file).unwrap();
    let hostile = serde_json::json!({
        "host": "evil", "address": "127.0.0.1:1; } server { listen 127.0.0.1:1; location / { alias /etc/; } } upstream x {",
        "ports": {"blue": 8080, "green": 8081}, "grpc": "127.0.0.1:1", "agent_version": "0", "started_at": "t"
    });
    let key = bluegreen_tests::procs::keys().host("evil");
    put_raw(&client, &key, &hostile.to_string()).await;
    let a = wait_ack(&client, "lb-0", "the refusal", |a| a.error.is_some()).await;
    let error = a.error.unwrap();
    assert!(error.contains(&key) && error.contains("address"), "{error}");
    // Nothing of it reached nginx, now or after the next real change.
    let revision = set_active(&client, Color::Green, "v2").await;
    wait_ack(&client, "lb-0", "the next switch", |a| {
        a.applied_revision >= revision
    })
    .await;
    let after = std::fs::read_to_string(&lb.include_file).unwrap();
    assert!(
        !after.contains("alias") && !after.contains("evil"),
        "{after}"
    );
    assert_eq!(
        after.matches("server {").count(),
        before.matches("server {").count()
    );
}

/// A compromised host registers this LB's own status listener as its address: nginx would then
/// serve the sidecar's `/metrics` and `/healthz` on the public listener to anyone. The record is
/// refused and reported in the LB's ack, and nothing is ever routed there.
#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_pointing_into_this_lb_is_refused_and_never_routed_to() {
    let (etcd, client, _artifacts, _hosts) = fleet(&[]).await;
    let (lb, sidecar, _) = lb_serving_blue(&etcd, &client, MODE).await;
    let inward = serde_json::json!({
        "host": "inward", "address": sidecar.status_address,
        "ports": {"blue": sidecar.status_port, "green": 9},
        "grpc": "127.0.0.1:1", "agent_version": "0", "started_at": "t"
    });
    let key = bluegreen_tests::procs::keys().host("inward");
    put_raw(&client, &key, &inward.to_string()).await;
    let healthy = serde_json::json!({"version": "v1", "state": "healthy", "since": "t"});
    let health = bluegreen_tests::procs::keys().health("inward", Color::Blue);
    put_raw(&client, &health, &healthy.to_string()).await;
    let a = wait_ack(&client, "lb-0", "the refusal", |a| a.error.is_some()).await;
    let error = a.error.unwrap();
    assert!(
        error.contains(&key) && error.contains("own listener"),
        "{error}"
    );
    // The next switch renders without it; the public listener never answers the sidecar's
    // metrics (with the host routed, about every third request would).
    let revision = set_active(&client, Color::Blue, "v1").await;
    wait_ack(&client, "lb-0", "the next switch", |a| {
        a.applied_revision >= revision
    })
    .await;
    let include = std::fs::read_to_string(&lb.include_file).unwrap();
    assert!(
        !include.contains(&format!(
            "{}:{}",
            sidecar.status_address, sidecar.status_port
        )),
        "{include}"
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for _ in 0..12 {
        let body = http
            .get(lb.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!body.contains("bluegreen_lb_reloads_total"), "{body}");
    }
}

/// A local user on the LB writes "requests" into the sidecar's request log socket to sway a
/// canary: the socket is shared only with nginx's workers' group (an ordinary user cannot even
/// send), and the kernel says who sent each datagram, so only our nginx's workers count (root's
/// forgeries are dropped). Before, the socket was 0666 and any datagram was counted: a good
/// canary was aborted in seconds, a bad one promoted.
#[tokio::test(flavor = "multi_thread")]
async fn forged_request_log_lines_are_not_counted_and_nginxs_are() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    let (etcd, client, _artifacts, hosts) = fleet(&[]).await;
    let (lb, sidecar, _) = lb_serving_blue(&etcd, &client, MODE).await;
    let socket = lb
        .dir
        .join("sidecar-lb-0")
        .join("requests")
        .join("requests.sock");
    // The test nginx's workers run as nobody:nogroup.
    let nogroup = nix::unistd::Group::from_name("nogroup")
        .unwrap()
        .expect("group nogroup")
        .gid
        .as_raw();
    bluegreen_tests::wait_for(
        "the request log shared with nginx's workers' group",
        std::time::Duration::from_secs(15),
        || {
            let socket = socket.clone();
            async move {
                let dir = std::fs::metadata(socket.parent().unwrap()).ok()?;
                let sock = std::fs::metadata(&socket).ok()?;
                (dir.gid() == nogroup && sock.gid() == nogroup).then_some(())
            }
        },
    )
    .await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(socket.parent().unwrap()), 0o750);
    assert_eq!(mode(&socket), 0o660);
    // A local user outside that group cannot send at all.
    let send = std::process::Command::new("python3")
        .args([
            "-c",
            "import socket,sys; s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.sendto(b'x', sys.argv[1])",
        ])
        .arg(&socket)
        .uid(4242)
        .gid(4242)
        .output()
        .unwrap();
    assert!(
        !send.status.success() && String::from_utf8_lossy(&send.stderr).contains("Permission"),
        "a local user sent to the request log: {send:?}"
    );
    let blue = upstreams(&hosts, Color::Blue)[0].clone();
    let forger = std::os::unix::net::UnixDatagram::unbound().unwrap();
    for _ in 0..50 {
        let line = format!("<190>Dec  5 01:02:03 bluegreen: {blue}|500|0.001");
        forger.send_to(line.as_bytes(), &socket).unwrap();
    }
    let dropped = "bluegreen_lb_request_log_dropped_total{reason=\"sender\"}";
    bluegreen_tests::wait_for(
        "the forged lines dropped",
        std::time::Duration::from_secs(10),
        || async { sidecar.metric(dropped).await.filter(|n| *n >= 50.0) },
    )
    .await;
    // Real requests through nginx are counted, and none of the forged errors.
    let http = reqwest::Client::new();
    for _ in 0..5 {
        assert!(http
            .get(lb.url("/"))
            .send()
            .await
            .unwrap()
            .status()
            .is_success());
    }
    let counted = "bluegreen_lb_upstream_requests_total{color=\"blue\"}";
    bluegreen_tests::wait_for(
        "nginx's own lines counted",
        std::time::Duration::from_secs(10),
        || async { sidecar.metric(counted).await.filter(|n| *n >= 5.0) },
    )
    .await;
    let errors = sidecar
        .metric("bluegreen_lb_upstream_errors_total{color=\"blue\"}")
        .await
        .unwrap_or(0.0);
    assert_eq!(errors, 0.0, "a forged error was counted");
}

#[tokio::test(flavor = "multi_thread")]
async fn debian_stock_nginx_conf_survives_switches_and_a_restart() {
    let (etcd, client, _artifacts, _hosts) = fleet(&[]).await;
    let mut lb = Nginx::start_debian_stock().in_mode(MODE);
    let sidecar = SidecarProc::start(&etcd, "lb-0", &lb, "");
    for (color, version) in [
        (Color::Blue, "v1"),
        (Color::Green, "v2"),
        (Color::Blue, "v1"),
    ] {
        let revision = set_active(&client, color, version).await;
        let a = wait_ack(&client, "lb-0", "switch", |a| {
            a.applied_revision >= revision
        })
        .await;
        assert!(a.error.is_none(), "{:?}", a.error);
        wait_color(&lb.url("/api/v1/status"), color).await;
    }
    // Nothing but the include file itself is in the directory the stock glob reads.
    let conf_d: Vec<String> = std::fs::read_dir(lb.dir.join("conf.d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".conf"))
        .collect();
    assert_eq!(conf_d, vec!["bluegreen-shop.conf".to_string()]);
    // The stock nginx restarts cleanly on what the sidecar left, and keeps following.
    lb.stop();
    lb.spawn();
    wait_color(&lb.url("/api/v1/status"), Color::Blue).await;
    let revision = set_active(&client, Color::Green, "v2").await;
    wait_ack(&client, "lb-0", "switch after restart", |a| {
        a.applied_revision >= revision && a.error.is_none()
    })
    .await;
    wait_color(&lb.url("/api/v1/status"), Color::Green).await;
    drop(sidecar);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_applied_revision_is_not_served_on_the_public_listener() {
    let (etcd, client, _artifacts, _hosts) = fleet(&[]).await;
    let (lb, _sidecar, revision) = lb_serving_blue(&etcd, &client, MODE).await;
    // Through the public listener the path is just a path of the app (the demo app: 404).
    let resp = reqwest::get(lb.url("/.bluegreen/status")).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    assert!(
        !body.contains(&format!("{revision} blue")),
        "public listener answered {body:?}"
    );
    assert_eq!(status, 404, "{body}");
}
