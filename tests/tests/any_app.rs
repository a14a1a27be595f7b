//! Any app, not only the demo app: a plain web server whose `/` is HTML, a 404 or a redirect
//! deploys, rolls back and switches on real etcd, agents, nginx and sidecars; each health mode
//! runs against a real process; and the coordinator refuses to switch with no LB and says when
//! the control plane is unreachable.
use bluegreen_tests::fleet::{assert_ok, text, Fleet};
use bluegreen_tests::procs::{get_raw, keys};
use proto::records::{decode, ActiveRecord, HistoryRecord};
use proto::{Color, Operation, Outcome};

/// A spec for `plain-app`: its health document is the static `/status.json` (contract mode)
/// unless `health` replaces the `[health]` body; the smoke check is its plain-text `/ping`.
fn plain_spec(root: &str, health: &str) -> String {
    let health = if health.is_empty() {
        "path = \"/status.json\"\ninterval = \"500ms\"\ntimeout = \"1s\"\nstartup_timeout = \"20s\"\n"
    } else {
        health
    };
    format!(
        "app = \"shop\"\n[run]\ncommand = [\"./plain-app\"]\nenv = {{ PLAIN_ROOT = \"{root}\" }}\nstop_timeout = \"5s\"\n\
         [health]\n{health}\n[[smoke]]\npath = \"/ping\"\nstatus = 200\nretries = 2\n"
    )
}

/// What each LB serves at `/`, read from the header the sidecar's template adds (no redirects
/// followed: the app's own answer is irrelevant).
async fn served_colors(fleet: &Fleet) -> Vec<(u16, Option<String>)> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut out = Vec::new();
    for lb in &fleet.lbs {
        let resp = http.get(lb.url("/")).send().await.expect("LB answers");
        let color = resp
            .headers()
            .get("x-bluegreen-color")
            .map(|v| v.to_str().unwrap().to_string());
        out.push((resp.status().as_u16(), color));
    }
    out
}

async fn active(fleet: &Fleet) -> ActiveRecord {
    let key = keys().active();
    decode(
        &key,
        &get_raw(&fleet.client, &key).await.expect("active is set"),
    )
    .unwrap()
}

async fn history(fleet: &Fleet) -> Vec<HistoryRecord> {
    bluegreen_tests::procs::history(&fleet.client).await
}

