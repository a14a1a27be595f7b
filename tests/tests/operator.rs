//! The operator's surface around deploys: `validate`, `deploy --plan`, the JSON contract, the
//! audit's actor, shell completions and man pages. Real etcd, agents, nginx and sidecars where a
//! command reads the fleet; `validate` needs none of them, and proves it.
use bluegreen_tests::fleet::{text, Fleet};
use bluegreen_tests::load;
use bluegreen_tests::procs::{keys, put_raw};
use bluegreen_tests::{binary, Artifacts};
use std::path::Path;
use std::process::Output;

fn json_doc(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("one JSON document ({e}): {}", text(out)))
}

/// `coordinator` with an etcd that cannot answer: whatever passes needed none.
fn offline_coordinator() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(binary("coordinator"));
    cmd.env("BLUEGREEN_ETCD", "http://127.0.0.1:1")
        .env_remove("BLUEGREEN_APP")
        .kill_on_drop(true);
    cmd
}

fn example_spec_in(dir: &Path) -> std::path::PathBuf {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let migrations = dir.join("migrations");
    std::fs::create_dir_all(&migrations).unwrap();
    for entry in std::fs::read_dir(examples.join("migrations")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), migrations.join(entry.file_name())).unwrap();
    }
    let spec = dir.join("bluegreen.toml");
    std::fs::copy(examples.join("bluegreen.toml"), &spec).unwrap();
    spec
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_checks_spec_migrations_and_artifact_without_etcd_or_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let spec = example_spec_in(dir.path());
    let artifacts = Artifacts::default();
    let app = artifacts.demo_app();
    let run = |args: Vec<String>| {
        let mut cmd = offline_coordinator();
        cmd.args(["--output", "json", "validate", "--spec"])
            .arg(&spec)
            .args(args);
        async move { cmd.output().await.expect("run coordinator") }
    };

    let good = run(vec![
        "--version".into(),
        "v7".into(),
        "--artifact".into(),
        app.url.clone(),
        "--sha256".into(),
        app.sha256.clone(),
    ])
    .await;
    assert_eq!(good.status.code(), Some(0), "{}", text(&good));
    let report = json_doc(&good);
    assert_eq!(report["valid"], true);
    let checks: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert_eq!(checks, ["spec", "version", "migrations", "artifact"]);

    let wrong_sha = run(vec![
        "--artifact".into(),
        app.url.clone(),
        "--sha256".into(),
        "ab".repeat(32),
    ])
    .await;
    assert_eq!(wrong_sha.status.code(), Some(2), "{}", text(&wrong_sha));
    assert!(
        text(&wrong_sha).contains(&app.sha256),
        "{}",
        text(&wrong_sha)
    );

    let missing_artifact = run(vec!["--artifact".into(), format!("{}-gone", app.url)]).await;
    assert_eq!(missing_artifact.status.code(), Some(2));
    assert!(text(&missing_artifact).contains("-gone"));

    let bad_version = run(vec!["--version".into(), "v 1".into()]).await;
    assert_eq!(bad_version.status.code(), Some(2));
    assert!(text(&bad_version).contains("--version"));

    // An expand migration that would break the running version: named, exit 2.
    let dropping = dir.path().join("migrations/0004_drop_name.sql");
    std::fs::write(
        &dropping,
        "-- +up\nALTER TABLE items DROP COLUMN name;\n-- +down\nALTER TABLE items ADD COLUMN name TEXT;\n",
    )
    .unwrap();
    let destructive = run(vec![]).await;
    assert_eq!(destructive.status.code(), Some(2), "{}", text(&destructive));
    let report = json_doc(&destructive);
    assert_eq!(report["valid"], false);
    let failed = &report["checks"][1];
    assert_eq!(failed["check"], "migrations");
    assert!(
        failed["detail"]
            .as_str()
            .unwrap()
            .contains("0004_drop_name.sql"),
        "{failed}"
    );
    std::fs::remove_file(&dropping).unwrap();

    // A typo in the spec names the field; --app must match the spec's app.
    let spec_text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(
        &spec,
        spec_text.replace("[health]", "[health]\nintervall = \"1s\""),
    )
    .unwrap();
    let typo = run(vec![]).await;
    assert_eq!(typo.status.code(), Some(2));
    assert!(text(&typo).contains("intervall"), "{}", text(&typo));
    std::fs::write(&spec, &spec_text).unwrap();
    let other_app = offline_coordinator()
        .args(["--app", "billing", "validate", "--spec"])
        .arg(&spec)
        .output()
        .await
        .unwrap();
    assert_eq!(other_app.status.code(), Some(2));
    assert!(text(&other_app).contains("billing"), "{}", text(&other_app));
}

