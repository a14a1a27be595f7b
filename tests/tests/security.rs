//! Security on real parts: an etcd with client-certificate TLS and auth, each component with its
//! own least-privilege role (made by deploy/etcd-auth.sh); signed releases; the agents' gRPC
//! behind mutual TLS; host-local secrets that never reach etcd or any output; apps running as an
//! unprivileged user.
use bluegreen_tests::fleet::{text, Fleet, Setup};
use bluegreen_tests::load;
use bluegreen_tests::pki::Pki;
use bluegreen_tests::procs::{get_raw, keys, wait_health, APP, PREFIX};
use bluegreen_tests::{wait_for, Etcd};
use proto::records::{decode, ActiveRecord, HealthRecord, HealthState, ReleaseRecord};
use proto::Color;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// Runs deploy/etcd-auth.sh against `etcd` for the app, hosts 1..=`hosts` and LBs lb-0.., with
/// the users' password files in `out`.
pub(crate) fn etcd_auth(etcd: &Etcd, hosts: u8, lbs: usize, out: &Path) {
    etcd_auth_for(etcd, &["--app", APP], hosts, lbs, out);
}

/// [`etcd_auth`] with the apps given as `apps` (`--app NAME` or `--apps "NAME ..."`).
fn etcd_auth_for(etcd: &Etcd, apps: &[&str], hosts: u8, lbs: usize, out: &Path) {
    let host_names: Vec<String> = (1..=hosts).map(|n| format!("host-{n}")).collect();
    let lb_names: Vec<String> = (0..lbs).map(|i| format!("lb-{i}")).collect();
    let script = repo_file("deploy/etcd-auth.sh");
    let cmd = etcd.etcdctl();
    let program = cmd.get_program().to_owned();
    assert_eq!(program, "etcdctl");
    let envs: Vec<(std::ffi::OsString, std::ffi::OsString)> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
        .collect();
    let out_put = std::process::Command::new("bash")
        .arg(script)
        .args(apps)
        .args([
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

/// Hosts and LBs that serve two apps get one etcd user each, holding that host's or LB's own
/// keys in both apps and nothing else; each app keeps its own coordinator, which cannot touch
/// the other app.
#[tokio::test(flavor = "multi_thread")]
async fn etcd_auth_for_several_apps_gives_each_host_and_lb_one_confined_user() {
    let etcd = Etcd::start().await;
    let out = tempfile::tempdir().unwrap();
    etcd_auth_for(&etcd, &["--apps", "shop api"], 2, 1, out.path());
    let put = |user: &str, key: &str| {
        let output = etcd
            .etcdctl()
            .arg(format!("--user={user}:{}", password(out.path(), user)))
            .args(["put", key, "{}"])
            .output()
            .expect("run etcdctl");
        let said = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.success(), said)
    };
    let allowed = |user: &str, key: &str| {
        let (ok, said) = put(user, key);
        assert!(ok, "{user} may write {key}: {said}");
    };
    let refused = |user: &str, key: &str| {
        let (ok, said) = put(user, key);
        assert!(
            !ok && said.contains("permission denied"),
            "{user} wrote {key}: {said}"
        );
    };
    for app in ["shop", "api"] {
        allowed(
            "bluegreen-agent-host-1",
            &format!("/bluegreen/{app}/hosts/host-1"),
        );
        allowed(
            "bluegreen-agent-host-1",
            &format!("/bluegreen/{app}/health/host-1/blue"),
        );
        refused(
            "bluegreen-agent-host-1",
            &format!("/bluegreen/{app}/hosts/host-2"),
        );
        refused(
            "bluegreen-agent-host-1",
            &format!("/bluegreen/{app}/active"),
        );
        allowed(
            "bluegreen-sidecar-lb-0",
            &format!("/bluegreen/{app}/lbs/lb-0"),
        );
        allowed(
            "bluegreen-sidecar-lb-0",
            &format!("/bluegreen/{app}/~detail/lb-upstreams/lb-0"),
        );
        refused(
            "bluegreen-sidecar-lb-0",
            &format!("/bluegreen/{app}/releases/blue"),
        );
    }
    allowed("bluegreen-shop-coordinator", "/bluegreen/shop/active");
    refused("bluegreen-shop-coordinator", "/bluegreen/api/active");
    allowed("bluegreen-api-coordinator", "/bluegreen/api/active");
    refused("bluegreen-api-auditor", "/bluegreen/api/active");
    // Per-app users are the --app form's: none was made here.
    assert!(!out
        .path()
        .join("bluegreen-shop-agent-host-1.password")
        .exists());
}

pub(crate) fn password(passwords: &Path, user: &str) -> String {
    std::fs::read_to_string(passwords.join(format!("{user}.password")))
        .unwrap()
        .trim()
        .to_string()
}

/// A fleet of `hosts` agents and `lbs` sidecars on client-certificate TLS etcd with auth on and
/// the roles of deploy/etcd-auth.sh: each agent and sidecar its own user, the fleet's coordinator
/// commands the app's coordinator user. Returns the fleet, its PKI and the directory holding
/// every user's password file (`<user>.password`).
pub(crate) async fn auth_fleet(hosts: u8, lbs: usize) -> (Fleet, Pki, tempfile::TempDir) {
    let pki = Pki::new();
    let etcd = Etcd::start_tls(&pki).await;
    let passwords = tempfile::tempdir().unwrap();
    etcd_auth(&etcd, hosts, lbs, passwords.path());
    let pw = passwords.path().to_path_buf();
    let coordinator = format!("bluegreen-{APP}-coordinator");
    let lines =
        |user: String| etcd.config_lines(&pki, &user, Some(&pw.join(format!("{user}.password"))));
    let agent_lines: Vec<String> = (1..=hosts)
        .map(|n| lines(format!("bluegreen-{APP}-agent-host-{n}")))
        .collect();
    let sidecar_lines: Vec<String> = (0..lbs)
        .map(|i| lines(format!("bluegreen-{APP}-sidecar-lb-{i}")))
        .collect();
    let env = etcd.coordinator_env(&pki, &coordinator, Some(&password(&pw, &coordinator)));
    let agent_extra = move |n: u8| agent_lines[n as usize - 1].clone();
    let sidecar_extra = move |name: &str, _: &bluegreen_tests::nginx::Nginx| {
        sidecar_lines[name.trim_start_matches("lb-").parse::<usize>().unwrap()].clone()
    };
    let setup = Setup {
        etcd,
        agent_extra: &agent_extra,
        sidecar_extra: &sidecar_extra,
        coordinator_env: env,
    };
    let fleet = Fleet::start_setup(hosts, lbs, setup).await;
    assert!(fleet.etcd.endpoint.starts_with("https://"));
    (fleet, pki, passwords)
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_and_auth_fleet_deploys_under_load_and_every_role_is_confined() {
    let (fleet, pki, passwords) = auth_fleet(3, 2).await;
    let pw = passwords.path().to_path_buf();
    let coordinator = format!("bluegreen-{APP}-coordinator");

    let spec = fleet.spec("good", &[]);
    let out = fleet.deploy(&spec, "v1", &[]).await;
    assert!(out.status.success(), "deploy v1: {}", text(&out));
    let stop = Arc::new(AtomicBool::new(false));
    let loops = fleet.load_every_lb(&stop);
    let out = fleet.deploy(&spec, "v2", &[]).await;
    assert!(out.status.success(), "deploy v2: {}", text(&out));
    let out = fleet.run(&["rollback"]).await;
    assert!(out.status.success(), "rollback: {}", text(&out));
    let report = load::finish(stop, loops).await;
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
    // Every sidecar's role lets it write its upstream lists (without the grant its acks still
    // go through, so only this shows it).
    for i in 0..fleet.lbs.len() {
        let lists = keys().lb_upstreams(&format!("lb-{i}"));
        assert!(
            get_raw(&fleet.client, &lists).await.is_some(),
            "{lists} missing: the sidecar's role must grant it"
        );
    }
    // Every agent's role lets it register its host's membership (a durable key beside its lease).
    for host in &fleet.hosts {
        let member = keys().host_member(&host.host);
        assert!(
            get_raw(&fleet.client, &member).await.is_some(),
            "{member} missing: the agent's role must grant it"
        );
    }

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
    // A CA that did not sign etcd's certificate: exit 5 naming the certificate problem (before,
    // only "transport error").
    let stranger_ca = Pki::new();
    let wrong_ca = fleet
        .coordinator()
        .env("BLUEGREEN_ETCD_CACERT", stranger_ca.ca())
        .arg("status")
        .output()
        .await
        .unwrap();
    assert_eq!(wrong_ca.status.code(), Some(5), "{}", text(&wrong_ca));
    assert!(
        text(&wrong_ca).to_lowercase().contains("certificate"),
        "{}",
        text(&wrong_ca)
    );
    // A client certificate etcd does not trust: the same.
    let stranger = stranger_ca.client(&coordinator);
    let wrong_cert = fleet
        .coordinator()
        .env("BLUEGREEN_ETCD_CERT", &stranger.cert)
        .env("BLUEGREEN_ETCD_KEY", &stranger.key)
        .arg("status")
        .output()
        .await
        .unwrap();
    assert_eq!(wrong_cert.status.code(), Some(5), "{}", text(&wrong_cert));
    assert!(
        text(&wrong_cert).contains("etcd refused this client's certificate"),
        "not only \"operation was canceled\": {}",
        text(&wrong_cert)
    );

    // The coordinator's role may not read other apps, yet `apps` and a mistyped --app name the
    // apps (from the index etcd-auth.sh keeps); before, both were "permission denied".
    let apps = fleet.run(&["--output", "json", "apps"]).await;
    assert!(apps.status.success(), "apps: {}", text(&apps));
    let apps: serde_json::Value = serde_json::from_slice(&apps.stdout).unwrap();
    assert_eq!(apps.as_array().map(Vec::len), Some(1), "{apps:#}");
    assert_eq!(apps[0]["name"], APP);
    assert_eq!(apps[0]["readable"], true, "its own app: {apps:#}");
    assert!(apps[0]["active"]["version"].is_string(), "{apps:#}");
    let typo = fleet
        .coordinator()
        .args(["--app", "shpo", "status"])
        .output()
        .await
        .unwrap();
    assert_eq!(typo.status.code(), Some(2), "{}", text(&typo));
    assert!(
        text(&typo).contains(&format!("known apps: {APP}")),
        "{}",
        text(&typo)
    );

    // An agent whose role does not allow its own keys (here an LB's role) stops at start naming
    // the key, and starts none of the releases it can read; before, it ran both colors unseen.
    let wrong = format!("bluegreen-{APP}-sidecar-lb-0");
    let extra = fleet
        .etcd
        .config_lines(&pki, &wrong, Some(&pw.join(format!("{wrong}.password"))));
    let mut stray = bluegreen_tests::AgentProc::start(&fleet.etcd, 9, 5, &extra);
    let status = wait_for(
        "the wrongly configured agent to exit",
        Duration::from_secs(30),
        || {
            let exited = stray.exit_status();
            async move { exited }
        },
    )
    .await;
    assert!(!status.success(), "{status:?}");
    let log = stray.log();
    assert!(
        log.contains("hosts/host-9") && log.contains("nothing was started"),
        "{log}"
    );
    let pid_files = std::fs::read_dir(&stray.state_dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".pid.json"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(pid_files, 0, "no app was started");

    // An agent given a CA that did not sign etcd's certificate says so in its log (before:
    // "transport error").
    let agent_user = format!("bluegreen-{APP}-agent-host-1");
    let extra = fleet
        .etcd
        .config_lines(
            &pki,
            &agent_user,
            Some(&pw.join(format!("{agent_user}.password"))),
        )
        .replace(
            &pki.ca().display().to_string(),
            &stranger_ca.ca().display().to_string(),
        );
    let distrustful = bluegreen_tests::AgentProc::start(&fleet.etcd, 8, 5, &extra);
    wait_for(
        "the agent to name the certificate problem",
        Duration::from_secs(30),
        || {
            let log = distrustful.log().to_lowercase();
            async move { log.contains("certificate").then_some(()) }
        },
    )
    .await;
    drop(distrustful);

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

fn plain_setup<'a>(
    etcd: Etcd,
    agent_extra: &'a dyn Fn(u8) -> String,
    coordinator_env: Vec<(String, String)>,
) -> Setup<'a> {
    Setup {
        etcd,
        agent_extra,
        sidecar_extra: &|_, _| String::new(),
        coordinator_env,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_grpc_logs_need_a_client_certificate() {
    let pki = Pki::new();
    let server = pki.server("agent-grpc");
    let client = pki.client("coordinator-logs");
    let extra = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\ntls_client_ca = \"{}\"\n",
        server.cert.display(),
        server.key.display(),
        pki.ca().display()
    );
    let agent_extra = move |_| extra.clone();
    let fleet =
        Fleet::start_setup(1, 1, plain_setup(Etcd::start().await, &agent_extra, vec![])).await;
    let out = fleet.deploy(&fleet.spec("good", &[]), "v1", &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    let logs = ["logs", "--host", "host-1", "--color", "blue", "--tail", "5"];
    let refused = fleet.run(&logs).await;
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("requires mutual TLS: give the coordinator --grpc-cacert"),
        "says what is missing, not only an h2 protocol error: {}",
        text(&refused)
    );
    let with_cert = fleet
        .coordinator()
        .env("BLUEGREEN_GRPC_CACERT", pki.ca())
        .env("BLUEGREEN_GRPC_CERT", &client.cert)
        .env("BLUEGREEN_GRPC_KEY", &client.key)
        .args(logs)
        .output()
        .await
        .unwrap();
    assert!(with_cert.status.success(), "{}", text(&with_cert));
    assert!(
        !with_cert.stdout.is_empty(),
        "the log stream returned lines"
    );
    // A client certificate from another CA is refused too.
    let other = Pki::new();
    let stranger = other.client("stranger");
    let out = fleet
        .coordinator()
        .env("BLUEGREEN_GRPC_CACERT", pki.ca())
        .env("BLUEGREEN_GRPC_CERT", &stranger.cert)
        .env("BLUEGREEN_GRPC_KEY", &stranger.key)
        .args(logs)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

/// Without mutual TLS the agent's API is a unix socket only root opens: a local user cannot read
/// the apps' logs through it (before, it was loopback TCP that anyone could open), even when the
/// socket's mode is loosened; root on the host still can.
#[tokio::test(flavor = "multi_thread")]
async fn without_mtls_only_root_reads_app_logs_through_the_agent() {
    use std::os::unix::fs::PermissionsExt;
    let fleet = Fleet::start(1, 1).await;
    let out = fleet.deploy(&fleet.spec("good", &[]), "v1", &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    let logs = ["logs", "--host", "host-1", "--color", "blue", "--tail", "5"];
    let as_root = fleet.run(&logs).await;
    assert!(as_root.status.success(), "{}", text(&as_root));
    assert!(!as_root.stdout.is_empty(), "root reads the log lines");

    let socket = fleet.hosts[0]
        .grpc
        .strip_prefix("unix:")
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("a unix socket, not {}", fleet.hosts[0].grpc));
    // The test's own directory is private; a host's /run/bluegreen is not.
    let dir = socket.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = || {
        let mut cmd = fleet.coordinator();
        cmd.uid(65534).gid(65534).args(logs);
        cmd
    };
    let refused = as_nobody().output().await.unwrap();
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).to_lowercase().contains("permission denied")
            && text(&refused).contains("run this as root on host-1"),
        "names the cause and the remedy: {}",
        text(&refused)
    );
    // A socket made world-writable still admits only root or the agent's user.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let refused = as_nobody().output().await.unwrap();
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("uid 65534: only root"),
        "the agent refuses the caller itself: {}",
        text(&refused)
    );
    // A host elsewhere whose record names the same socket path: the agent answering here is
    // another host's, and its logs are never shown as that host's.
    let elsewhere = serde_json::json!({
        "host": "host-9", "address": "127.0.0.19", "ports": {"blue": 8080, "green": 8081},
        "grpc": fleet.hosts[0].grpc, "agent_version": "0", "started_at": "t"
    });
    bluegreen_tests::procs::put_raw(
        &fleet.client,
        &keys().host("host-9"),
        &elsewhere.to_string(),
    )
    .await;
    let out = fleet
        .run(&["logs", "--host", "host-9", "--color", "blue", "--tail", "5"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("the agent here is host-1, not host-9")
            && text(&out).contains("run this as root on host-9"),
        "{}",
        text(&out)
    );
}

async fn health(fleet: &Fleet, color: Color) -> Option<HealthRecord> {
    let key = keys().health("host-1", color);
    get_raw(&fleet.client, &key)
        .await
        .map(|b| decode(&key, &b).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn with_trusted_keys_only_signed_releases_run() {
    let keydir = tempfile::tempdir().unwrap();
    let probe = bluegreen_tests::Etcd::start().await;
    let keygen = tokio::process::Command::new(bluegreen_tests::binary("coordinator"))
        .env("BLUEGREEN_ETCD", &probe.endpoint)
        .args(["keygen", "--out-dir"])
        .arg(keydir.path())
        .output()
        .await
        .unwrap();
    assert!(keygen.status.success(), "{}", text(&keygen));
    let (private, public) = (
        keydir.path().join("bluegreen-release.key"),
        keydir.path().join("bluegreen-release.pub"),
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&private).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let extra = format!("trusted_keys = [\"{}\"]\n", public.display());
    let agent_extra = move |_| extra.clone();
    let fleet = Fleet::start_setup(1, 1, plain_setup(probe, &agent_extra, vec![])).await;
    let spec = fleet.spec("good", &[]);
    let key_flag = private.display().to_string();
    let out = fleet
        .deploy(&spec, "v1", &["--signing-key", &key_flag])
        .await;
    assert!(out.status.success(), "signed deploy: {}", text(&out));

    // Unsigned: refused by the agent, the deploy fails, traffic stays.
    let out = fleet.deploy(&spec, "v2", &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("unsigned release refused"),
        "{}",
        text(&out)
    );

    // Written straight to etcd with a valid signature but another command: refused, never run.
    let blue_key = keys().release(Color::Blue);
    let mut forged: ReleaseRecord =
        decode(&blue_key, &get_raw(&fleet.client, &blue_key).await.unwrap()).unwrap();
    let marker = keydir.path().join("pwned");
    forged.run.command = vec![
        "/bin/sh".into(),
        "-c".into(),
        format!("touch {}; sleep 60", marker.display()),
    ];
    forged.version = "v1".into();
    bluegreen_tests::procs::put_release(&fleet.client, Color::Green, &forged).await;
    let refused = wait_for("green refused", Duration::from_secs(20), || async {
        health(&fleet, Color::Green).await.filter(|h| {
            h.state == HealthState::Failed
                && h.error
                    .as_deref()
                    .is_some_and(|e| e.contains("does not match"))
        })
    })
    .await;
    assert!(refused
        .error
        .unwrap()
        .contains(&keys().release(Color::Green)));
    assert!(!marker.exists(), "the forged command ran");
    assert_eq!(
        health(&fleet, Color::Blue).await.unwrap().state,
        HealthState::Healthy
    );

    // Blue's signed record, untouched, copied to green by a writer without the key: refused
    // (the signature says blue), never started. Before, green ran it and the next rollback sent
    // traffic there.
    let signed: ReleaseRecord =
        decode(&blue_key, &get_raw(&fleet.client, &blue_key).await.unwrap()).unwrap();
    bluegreen_tests::procs::put_release(&fleet.client, Color::Green, &signed).await;
    wait_for(
        "the copied record refused",
        Duration::from_secs(20),
        || async {
            health(&fleet, Color::Green).await.filter(|h| {
                h.state == HealthState::Failed
                    && h.error
                        .as_deref()
                        .is_some_and(|e| e.contains("made for another app, color or operation"))
            })
        },
    )
    .await;
    assert!(
        fleet.hosts[0].app_pid(Color::Green).is_none(),
        "green started the copy"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_reach_only_the_app_which_runs_unprivileged() {
    let secrets = tempfile::tempdir().unwrap();
    let token = format!("tok-{}", std::process::id());
    let db_url = format!("postgres://shop:p@ss{}@db/shop", std::process::id());
    std::fs::write(secrets.path().join("api-token"), format!("{token}\n")).unwrap();
    std::fs::write(secrets.path().join("db-url"), &db_url).unwrap();
    let extra = format!(
        "run_as = \"nobody\"\nsecrets_dir = \"{}\"\n",
        secrets.path().display()
    );
    let agent_extra = move |_| extra.clone();
    let fleet =
        Fleet::start_setup(1, 1, plain_setup(Etcd::start().await, &agent_extra, vec![])).await;
    let app = fleet.artifacts.plain_app();
    let spec_text = |env: &str| {
        format!(
            "app = \"{APP}\"\n[run]\ncommand = [\"./plain-app\"]\nenv = {{ {env} }}\nstop_timeout = \"5s\"\n\
             [health]\npath = \"/status.json\"\ninterval = \"500ms\"\nstartup_timeout = \"20s\"\n"
        )
    };
    // A literal credential is refused before anything is written.
    let literal = fleet.raw_spec(
        "literal",
        &spec_text(&format!("DATABASE_URL = \"{db_url}\"")),
    );
    let out = fleet.deploy_artifact(&literal, "v1", &app, &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("run.env.DATABASE_URL") && !text(&out).contains(&db_url),
        "{}",
        text(&out)
    );
    // The same for what the first round let through: a literal under a credential's name, and
    // a well-known token shape under any name; `validate` says it too.
    for (name, value) in [
        ("DB_PASS", "hunter2-literal"),
        ("PAYMENTS", "sk_live_51Habcdef"),
    ] {
        let spec = fleet.raw_spec(name, &spec_text(&format!("{name} = \"{value}\"")));
        let out = fleet.deploy_artifact(&spec, "v1", &app, &[]).await;
        assert_eq!(out.status.code(), Some(2), "{name}: {}", text(&out));
        assert!(
            text(&out).contains(&format!("run.env.{name}")) && !text(&out).contains(value),
            "{name}: {}",
            text(&out)
        );
        let spec_flag = spec.display().to_string();
        let checked = fleet.run(&["validate", "--spec", &spec_flag]).await;
        assert_eq!(checked.status.code(), Some(2), "{name}: {}", text(&checked));
    }

    let spec = fleet.raw_spec(
        "secret",
        &spec_text("API_TOKEN = \"secret:api-token\", DATABASE_URL = \"secret:db-url\""),
    );
    let out = fleet
        .deploy_artifact(&spec, "v1", &app, &["--output", "json"])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let deploy_output = text(&out);

    // The app has the values and runs as nobody.
    let pid_file = fleet.hosts[0].state_dir.join("blue.pid.json");
    let pid: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&pid_file).unwrap()).unwrap();
    let pid = pid["pid"].as_u64().unwrap();
    let environ = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap())
        .into_owned();
    assert!(
        environ.contains(&format!("API_TOKEN={token}\0"))
            && environ.contains(&format!("DATABASE_URL={db_url}\0"))
    );
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .unwrap()
        .uid
        .as_raw();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line
            .split_whitespace()
            .skip(1)
            .all(|u| u == nobody.to_string()),
        "{uid_line}"
    );
    use std::os::unix::fs::PermissionsExt;
    for file in [
        pid_file.clone(),
        fleet.hosts[0].state_dir.join("logs").join("blue.log"),
    ] {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }

    // ...and nothing else does: not etcd, not status or history, not the agent's log.
    let all = fleet
        .client
        .clone()
        .get(
            keys().app_prefix(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let dump: String = all
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
        .collect();
    assert!(dump.contains("secret:api-token"));
    let mut outputs = vec![("etcd".to_string(), dump)];
    for args in [
        &["status"][..],
        &["--output", "json", "status"],
        &["history"],
        &["--output", "json", "history"],
    ] {
        outputs.push((format!("{args:?}"), text(&fleet.run(args).await)));
    }
    outputs.push(("agent log".into(), fleet.hosts[0].log()));
    outputs.push(("deploy output".into(), deploy_output));
    for (what, out) in outputs {
        assert!(
            !out.contains(&token) && !out.contains(&format!("p@ss{}", std::process::id())),
            "{what} shows a secret:\n{out}"
        );
    }
}

/// A release-signing key pair made by `coordinator keygen` in `dir`: (private, public).
async fn keygen(etcd: &bluegreen_tests::Etcd, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let out = tokio::process::Command::new(bluegreen_tests::binary("coordinator"))
        .env("BLUEGREEN_ETCD", &etcd.endpoint)
        .args(["keygen", "--name", name, "--out-dir"])
        .arg(dir)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    )
}

/// Restarts every agent of `fleet` trusting `public_keys`, and waits until each has adopted the
/// active color's app again.
async fn trust(fleet: &mut Fleet, public_keys: &[&PathBuf]) {
    let list: Vec<String> = public_keys
        .iter()
        .map(|k| k.display().to_string())
        .collect();
    fleet
        .restarting_agents(|fleet| {
            for host in &mut fleet.hosts {
                host.restart_with_env("BLUEGREEN_AGENT_TRUSTED_KEYS", &list.join(","));
            }
        })
        .await;
}

/// Turning signing on for a fleet that already serves, then rotating the key, the documented
/// way: trust the key on every agent (restarting them), deploy signed; add the new key
/// everywhere, deploy with it, remove the old one. Before, the restarted agents reported the
/// releases they already ran as refused, the live color "not healthy", and every deploy and
/// rollback stopped at preflight.
#[tokio::test(flavor = "multi_thread")]
async fn signing_turned_on_and_rotated_on_a_serving_fleet_loses_no_request() {
    let mut fleet = Fleet::start(2, 1).await;
    let spec = fleet.spec("good", &[]);
    for version in ["v1", "v2"] {
        let out = fleet.deploy(&spec, version, &[]).await;
        assert!(out.status.success(), "unsigned {version}: {}", text(&out));
    }
    let keydir = tempfile::tempdir().unwrap();
    let (old_key, old_pub) = keygen(&fleet.etcd, keydir.path(), "old").await;
    let (new_key, new_pub) = keygen(&fleet.etcd, keydir.path(), "new").await;
    let stop = Arc::new(AtomicBool::new(false));
    let loops = vec![load::spawn(fleet.lb_urls()[0].clone(), false, stop.clone())];

    trust(&mut fleet, &[&old_pub]).await;
    for host in ["host-1", "host-2"] {
        for (color, version) in [(Color::Blue, "v1"), (Color::Green, "v2")] {
            let what = format!("{version} kept running, flagged unsigned");
            wait_health(&fleet.client, host, color, &what, |h| {
                h.version == version && h.state == HealthState::Healthy && h.unsigned.is_some()
            })
            .await;
        }
    }
    let status = text(&fleet.run(&["status"]).await);
    assert!(status.contains("unsigned (started before"), "{status}");

    let signed = |key: &PathBuf| key.display().to_string();
    let out = fleet
        .deploy(&spec, "v3", &["--signing-key", &signed(&old_key)])
        .await;
    assert!(out.status.success(), "first signed deploy: {}", text(&out));
    let out = fleet.run(&["rollback"]).await;
    assert!(
        out.status.success(),
        "rollback onto the kept unsigned v2: {}",
        text(&out)
    );
    let out = fleet.deploy(&spec, "v4", &[]).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "an unsigned deploy is refused: {}",
        text(&out)
    );

    // Rotation: add the new key everywhere, deploy with it, then remove the old one.
    trust(&mut fleet, &[&old_pub, &new_pub]).await;
    let out = fleet
        .deploy(&spec, "v5", &["--signing-key", &signed(&new_key)])
        .await;
    assert!(
        out.status.success(),
        "deploy with the new key: {}",
        text(&out)
    );
    trust(&mut fleet, &[&new_pub]).await;
    let out = fleet
        .deploy(&spec, "v6", &["--signing-key", &signed(&new_key)])
        .await;
    assert!(
        out.status.success(),
        "deploy after the old key left: {}",
        text(&out)
    );
    let out = fleet
        .deploy(&spec, "v7", &["--signing-key", &signed(&old_key)])
        .await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "the removed key signs nothing: {}",
        text(&out)
    );

    load::finish(stop, loops).await.assert_none_failed();
}
