//! The operator's surface around deploys: `validate`, `deploy --plan`, the JSON contract, the
//! audit's actor, shell completions and man pages. Real etcd, agents, nginx and sidecars where a
//! command reads the fleet; `validate` needs none of them, and proves it.
use bluegreen_tests::fleet::{text, Fleet};
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
    assert!(text(&wrong_sha).contains(&app.sha256), "{}", text(&wrong_sha));

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
    std::fs::write(&spec, spec_text.replace("[health]", "[health]\nintervall = \"1s\"")).unwrap();
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

async fn etcd_revision(fleet: &Fleet) -> i64 {
    let status = fleet.client.clone().status().await.expect("etcd status");
    status.header().expect("header").revision()
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_plan_shows_what_a_deploy_would_do_and_writes_nothing() {
    let fleet = Fleet::start(2, 1).await;
    let spec = fleet.spec("good", &[]);
    let first = fleet.deploy(&spec, "v1", &[]).await;
    assert!(first.status.success(), "{}", text(&first));

    let before = etcd_revision(&fleet).await;
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
    assert_eq!(etcd_revision(&fleet).await, before, "--plan wrote to etcd");

    let same = fleet.deploy(&spec, "v1", &["--plan", "--output", "json"]).await;
    assert_eq!(same.status.code(), Some(0), "{}", text(&same));
    assert_eq!(json_doc(&same)["verdict"], "already-active");

    // A held lock: the deploy would wait for it and, unless it frees, exit 3.
    let lock = serde_json::json!({"deploy_id": "op-by-hand", "holder": "ci-runner-7:42",
        "operation": "deploy", "version": "v9", "acquired_at": "2026-12-04T00:00:00Z"});
    put_raw(&fleet.client, &keys().lock(), &lock.to_string()).await;
    let held = fleet.deploy(&spec, "v2", &["--plan"]).await;
    assert_eq!(held.status.code(), Some(3), "{}", text(&held));
    assert!(text(&held).contains("ci-runner-7:42"), "{}", text(&held));
    fleet.client.clone().delete(keys().lock(), None).await.unwrap();

    // No LB to follow the switch: refused, as the deploy would be (exit 1).
    let lb_less = Fleet::start(1, 0).await;
    let refused = lb_less
        .deploy(&lb_less.spec("good", &[]), "v1", &["--plan"])
        .await;
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("no LB"), "{}", text(&refused));
}
