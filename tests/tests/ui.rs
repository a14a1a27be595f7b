//! The web dashboard (`coordinator ui`) in a real headless Chromium against a real fleet: the
//! page follows a deploy as it happens, its abort button aborts a canary on every LB, an auditor
//! gets no button and a forged request is refused without writing anything, and every route that
//! changes state needs a session and its CSRF token.
use super::canary::{
    canary_at_first_step, canary_section, every_lb_acked, load_through_every_lb, POLL,
};
use super::security::{auth_fleet, password};
use bluegreen_tests::browser::{Browser, Ui};
use bluegreen_tests::fleet::{text, Fleet};
use bluegreen_tests::lb::wait_weight;
use bluegreen_tests::load;
use bluegreen_tests::procs::{history, keys, APP};
use bluegreen_tests::wait_for;
use coordinator::dashboard::routes::{Access, ROUTES};
use std::collections::BTreeMap;
use std::time::Duration;

/// The app's keys and their mod revisions, but the LBs' request counts (rewritten every second):
/// what "nothing was written" compares.
async fn written(client: &etcd_client::Client) -> BTreeMap<String, i64> {
    let prefix = keys().app_prefix().to_string();
    let resp = client
        .clone()
        .get(
            prefix.as_str(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    resp.kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_string(), kv.mod_revision()))
        .filter(|(k, _)| !k.contains("/lb-stats/"))
        .collect()
}

/// With etcd auth off (development): the apps page, the host grid and the timeline follow a
/// deploy while it runs, and the abort button aborts a running canary on every LB, recorded in
/// history with `ui` as the command.
#[tokio::test(flavor = "multi_thread")]
async fn the_page_follows_a_deploy_and_its_abort_button_aborts_a_canary() {
    let fleet = Fleet::start(3, 2).await;
    let spec = fleet.spec_with("held", &[], &canary_section("[2, 20]", "1s", "600s"));
    let v1 = fleet.deploy(&spec, "v1", &[]).await;
    assert!(v1.status.success(), "{}", text(&v1));
    let ui = Ui::start(fleet.ui_env(), &["--allow-actions"]).await;
    let browser = Browser::start().await;

    browser.goto(&format!("{}/#/", ui.url)).await;
    let row = format!("tr[data-app=\"{APP}\"]");
    browser
        .wait_text("the app on the apps page", &row, |t| t.contains("v1"))
        .await;
    let banner = browser.text("#banner").await.unwrap_or_default();
    assert!(banner.contains("etcd auth is off"), "{banner}");
    browser.screenshot("apps").await;

    // Text from etcd is shown as text: markup in a history record's reason stays inert.
    let mut forged =
        coordinator::history::record(proto::Operation::Switch, "forged", proto::Outcome::Done);
    forged.reason =
        Some("<b id=\"injected\">bold</b><img src=x onerror=\"document.title='owned'\">".into());
    fleet
        .client
        .clone()
        .put(
            keys().history(999_999_999),
            proto::records::encode(&forged),
            None,
        )
        .await
        .unwrap();
    browser.goto(&format!("{}/#/app/{APP}", ui.url)).await;
    wait_for("three host rows", Duration::from_secs(30), || async {
        (browser.count("#host-table tr[data-host]").await == 3).then_some(())
    })
    .await;
    browser
        .wait_text(
            "the forged reason, as text",
            "tr[data-history=\"forged\"]",
            |t| t.contains("<b id=\"injected\">"),
        )
        .await;
    assert_eq!(
        browser.count("#injected").await,
        0,
        "markup from etcd was rendered"
    );
    assert_ne!(browser.client.title().await.unwrap(), "owned");
    // A host's app log, through its agent.
    browser.click("tr[data-host=\"host-1\"] button").await;
    browser
        .wait_text("host-1's blue log", "#logs pre", |t| {
            t.contains("listening")
        })
        .await;

    // A deploy whose new version takes 3 s to start: the grid shows green starting, then the
    // timeline shows the switch and each LB's ack.
    let slow = fleet.spec_with(
        "slow",
        &[("DEMO_START_DELAY_MS", "3000")],
        &canary_section("[2, 20]", "1s", "600s"),
    );
    let mut deploy = fleet.deploy_command(&slow, "v2", &[]).spawn().unwrap();
    browser
        .wait_text(
            "a host starting v2 on green",
            "#host-table td[data-color=\"green\"]",
            |t| t.contains("starting") && t.contains("v2"),
        )
        .await;
    browser.screenshot("app-mid-deploy").await;
    browser
        .wait_text(
            "the switch on the timeline",
            "#timeline [data-step=\"switch\"]",
            |t| t.contains("green v2"),
        )
        .await;
    assert!(deploy.wait().await.unwrap().success());
    browser
        .wait_text("the deploy done", "#operation", |t| t.contains("done"))
        .await;
    wait_for(
        "both LBs acked on the timeline",
        Duration::from_secs(30),
        || async { (browser.count("#timeline [data-step=\"ack\"]").await >= 2).then_some(()) },
    )
    .await;

    // A canary held at its first step: the abort button sends every LB back to stable.
    let mut canary = canary_at_first_step(&fleet, &spec, "v3").await;
    browser
        .wait_text("the canary panel", "#canary-weight", |t| t.contains("2 %"))
        .await;
    browser.click("button[data-action=\"canary-abort\"]").await;
    browser.click("#confirm-ok").await;
    let result = browser
        .wait_text("the action's result", "#action-result", |t| {
            t.contains("done") || t.contains("exit") || t.contains("refused")
        })
        .await;
    assert!(result.contains("done"), "{result}\n{}", ui.daemon.log());
    let revision = wait_weight(&fleet.client, 0, POLL).await;
    every_lb_acked(&fleet, revision).await;
    let out = canary.wait().await.unwrap();
    assert!(!out.success(), "an aborted canary's deploy fails");
    let records = history(&fleet.client).await;
    let aborted = records
        .iter()
        .rev()
        .find(|r| r.kind == proto::Operation::CanaryStep && r.outcome == proto::Outcome::Aborted)
        .expect("the abort in history");
    assert!(
        aborted.reason.as_deref().unwrap_or("").contains("via ui"),
        "{aborted:?}"
    );

    // A canary answering 30 % errors under load: the analysis aborts it, and the canary panel
    // shows the evidence (each color's numbers over time, the failed check and its bounds).
    let bad = fleet.spec_with(
        "bad",
        &[("DEMO_ERROR_RATE", "0.3")],
        &canary_section("[10, 50]", "5s", "60s"),
    );
    let (stop, loops) = load_through_every_lb(&fleet);
    let failed = fleet.deploy(&bad, "v4", &["--canary"]).await;
    load::finish(stop, loops).await;
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    browser
        .wait_text(
            "the failed check on the canary panel",
            "#canary table",
            |t| t.contains("error rate") && t.contains("fail"),
        )
        .await;
    browser.screenshot("canary").await;

    browser.close().await;
}

