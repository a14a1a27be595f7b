//! `coordinator migrate status|up|contract|down --spec FILE`: the operator's handle on an app's
//! migrations. Changes run under the etcd deploy lock (so never during a deploy) and the
//! database's own lock, and each apply or revert is a `history` record.
use crate::context::{load_spec, parse_duration, pretty_json, Global};
use crate::error::{CoordinatorError, Subject};
use crate::locked::{with_lock, LockFor};
use crate::migrate::files::Phase;
use crate::migrate::gate::{contract_blockers, natural_cmp, running_versions};
use crate::migrate::plan::{Plan, State};
use crate::migrate::runner::{self, Migrations, Recorder};
use crate::progress::Progress;
use crate::status;
use std::cmp::Ordering;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum Action {
    /// Every migration's state, problems, and whether pending contract migrations may run.
    Status {
        /// The app spec naming the migrations and the database.
        #[arg(long)]
        spec: PathBuf,
    },
    /// Apply pending expand migrations (up to the first contract one).
    Up(Flags),
    /// Apply every pending migration; contract ones only if every running color is new enough.
    Contract(Flags),
    /// Revert the newest applied migration with its down script.
    Down {
        #[command(flatten)]
        flags: Flags,
        /// Revert an expand migration even while a color runs the version it came with.
        #[arg(long)]
        force: bool,
    },
}

#[derive(clap::Args)]
pub struct Flags {
    /// The app spec naming the migrations and the database.
    #[arg(long)]
    spec: PathBuf,
    /// How long to wait for another operation's deploy lock before giving up (exit 3).
    #[arg(long, default_value = "30s")]
    lock_wait: String,
    /// The app version these migrations come with, recorded in schema_migrations.
    #[arg(long)]
    version: Option<String>,
}

impl Flags {
    fn request(self, force: bool) -> Result<MigrateRequest, CoordinatorError> {
        Ok(MigrateRequest {
            spec: self.spec,
            lock_wait: parse_duration("--lock-wait", &self.lock_wait)?,
            app_version: self.version,
            force,
        })
    }
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Status { .. } => "migrate status",
            Action::Up(_) => "migrate up",
            Action::Contract(_) => "migrate contract",
            Action::Down { .. } => "migrate down",
        }
    }

    pub fn is_query(&self) -> bool {
        matches!(self, Action::Status { .. })
    }

    pub async fn run(self, global: &Global) -> Result<String, CoordinatorError> {
        match self {
            Action::Status { spec } => show(global, &spec).await,
            Action::Up(flags) => change(global, flags.request(false)?, Direction::Up).await,
            Action::Contract(flags) => {
                change(global, flags.request(false)?, Direction::Contract).await
            }
            Action::Down { flags, force } => {
                change(global, flags.request(force)?, Direction::Down).await
            }
        }
    }
}

pub struct MigrateRequest {
    pub spec: PathBuf,
    pub lock_wait: Duration,
    /// Recorded in each row as the app version the migration came with.
    pub app_version: Option<String>,
    /// `down`: revert even while a color runs the version that brought the migration.
    pub force: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Pending expand migrations, up to the first contract one.
    Up,
    /// Every pending migration, contract ones gated on what runs.
    Contract,
    /// The newest applied (or failed) migration, with its down script.
    Down,
}

fn load(
    global: &Global,
    spec: &std::path::Path,
    progress: &Progress,
) -> Result<(crate::spec::AppSpec, Migrations), CoordinatorError> {
    let spec_file = load_spec(global.app.as_deref(), spec)?;
    let migrations = Migrations::load(&spec_file, progress)?
        .ok_or_else(|| Subject::Spec(spec.to_path_buf()).usage("has no [migrations] section"))?;
    Ok((spec_file, migrations))
}

/// `migrate up|contract|down`.
pub async fn change(
    global: &Global,
    req: MigrateRequest,
    direction: Direction,
) -> Result<String, CoordinatorError> {
    let progress = global.progress();
    let (spec, migrations) = load(global, &req.spec, &progress)?;
    let keys = proto::Keys::new(&global.prefix, &spec.app)?;
    let client = global.connect().await?;
    let id = format!("migrate-{}", uuid::Uuid::new_v4());
    let op = LockFor::new(&id, proto::Operation::Migrate, req.lock_wait)
        .version(req.app_version.as_deref())
        .finish_on_lease_loss();
    with_lock(
        global,
        &client,
        &keys,
        op,
        &progress,
        async |locked, running| {
            let (mut store, plan) = migrations.open_locked(direction != Direction::Down).await?;
            let database = store.shown_url.clone();
            let rec = Recorder {
                client: &client,
                keys: &keys,
                fence: &locked.lock.fence,
                progress: &progress,
                deploy_id: &id,
                app_version: req.app_version.as_deref().unwrap_or(""),
                database: &database,
            };
            let outcome = match direction {
                Direction::Down => {
                    down(&mut store, &migrations, &plan, &running, &rec, req.force).await
                }
                _ => forward(&mut store, &plan, &running, &rec, direction).await,
            };
            store.close().await;
            outcome
        },
    )
    .await
}