/// Every key of the app and the revision it was last written at, except what the daemons write
/// on their own schedule (each LB's request counts, every second after an operation; health):
/// what a command that writes nothing must leave as it was. Comparing etcd's global revision
/// failed whenever a sidecar published its counts during the command.
async fn written_by_commands(fleet: &Fleet) -> std::collections::BTreeMap<String, i64> {
    let keys = keys();
    let (stats, health) = (keys.lb_stats_prefix(), keys.health_prefix());
    let all = fleet
        .client
        .clone()
        .get(
            keys.app_prefix(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("read the app");
    all.kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).to_string(),
                kv.mod_revision(),
            )
        })
        .filter(|(k, _)| !k.starts_with(&stats) && !k.starts_with(&health))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_plan_shows_what_a_deploy_would_do_and_writes_nothing() {
    let fleet = Fleet::start(2, 1).await;
    let spec = fleet.spec("good", &[]);
    let first = fleet.deploy(&spec, "v1", &[]).await;
    assert!(first.status.success(), "{}", text(&first));

    let before = written_by_commands(&fleet).await;
    let plan = fleet
        .deploy(&spec, "v2", &["--plan", "--output", "json"])
        .await;
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    let doc = json_doc(&plan);
    assert_eq!(doc["verdict"], "go");
    assert_eq!(doc["active"]["color"], "blue");
    assert_eq!(doc["active"]["version"], "v1");
    assert_eq!(doc["to"], "green");
    assert_eq!(doc["hosts"].as_array().unwrap().len(), 2);
    assert_eq!(doc["lbs"].as_array().unwrap().len(), 1);
    assert_eq!(doc["lock_holder"], serde_json::Value::Null);
    assert_eq!(
        written_by_commands(&fleet).await,
        before,
        "--plan wrote to etcd"
    );

    let same = fleet
        .deploy(&spec, "v1", &["--plan", "--output", "json"])
        .await;
    assert_eq!(same.status.code(), Some(0), "{}", text(&same));
    assert_eq!(json_doc(&same)["verdict"], "already-active");

    // A held lock: the deploy would wait for it and, unless it frees, exit 3.
    let lock = serde_json::json!({"deploy_id": "op-by-hand", "holder": "ci-runner-7:42",
        "operation": "deploy", "version": "v9", "acquired_at": "2026-12-04T00:00:00Z"});
    put_raw(&fleet.client, &keys().lock(), &lock.to_string()).await;
    let held = fleet.deploy(&spec, "v2", &["--plan"]).await;
    assert_eq!(held.status.code(), Some(3), "{}", text(&held));
    assert!(text(&held).contains("ci-runner-7:42"), "{}", text(&held));
    fleet
        .client
        .clone()
        .delete(keys().lock(), None)
        .await
        .unwrap();

    // No LB to follow the switch: refused, as the deploy would be (exit 1).
    let lb_less = Fleet::start(1, 0).await;
    let refused = lb_less
        .deploy(&lb_less.spec("good", &[]), "v1", &["--plan"])
        .await;
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("no LB"), "{}", text(&refused));
}

/// The documented schemas (docs/schemas), by name.
struct Schemas {
    dir: std::path::PathBuf,
}

impl Schemas {
    fn new() -> Schemas {
        Schemas {
            dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schemas"),
        }
    }

    fn check(&self, name: &str, value: &serde_json::Value, context: &str) {
        let path = self.dir.join(format!("{name}.schema.json"));
        let schema: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let validator = jsonschema::validator_for(&schema).expect("a valid schema");
        let errors: Vec<String> = validator
            .iter_errors(value)
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect();
        assert!(
            errors.is_empty(),
            "{context}: does not match {name}.schema.json: {errors:#?}\n{value:#}"
        );
    }

    /// A query: one JSON document matching `name`.
    fn query(&self, name: &str, out: &Output, context: &str) -> serde_json::Value {
        let doc = json_doc(out);
        self.check(name, &doc, context);
        doc
    }

    /// An action: progress events, then exactly one result event, last; returns it.
    fn action(&self, out: &Output, context: &str) -> serde_json::Value {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let events: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{context}: not one JSON event per line ({e}): {l}"))
            })
            .collect();
        let (result, progress) = events
            .split_last()
            .unwrap_or_else(|| panic!("{context}: no output: {}", text(out)));
        for event in progress {
            self.check("progress-event", event, context);
        }
        self.check("result-event", result, context);
        assert_eq!(
            result["exit"].as_i64(),
            out.status.code().map(i64::from),
            "{context}: the result event's exit is the process's"
        );
        result.clone()
    }
}