#[tokio::test(flavor = "multi_thread")]
async fn html_root_app_deploys_rolls_back_and_switches_on_two_hosts_and_two_lbs() {
    // The LBs announce a public URL by name (localhost), not the listen address: verification
    // must go through what the ack carries.
    let fleet = Fleet::start_with(2, 2, &|n| {
        format!("public_url = \"http://localhost:{}\"", n.listen)
    })
    .await;
    let app = fleet.artifacts.plain_app();
    let spec = fleet.raw_spec("plain", &plain_spec("html", ""));
    for (version, color) in [("v1", "blue"), ("v2", "green")] {
        let out = fleet.deploy_artifact(&spec, version, &app, &[]).await;
        assert_ok(&out, &format!("deploy {version}"));
        assert!(!text(&out).contains("reconcile"), "{}", text(&out));
        for (status, served) in served_colors(&fleet).await {
            assert_eq!((status, served.as_deref()), (200, Some(color)));
        }
    }
    let lb_key = keys().lb("lb-0");
    let ack: proto::records::LbRecord =
        decode(&lb_key, &get_raw(&fleet.client, &lb_key).await.unwrap()).unwrap();
    assert_eq!(
        ack.url,
        Some(format!("http://localhost:{}", fleet.lbs[0].listen))
    );

    let out = fleet.run(&["rollback"]).await;
    assert_ok(&out, "rollback");
    assert!(served_colors(&fleet)
        .await
        .iter()
        .all(|(_, c)| c.as_deref() == Some("blue")));
    let out = fleet.run(&["switch", "green"]).await;
    assert_ok(&out, "switch green");
    assert!(served_colors(&fleet)
        .await
        .iter()
        .all(|(_, c)| c.as_deref() == Some("green")));
    let out = fleet.deploy_artifact(&spec, "v3", &app, &[]).await;
    assert_ok(&out, "deploy v3");
    assert!(
        !text(&out).contains("reconcile"),
        "a finished switch is not a dead deploy: {}",
        text(&out)
    );
    assert_eq!(active(&fleet).await.color, Color::Blue);

    let records: Vec<(Operation, Outcome, Option<String>)> = history(&fleet)
        .await
        .into_iter()
        .map(|h| (h.kind, h.outcome, h.version))
        .collect();
    let v = |s: &str| Some(s.to_string());
    assert_eq!(
        records,
        vec![
            (Operation::Deploy, Outcome::Done, v("v1")),
            (Operation::Deploy, Outcome::Done, v("v2")),
            (Operation::Rollback, Outcome::Done, v("v1")),
            (Operation::Switch, Outcome::Done, v("v2")),
            (Operation::Deploy, Outcome::Done, v("v3")),
        ]
    );
    // One operation id per command: the switch's id is in `active`, `deploy` and history.
    let history = history(&fleet).await;
    let switch_id = &history[3].deploy_id;
    assert!(switch_id.starts_with("switch-"), "{switch_id}");

    // A mistyped --app is bad input naming the apps that exist, not an empty status; `apps`
    // lists them.
    for query in [
        &["status"][..],
        &["history"],
        &["lock", "status"],
        &["host", "list"],
    ] {
        let out = fleet
            .coordinator()
            .args(["--app", "shpo"])
            .args(query)
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{query:?}: {}", text(&out));
        let expected = format!("known apps: {}", bluegreen_tests::procs::APP);
        assert!(text(&out).contains(&expected), "{query:?}: {}", text(&out));
    }
    let out = fleet.run(&["apps"]).await;
    assert_ok(&out, "apps");
    let listed = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = listed.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{listed}");
    let served = active(&fleet).await;
    assert!(
        rows[0].starts_with(&format!("{} ", bluegreen_tests::procs::APP))
            && rows[0].contains(&format!("{} {}", served.color, served.version)),
        "the app, with its active color: {listed}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn not_found_and_redirect_roots_deploy_and_roll_back() {
    let fleet = Fleet::start(1, 1).await;
    let app = fleet.artifacts.plain_app();
    let out = fleet
        .deploy_artifact(
            &fleet.raw_spec("a", &plain_spec("404", "")),
            "v1",
            &app,
            &[],
        )
        .await;
    assert_ok(&out, "deploy of a 404 root");
    assert_eq!(
        served_colors(&fleet).await,
        vec![(404, Some("blue".into()))]
    );
    let out = fleet
        .deploy_artifact(
            &fleet.raw_spec("b", &plain_spec("redirect", "")),
            "v2",
            &app,
            &[],
        )
        .await;
    assert_ok(&out, "deploy of a redirecting root");
    assert_eq!(
        served_colors(&fleet).await,
        vec![(302, Some("green".into()))]
    );
    assert_ok(&fleet.run(&["rollback"]).await, "rollback");
    assert_eq!(
        served_colors(&fleet).await,
        vec![(404, Some("blue".into()))]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http_and_tcp_health_modes_pass_and_fail_on_real_processes() {
    let fleet = Fleet::start(1, 1).await;
    let app = fleet.artifacts.plain_app();
    let http_ok = "mode = \"http\"\npath = \"/\"\nbody_contains = \"<h1>Shop</h1>\"\ninterval = \"500ms\"\nstartup_timeout = \"20s\"\n";
    let out = fleet
        .deploy_artifact(
            &fleet.raw_spec("http", &plain_spec("html", http_ok)),
            "v1",
            &app,
            &[],
        )
        .await;
    assert_ok(&out, "deploy with an http health check");
    let status = text(&fleet.run(&["status"]).await);
    assert!(
        status.contains("health mode http: the app's version is not checked"),
        "{status}"
    );

    let http_bad = "mode = \"http\"\npath = \"/\"\nexpect_status = 204\ninterval = \"500ms\"\nstartup_timeout = \"2s\"\n";
    let out = fleet
        .deploy_artifact(
            &fleet.raw_spec("http-bad", &plain_spec("html", http_bad)),
            "v2",
            &app,
            &[],
        )
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("answered HTTP 200, expected 204"),
        "{}",
        text(&out)
    );

    let tcp = "mode = \"tcp\"\ninterval = \"500ms\"\nstartup_timeout = \"20s\"\n";
    let out = fleet
        .deploy_artifact(
            &fleet.raw_spec("tcp", &plain_spec("html", tcp)),
            "v3",
            &app,
            &[],
        )
        .await;
    assert_ok(&out, "deploy with a tcp health check");
    assert_eq!(active(&fleet).await.version, "v3");

    // A process that never listens fails the TCP check.
    let silent =
        "app = \"shop\"\n[run]\ncommand = [\"/bin/sleep\", \"60\"]\nstop_timeout = \"1s\"\n\
                  [health]\nmode = \"tcp\"\ninterval = \"500ms\"\nstartup_timeout = \"2s\"\n";
    let out = fleet
        .deploy_artifact(&fleet.raw_spec("silent", silent), "v4", &app, &[])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("TCP connect"), "{}", text(&out));
    assert_eq!(active(&fleet).await.version, "v3", "traffic stayed");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_lb_refuses_the_switch_unless_allowed() {
    let fleet = Fleet::start(1, 0).await;
    let app = fleet.artifacts.plain_app();
    let spec = fleet.raw_spec("plain", &plain_spec("html", ""));
    let out = fleet.deploy_artifact(&spec, "v1", &app, &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no LB is registered"), "{}", text(&out));
    assert!(get_raw(&fleet.client, &keys().active()).await.is_none());
    assert!(
        get_raw(&fleet.client, &keys().release(Color::Blue))
            .await
            .is_none(),
        "nothing staged"
    );
    let out = fleet
        .deploy_artifact(&spec, "v1", &app, &["--allow-no-lb"])
        .await;
    assert_ok(&out, "deploy --allow-no-lb");
    assert_eq!(active(&fleet).await.color, Color::Blue);
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_etcd_is_exit_5_in_one_line_and_bad_names_exit_2() {
    let fleet = Fleet::start(0, 0).await;
    let dead = format!(
        "http://127.0.0.1:{}",
        bluegreen_tests::free_port("127.0.0.1")
    );
    let out = fleet
        .coordinator()
        .env("BLUEGREEN_ETCD", &dead)
        .arg("status")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("control plane unreachable"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        !stderr.contains("metadata"),
        "no transport error chain: {stderr}"
    );

    let app = fleet.artifacts.plain_app();
    let spec = fleet.raw_spec("plain", &plain_spec("html", ""));
    for bad in ["v1;rm", "v 1", "v1}"] {
        let out = fleet.deploy_artifact(&spec, bad, &app, &[]).await;
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out));
        assert!(text(&out).contains("--version"), "{}", text(&out));
    }
    let out = fleet
        .coordinator()
        .env("BLUEGREEN_APP", "shop;x")
        .arg("status")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn demo_app_and_color_arguments_explain_themselves() {
    let run = |program: &str, args: &[&str]| {
        std::process::Command::new(bluegreen_tests::binary(program))
            .args(args)
            .output()
            .unwrap()
    };
    let help = run("demo-app", &["--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("APPLICATION_PORT"));
    let bogus = run("demo-app", &["--bogus"]);
    assert_eq!(bogus.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bogus.stderr).contains("--bogus"));
    // The colors are listed, and anything else is bad usage before etcd is asked anything.
    let switch = run("coordinator", &["switch", "--help"]);
    assert!(String::from_utf8_lossy(&switch.stdout).contains("possible values: blue, green"));
    let purple = run("coordinator", &["switch", "purple"]);
    assert_eq!(purple.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&purple.stderr).contains("possible values: blue, green"));
}