async fn forward(
    store: &mut crate::migrate::store::Store,
    plan: &Plan,
    running: &status::AppStatus,
    rec: &Recorder<'_>,
    direction: Direction,
) -> Result<String, CoordinatorError> {
    let (run, waiting) = if direction == Direction::Contract {
        (plan.pending().map(|e| &e.migration).collect(), None)
    } else {
        plan.expand_run()
    };
    if direction == Direction::Contract {
        let mut refusals = Vec::new();
        for m in run.iter().filter(|m| m.phase == Phase::Contract) {
            let requires = m.requires.as_deref().unwrap_or_default();
            let blockers = contract_blockers(running, requires);
            if !blockers.is_empty() {
                refusals.push(format!(
                    "{} (requires {requires}) refused: {}",
                    m.file.display(),
                    blockers.join("; ")
                ));
            }
        }
        if !refusals.is_empty() {
            return Err(CoordinatorError::failed(format!(
                "contract refused, nothing applied: a color that runs or may run again (the rollback \
                 target included) still needs what it removes. Deploy a newer version to that \
                 color first.\n  {}",
                refusals.join("\n  ")
            )));
        }
    }
    let applied = runner::apply(store, &run, rec).await.map_err(|(_, e)| e)?;
    let mut out = if applied.is_empty() {
        "nothing to apply: the database is up to date".to_string()
    } else {
        format!("applied {} migration(s): {applied:?}", applied.len())
    };
    if let Some(c) = waiting {
        out.push_str(&format!(
            "\n{} is a contract migration: it and everything after it wait for `coordinator migrate contract`",
            c.file.display()
        ));
    }
    Ok(out)
}

async fn down(
    store: &mut crate::migrate::store::Store,
    migrations: &Migrations,
    plan: &Plan,
    running: &status::AppStatus,
    rec: &Recorder<'_>,
    force: bool,
) -> Result<String, CoordinatorError> {
    let Some(entry) = plan.newest_applied() else {
        return Ok("nothing to revert: no migration is applied".into());
    };
    let row = entry.row.as_ref().expect("an applied entry has its row");
    if entry.migration.phase == Phase::Expand && !row.app_version.is_empty() && !force {
        let users: Vec<String> = running_versions(running)
            .into_iter()
            .filter(|(_, v)| natural_cmp(v, &row.app_version) != Ordering::Less)
            .map(|(place, v)| format!("{place} runs {v}"))
            .collect();
        if !users.is_empty() {
            let file = Subject::File(entry.migration.file.clone());
            return Err(file.failed(format!(
                "came with {} and may be in use: {}. Move those colors to an older version first, \
                 or pass --force",
                row.app_version,
                users.join("; ")
            )));
        }
    }
    runner::revert(store, migrations, &[entry.migration.version], rec).await?;
    Ok(format!(
        "reverted {} with its down script; its schema_migrations row is kept, marked reverted",
        entry.migration.file.display()
    ))
}

/// `migrate status`: every migration's state, what stops a migrator, and whether each pending
/// contract migration may run now. Read-only; takes no lock.
pub async fn show(global: &Global, spec: &std::path::Path) -> Result<String, CoordinatorError> {
    // A query prints one JSON document: lint notes go to text output only.
    let progress = if global.json {
        Progress::silent()
    } else {
        global.progress()
    };
    let (spec_file, migrations) = load(global, spec, &progress)?;
    let mut store = migrations.connect().await?;
    let plan = migrations.plan(&mut store).await;
    let database = store.shown_url.clone();
    store.close().await;
    let plan = plan?;
    // The contract gate needs etcd; without it, say so rather than fail the whole status.
    let keys = proto::Keys::new(&global.prefix, &spec_file.app)?;
    let running = match global.connect().await {
        Ok(client) => status::read(&client, &keys)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let gate = |requires: &str| match &running {
        Ok(s) => {
            let b = contract_blockers(s, requires);
            if b.is_empty() {
                "ready".to_string()
            } else {
                format!("blocked: {}", b.join("; "))
            }
        }
        Err(e) => format!("unknown ({e})"),
    };
    if global.json {
        let list: Vec<serde_json::Value> = plan
            .entries
            .iter()
            .map(|e| {
                let m = &e.migration;
                serde_json::json!({
                    "version": m.version, "name": m.name, "file": m.file, "phase": m.phase.as_str(),
                    "state": e.state, "checksum": m.checksum, "requires": m.requires,
                    "row": e.row,
                    "contract_gate": (e.state == State::Pending && m.phase == Phase::Contract)
                        .then(|| gate(m.requires.as_deref().unwrap_or_default())),
                })
            })
            .collect();
        let doc = serde_json::json!({
            "database": database, "dir": migrations.dir, "migrations": list,
            "orphans": plan.orphans, "problems": plan.problems, "failures": plan.failures,
        });
        return Ok(pretty_json(&doc));
    }
    let mut out = format!(
        "migrations of {} in {} ({})\n",
        spec_file.app,
        migrations.dir.display(),
        database
    );
    for e in &plan.entries {
        let m = &e.migration;
        let detail = match (&e.state, &e.row) {
            (State::Applied, Some(r)) => format!(
                "applied {} for {} ({}) in {} ms",
                r.applied_at,
                if r.app_version.is_empty() {
                    "-"
                } else {
                    &r.app_version
                },
                r.deploy_id,
                r.execution_ms
            ),
            (State::Failed, Some(r)) => format!("FAILED {}", r.applied_at),
            (State::Pending, Some(r)) => format!(
                "pending (reverted {})",
                r.reverted_at.as_deref().unwrap_or("?")
            ),
            _ => "pending".to_string(),
        };
        let gate_note = if e.state == State::Pending && m.phase == Phase::Contract {
            format!(
                "; contract gate: {}",
                gate(m.requires.as_deref().unwrap_or_default())
            )
        } else {
            String::new()
        };
        out.push_str(&format!(
            "  {:04} {:<32} {:<8} {detail}{gate_note}\n",
            m.version,
            m.name,
            m.phase.as_str()
        ));
    }
    for p in plan.problems.iter().chain(&plan.failures) {
        out.push_str(&format!("problem: {p}\n"));
    }
    Ok(out)
}