/// Every command's `--output json` against the schemas in docs/schemas: queries print one
/// document, actions print progress events and end in one result event, and usage and input
/// errors end in a result event too.
#[tokio::test(flavor = "multi_thread")]
async fn every_command_speaks_the_documented_json() {
    let schemas = Schemas::new();
    let fleet = Fleet::start(2, 1).await;
    let spec = fleet.spec("good", &[]);
    let json = |args: &[&str]| {
        let mut cmd = fleet.coordinator();
        cmd.args(["--output", "json"]).args(args);
        async move { cmd.output().await.expect("run coordinator") }
    };

    let v1 = fleet.deploy(&spec, "v1", &["--output", "json"]).await;
    let result = schemas.action(&v1, "deploy v1");
    assert_eq!(result["outcome"], "done", "{}", text(&v1));
    assert_eq!(result["command"], "deploy");
    assert_eq!(result["to"]["color"], "blue");
    assert_eq!(result["to"]["version"], "v1");
    assert!(
        result["op_id"].is_string() && result["revision"].is_i64(),
        "{result}"
    );
    let v2 = fleet.deploy(&spec, "v2", &["--output", "json"]).await;
    let result = schemas.action(&v2, "deploy v2");
    assert_eq!(result["from"]["version"], "v1");
    assert_eq!(result["to"]["color"], "green");

    let rollback = json(&["rollback"]).await;
    let result = schemas.action(&rollback, "rollback");
    assert_eq!(result["exit"], 0, "{}", text(&rollback));
    assert_eq!(result["from"]["color"], "green");
    assert_eq!(result["to"]["color"], "blue");
    let switch = json(&["switch", "green"]).await;
    schemas.action(&switch, "switch green");

    let plan = fleet
        .deploy(&spec, "v3", &["--plan", "--output", "json"])
        .await;
    schemas.query("deploy-plan", &plan, "deploy --plan");
    schemas.query("status", &json(&["status"]).await, "status");
    schemas.query("apps", &json(&["apps"]).await, "apps");
    let history = schemas.query("history", &json(&["history"]).await, "history");
    assert!(history.as_array().unwrap().len() >= 4, "{history:#}");
    schemas.query(
        "lock-status",
        &json(&["lock", "status"]).await,
        "lock status",
    );
    schemas.query("host-list", &json(&["host", "list"]).await, "host list");
    schemas.query("lb-list", &json(&["lb", "list"]).await, "lb list");
    let verbose = &["lb", "list", "--verbose"];
    let lbs = schemas.query("lb-list", &json(verbose).await, "lb list --verbose");
    let served = lbs[0]["color"].as_str().expect("the LB serves a color");
    assert_eq!(
        lbs[0]["upstreams"][served].as_array().map(Vec::len),
        Some(2),
        "both hosts, from the LB's upstream lists: {lbs:#}"
    );
    let canary = schemas.query(
        "canary-status",
        &json(&["canary", "status"]).await,
        "canary status",
    );
    assert_eq!(canary["running"], false, "{canary:#}");
    let no_canary = json(&["canary", "abort"]).await;
    let result = schemas.action(&no_canary, "canary abort without a canary");
    assert_eq!(result["exit"], 1, "{}", text(&no_canary));
    let logs = json(&[
        "logs", "--host", "host-1", "--color", "green", "--tail", "5",
    ])
    .await;
    schemas.query("logs", &logs, "logs");
    let validate = json(&["validate", "--spec", &spec.display().to_string()]).await;
    schemas.query("validate", &validate, "validate");

    let dir = tempfile::tempdir().unwrap();
    let migrating = example_spec_in(dir.path());
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("shop.db").display());
    let spec_text = std::fs::read_to_string(&migrating).unwrap();
    std::fs::write(
        &migrating,
        spec_text.replace("sqlite:///var/lib/shop/shop.db?mode=rwc", &db),
    )
    .unwrap();
    let migrate = json(&[
        "migrate",
        "status",
        "--spec",
        &migrating.display().to_string(),
    ])
    .await;
    schemas.query("migrate-status", &migrate, "migrate status");

    let stop = json(&["stop", "blue"]).await;
    schemas.action(&stop, "stop blue");
    let keygen = json(&["keygen", "--out-dir", &dir.path().display().to_string()]).await;
    schemas.action(&keygen, "keygen");
    let lock_break = json(&["lock", "break", "--yes"]).await;
    schemas.action(&lock_break, "lock break");

    // Errors end in a result event: a refused action, bad input, a usage error clap rejects, a
    // query about an unknown app (BLUEGREEN_OUTPUT instead of the flag).
    let refused = json(&["switch", "blue"]).await;
    let result = schemas.action(&refused, "switch to a stopped color");
    assert_eq!(result["outcome"], "failed");
    let not_confirmed = json(&["host", "remove", "host-9"]).await;
    assert_eq!(schemas.action(&not_confirmed, "host remove")["exit"], 2);
    let usage = json(&["deploy", "--version", "v4"]).await;
    let result = schemas.action(&usage, "missing --spec");
    assert_eq!(result["outcome"], "rejected");
    assert!(
        result["detail"].as_str().unwrap().contains("--spec"),
        "{result}"
    );
    let unknown = fleet
        .coordinator()
        .env("BLUEGREEN_OUTPUT", "json")
        .args(["--app", "shpo", "status"])
        .output()
        .await
        .unwrap();
    let result = schemas.action(&unknown, "status of an unknown app");
    assert!(
        result["detail"].as_str().unwrap().contains("shop"),
        "{result}"
    );
}

