//! lb-sidecar against real etcd, real nginx (one per LB) and real agents with the demo app.
//!
//! The tests in `sidecar_modes.rs` run once per nginx mode (Lua: pushed states; reload:
//! rendered upstreams); the ones here are about reloads themselves.
use bluegreen_tests::artifacts::release;
use bluegreen_tests::lb::{set_active, wait_ack, wait_color, wait_upstreams};
use bluegreen_tests::nginx::{Nginx, SidecarProc};
use bluegreen_tests::procs::{get_json, put_raw, put_release, wait_healthy};
use bluegreen_tests::{AgentProc, Artifacts, Etcd};
use proto::Color;

mod lua {
    const MODE: &str = "lua";
    include!("sidecar_modes.rs");
}

mod reload {
    const MODE: &str = "reload";
    include!("sidecar_modes.rs");
}

/// Two hosts running blue v1 and green v2, healthy.
pub(crate) async fn fleet(
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

pub(crate) fn upstreams(hosts: &[AgentProc], color: Color) -> Vec<String> {
    hosts
        .iter()
        .map(|h| format!("{}:{}", h.address, h.ports.of(color)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_rendered_config_keeps_the_old_one_and_reports() {
    let (etcd, client, _artifacts, _hosts) = fleet(&[]).await;
    let lb = Nginx::start().in_mode("reload");
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

/// Whether the process `pid` still exists.
pub(crate) fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_pid_file_is_never_signalled_and_a_returning_nginx_gets_the_current_color() {
    let (etcd, client, _artifacts, _hosts) = fleet(&[]).await;
    let mut lb = Nginx::start().in_mode("reload");
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

/// One nginx and its sidecar `lb-0`, serving blue v1 (acked): the start most sidecar tests share.
pub(crate) async fn lb_serving_blue(
    etcd: &Etcd,
    client: &etcd_client::Client,
    mode: &'static str,
) -> (Nginx, SidecarProc, i64) {
    let lb = Nginx::start().in_mode(mode);
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
    let (_lb, sidecar, _) = lb_serving_blue(&etcd, &client, "reload").await;
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
    let nginx = Nginx::start().in_mode("reload");
    let control = nginx.control(lb_sidecar::config::Mode::Reload);
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
