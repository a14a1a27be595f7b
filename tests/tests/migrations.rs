//! Migrations for real: `coordinator deploy` and `coordinator migrate` as processes, against a real
//! etcd, agents running the demo app, nginx + lb-sidecar, and a real database. Every scenario runs
//! on SQLite and on PostgreSQL (the throwaway cluster `deploy/test.sh` starts).
use bluegreen_tests::db::{Backend, TestDb};
use bluegreen_tests::fleet::{text, Fleet};
use bluegreen_tests::load::{self, LoadReport};
use bluegreen_tests::procs::{get_raw, keys, APP};
use proto::records::{decode, ActiveRecord, Desired, ReleaseRecord};
use proto::Color;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The app's repository, as far as migrations go: a directory of migration files.
struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new() -> Repo {
        Repo {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Copies one of `deploy/examples/migrations` (what the quickstart deploys).
    fn example(&self, name: &str) -> &Repo {
        let from = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/examples/migrations")
            .join(name);
        std::fs::copy(&from, self.path().join(name)).unwrap();
        self
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

const CREATE: &str = "0001_create_items.sql";
const DESCRIPTION: &str = "0002_add_item_description.sql";
const NOT_NULL: &str = "0003_require_item_description.sql";

async fn active(fleet: &Fleet) -> ActiveRecord {
    let key = keys().active();
    decode(&key, &get_raw(&fleet.client, &key).await.expect("active")).unwrap()
}

async fn release(fleet: &Fleet, color: Color) -> Option<ReleaseRecord> {
    let key = keys().release(color);
    get_raw(&fleet.client, &key)
        .await
        .map(|b| decode(&key, &b).unwrap())
}

fn assert_exit(out: &Output, code: i32, expect: &[&str]) {
    let all = text(out);
    assert_eq!(out.status.code(), Some(code), "{all}");
    for e in expect {
        assert!(all.contains(e), "expected {e:?} in:\n{all}");
    }
}

async fn migrate(fleet: &Fleet, action: &str, spec: &Path, extra: &[&str]) -> Output {
    let spec = spec.display().to_string();
    let mut args = vec!["migrate", action, "--spec", spec.as_str()];
    args.extend_from_slice(extra);
    fleet.run(&args).await
}

/// POSTs one item through the first LB and reads the newest items back: (environment, items).
async fn write_and_read(fleet: &Fleet, name: &str) -> (String, Vec<serde_json::Value>) {
    let http = reqwest::Client::new();
    let url = fleet.lbs[0].url("/api/v1/items");
    let created = http
        .post(&url)
        .json(&serde_json::json!({"name": name, "description": format!("about {name}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        created.status(),
        201,
        "POST {url}: {}",
        created.text().await.unwrap()
    );
    let list: serde_json::Value = http.get(&url).send().await.unwrap().json().await.unwrap();
    (
        list["environment"].as_str().unwrap().to_string(),
        list["items"].as_array().unwrap().clone(),
    )
}

/// A fleet (2 hosts, 1 LB) with v1 deployed on `db`, its schema from `0001` alone.
async fn fleet_with_v1(db: &TestDb, repo: &Repo) -> Fleet {
    let fleet = Fleet::start(2, 1).await;
    repo.example(CREATE);
    let spec = fleet.migration_spec("v1", &db.url, repo.path(), &[]);
    let out = fleet.deploy(&spec, "v1", &[]).await;
    assert_exit(&out, 0, &["0001_create_items.sql (expand)"]);
    assert_eq!(db.columns("items").await, ["id", "name"]);
    fleet
}

fn v2_env() -> [(&'static str, &'static str); 1] {
    [("FEATURE_FLAG_NEW_API", "1")]
}

async fn finish(stop: Arc<AtomicBool>, task: tokio::task::JoinHandle<LoadReport>) -> LoadReport {
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap()
}

/// Runs each scenario against SQLite and PostgreSQL.
macro_rules! on_both_databases {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::*;
            #[tokio::test(flavor = "multi_thread")]
            async fn sqlite() {
                super::$scenario(Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn postgres() {
                super::$scenario(Backend::Postgres).await
            }
        }
    )*};
}

on_both_databases!(
    expand_with_v2_keeps_v1_working_and_contract_waits_for_v1_to_go,
    destructive_expand_is_refused_before_anything_changes,
    migration_failing_midway_changes_nothing,
    old_color_failing_on_the_expanded_schema_reverts_it,
    refusals_name_the_file_and_up_is_idempotent,
    concurrent_migrators_apply_once,
    failed_migration_without_transaction_blocks_until_reverted,
);

async fn expand_with_v2_keeps_v1_working_and_contract_waits_for_v1_to_go(backend: Backend) {
    let db = TestDb::create(backend).await;
    let repo = Repo::new();
    let fleet = fleet_with_v1(&db, &repo).await;
    repo.example(DESCRIPTION).example(NOT_NULL);
    let spec = fleet.migration_spec("v2", &db.url, repo.path(), &v2_env());

    // v1 reads and writes through the LB for the whole deploy, migration included.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load::spawn_items(fleet.lbs[0].url(""), stop.clone());
    let out = fleet.deploy(&spec, "v2", &["--output", "json"]).await;
    let report = finish(stop, traffic).await;
    assert_exit(
        &out,
        0,
        &["0002_add_item_description.sql (expand)", "contract pending"],
    );
    println!(
        "v1 through the LB during the v2 deploy: {} ok, {} failed, by color {:?}",
        report.ok,
        report.failed.len(),
        report.colors
    );
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert!(report.colors.contains_key("blue"), "{:?}", report.colors);
    // The migration ran after staging and before the smoke checks, and the old color was checked
    // on the expanded schema.
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let position = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        events
            .iter()
            .position(pred)
            .unwrap_or_else(|| panic!("{events:#?}"))
    };
    let staged = position(&|e| e["step"] == "stage" && e["state"] == "healthy");
    let migrated = position(&|e| e["step"] == "migrate" && e["state"] == "applied");
    let smoked = position(&|e| e["step"] == "smoke");
    assert!(staged < migrated && migrated < smoked, "{events:#?}");
    assert_eq!(db.columns("items").await, ["id", "name", "description"]);
    assert_eq!(
        db.migration_rows().await,
        [(1, true, false), (2, true, false)]
    );

    // v2 reads and writes the new column.
    let (color, items) = write_and_read(&fleet, "from-v2").await;
    assert_eq!(color, "green");
    assert_eq!(items[0]["description"], "about from-v2");

    // Rollback to v1 works on the expanded schema.
    assert_exit(&fleet.run(&["rollback"]).await, 0, &[]);
    let (color, items) = write_and_read(&fleet, "from-v1").await;
    assert_eq!(color, "blue");
    assert_eq!(items[0]["name"], "from-v1");

    // The contract migration is refused while v1 runs, and changes nothing.
    let refused = migrate(&fleet, "contract", &spec, &[]).await;
    assert_exit(
        &refused,
        1,
        &[NOT_NULL, "releases/blue runs v1, older than v2"],
    );
    assert!(!db.not_null("items", "description").await);
    let status = text(&migrate(&fleet, "status", &spec, &[]).await);
    assert!(status.contains("contract gate: blocked"), "{status}");

    // Back on v2: v1 is now only the rollback target, and that still blocks the contract.
    assert_exit(&fleet.run(&["switch", "green"]).await, 0, &[]);
    assert_exit(
        &migrate(&fleet, "contract", &spec, &[]).await,
        1,
        &["releases/blue runs v1"],
    );
    // Stopping blue (the active color cannot be stopped) also clears the gate, and gives up the
    // rollback target, which `rollback` then says.
    assert_exit(&fleet.run(&["stop", "green"]).await, 2, &["active color"]);
    assert_exit(
        &fleet.run(&["stop", "blue"]).await,
        0,
        &["stopped blue (v1)"],
    );
    let status = text(&migrate(&fleet, "status", &spec, &[]).await);
    assert!(status.contains("contract gate: ready"), "{status}");
    assert_exit(&fleet.run(&["rollback"]).await, 1, &[]);
    // Blue redeployed with a version that no longer needs the column nullable: allowed.
    let out = fleet.deploy(&spec, "v3", &[]).await;
    assert_exit(&out, 0, &["up to date"]);
    assert_eq!(release(&fleet, Color::Blue).await.unwrap().version, "v3");
    let allowed = migrate(&fleet, "contract", &spec, &["--version", "v3"]).await;
    assert_exit(&allowed, 0, &["applied 1 migration(s): [3]"]);
    assert!(db.not_null("items", "description").await);
    let (color, _) = write_and_read(&fleet, "after-contract").await;
    assert_eq!(color, "blue");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM items WHERE description IS NULL")
            .await,
        0
    );
    let history = text(&fleet.run(&["history", "--limit", "50"]).await);
    for expect in [
        "0002_add_item_description.sql (expand) applied",
        "0003_require_item_description.sql (contract) applied",
    ] {
        assert!(history.contains(expect), "{expect}: {history}");
    }
}

async fn destructive_expand_is_refused_before_anything_changes(backend: Backend) {
    let db = TestDb::create(backend).await;
    let repo = Repo::new();
    let fleet = fleet_with_v1(&db, &repo).await;
    let file = repo.write(
        "0002_drop_name.sql",
        "-- phase: expand\n-- +up\nALTER TABLE items DROP COLUMN name;\n-- +down\nALTER TABLE items ADD COLUMN name TEXT;\n",
    );
    let spec = fleet.migration_spec("v2", &db.url, repo.path(), &v2_env());
    let history_before = text(&fleet.run(&["history", "--limit", "50"]).await);
    let out = fleet.deploy(&spec, "v2", &[]).await;
    assert_exit(
        &out,
        2,
        &[
            &file.display().to_string(),
            "DROP COLUMN name on items",
            "-- reason",
        ],
    );
    assert_eq!(active(&fleet).await.version, "v1");
    assert!(release(&fleet, Color::Green).await.is_none());
    assert_eq!(db.columns("items").await, ["id", "name"]);
    assert_eq!(db.migration_rows().await, [(1, true, false)]);
    assert_eq!(
        text(&fleet.run(&["history", "--limit", "50"]).await),
        history_before
    );
    assert!(text(&fleet.run(&["lock", "status"]).await).contains("free"));
    // `migrate up` applies the same gate.
    assert_exit(
        &migrate(&fleet, "up", &spec, &[]).await,
        2,
        &["DROP COLUMN"],
    );
}

async fn migration_failing_midway_changes_nothing(backend: Backend) {
    let db = TestDb::create(backend).await;
    let repo = Repo::new();
    let fleet = fleet_with_v1(&db, &repo).await;
    // The first statement is fine; the second has a syntax error.
    repo.write(
        "0002_half_done.sql",
        "-- phase: expand\n-- +up\nALTER TABLE items ADD COLUMN description TEXT;\nINSERT INTO items (name VALUES ('half');\n\
         -- +down\nALTER TABLE items DROP COLUMN description;\n",
    );
    let spec = fleet.migration_spec("v2", &db.url, repo.path(), &v2_env());
    let out = fleet.deploy(&spec, "v2", &[]).await;
    assert_exit(
        &out,
        1,
        &["0002_half_done.sql", "rolled back", "traffic stays on blue"],
    );
    assert_eq!(db.columns("items").await, ["id", "name"]);
    assert_eq!(db.migration_rows().await, [(1, true, false)]);
    let a = active(&fleet).await;
    assert_eq!((a.color, a.version.as_str()), (Color::Blue, "v1"));
    assert_eq!(
        release(&fleet, Color::Green).await.unwrap().desired,
        Desired::Stopped
    );
    let (color, _) = write_and_read(&fleet, "still-v1").await;
    assert_eq!(color, "blue");
    let history = text(&fleet.run(&["history"]).await);
    assert!(
        history.contains("0002_half_done.sql (expand) failed"),
        "{history}"
    );
}

async fn old_color_failing_on_the_expanded_schema_reverts_it(backend: Backend) {
    let db = TestDb::create(backend).await;
    let repo = Repo::new();
    let fleet = fleet_with_v1(&db, &repo).await;
    // A reason lets a destructive statement past the lint; the old color's checks still catch it.
    repo.write(
        "0002_rename_name.sql",
        "-- phase: expand\n-- reason: believed unused by v1 (it is not)\n-- +up\nALTER TABLE items RENAME COLUMN name TO title;\n\
         -- +down\nALTER TABLE items RENAME COLUMN title TO name;\n",
    );
    let spec = fleet.migration_spec("v2", &db.url, repo.path(), &v2_env());
    let out = fleet.deploy(&spec, "v2", &[]).await;
    assert_exit(
        &out,
        1,
        &[
            "allowed",
            "blue v1 failed its checks against the expanded schema",
            "reverted with their down scripts",
        ],
    );
    assert_eq!(db.columns("items").await, ["id", "name"]);
    // History is kept: the row stays, marked reverted.
    assert_eq!(
        db.migration_rows().await,
        [(1, true, false), (2, true, true)]
    );
    assert_eq!(active(&fleet).await.version, "v1");
    let (color, _) = write_and_read(&fleet, "v1-again").await;
    assert_eq!(color, "blue");
    let history = text(&fleet.run(&["history"]).await);
    assert!(
        history.contains("0002_rename_name.sql (expand) reverted"),
        "{history}"
    );
    let out = fleet.run(&["--output", "json", "history"]).await;
    let records: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON document");
    // The migration's recorded reason is in its history record's details.
    let reasons: Vec<&str> = records
        .as_array()
        .expect("an array of records")
        .iter()
        .filter_map(|r| r["record"]["details"]["reason"].as_str())
        .collect();
    assert!(
        reasons.contains(&"believed unused by v1 (it is not)"),
        "{records:#}"
    );
}

async fn refusals_name_the_file_and_up_is_idempotent(backend: Backend) {
    let db = TestDb::create(backend).await;
    let fleet = Fleet::start(0, 0).await;
    let repo = Repo::new();
    repo.example(CREATE).example(DESCRIPTION);
    let spec = fleet.migration_spec("ops", &db.url, repo.path(), &[]);
    assert_exit(
        &migrate(&fleet, "up", &spec, &["--version", "v2"]).await,
        0,
        &["applied 2 migration(s)"],
    );
    let rows = db.migration_rows().await;
    assert_eq!(rows, [(1, true, false), (2, true, false)]);
    // Idempotent: the second run changes nothing.
    assert_exit(
        &migrate(&fleet, "up", &spec, &[]).await,
        0,
        &["nothing to apply"],
    );
    assert_eq!(db.migration_rows().await, rows);
    assert_eq!(db.columns("items").await, ["id", "name", "description"]);

    // Checksum drift: an applied file edited afterwards.
    let applied = repo.path().join(DESCRIPTION);
    let original = std::fs::read_to_string(&applied).unwrap();
    std::fs::write(&applied, format!("{original}-- an innocent-looking edit\n")).unwrap();
    assert_exit(
        &migrate(&fleet, "up", &spec, &[]).await,
        2,
        &[
            &applied.display().to_string(),
            "edited after it was applied",
        ],
    );
    assert!(
        text(&migrate(&fleet, "status", &spec, &[]).await).contains("edited after it was applied")
    );
    // An applied version whose file is gone.
    std::fs::remove_file(&applied).unwrap();
    assert_exit(
        &migrate(&fleet, "up", &spec, &[]).await,
        2,
        &["version 2 (add_item_description) is applied but"],
    );
    std::fs::write(&applied, &original).unwrap();
    // A new file numbered below an applied one.
    let late = repo.write(
        "0000_late.sql",
        "-- phase: expand\n-- +up\nCREATE TABLE late (id INTEGER);\n-- +down\nDROP TABLE late;\n",
    );
    assert_exit(
        &migrate(&fleet, "up", &spec, &[]).await,
        2,
        &[&late.display().to_string(), "give it a version above 2"],
    );
    std::fs::remove_file(&late).unwrap();
    assert_eq!(db.migration_rows().await, rows);

    // `down` reverts the newest, keeps its row, and `up` applies it again as a new row.
    assert_exit(
        &migrate(&fleet, "down", &spec, &[]).await,
        0,
        &["reverted", DESCRIPTION],
    );
    assert_eq!(db.columns("items").await, ["id", "name"]);
    assert_exit(&migrate(&fleet, "up", &spec, &[]).await, 0, &["[2]"]);
    assert_eq!(
        db.migration_rows().await,
        [(1, true, false), (2, true, true), (2, true, false)]
    );
}

async fn concurrent_migrators_apply_once(backend: Backend) {
    let db = TestDb::create(backend).await;
    let fleet = Fleet::start(0, 0).await;
    let repo = Repo::new();
    repo.example(CREATE).example(DESCRIPTION);
    let spec = fleet.migration_spec("ops", &db.url, repo.path(), &[]);
    let spec_arg = spec.display().to_string();
    let args = ["migrate", "up", "--spec", spec_arg.as_str()];
    let (a, b) = tokio::join!(fleet.run(&args), fleet.run(&args));
    for out in [&a, &b] {
        assert_exit(out, 0, &[]);
    }
    let applied = [&a, &b]
        .iter()
        .filter(|o| text(o).contains("applied 2 migration(s)"))
        .count();
    let idle = [&a, &b]
        .iter()
        .filter(|o| text(o).contains("nothing to apply"))
        .count();
    assert_eq!((applied, idle), (1, 1), "{}\n{}", text(&a), text(&b));
    assert_eq!(
        db.migration_rows().await,
        [(1, true, false), (2, true, false)]
    );

    if backend == Backend::Postgres {
        // A migrator outside this etcd (another tool, another prefix) holds the database's
        // advisory lock: `migrate` waits `lock_wait`, then exits 3 naming the lock.
        let mut holder = db.connect().await;
        let key = coordinator::migrate::store::advisory_key(APP);
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut holder)
            .await
            .unwrap();
        assert_exit(
            &migrate(&fleet, "down", &spec, &[]).await,
            3,
            &["advisory lock", "held by backend pid"],
        );
        assert_eq!(db.columns("items").await, ["id", "name", "description"]);
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(key)
            .execute(&mut holder)
            .await
            .unwrap();
        assert_exit(&migrate(&fleet, "down", &spec, &[]).await, 0, &["reverted"]);
    }
}

async fn failed_migration_without_transaction_blocks_until_reverted(backend: Backend) {
    let db = TestDb::create(backend).await;
    let fleet = Fleet::start(0, 0).await;
    let repo = Repo::new();
    repo.example(CREATE);
    let broken = "-- phase: expand\n-- transaction: off\n-- +up\nCREATE TABLE tags (id INTEGER);\n\
                  INSERT INTO tags (id VALUES (1);\n-- +down\nDROP TABLE IF EXISTS tags;\n";
    let file = repo.write("0002_tags.sql", broken);
    let spec = fleet.migration_spec("ops", &db.url, repo.path(), &[]);
    assert_exit(
        &migrate(&fleet, "up", &spec, &[]).await,
        1,
        &[
            "statement 2 of 2 failed without a transaction",
            "migrate down",
        ],
    );
    // The first statement stayed, and the table says so.
    assert_eq!(db.columns("tags").await, ["id"]);
    assert_eq!(
        db.migration_rows().await,
        [(1, true, false), (2, false, false)]
    );
    assert_exit(
        &migrate(&fleet, "up", &spec, &[]).await,
        2,
        &[
            &file.display().to_string(),
            "failed on",
            "outside a transaction",
        ],
    );
    // `down` is the way out: it runs the down script and marks the row reverted.
    assert_exit(&migrate(&fleet, "down", &spec, &[]).await, 0, &["reverted"]);
    assert!(db.columns("tags").await.is_empty());
    // A fixed file then applies (a reverted row's checksum no longer binds the file).
    repo.write(
        "0002_tags.sql",
        &broken.replace("(id VALUES", "(id) VALUES"),
    );
    assert_exit(&migrate(&fleet, "up", &spec, &[]).await, 0, &["[2]"]);
    assert_eq!(db.count("SELECT COUNT(*) FROM tags").await, 1);
}

/// The large-table case: 100k rows, an expand migration that adds a column, and a backfill that
/// runs outside a transaction (one UPDATE; row locks only, so v1's reads and inserts go on).
#[tokio::test(flavor = "multi_thread")]
async fn backfill_of_100k_rows_on_postgres_keeps_v1_serving() {
    let db = TestDb::create(Backend::Postgres).await;
    let repo = Repo::new();
    let fleet = fleet_with_v1(&db, &repo).await;
    db.execute("INSERT INTO items (name) SELECT 'seed-' || g FROM generate_series(1, 100000) g")
        .await;
    repo.example(DESCRIPTION);
    repo.write(
        "0003_backfill_item_description.sql",
        "-- phase: expand\n-- transaction: off\n-- One statement: it commits on its own, and takes row locks only.\n\
         -- +up\nUPDATE items SET description = 'imported: ' || name WHERE description IS NULL;\n\
         -- +down\nSELECT 1;\n",
    );
    let spec = fleet.migration_spec("v2", &db.url, repo.path(), &v2_env());
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load::spawn_items(fleet.lbs[0].url(""), stop.clone());
    let started = std::time::Instant::now();
    let out = fleet.deploy(&spec, "v2", &[]).await;
    let deploy_time = started.elapsed();
    let report = finish(stop, traffic).await;
    assert_exit(&out, 0, &["0003_backfill_item_description.sql (expand)"]);
    let took = |version: i64| {
        let db = &db;
        async move {
            db.count(&format!(
                "SELECT execution_ms FROM schema_migrations WHERE version = {version}"
            ))
            .await
        }
    };
    println!(
        "100k rows: add column {} ms, backfill {} ms; whole deploy {:?}; v1+v2 through the LB \
         meanwhile: {} ok, {} failed, slowest {:?}, by color {:?}",
        took(2).await,
        took(3).await,
        deploy_time,
        report.ok,
        report.failed.len(),
        report.slowest,
        report.colors
    );
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM items WHERE name LIKE 'seed-%' AND description IS NULL")
            .await,
        0
    );
}

/// Migrations over TLS to the throwaway cluster (started with ssl=on by deploy/test-postgres.sh):
/// `sslmode=require` encrypts, `verify-full` with the cluster's CA also checks who answers, and
/// `verify-full` with another CA is refused before anything is applied.
#[tokio::test(flavor = "multi_thread")]
async fn migrations_run_over_postgres_tls() {
    let ca = std::env::var("BLUEGREEN_TEST_POSTGRES_CA")
        .expect("BLUEGREEN_TEST_POSTGRES_CA (set by deploy/test.sh)");
    let db = TestDb::create(Backend::Postgres).await;
    let fleet = Fleet::start(0, 0).await;
    let repo = Repo::new();
    repo.example(CREATE);
    let other_ca = bluegreen_tests::pki::Pki::new();
    let wrong = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        db.url,
        other_ca.ca().display()
    );
    let spec = fleet.migration_spec("wrong-ca", &wrong, repo.path(), &[]);
    let out = migrate(&fleet, "up", &spec, &["--version", "v1"]).await;
    assert_ne!(
        out.status.code(),
        Some(0),
        "a server the CA did not sign was trusted: {}",
        text(&out)
    );
    assert!(
        db.migration_rows().await.is_empty(),
        "nothing applied through an unverified server"
    );

    let verified = format!("{}?sslmode=verify-full&sslrootcert={ca}", db.url);
    let spec = fleet.migration_spec("verify-full", &verified, repo.path(), &[]);
    assert_exit(
        &migrate(&fleet, "up", &spec, &["--version", "v1"]).await,
        0,
        &["applied 1 migration(s)"],
    );
    repo.example(DESCRIPTION);
    let required = format!("{}?sslmode=require", db.url);
    let spec = fleet.migration_spec("require", &required, repo.path(), &[]);
    assert_exit(
        &migrate(&fleet, "up", &spec, &["--version", "v2"]).await,
        0,
        &["applied 1 migration(s)"],
    );
    assert_eq!(db.migration_rows().await.len(), 2);
}

