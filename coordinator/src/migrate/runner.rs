//! What `deploy` and the `migrate` commands share: loading and linting an app's migrations before
//! any lock is taken, opening the database under its lock, applying and reverting migrations, and
//! reporting each one as a progress event and a `history` record.
use super::files::{self, Db, Migration, Phase};
use super::lint::destructive_statements;
use super::plan::Plan;
use super::store::{Applier, ApplyError, LockError, Store};
use crate::error::{CoordinatorError, Subject};
use crate::history;
use crate::progress::Progress;
use crate::spec::{AppSpec, MigrationsSection};
use proto::fence::Fence;
use proto::Keys;
use std::path::PathBuf;

/// An app's migrations: the files (parsed and linted) and the database they change.
pub struct Migrations {
    pub app: String,
    pub dir: PathBuf,
    pub files: Vec<Migration>,
    pub section: MigrationsSection,
    pub db: Db,
    url: String,
}

impl Migrations {
    /// None when the spec has no `[migrations]`. Every error is bad input (exit 2) naming the
    /// file, found before anything is locked or written: an unreadable file, a missing down
    /// script, or an expand migration with a destructive statement and no recorded reason.
    pub fn load(
        spec: &AppSpec,
        progress: &Progress,
    ) -> Result<Option<Migrations>, CoordinatorError> {
        let (Some(section), Some(dir)) = (&spec.migrations, spec.migrations_dir()) else {
            return Ok(None);
        };
        let url = section.resolved_url().map_err(CoordinatorError::usage)?;
        let db =
            Db::of_url(&url).map_err(|e| CoordinatorError::usage(format!("migrations.{e}")))?;
        let files = files::load_dir(&dir).map_err(CoordinatorError::usage)?;
        for m in files.iter().filter(|m| m.phase == Phase::Expand) {
            let findings = destructive_statements(m.up.for_db(db), db)
                .map_err(|e| Subject::File(m.file.clone()).usage(e))?;
            if findings.is_empty() {
                continue;
            }
            match &m.reason {
                Some(reason) => progress.event(
                    "lint",
                    None,
                    "allowed",
                    &format!(
                        "{}: {} (reason: {reason})",
                        m.file.display(),
                        findings.join("; ")
                    ),
                ),
                None => {
                    return Err(Subject::File(m.file.clone()).usage(format!(
                        "an expand migration must leave the running version working, but it has: {}. \
                         Move it to a contract migration, or record why it is safe with `-- reason: …`",
                        findings.join("; ")
                    )))
                }
            }
        }
        Ok(Some(Migrations {
            app: spec.app.clone(),
            dir,
            files,
            section: section.clone(),
            db,
            url,
        }))
    }

    pub async fn connect(&self) -> Result<Store, CoordinatorError> {
        Store::connect(&self.url, self.section.lock_timeout)
            .await
            .map_err(CoordinatorError::usage)
    }

    pub async fn plan(&self, store: &mut Store) -> Result<Plan, CoordinatorError> {
        let rows = store.rows().await.map_err(CoordinatorError::failed)?;
        Ok(Plan::new(
            &self.files,
            &rows,
            &self.dir.display().to_string(),
        ))
    }

    /// Why `version` may not run against this database any more (see
    /// [`super::gate::contract_forbids`]); empty when it may. Reads the database, changes nothing.
    pub async fn forbidding(&self, version: &str) -> Result<Vec<String>, CoordinatorError> {
        let mut store = self.connect().await?;
        let rows = store.rows().await.map_err(CoordinatorError::failed);
        store.close().await;
        Ok(super::gate::contract_forbids(version, &self.files, &rows?))
    }

    /// Read-only check before the deploy lock: the database answers and nothing stops a forward
    /// migration (exit 2 otherwise, with nothing changed).
    pub async fn precheck(&self) -> Result<Plan, CoordinatorError> {
        let mut store = self.connect().await?;
        let plan = self.plan(&mut store).await;
        store.close().await;
        let plan = plan?;
        plan.check().map_err(CoordinatorError::usage)?;
        Ok(plan)
    }

    /// The database under its migration lock, with `schema_migrations` in place, and the plan read
    /// under that lock. `forward` refuses failures too (only `down` may start from one).
    pub async fn open_locked(&self, forward: bool) -> Result<(Store, Plan), CoordinatorError> {
        let mut store = self.connect().await?;
        match self.locked_plan(&mut store, forward).await {
            Ok(plan) => Ok((store, plan)),
            Err(e) => {
                store.close().await;
                Err(e)
            }
        }
    }

