//! lb-sidecar against real etcd, real nginx (one per LB) and real agents with the demo app.
use bluegreen_tests::artifacts::release;
use bluegreen_tests::lb::{ack, set_active, wait_ack, wait_color, wait_upstreams};
use bluegreen_tests::load;
use bluegreen_tests::nginx::{Nginx, SidecarProc};
use bluegreen_tests::procs::{get_json, put_raw, put_release, wait_healthy};
use bluegreen_tests::{AgentProc, Artifacts, Etcd};
use proto::Color;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Two hosts running blue v1 and green v2, healthy.
async fn fleet(
    extra_green_env: &[(&str, &str)],
) -> (Etcd, etcd_client::Client, Artifacts, Vec<AgentProc>) {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let artifacts = Artifacts::default();
    let app = artifacts.demo_app();
    let hosts = vec![
        AgentProc::start(&etcd, 1, 5, ""),
        AgentProc::start(&etcd, 2, 5, ""),
    ];
    put_release(&client, Color::Blue, &release("v1", &app, &[])).await;
    put_release(&client, Color::Green, &release("v2", &app, extra_green_env)).await;
    for host in &hosts {
        wait_healthy(&client, &host.host, Color::Blue, "v1").await;
        if extra_green_env.is_empty() {
            wait_healthy(&client, &host.host, Color::Green, "v2").await;
        }
    }
    (etcd, client, artifacts, hosts)
}