/// Every lock-taking command closes an operation a dead coordinator left behind before its own
/// work (`deploy`, `promote`, `switch` and `rollback` always did; `stop`, `host remove`,
/// `lb remove` and `migrate` did not): the dead deploy gets its reconcile record and a terminal
/// phase, whatever the command then does, success or refusal.
#[tokio::test(flavor = "multi_thread")]
async fn every_lock_taking_command_reconciles_a_dead_operation_first() {
    let db = TestDb::create(Backend::Sqlite).await;
    let fleet = Fleet::start(0, 0).await;
    let repo = Repo::new();
    repo.example(CREATE);
    let spec = fleet.migration_spec("ops", &db.url, repo.path(), &[]);
    let spec_arg = spec.display().to_string();
    let commands: [(&[&str], i32); 4] = [
        (&["stop", "green"], 0),
        (&["host", "remove", "host-9", "--yes"], 2),
        (&["lb", "remove", "lb-9", "--yes"], 2),
        (&["migrate", "up", "--spec", &spec_arg], 0),
    ];
    for (i, (args, code)) in commands.into_iter().enumerate() {
        // What a coordinator killed while staging leaves: its deploy record, and no lock.
        let dead = proto::records::DeployRecord {
            deploy_id: format!("dead-{i}"),
            operation: proto::Operation::Deploy,
            phase: proto::Phase::Staging,
            from: None,
            to: Color::Blue,
            version: "v9".into(),
            token: 1,
            started_at: "2026-12-07T10:00:00Z".into(),
            updated_at: "2026-12-07T10:00:00Z".into(),
            error: None,
        };
        let deploy_key = keys().deploy();
        bluegreen_tests::procs::put_raw(&fleet.client, &deploy_key, &proto::records::encode(&dead))
            .await;
        let out = fleet.run(args).await;
        assert_exit(&out, code, &["reconcile"]);
        let history = bluegreen_tests::procs::history(&fleet.client).await;
        assert!(
            history
                .iter()
                .any(|h| h.kind == proto::Operation::Reconcile && h.deploy_id == dead.deploy_id),
            "{args:?} did not reconcile {}: {history:#?}",
            dead.deploy_id
        );
        let now: proto::records::DeployRecord = decode(
            &deploy_key,
            &get_raw(&fleet.client, &deploy_key).await.unwrap(),
        )
        .unwrap();
        assert_ne!(now.phase, proto::Phase::Staging, "{args:?}: {now:?}");
    }
}