/// With etcd auth on: an auditor sees the app and no button, and the POSTs a browser could be
/// tricked into (or a person could craft) are refused with 403 and write nothing; a coordinator
/// acts, and history names them with `ui` as the command. Every route that changes state needs a
/// session and its CSRF token.
#[tokio::test(flavor = "multi_thread")]
async fn an_auditor_sees_no_action_and_forged_requests_are_refused_writing_nothing() {
    let (fleet, pki, passwords) = auth_fleet(2, 1).await;
    let pw = passwords.path().to_path_buf();
    let coordinator = format!("bluegreen-{APP}-coordinator");
    let auditor = format!("bluegreen-{APP}-auditor");
    // The dashboard watches with the auditor's read-only user.
    let ui_env = fleet
        .etcd
        .coordinator_env(&pki, &auditor, Some(&password(&pw, &auditor)));
    let spec = fleet.spec("good", &[]);
    let out = fleet.deploy(&spec, "v1", &[]).await;
    assert!(out.status.success(), "deploy v1: {}", text(&out));
    let out = fleet.deploy(&spec, "v2", &["--no-switch"]).await;
    assert!(
        out.status.success(),
        "deploy v2 --no-switch: {}",
        text(&out)
    );
    let mut env = vec![(
        "BLUEGREEN_ETCD".to_string(),
        fleet.etcd.endpoints().join(","),
    )];
    env.extend(ui_env);
    let ui = Ui::start(env, &[]).await;

    // The auditor in a browser: the app, read only, no button.
    let browser = Browser::start().await;
    browser.goto(&format!("{}/", ui.url)).await;
    browser.fill("#user", &auditor).await;
    browser.fill("#password", &password(&pw, &auditor)).await;
    browser.click("#login-submit").await;
    let row = format!("tr[data-app=\"{APP}\"]");
    browser
        .wait_text("the app for the auditor", &row, |t| t.contains("staged"))
        .await;
    browser.goto(&format!("{}/#/app/{APP}", ui.url)).await;
    browser
        .wait_text("the read-only note", "#read-only", |t| {
            t.contains("may not change")
        })
        .await;
    assert_eq!(browser.count("button[data-action]").await, 0);
    browser.close().await;

    let http = reqwest::Client::new();
    let login = |user: String| {
        let (http, url, pw) = (http.clone(), ui.url.clone(), pw.clone());
        async move {
            let r = http
                .post(format!("{url}/api/login"))
                .json(&serde_json::json!({"user": user, "password": password(&pw, &user)}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "login of {user}");
            let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
            assert!(
                cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
                "{cookie}"
            );
            let cookie = cookie.split(';').next().unwrap().to_string();
            let doc: serde_json::Value = r.json().await.unwrap();
            (cookie, doc["csrf"].as_str().unwrap().to_string())
        }
    };
    let wrong = http
        .post(format!("{}/api/login", ui.url))
        .json(&serde_json::json!({"user": auditor, "password": "not it"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let post = |path: String, cookie: Option<String>, csrf: Option<String>| {
        let (http, url) = (http.clone(), ui.url.clone());
        async move {
            let mut req = http
                .post(format!("{url}{path}"))
                .json(&serde_json::json!({}));
            if let Some(c) = cookie {
                req = req.header("cookie", c);
            }
            if let Some(t) = csrf {
                req = req.header("x-bluegreen-csrf", t);
            }
            req.send().await.unwrap().status().as_u16()
        }
    };
    let rollback = format!("/api/apps/{APP}/actions/rollback");
    let before = written(&fleet.client).await;
    let (auditor_cookie, auditor_csrf) = login(auditor.clone()).await;
    assert_eq!(
        post(
            rollback.clone(),
            Some(auditor_cookie.clone()),
            Some(auditor_csrf.clone())
        )
        .await,
        403,
        "the auditor's own session and token"
    );
    let (cookie, csrf) = login(coordinator.clone()).await;
    assert_eq!(
        post(rollback.clone(), Some(cookie.clone()), None).await,
        403,
        "no token"
    );
    assert_eq!(
        post(
            rollback.clone(),
            Some(cookie.clone()),
            Some(auditor_csrf.clone())
        )
        .await,
        403,
        "another session's token"
    );
    assert_eq!(
        post(rollback.clone(), None, Some(csrf.clone())).await,
        403,
        "no session"
    );

    // A page on another site whose name points at this loopback port (DNS rebinding) names
    // its own host; a state change started by another site names its origin. Both are refused.
    let rebound = http
        .get(format!("{}/api/session", ui.url))
        .header("host", "attacker.example")
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 421);
    let cross_site = http
        .post(format!("{}{rollback}", ui.url))
        .header("cookie", &cookie)
        .header("x-bluegreen-csrf", &csrf)
        .header("origin", "https://attacker.example")
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), 403);

    // Every route, from the route table the router is built from.
    for route in ROUTES {
        let path = route
            .path
            .replace("{app}", APP)
            .replace("{action}", "rollback");
        let status = |req: reqwest::RequestBuilder| async move {
            req.send().await.unwrap().status().as_u16()
        };
        let url = format!("{}{path}", ui.url);
        match route.access {
            Access::SessionAndCsrf => {
                assert_eq!(route.method, "POST", "{path}");
                assert_eq!(
                    post(path.clone(), None, None).await,
                    403,
                    "{path} without a session"
                );
                assert_eq!(
                    post(path.clone(), Some(cookie.clone()), None).await,
                    403,
                    "{path} without a token"
                );
            }
            Access::Session => {
                assert_eq!(
                    status(http.get(&url)).await,
                    401,
                    "{path} without a session"
                );
            }
            Access::Public => {
                assert!(!route.changes_state || path == "/api/login", "{path}");
            }
        }
    }
    assert_eq!(
        written(&fleet.client).await,
        before,
        "a refused request wrote something"
    );

    // The coordinator with their token: promote (no spec file: the checks the --no-switch deploy
    // kept) and rollback run, each named after them with `ui` as the command.
    let act = |action: &'static str| {
        let (http, url, cookie, csrf) =
            (http.clone(), ui.url.clone(), cookie.clone(), csrf.clone());
        let log = ui.daemon.log_path.clone();
        async move {
            let r = http
                .post(format!("{url}/api/apps/{APP}/actions/{action}"))
                .header("cookie", &cookie)
                .header("x-bluegreen-csrf", &csrf)
                .json(&serde_json::json!({}))
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "{action}: {e}\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    )
                });
            assert_eq!(r.status(), 200, "{action}");
            let doc: serde_json::Value = r.json().await.unwrap();
            assert_eq!(doc["exit"], 0, "{action}: {doc}");
        }
    };
    act("promote").await;
    let active = bluegreen_tests::procs::active(&fleet.client).await.unwrap();
    assert_eq!(active.version, "v2");
    act("rollback").await;
    let active = bluegreen_tests::procs::active(&fleet.client).await.unwrap();
    assert_eq!(active.version, "v1");
    let records = history(&fleet.client).await;
    for (kind, command) in [
        (proto::Operation::Promote, "ui promote"),
        (proto::Operation::Rollback, "ui rollback"),
    ] {
        let record = records
            .iter()
            .rev()
            .find(|r| r.kind == kind)
            .unwrap_or_else(|| panic!("{kind:?} in history"));
        assert_eq!(record.actor.as_deref(), Some(coordinator.as_str()));
        assert_eq!(record.command.as_deref(), Some(command));
    }
}