fn upstreams(hosts: &[AgentProc], color: Color) -> Vec<String> {
    hosts
        .iter()
        .map(|h| format!("{}:{}", h.address, h.ports.of(color)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_lb_follows_active_and_acks_the_revision() {
    let (etcd, client, _artifacts, hosts) = fleet(&[]).await;
    let revision = set_active(&client, Color::Blue, "v1").await;
    let lbs = [Nginx::start(), Nginx::start()];
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
    let lbs = [Nginx::start(), Nginx::start()];
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
    let lb = Nginx::start();
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
async fn invalid_rendered_config_keeps_the_old_one_and_reports() {
    let (etcd, client, _artifacts, _hosts) = fleet(&[]).await;
    let lb = Nginx::start();
    // A template that uses the version as a time: `v9` is a valid name that nginx -t refuses.
    let template = bluegreen_tests::nginx::lb_template_with_version_as_timeout();
    let template_path = lb.dir.join("template.conf");
    std::fs::write(&template_path, template).unwrap();
    let _sidecar = SidecarProc::start(
        &etcd,
        "lb-0",
        &lb,
        &format!("template = \"{}\"", template_path.display()),
    );
    let revision = set_active(&client, Color::Green, "60s").await;
    // The sidecar may have applied a later revision (a health report after the write).
    let served = wait_ack(&client, "lb-0", "first active", |a| {
        a.applied_revision >= revision
    })
    .await
    .applied_revision;
    wait_color(&lb.url("/api/v1/status"), Color::Green).await;
    let before = std::fs::read_to_string(&lb.include_file).unwrap();

    set_active(&client, Color::Blue, "v9").await;
    let a = wait_ack(&client, "lb-0", "an error", |a| a.error.is_some()).await;
    let error = a.error.unwrap();
    assert!(
        error.contains("nginx -t rejected") && error.contains("keepalive_timeout"),
        "{error}"
    );
    assert_eq!(
        a.applied_revision, served,
        "the ack still names what is served"
    );
    assert_eq!(
        std::fs::read_to_string(&lb.include_file).unwrap(),
        before,
        "the last good file stays"
    );
    assert_eq!(
        get_json(&lb.url("/api/v1/status")).await.unwrap()["environment"],
        "green"
    );

    let revision = set_active(&client, Color::Blue, "30s").await;
    let a = wait_ack(&client, "lb-0", "the next valid change", |a| {
        a.applied_revision >= revision
    })
    .await;
    assert!(a.error.is_none());
    wait_color(&lb.url("/api/v1/status"), Color::Blue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_active_and_dead_hosts_never_empty_the_upstream() {
    let (etcd, client, _artifacts, mut hosts) = fleet(&[]).await;
    let (lb, _sidecar, _) = lb_serving_blue(&etcd, &client).await;

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
    let lb = Nginx::start();
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
    let lb = Nginx::start();
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
    let (lb, _sidecar, _) = lb_serving_blue(&etcd, &client).await;
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
    let (lb, sidecar, _) = lb_serving_blue(&etcd, &client).await;
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
    let (lb, sidecar, _) = lb_serving_blue(&etcd, &client).await;
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

/// Whether the process `pid` still exists.
fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_pid_file_is_never_signalled_and_a_returning_nginx_gets_the_current_color() {
    let (etcd, client, _artifacts, _hosts) = fleet(&[]).await;
    let mut lb = Nginx::start();
    let _sidecar = SidecarProc::start(&etcd, "lb-0", &lb, "");
    let revision = set_active(&client, Color::Blue, "v1").await;
    wait_ack(&client, "lb-0", "first active", |a| {
        a.applied_revision >= revision
    })
    .await;

    // nginx dies; its pid file is left behind naming a process that is not nginx.
    lb.stop();
    let mut stranger = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    std::fs::write(&lb.pid_file, stranger.id().to_string()).unwrap();
    let revision = set_active(&client, Color::Green, "v2").await;
    let a = wait_ack(&client, "lb-0", "the refusal", |a| a.error.is_some()).await;
    let error = a.error.unwrap();
    assert!(
        error.contains("refusing to signal pid") && error.contains("not an nginx master"),
        "{error}"
    );
    assert!(alive(stranger.id()), "the unrelated process was signalled");
    let healthz: serde_json::Value =
        reqwest::get(format!("http://127.0.0.1:{}/healthz", _sidecar.status_port))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert!(
        healthz.to_string().contains("refusing to signal"),
        "{healthz}"
    );

    // nginx comes back; nothing more is written to etcd, yet the LB converges to green.
    lb.spawn();
    wait_ack(&client, "lb-0", "the retried switch", |a| {
        a.applied_revision >= revision && a.color == Some(Color::Green) && a.error.is_none()
    })
    .await;
    wait_color(&lb.url("/api/v1/status"), Color::Green).await;
    assert!(alive(stranger.id()));
    stranger.kill().unwrap();
    let _ = stranger.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn debian_stock_nginx_conf_survives_switches_and_a_restart() {
    let (etcd, client, _artifacts, _hosts) = fleet(&[]).await;
    let mut lb = Nginx::start_debian_stock();
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
    let (lb, _sidecar, revision) = lb_serving_blue(&etcd, &client).await;
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

/// One nginx and its sidecar `lb-0`, serving blue v1 (acked): the start most sidecar tests share.
async fn lb_serving_blue(etcd: &Etcd, client: &etcd_client::Client) -> (Nginx, SidecarProc, i64) {
    let lb = Nginx::start();
    let sidecar = SidecarProc::start(etcd, "lb-0", &lb, "");
    let revision = set_active(client, Color::Blue, "v1").await;
    wait_ack(client, "lb-0", "first active", |a| {
        a.applied_revision >= revision
    })
    .await;
    (lb, sidecar, revision)
}

/// `bluegreen_lb_reloads_total` from the sidecar's /metrics.
async fn reloads(sidecar: &SidecarProc) -> u64 {
    sidecar
        .metric("bluegreen_lb_reloads_total")
        .await
        .expect("reloads metric") as u64
}

/// A host whose health flaps 10 times a second for 6 s: the sidecar reloads nginx at most once
/// per `min_reload_interval` (2 s) for it, and ends up serving the last state. Before, each
/// 250 ms debounce ended in a reload: about 20 of them.
#[tokio::test(flavor = "multi_thread")]
async fn flapping_health_is_rate_limited_to_one_reload_per_interval() {
    let (etcd, client, _artifacts, hosts) = fleet(&[]).await;
    let (_lb, sidecar, _) = lb_serving_blue(&etcd, &client).await;
    let keys = bluegreen_tests::procs::keys();
    let flapper = proto::records::HostRecord {
        host: "host-9".into(),
        address: "127.0.0.19".into(),
        ports: proto::records::Ports {
            blue: 9001,
            green: 9002,
        },
        grpc: "127.0.0.19:9003".into(),
        agent_version: "test".into(),
        started_at: proto::time::now_rfc3339(),
        instance: None,
    };
    put_raw(
        &client,
        &keys.host("host-9"),
        &proto::records::encode(&flapper),
    )
    .await;
    let health = |state: &str| {
        format!(
            "{{\"version\":\"v1\",\"state\":\"{state}\",\"health\":null,\"since\":\"{}\"}}",
            proto::time::now_rfc3339()
        )
    };
    let before = reloads(&sidecar).await;
    let churn_deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(6);
    let mut flips = 0u32;
    while tokio::time::Instant::now() < churn_deadline {
        let state = if flips.is_multiple_of(2) {
            "healthy"
        } else {
            "unhealthy"
        };
        put_raw(&client, &keys.health("host-9", Color::Blue), &health(state)).await;
        flips += 1;
        // The churn's pace, bounded by the deadline above: this is the fault, not a wait.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await; // pace, up to churn_deadline
    }
    put_raw(
        &client,
        &keys.health("host-9", Color::Blue),
        &health("healthy"),
    )
    .await;
    let mut expected = upstreams(&hosts, Color::Blue);
    expected.push("127.0.0.19:9001".into());
    wait_upstreams(&client, "lb-0", Color::Blue, &expected).await;
    let during = reloads(&sidecar).await - before;
    assert!(during >= 1, "the churn never reached nginx");
    assert!(
        during <= 6,
        "{during} reloads for {flips} health flips in 6 s (limit: one per 2 s)"
    );
}

/// Two reloads sent right after each other (two apps switching at once on one nginx): once the
/// second is verified (its status answers and its old workers stopped accepting), every new
/// connection gets the second config. A SIGHUP that arrived while nginx still started the first
/// generation used to count only the generation before as old, and the first generation's
/// workers, not yet started then, went on accepting with the older config.
#[tokio::test(flavor = "multi_thread")]
async fn back_to_back_reloads_leave_no_worker_with_the_older_config() {
    use lb_sidecar::nginx::NginxControl;
    let nginx = Nginx::start();
    let state = tempfile::tempdir().unwrap();
    let control = lb_sidecar::nginx::Nginx::new(
        lb_sidecar::config::NginxConfig {
            binary: "nginx".into(),
            main_config: nginx.main_config.clone(),
            include_file: nginx.include_file.clone(),
            pid_file: nginx.pid_file.clone(),
            status_listen: format!("127.0.0.1:{}", nginx.status).parse().unwrap(),
        },
        format!("127.0.0.1:{}", nginx.listen).parse().unwrap(),
        None,
        state.path().to_path_buf(),
    );
    let config = |n: u32| {
        format!(
            "server {{ listen 127.0.0.1:{}; location / {{ return 200 \"gen{n}\"; }} }}\n\
             server {{ listen 127.0.0.1:{}; location = /.bluegreen/status {{ return 200 \"{n} blue\\n\"; }} }}\n",
            nginx.listen, nginx.status
        )
    };
    let fresh = bluegreen_tests::load::fresh_connections(std::time::Duration::from_secs(5));
    for round in 1..=25u32 {
        let (first, second) = (2 * round - 1, 2 * round);
        control.install(&config(first)).unwrap();
        control.reload().unwrap();
        control.install(&config(second)).unwrap();
        let old = control.reload().unwrap();
        let wait = std::time::Duration::from_secs(5);
        assert!(control.wait_serving(&format!("{second} blue"), wait).await);
        assert!(control.wait_old_workers(&old, wait).await);
        for _ in 0..20 {
            let body = fresh
                .get(nginx.url("/"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert_eq!(body, format!("gen{second}"), "round {round}");
        }
    }
}