    async fn locked_plan(
        &self,
        store: &mut Store,
        forward: bool,
    ) -> Result<Plan, CoordinatorError> {
        store
            .lock(&self.app, self.section.lock_wait)
            .await
            .map_err(|e| match e {
                LockError::Timeout(e) => CoordinatorError::LockTimeout(e.into()),
                LockError::Database(e) => CoordinatorError::failed(e),
            })?;
        store
            .ensure_table()
            .await
            .map_err(CoordinatorError::failed)?;
        let plan = self.plan(store).await?;
        let checked = if forward {
            plan.check()
        } else {
            plan.check_revertible()
        };
        checked.map_err(CoordinatorError::usage)?;
        Ok(plan)
    }
}

/// Reports each apply and revert: a progress line and an immutable history record.
pub struct Recorder<'a> {
    pub client: &'a etcd_client::Client,
    pub keys: &'a Keys,
    pub fence: &'a Fence,
    pub progress: &'a Progress,
    pub deploy_id: &'a str,
    pub app_version: &'a str,
    pub database: &'a str,
}

impl Recorder<'_> {
    pub fn applier(&self) -> Applier<'_> {
        Applier {
            app_version: self.app_version,
            deploy_id: self.deploy_id,
        }
    }

    async fn record(
        &self,
        m: &Migration,
        outcome: proto::Outcome,
        ms: Option<i64>,
        error: Option<&str>,
    ) -> Result<(), CoordinatorError> {
        let file = m.file.file_name().map_or_else(
            || m.file.display().to_string(),
            |f| f.to_string_lossy().into_owned(),
        );
        let took = ms.map(|ms| format!(" in {ms} ms")).unwrap_or_default();
        let summary = format!("{file} ({}) {outcome}{took}", m.phase.as_str());
        self.progress.event(
            "migrate",
            None,
            outcome.as_str(),
            &format!("{file} ({}){took}", m.phase.as_str()),
        );
        let mut record = history::record(proto::Operation::Migrate, self.deploy_id, outcome);
        record.version = (!self.app_version.is_empty()).then(|| self.app_version.to_string());
        record.reason = Some(match error {
            Some(e) => format!("{summary}: {e}"),
            None => summary,
        });
        record.details = serde_json::json!({
            "migration": m.version, "name": m.name, "phase": m.phase.as_str(),
            "checksum": m.checksum, "execution_ms": ms, "database": self.database,
            // Why a destructive statement was let into an expand migration, kept with the apply.
            "reason": m.reason,
        });
        history::append(self.client, self.keys, Some(self.fence), &record)
            .await
            .map(|_| ())
    }
}

/// Applies `run` in order, stopping at the first failure. Ok: the versions applied.
/// Err: those applied before the failure, and the failure.
pub async fn apply(
    store: &mut Store,
    run: &[&Migration],
    rec: &Recorder<'_>,
) -> Result<Vec<i64>, (Vec<i64>, CoordinatorError)> {
    let mut applied = Vec::new();
    for m in run {
        match store.apply(m, &rec.applier()).await {
            Ok(ms) => {
                if let Err(e) = rec.record(m, proto::Outcome::Applied, Some(ms), None).await {
                    applied.push(m.version);
                    return Err((applied, e));
                }
                applied.push(m.version);
            }
            Err(ApplyError { message, partial }) => {
                let _ = rec
                    .record(m, proto::Outcome::Failed, None, Some(&message))
                    .await;
                let message = if partial {
                    format!("{message}\n  its earlier statements stayed applied and schema_migrations marks it failed: repair the schema, then `coordinator migrate down`")
                } else {
                    message
                };
                return Err((applied, CoordinatorError::failed(message)));
            }
        }
    }
    Ok(applied)
}

/// Reverts `versions` newest first with their down scripts; each row is kept, marked reverted.
pub async fn revert(
    store: &mut Store,
    migrations: &Migrations,
    versions: &[i64],
    rec: &Recorder<'_>,
) -> Result<(), CoordinatorError> {
    let plan = migrations.plan(store).await?;
    for version in versions.iter().rev() {
        let Some(entry) = plan
            .entries
            .iter()
            .find(|e| e.migration.version == *version)
        else {
            continue;
        };
        let Some(row) = &entry.row else { continue };
        match store.revert(&entry.migration, row.id).await {
            Ok(ms) => {
                rec.record(&entry.migration, proto::Outcome::Reverted, Some(ms), None)
                    .await?
            }
            Err(e) => {
                let _ = rec
                    .record(
                        &entry.migration,
                        proto::Outcome::RevertFailed,
                        None,
                        Some(&e.message),
                    )
                    .await;
                return Err(CoordinatorError::unsafe_state(format!(
                    "reverting {}: {}",
                    entry.migration.file.display(),
                    e.message
                )));
            }
        }
    }
    Ok(())
}