/// Every history record names who ran the command and how; `history` filters by kind, version,
/// actor and time.
#[tokio::test(flavor = "multi_thread")]
async fn history_names_the_actor_and_filters() {
    let fleet = Fleet::start(1, 1).await;
    let spec = fleet.spec("good", &[]);
    for (actor, version) in [("alice", "v1"), ("bob", "v2")] {
        let out = fleet
            .deploy_command(&spec, version, &[])
            .env("BLUEGREEN_ACTOR", actor)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    let rollback = fleet
        .coordinator()
        .env("BLUEGREEN_ACTOR", "carol")
        .env("GITHUB_ACTIONS", "true")
        .arg("rollback")
        .output()
        .await
        .unwrap();
    assert!(rollback.status.success(), "{}", text(&rollback));
    let history = |args: &[&str]| {
        let mut cmd = fleet.coordinator();
        cmd.args(["--output", "json", "history"]).args(args);
        let shown = format!("{args:?}");
        async move {
            let out = cmd.output().await.unwrap();
            assert!(out.status.success(), "{shown}: {}", text(&out));
            let records = json_doc(&out);
            records
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["record"].clone())
                .collect::<Vec<_>>()
        }
    };
    let all = history(&[]).await;
    assert_eq!(all.len(), 3, "{all:#?}");
    let actors: Vec<&str> = all.iter().map(|r| r["actor"].as_str().unwrap()).collect();
    assert_eq!(actors, ["alice", "bob", "carol"]);
    assert!(
        all[0]["command"].as_str().unwrap().contains("deploy"),
        "{:#}",
        all[0]
    );

    let bobs = history(&["--actor", "bob"]).await;
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0]["version"], "v2");
    let rollbacks = history(&["--kind", "rollback"]).await;
    assert_eq!(rollbacks.len(), 1);
    assert_eq!(rollbacks[0]["actor"], "carol");
    // The rollback went back to v1: it is a record of v1 too.
    let v1 = history(&["--version", "v1"]).await;
    let v1_actors: Vec<&str> = v1.iter().map(|r| r["actor"].as_str().unwrap()).collect();
    assert_eq!(v1_actors, ["alice", "carol"]);
    assert!(history(&["--since", "2099-01-01T00:00:00Z"])
        .await
        .is_empty());
    assert_eq!(history(&["--since", "1h"]).await.len(), 3);
    assert!(history(&["--until", "1h"]).await.is_empty());
    assert_eq!(
        history(&["--limit", "1", "--kind", "deploy"]).await[0]["actor"],
        "bob"
    );

    let bad = fleet.run(&["history", "--since", "yesterday-ish"]).await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad).contains("--since"), "{}", text(&bad));
}

/// The version nginx answers with at `url` (the demo app's `/api/v1/status`).
async fn served_version(url: &str) -> Option<String> {
    let body = bluegreen_tests::procs::get_json(url).await?;
    body["version"].as_str().map(str::to_string)
}

