//! The deploy's migration step behind the [`Migrator`] seam: applies pending expand migrations
//! after staging, then proves the old color still works on the expanded schema (its health and
//! smoke checks must pass), otherwise reverts them with their down scripts.
use super::runner::{self, Migrations, Recorder};
use crate::deploy::Migrator;
use crate::error::CoordinatorError;
use crate::fleet::{self, Failures};
use crate::lock::DeployLock;
use crate::probes::Probes;
use crate::progress::Progress;
use crate::spec::{AppSpec, SmokeCheck};
use crate::status::AppStatus;
use proto::Keys;

pub struct SchemaMigrator<'a, P> {
    pub migrations: &'a Migrations,
    pub client: &'a etcd_client::Client,
    pub keys: &'a Keys,
    pub lock: &'a DeployLock,
    pub spec: &'a AppSpec,
    pub probes: &'a P,
    pub progress: &'a Progress,
    pub op_id: &'a str,
}

impl<P: Probes> Migrator for SchemaMigrator<'_, P> {
    async fn expand(
        &self,
        state: &AppStatus,
        version: &str,
    ) -> Result<Result<(), Failures>, CoordinatorError> {
        let database = |why: String| Ok(Err(vec![("database".to_string(), why)]));
        let (mut store, plan) = match self.migrations.open_locked(true).await {
            Ok(opened) => opened,
            Err(e) => return database(e.to_string()),
        };
        let (run, contract) = plan.expand_run();
        if let Some(c) = contract {
            self.progress.event(
                "migrate",
                None,
                "contract pending",
                &format!(
                    "{} and later wait for `coordinator migrate contract`",
                    c.file.display()
                ),
            );
        }
        if run.is_empty() {
            self.progress
                .event("migrate", None, "up to date", "no pending expand migration");
            store.close().await;
            return Ok(Ok(()));
        }
        let rec = Recorder {
            client: self.client,
            keys: self.keys,
            fence: &self.lock.fence,
            progress: self.progress,
            deploy_id: self.op_id,
            app_version: version,
            database: &store.shown_url.clone(),
        };
        let applied = match runner::apply(&mut store, &run, &rec).await {
            Ok(applied) => applied,
            Err((applied, e)) => {
                // Expand migrations that did apply stay: they are safe for the old color, and a
                // retry continues from them.
                store.close().await;
                let kept = if applied.is_empty() {
                    String::new()
                } else {
                    format!(" (migrations {applied:?} before it stay applied)")
                };
                return database(format!("{e}{kept}"));
            }
        };
        let Some(active) = &state.active else {
            store.close().await;
            return Ok(Ok(()));
        };
        let mut checks = vec![SmokeCheck {
            path: self.spec.health.path.clone(),
            status: 200,
            json: Default::default(),
            timeout: self.spec.health.timeout,
            retries: 2,
        }];
        checks.extend(self.spec.smoke.iter().cloned());
        let hosts: Vec<_> = state.hosts.values().cloned().collect();
        let results = self
            .probes
            .smoke(&hosts, &checks, active.color, &active.version)
            .await;
        let Err(failed) = fleet::report_smoke(results, self.progress) else {
            store.close().await;
            return Ok(Ok(()));
        };
        // Named with the old color, so the report does not attach the new color's logs to them.
        let mut failed: Failures = failed
            .into_iter()
            .map(|(host, why)| (format!("{host} {}", active.color), why))
            .collect();
        self.progress.event(
            "migrate",
            None,
            "old color broke",
            &format!(
                "{} {} fails its checks on the expanded schema; reverting",
                active.color, active.version
            ),
        );
        let reverted = runner::revert(&mut store, self.migrations, &applied, &rec).await;
        store.close().await;
        reverted?;
        failed.push((
            "database".into(),
            format!(
                "{} {} failed its checks against the expanded schema; migrations {applied:?} were reverted with their down scripts",
                active.color, active.version
            ),
        ));
        Ok(Err(failed))
    }
}
