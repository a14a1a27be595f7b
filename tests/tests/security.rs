//! Security on real parts: an etcd with client-certificate TLS and auth, each component with its
//! own least-privilege role (made by deploy/etcd-auth.sh); signed releases; the agents' gRPC
//! behind mutual TLS; host-local secrets that never reach etcd or any output; apps running as an
//! unprivileged user.
use bluegreen_tests::fleet::{text, Fleet, Setup};
use bluegreen_tests::load::{self, LoadReport};
use bluegreen_tests::pki::Pki;
use bluegreen_tests::procs::{get_raw, keys, APP, PREFIX};
use bluegreen_tests::{wait_for, Etcd};
use proto::records::{decode, ActiveRecord, HealthRecord, HealthState, ReleaseRecord};
use proto::Color;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// Runs deploy/etcd-auth.sh against `etcd` for hosts 1..=`hosts` and LBs lb-0.. and returns the
/// directory holding the users' password files.
fn etcd_auth(etcd: &Etcd, hosts: u8, lbs: usize, out: &Path) {
    let host_names: Vec<String> = (1..=hosts).map(|n| format!("host-{n}")).collect();
    let lb_names: Vec<String> = (0..lbs).map(|i| format!("lb-{i}")).collect();
    let script = repo_file("deploy/etcd-auth.sh");
    let mut cmd = etcd.etcdctl();
    let program = cmd.get_program().to_owned();
    assert_eq!(program, "etcdctl");
    let envs: Vec<(std::ffi::OsString, std::ffi::OsString)> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
        .collect();
    let out_put = std::process::Command::new("bash")
        .arg(script)
        .args([
            "--app",
            APP,
            "--prefix",
            PREFIX,
            "--hosts",
            &host_names.join(" "),
            "--lbs",
            &lb_names.join(" "),
        ])
        .arg("--out")
        .arg(out)
        .envs(envs)
        .output()
        .expect("run etcd-auth.sh");
    assert!(
        out_put.status.success(),
        "etcd-auth.sh: {}",
        String::from_utf8_lossy(&out_put.stderr)
    );
}

/// The config lines that connect a component as `user` over TLS.
fn etcd_lines(
    tls: &bluegreen_tests::etcd::EtcdTls,
    pki: &Pki,
    user: &str,
    passwords: &Path,
) -> String {
    let cert = pki.client(user);
    format!(
        "etcd_cacert = \"{}\"\netcd_cert = \"{}\"\netcd_key = \"{}\"\netcd_user = \"{user}\"\netcd_password_file = \"{}\"\n",
        tls.ca.display(),
        cert.cert.display(),
        cert.key.display(),
        passwords.join(format!("{user}.password")).display()
    )
}

fn password(passwords: &Path, user: &str) -> String {
    std::fs::read_to_string(passwords.join(format!("{user}.password")))
        .unwrap()
        .trim()
        .to_string()
}