/// `deploy --no-switch` stages and checks the new version and leaves traffic where it was, with
/// the preview listener serving the new version; `promote` runs the checks again and switches.
/// A rollback in between would go forward to the unpromoted version, so it is refused. Load runs
/// through the LB the whole time and no request fails.
#[tokio::test(flavor = "multi_thread")]
async fn no_switch_stages_and_promote_switches() {
    let fleet = Fleet::start(2, 1).await;
    let spec = fleet.spec("good", &[]);
    let v1 = fleet.deploy(&spec, "v1", &[]).await;
    assert!(v1.status.success(), "{}", text(&v1));
    let lb = &fleet.lbs[0];
    let (live, preview) = (lb.url("/api/v1/status"), lb.preview_url("/api/v1/status"));
    let (stop, loops) = load::spawn_each(fleet.lb_urls());

    let staged = fleet.deploy(&spec, "v2", &["--no-switch"]).await;
    assert!(staged.status.success(), "{}", text(&staged));
    assert!(text(&staged).contains("promote"), "{}", text(&staged));
    let active = bluegreen_tests::procs::active(&fleet.client).await.unwrap();
    assert_eq!(
        (active.color, active.version.as_str()),
        (proto::Color::Blue, "v1")
    );
    assert_eq!(served_version(&live).await.as_deref(), Some("v1"));
    assert_eq!(served_version(&preview).await.as_deref(), Some("v2"));

    let rollback = fleet.run(&["rollback"]).await;
    assert_eq!(rollback.status.code(), Some(1), "{}", text(&rollback));
    assert!(
        text(&rollback).contains("never promoted"),
        "{}",
        text(&rollback)
    );

    let promote = fleet
        .coordinator()
        .args(["--output", "json", "promote", "--spec"])
        .arg(&spec)
        .output()
        .await
        .unwrap();
    assert!(promote.status.success(), "{}", text(&promote));
    let result = Schemas::new().action(&promote, "promote");
    assert_eq!(result["command"], "promote");
    assert_eq!(result["to"]["version"], "v2");
    let active = bluegreen_tests::procs::active(&fleet.client).await.unwrap();
    assert_eq!(
        (active.color, active.version.as_str()),
        (proto::Color::Green, "v2")
    );
    assert_eq!(served_version(&live).await.as_deref(), Some("v2"));
    let report = load::finish(stop, loops).await;
    report.assert_none_failed();
    assert!(
        report.colors.contains_key("blue") && report.colors.contains_key("green"),
        "the load saw both colors through the switch: {:?}",
        report.colors
    );

    let again = fleet
        .run(&["promote", "--spec", &spec.display().to_string()])
        .await;
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(
        text(&again).contains("nothing is staged"),
        "{}",
        text(&again)
    );

    let history = fleet.run(&["--output", "json", "history"]).await;
    let kinds: Vec<(String, String)> = json_doc(&history)
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let r = &r["record"];
            (
                r["kind"].as_str().unwrap().into(),
                r["outcome"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected = [
        ("deploy", "done"),
        ("deploy", "staged"),
        ("promote", "done"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(k, o)| (k.to_string(), o.to_string()))
        .collect();
    assert_eq!(kinds, expected);
}

/// A webhook receiver: every POSTed JSON body, in arrival order.
struct Receiver {
    url: String,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        use axum::routing::post;
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = bodies.clone();
        let app = axum::Router::new().route(
            "/hook",
            post(move |axum::Json(body): axum::Json<serde_json::Value>| {
                let kept = kept.clone();
                async move {
                    kept.lock().unwrap().push(body);
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, bodies }
    }

    fn last(&self) -> serde_json::Value {
        self.bodies
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a notification")
    }
}

/// Spec `[hooks]` run at their points with the operation's facts; a failing pre_deploy aborts
/// with nothing written, a failing post_stage fails before the switch; `[[notify]]` receives
/// each result event, and a receiver that is down changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn hooks_gate_and_report_and_webhooks_receive_each_result() {
    let fleet = Fleet::start(2, 1).await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hooks.log");
    let script = dir.path().join("hook.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$BLUEGREEN_HOOK $BLUEGREEN_OPERATION $BLUEGREEN_VERSION $BLUEGREEN_COLOR ${{BLUEGREEN_OUTCOME:--}}${{BLUEGREEN_SIGNING_KEY_FILE:+ got the signing key}}\" >> {}\n[ \"$BLUEGREEN_HOOK\" != \"$FAIL_HOOK\" ]\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let base = std::fs::read_to_string(fleet.spec("good", &[])).unwrap();
    let hooks: String = [
        "pre_deploy",
        "post_stage",
        "post_switch",
        "post_rollback",
        "on_failure",
    ]
    .iter()
    .map(|h| format!("{h} = [\"{}\"]\n", script.display()))
    .collect();
    let spec = fleet.raw_spec(
        "hooked",
        &format!(
            "{base}\n[hooks]\n{hooks}timeout = \"30s\"\n\n[[notify]]\nurl = \"{}\"\n\n\
             [[notify]]\nurl = \"http://127.0.0.1:1/down\"\ntimeout = \"1s\"\nretries = 0\n",
            receiver.url
        ),
    );
    let logged = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        std::fs::remove_file(&log).ok();
        text.lines().map(str::to_string).collect::<Vec<_>>()
    };

    let v1 = fleet.deploy(&spec, "v1", &["--output", "json"]).await;
    let result = Schemas::new().action(&v1, "deploy with hooks");
    assert_eq!(
        result["exit"],
        0,
        "a receiver that is down changes nothing: {}",
        text(&v1)
    );
    assert!(text(&v1).contains("127.0.0.1:1/down"), "{}", text(&v1));
    assert_eq!(
        logged(),
        [
            "pre_deploy deploy v1 blue -",
            "post_stage deploy v1 blue -",
            "post_switch deploy v1 blue done"
        ]
    );
    let sent = receiver.last();
    assert_eq!(
        (sent["command"].clone(), sent["outcome"].clone()),
        ("deploy".into(), "done".into())
    );
    assert_eq!(sent["op_id"], result["op_id"]);

    let v2 = fleet.deploy(&spec, "v2", &[]).await;
    assert!(v2.status.success(), "{}", text(&v2));
    logged();
    let rollback = fleet
        .run(&["rollback", "--spec", &spec.display().to_string()])
        .await;
    assert!(rollback.status.success(), "{}", text(&rollback));
    assert_eq!(logged(), ["post_rollback rollback v1 blue done"]);
    assert_eq!(receiver.last()["command"], "rollback");

    // A failing pre_deploy: nothing written (no release for v3, history unchanged). The hooks
    // never see the coordinator's credentials (here its signing key's file).
    let keygen = fleet
        .run(&["keygen", "--out-dir", &dir.path().display().to_string()])
        .await;
    assert!(keygen.status.success(), "{}", text(&keygen));
    let history_before = json_doc(&fleet.run(&["--output", "json", "history"]).await);
    let refused = fleet
        .deploy_command(&spec, "v3", &[])
        .env("FAIL_HOOK", "pre_deploy")
        .env(
            "BLUEGREEN_SIGNING_KEY_FILE",
            dir.path().join("bluegreen-release.key"),
        )
        .output()
        .await
        .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("hooks.pre_deploy"),
        "{}",
        text(&refused)
    );
    assert_eq!(
        logged(),
        [
            "pre_deploy deploy v3 green -",
            "on_failure deploy v3 green failed"
        ]
    );
    let green = bluegreen_tests::procs::release(&fleet.client, proto::Color::Green).await;
    assert_eq!(
        green.map(|r| r.version).as_deref(),
        Some("v2"),
        "pre_deploy wrote a release"
    );
    let history_after = json_doc(&fleet.run(&["--output", "json", "history"]).await);
    assert_eq!(history_before, history_after, "pre_deploy wrote history");
    assert_eq!(receiver.last()["exit"], 1);

    // A failing post_stage fails the deploy before the switch.
    let failed = fleet
        .deploy_command(&spec, "v3", &[])
        .env("FAIL_HOOK", "post_stage")
        .output()
        .await
        .unwrap();
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    assert!(text(&failed).contains("post_stage"), "{}", text(&failed));
    let active = bluegreen_tests::procs::active(&fleet.client).await.unwrap();
    assert_eq!(
        (active.color, active.version.as_str()),
        (proto::Color::Blue, "v1")
    );
}

/// Lines of a running command's stdout, read with a deadline.
struct LiveOutput {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl LiveOutput {
    fn spawn(mut cmd: tokio::process::Command) -> LiveOutput {
        use tokio::io::AsyncBufReadExt;
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn coordinator");
        let stdout = child.stdout.take().unwrap();
        LiveOutput {
            child,
            lines: tokio::io::BufReader::new(stdout).lines(),
        }
    }

    /// The first line (as JSON) that satisfies `wanted`, within 60 s.
    async fn wait_for(&mut self, what: &str, wanted: impl Fn(&serde_json::Value) -> bool) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no line with {what} within 60 s"))
                .expect("read stdout")
                .unwrap_or_else(|| panic!("the command ended before {what}"));
            let value: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if wanted(&value) {
                return;
            }
        }
    }

    /// SIGTERM, then the exit code.
    async fn stop(mut self) -> Option<i32> {
        let pid = nix::unistd::Pid::from_raw(self.child.id().expect("running") as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        self.child.wait().await.unwrap().code()
    }
}

/// `status --watch` shows each change as it happens (here a deploy's switch), and
/// `logs --follow` streams lines the app writes after it started; both end cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread")]
async fn status_watch_and_logs_follow_show_changes_as_they_happen() {
    let fleet = Fleet::start(1, 1).await;
    let spec = fleet.spec("good", &[]);
    for version in ["v1", "v2"] {
        let out = fleet.deploy(&spec, version, &[]).await;
        assert!(out.status.success(), "{}", text(&out));
    }
    let mut watch = fleet.coordinator();
    watch.args(["--output", "json", "status", "--watch"]);
    let mut status = LiveOutput::spawn(watch);
    status
        .wait_for("green v2 active", |s| s["active"]["version"] == "v2")
        .await;
    let mut follow = fleet.coordinator();
    follow.args([
        "--output", "json", "logs", "--host", "host-1", "--color", "blue",
    ]);
    follow.args(["--tail", "1", "--follow"]);
    let mut logs = LiveOutput::spawn(follow);
    logs.wait_for("the last line of blue's log", |l| l["line"].is_string())
        .await;

    let v3 = fleet.deploy(&spec, "v3", &[]).await;
    assert!(v3.status.success(), "{}", text(&v3));
    status
        .wait_for("blue v3 active", |s| {
            s["active"]["color"] == "blue" && s["active"]["version"] == "v3"
        })
        .await;
    logs.wait_for("v3 starting on blue", |l| {
        l["line"].as_str().is_some_and(|line| line.contains("v3"))
    })
    .await;
    assert_eq!(status.stop().await, Some(0));
    assert_eq!(logs.stop().await, Some(0));
}

/// A metric's value from an OpenMetrics exposition (the first series whose name and labels start
/// with `series`).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).filter(|rest| rest.starts_with(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// The agent serves /metrics (per color state, version, restarts, probe latency; the last etcd
/// write; memory) and the sidecar its own, both through prometheus-client; the agent logs JSON
/// lines with BLUEGREEN_LOG_FORMAT=json.
#[tokio::test(flavor = "multi_thread")]
async fn the_agent_serves_metrics_and_logs_json_when_asked() {
    let mut fleet = Fleet::start(1, 1).await;
    let v1 = fleet.deploy(&fleet.spec("good", &[]), "v1", &[]).await;
    assert!(v1.status.success(), "{}", text(&v1));
    let url = fleet.hosts[0].metrics_url();
    let answer = reqwest::get(&url).await.expect("agent /metrics");
    let content_type = answer.headers()[reqwest::header::CONTENT_TYPE].clone();
    assert!(
        content_type.to_str().unwrap().contains("openmetrics"),
        "{content_type:?}"
    );
    let body = answer.text().await.unwrap();
    let state = |state: &str| {
        let series =
            format!("bluegreen_agent_color_state{{app=\"shop\",color=\"blue\",state=\"{state}\"}}");
        metric(&body, &series)
    };
    assert_eq!(state("healthy"), Some(1.0), "{body}");
    assert_eq!(state("failed"), Some(0.0), "{body}");
    let version = "bluegreen_agent_color_version{app=\"shop\",color=\"blue\",version=\"v1\"}";
    assert_eq!(metric(&body, version), Some(1.0), "{body}");
    let probes = metric(
        &body,
        "bluegreen_agent_probe_seconds_count{app=\"shop\",color=\"blue\"}",
    );
    assert!(probes.is_some_and(|n| n >= 1.0), "{body}");
    let written = metric(&body, "bluegreen_agent_last_etcd_write_timestamp_seconds");
    assert!(written.is_some_and(|t| t > 1.7e9), "{body}");
    assert!(metric(&body, "bluegreen_agent_resident_memory_bytes").is_some_and(|b| b > 0.0));

    let sidecar = &fleet.sidecars[0];
    let sidecar_url = sidecar.metrics_url();
    let body = reqwest::get(&sidecar_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metric(&body, "bluegreen_lb_reloads_total").is_some_and(|n| n >= 1.0),
        "{body}"
    );
    let written = metric(&body, "bluegreen_lb_last_etcd_write_timestamp_seconds");
    assert!(written.is_some_and(|t| t > 1.7e9), "{body}");
    assert!(
        body.contains("bluegreen_lb_switch_seconds_bucket{le=\"0.1\"}"),
        "{body}"
    );

    let agent = &mut fleet.hosts[0];
    let before = agent.log().lines().count();
    agent.restart_with_env("BLUEGREEN_LOG_FORMAT", "json");
    bluegreen_tests::wait_for(
        "the restarted agent's JSON log",
        std::time::Duration::from_secs(30),
        || {
            let log = agent.log();
            let lines: Vec<&str> = log.lines().skip(before).collect();
            let parsed: Vec<serde_json::Value> = lines
                .iter()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            let running = parsed
                .iter()
                .any(|v| v["fields"]["message"] == "agent running" && v["level"] == "INFO");
            let all_json = parsed.len() == lines.len();
            async move { (running && all_json).then_some(()) }
        },
    )
    .await;
}

/// Every series the shipped Grafana dashboard queries is one the agent or the sidecar exposes
/// (read from their own expositions' TYPE lines), so a renamed metric breaks this, not a panel.
#[test]
fn the_grafana_dashboard_queries_only_metrics_that_exist() {
    let mut exposed = std::collections::BTreeSet::new();
    let expositions = [
        agent::metrics::AgentMetrics::default().render(),
        lb_sidecar::metrics::Metrics::default().render(),
    ];
    for text in &expositions {
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("# TYPE ") else {
                continue;
            };
            let (name, kind) = rest.split_once(' ').unwrap();
            let suffixes: &[&str] = match kind {
                "histogram" => &["_bucket", "_count", "_sum"],
                "counter" => &["_total"],
                _ => &[""],
            };
            for suffix in suffixes {
                exposed.insert(format!("{name}{suffix}"));
            }
        }
    }
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/bluegreen-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut queried = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("bluegreen_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                queried.push(name);
            }
        }
    }
    assert!(queried.len() >= 10, "{queried:?}");
    let unknown: Vec<&String> = queried.iter().filter(|q| !exposed.contains(*q)).collect();
    assert!(
        unknown.is_empty(),
        "not exposed: {unknown:?}; exposed: {exposed:?}"
    );
}

/// The example CI pipelines in deploy/ci call `coordinator` only with commands and flags it
/// accepts: each invocation, its variables filled with placeholders, gets past the command-line
/// parser (whatever it then says about the placeholders).
#[tokio::test(flavor = "multi_thread")]
async fn the_example_pipelines_use_real_commands_and_flags() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/ci");
    let mut checked = 0;
    for file in ["github-actions.yml", "gitlab-ci.yml"] {
        let pipeline = std::fs::read_to_string(dir.join(file)).unwrap();
        let mut joined = String::new();
        for line in pipeline.lines() {
            let line = line
                .trim()
                .trim_start_matches("- ")
                .trim_start_matches("run: ");
            if line.starts_with("coordinator ") || !joined.is_empty() {
                joined.push_str(line.trim_end_matches('\\'));
                joined.push(' ');
                if line.ends_with('\\') {
                    continue;
                }
            } else {
                continue;
            }
            let command = std::mem::take(&mut joined);
            let command = command.split(" | ").next().unwrap();
            let args: Vec<String> = command
                .split_whitespace()
                .skip(1)
                .map(|a| {
                    if a.contains('$') {
                        "placeholder".to_string()
                    } else {
                        a.trim_matches('"').to_string()
                    }
                })
                .collect();
            let out = offline_coordinator()
                .env("BLUEGREEN_OUTPUT", "json")
                .args(&args)
                .output()
                .await
                .unwrap();
            let rejected = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .any(|v| v["step"] == "result" && v["command"].is_null());
            assert!(
                !rejected,
                "{file}: `{command}` is not a valid command line: {}",
                text(&out)
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} coordinator invocations found");
}

/// Every flag and argument of every binary says what it is for, and every subcommand too (the
/// man pages and `--help` are built from these).
#[test]
fn every_flag_of_every_binary_has_help() {
    fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if id != "help" && id != "version" && arg.get_help().is_none() {
                missing.push(format!("{path} --{id}"));
            }
        }
        for sub in command.get_subcommands() {
            if sub.get_about().is_none() {
                missing.push(format!("{path} {} (no about)", sub.get_name()));
            }
            walk(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
    let mut missing = Vec::new();
    for (name, command) in bluegreen_tests::command_lines() {
        assert!(command.get_version().is_some(), "{name} has no --version");
        walk(&command, name, &mut missing);
    }
    assert!(missing.is_empty(), "no help text: {missing:#?}");
}

/// The rows of the configuration reference's table under `heading`: each documented key
/// (`[table] key` as `table.key`) with its default column.
fn documented_settings(heading: &str) -> Vec<(String, String)> {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md"),
    )
    .unwrap();
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with(heading))
        .unwrap_or_else(|| panic!("no section {heading:?}"));
    let mut rows = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let default = cells.get(1).copied().unwrap_or_default().to_string();
        for key in cells[0].trim_start_matches("| ").split(", ") {
            let key = key.trim_matches('`');
            let key = match key.strip_prefix('[').and_then(|k| k.split_once("] ")) {
                Some((table, inner)) => format!("{table}.{inner}"),
                None => key.to_string(),
            };
            rows.push((key, default.clone()));
        }
    }
    rows
}