async fn finish(
    stop: Arc<AtomicBool>,
    loops: Vec<tokio::task::JoinHandle<LoadReport>>,
) -> LoadReport {
    stop.store(true, Ordering::Relaxed);
    let mut total = LoadReport::default();
    for l in loops {
        let r = l.await.unwrap();
        total.ok += r.ok;
        total.failed.extend(r.failed);
    }
    total
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_and_auth_fleet_deploys_under_load_and_every_role_is_confined() {
    let pki = Pki::new();
    let etcd = Etcd::start_tls(&pki).await;
    let passwords = tempfile::tempdir().unwrap();
    etcd_auth(&etcd, 3, 2, passwords.path());
    let pw = passwords.path().to_path_buf();
    let coordinator = format!("bluegreen-{APP}-coordinator");
    let coordinator_cert = pki.client(&coordinator);
    let tls = etcd.tls().unwrap().clone();
    let agent_extra =
        |n: u8| etcd_lines(&tls, &pki, &format!("bluegreen-{APP}-agent-host-{n}"), &pw);
    let sidecar_extra = |name: &str, _: &bluegreen_tests::nginx::Nginx| {
        etcd_lines(&tls, &pki, &format!("bluegreen-{APP}-sidecar-{name}"), &pw)
    };
    let env: Vec<(String, String)> = vec![
        ("BLUEGREEN_ETCD_CACERT".into(), tls.ca.display().to_string()),
        (
            "BLUEGREEN_ETCD_CERT".into(),
            coordinator_cert.cert.display().to_string(),
        ),
        (
            "BLUEGREEN_ETCD_KEY".into(),
            coordinator_cert.key.display().to_string(),
        ),
        ("BLUEGREEN_ETCD_USER".into(), coordinator.clone()),
        (
            "BLUEGREEN_ETCD_PASSWORD".into(),
            password(&pw, &coordinator),
        ),
    ];
    let endpoint = etcd.endpoint.clone();
    let setup = Setup {
        etcd,
        agent_extra: &agent_extra,
        sidecar_extra: &sidecar_extra,
        coordinator_env: env,
    };
    let fleet = Fleet::start_setup(3, 2, setup).await;
    assert!(endpoint.starts_with("https://"));

    let spec = fleet.spec("good", &[]);
    let out = fleet.deploy(&spec, "v1", &[]).await;
    assert!(out.status.success(), "deploy v1: {}", text(&out));
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = fleet
        .lb_urls()
        .into_iter()
        .map(|u| load::spawn(u, false, stop.clone()))
        .collect();
    let out = fleet.deploy(&spec, "v2", &[]).await;
    assert!(out.status.success(), "deploy v2: {}", text(&out));
    let out = fleet.run(&["rollback"]).await;
    assert!(out.status.success(), "rollback: {}", text(&out));
    let report = finish(stop, loops).await;
    assert!(
        report.failed.is_empty(),
        "{} failed: {:?}",
        report.failed.len(),
        report.failed
    );
    assert!(report.ok > 0);
    let key = keys().active();
    let active: ActiveRecord = decode(&key, &get_raw(&fleet.client, &key).await.unwrap()).unwrap();
    assert_eq!(active.color, Color::Blue);

    // Each role can write its own keys and nothing else; a refusal names the permission.
    let as_user = |user: String| {
        let access = fleet
            .etcd
            .access_as(&pki, &user, Some(&password(&pw, &user)));
        async move { proto::connect(&access).await.unwrap() }
    };
    let k = keys();
    let agent = as_user(format!("bluegreen-{APP}-agent-host-1")).await;
    let sidecar = as_user(format!("bluegreen-{APP}-sidecar-lb-0")).await;
    let auditor = as_user(format!("bluegreen-{APP}-auditor")).await;
    let attempts: Vec<(&etcd_client::Client, String, bool)> = vec![
        (&agent, k.host("host-1"), true),
        (
            &agent,
            format!("{}blue", k.health_prefix() + "host-1/"),
            true,
        ),
        (&agent, k.active(), false),
        (&agent, k.host("host-2"), false),
        (&agent, format!("{}host-2/blue", k.health_prefix()), false),
        (&agent, k.release(Color::Green), false),
        (&sidecar, k.lb("lb-0"), true),
        (&sidecar, k.lb("lb-1"), false),
        (&sidecar, k.release(Color::Blue), false),
        (&sidecar, k.active(), false),
        (&auditor, k.active(), false),
    ];
    for (client, key, allowed) in attempts {
        // Writing back what is there (or a harmless value) leaves the fleet as it is.
        let value = get_raw(&fleet.client, &key)
            .await
            .unwrap_or_else(|| b"{}".to_vec());
        let result = client.clone().put(key.as_str(), value, None).await;
        match (allowed, result) {
            (true, Ok(_)) => {}
            (false, Err(e)) => {
                let shown = proto::ProtoError::etcd(format!("put {key}"), e).brief();
                assert!(
                    shown.contains("permission denied") && shown.contains(&key),
                    "{shown}"
                );
                assert!(shown.contains("lacks the permission"), "{shown}");
            }
            (allowed, result) => panic!("{key}: allowed={allowed} but got {result:?}"),
        }
    }
    // The auditor reads everything.
    let all = auditor
        .clone()
        .get(
            k.app_prefix(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert!(all.kvs().len() > 5);
}