/// docs/configuration.md lists exactly the settings each daemon declares, each with the default
/// the daemon applies; and each flag's help shows its variable and default, from the same
/// declaration.
#[test]
fn the_configuration_reference_matches_each_daemons_declared_settings() {
    let daemons = [
        (
            "The agent",
            proto::settings::keys::<agent::config::Settings>(),
            agent::config::DEFAULTS,
            <agent::config::Cli as proto::settings::Daemon>::cli(),
            "BLUEGREEN_AGENT_",
        ),
        (
            "The lb-sidecar",
            proto::settings::keys::<lb_sidecar::config::Settings>(),
            lb_sidecar::config::DEFAULTS,
            <lb_sidecar::config::Cli as proto::settings::Daemon>::cli(),
            "BLUEGREEN_SIDECAR_",
        ),
    ];
    for (heading, declared, defaults, command, prefix) in daemons {
        // Every variable name users rely on, exactly: the key in upper case, except the agent's
        // ports, whose flags and variables have always been `--blue-port`, `…_BLUE_PORT`.
        for key in &declared {
            // `[[apps]]` is a list of tables: the file only, no flag or variable.
            if key == "apps" {
                continue;
            }
            let id = key.replace('.', "_");
            let expected = match id.as_str() {
                "ports_blue" => "BLUEGREEN_AGENT_BLUE_PORT".to_string(),
                "ports_green" => "BLUEGREEN_AGENT_GREEN_PORT".to_string(),
                _ => format!("{prefix}{}", id.to_uppercase()),
            };
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == id.as_str())
                .unwrap_or_else(|| panic!("{heading}: no flag for {key}"));
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(expected.as_str()),
                "{heading}: {key}"
            );
        }
        let documented = documented_settings(heading);
        let mut names: Vec<String> = documented.iter().map(|(k, _)| k.clone()).collect();
        names.sort();
        let mut expected = declared.clone();
        expected.sort();
        assert_eq!(
            names, expected,
            "{heading}: documented keys vs declared ones"
        );
        for (key, cell) in &documented {
            let id = key.replace('.', "_");
            if let Some(default) = proto::settings::default_of(defaults, &id) {
                for part in default.split(',') {
                    assert!(
                        cell.contains(part),
                        "{heading}: `{key}` defaults to {default}, the reference says {cell}"
                    );
                }
                let arg = command
                    .get_arguments()
                    .find(|a| a.get_id() == id.as_str())
                    .unwrap_or_else(|| panic!("{heading}: no flag for {key}"));
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                assert!(
                    help.ends_with(&format!("[default: {default}]")),
                    "{heading}: {help}"
                );
            }
        }
    }
}
