//! `coordinator deploy`: the pipeline of DESIGN.md §4. Everything before the switch leaves traffic
//! where it was; every write is fenced by the lock token, so a coordinator that lost its lock
//! (paused, partitioned) cannot change anything.
use crate::error::CoordinatorError;
use crate::fleet;
use crate::history;
use crate::lock::DeployLock;
use crate::migrate::runner::{self, Migrations, Recorder};
use crate::progress::Progress;
use crate::spec::AppSpec;
use crate::spec::SmokeCheck;
use crate::status::{self, AppStatus};
use crate::switch;
use proto::records::{
    encode, ActiveRecord, Artifact, DeployRecord, Desired, HealthState, ReleaseRecord, RunSpec,
};
use proto::{Color, Keys};
use std::time::Duration;
use tokio::time::Instant;

pub struct DeployArgs {
    pub version: String,
    pub artifact: Artifact,
    pub health_timeout: Option<Duration>,
    pub verify_for: Option<Duration>,
    pub keep_failed: bool,
}

/// Phases recorded in the `deploy` key, so a later coordinator can reconcile a dead one.
const FINISHED: [&str; 3] = ["done", "failed", "rolled_back"];

pub struct Deploy<'a> {
    pub client: &'a etcd_client::Client,
    pub keys: &'a Keys,
    pub spec: &'a AppSpec,
    pub lock: &'a DeployLock,
    pub progress: &'a Progress,
    pub deploy_id: String,
    /// The app's migrations, loaded and linted before the lock was taken.
    pub migrations: Option<&'a Migrations>,
}

impl Deploy<'_> {
    pub async fn run(&self, args: &DeployArgs) -> Result<String, CoordinatorError> {
        let state = status::read(self.client, self.keys).await?;
        self.reconcile(&state).await?;
        let from = state.active.as_ref().map(|a| a.color);
        let to = from.map_or(Color::Blue, Color::other);
        let hosts: Vec<String> = state.hosts.keys().cloned().collect();
        if hosts.is_empty() {
            return Err(CoordinatorError::Failed(
                "no host is registered: start the agents first".into(),
            ));
        }
        if let Some(active) = &state.active {
            if active.version == args.version
                && fleet::unhealthy(&state, active.color, &args.version).is_empty()
            {
                return Ok(format!(
                    "{} is already active and healthy on every host ({}); nothing to do",
                    args.version, active.color
                ));
            }
            let sick = fleet::unhealthy(&state, active.color, &active.version);
            if !sick.is_empty() {
                return Err(CoordinatorError::Failed(format!(
                    "preflight: active {} ({}) is not healthy on {}",
                    active.color,
                    active.version,
                    sick.join(", ")
                )));
            }
        }
        self.progress.event(
            "preflight",
            None,
            "ok",
            &format!(
                "{} host(s), {} -> {to}",
                hosts.len(),
                from.map_or("none".into(), |c| c.to_string())
            ),
        );

        let started_at = proto::time::now_rfc3339();
        let mut record = DeployRecord {
            deploy_id: self.deploy_id.clone(),
            phase: "staging".into(),
            from,
            to,
            version: args.version.clone(),
            token: self.lock.fence.token,
            started_at: started_at.clone(),
            updated_at: started_at,
            error: None,
        };
        self.put_deploy(&record).await?;
        let release = self.release(args, Desired::Running);
        self.lock
            .fence
            .put_all(
                self.client,
                &[(self.keys.release(to), encode(&release))],
                vec![],
            )
            .await?;
        self.progress.event(
            "stage",
            None,
            "written",
            &format!("releases/{to} = {}", args.version),
        );

        let timeout = args
            .health_timeout
            .unwrap_or(self.spec.health.startup_timeout + Duration::from_secs(30));
        if let Err(failed) = fleet::wait_healthy(
            self.client,
            self.keys,
            &hosts,
            to,
            &args.version,
            timeout,
            self.progress,
        )
        .await
        {
            return self.fail(&mut record, args, &state, failed, "health").await;
        }
        if let Some(migrations) = self.migrations {
            if let Err(failed) = self.migrate(migrations, &state, args).await? {
                return self
                    .fail(&mut record, args, &state, failed, "migrate")
                    .await;
            }
        }
        if let Some(active) = &state.active {
            let now = status::read(self.client, self.keys).await?;
            let sick = fleet::unhealthy(&now, active.color, &active.version);
            if !sick.is_empty() {
                let failed = sick
                    .into_iter()
                    .map(|h| {
                        (
                            h,
                            format!("active {} became unhealthy during staging", active.color),
                        )
                    })
                    .collect();
                return self
                    .fail(&mut record, args, &state, failed, "preflight")
                    .await;
            }
        }
        let host_records: Vec<_> = state.hosts.values().cloned().collect();
        if let Err(failed) = fleet::smoke(
            &host_records,
            &self.spec.smoke,
            to,
            &args.version,
            self.progress,
        )
        .await
        {
            return self.fail(&mut record, args, &state, failed, "smoke").await;
        }

        record.phase = "switching".into();
        self.put_deploy(&record).await?;
        record.phase = "switched".into();
        record.updated_at = proto::time::now_rfc3339();
        let active = ActiveRecord {
            color: to,
            version: args.version.clone(),
            deploy_id: self.deploy_id.clone(),
            token: self.lock.fence.token,
            switched_at: proto::time::now_rfc3339(),
        };
        let switched = switch::switch(
            self.client,
            self.keys,
            self.lock,
            state.active_mod_revision,
            &active,
            &record,
            self.progress,
        )
        .await;
        let revision = match switched {
            Ok(r) => r,
            Err(e) => {
                self.history("failed", from, to, &args.version, Some(e.to_string()))
                    .await?;
                return Err(e);
            }
        };

        let verify_for = args.verify_for.unwrap_or(self.spec.switch.verify_for);
        if !verify_for.is_zero() {
            if let Err(why) = self.verify_for(&hosts, to, &args.version, verify_for).await {
                return self
                    .switch_back(&mut record, from, to, args, revision, why)
                    .await;
            }
        }
        record.phase = "done".into();
        record.updated_at = proto::time::now_rfc3339();
        self.put_deploy(&record).await?;
        self.history("done", from, to, &args.version, None).await?;
        Ok(format!(
            "deployed {} to {to} on {} host(s); traffic on {to} at revision {revision}",
            args.version,
            hosts.len()
        ))
    }

    /// Applies pending expand migrations (after staging, before the smoke checks), then proves
    /// the old color still works on the expanded schema: its health and smoke checks must pass,
    /// otherwise the migrations are reverted with their down scripts. Ok(Err(..)) is a failure
    /// that left traffic and schema as they were; Err is one that needs a human (a failed revert).
    async fn migrate(
        &self,
        migrations: &Migrations,
        state: &AppStatus,
        args: &DeployArgs,
    ) -> Result<Result<(), Vec<(String, String)>>, CoordinatorError> {
        let database = |why: String| Ok(Err(vec![("database".to_string(), why)]));
        let (mut store, plan) = match migrations.open_locked(true).await {
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
            deploy_id: &self.deploy_id,
            app_version: &args.version,
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
        let old = fleet::smoke(
            &hosts,
            &checks,
            active.color,
            &active.version,
            self.progress,
        )
        .await;
        let Err(failed) = old else {
            store.close().await;
            return Ok(Ok(()));
        };
        // Named with the old color, so the report does not attach the new color's logs to them.
        let mut failed: Vec<(String, String)> = failed
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
        let reverted = runner::revert(&mut store, migrations, &applied, &rec).await;
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

    fn release(&self, args: &DeployArgs, desired: Desired) -> ReleaseRecord {
        ReleaseRecord {
            version: args.version.clone(),
            artifact: args.artifact.clone(),
            run: RunSpec {
                command: self.spec.run.command.clone(),
                env: self.spec.run.env.clone(),
                stop_timeout: self.spec.run.stop_timeout,
            },
            health: self.spec.health.clone(),
            desired,
            deploy_id: self.deploy_id.clone(),
            token: self.lock.fence.token,
        }
    }

    async fn put_deploy(&self, record: &DeployRecord) -> Result<(), CoordinatorError> {
        if let Some(reason) = self.lock.session.lost_reason() {
            return Err(CoordinatorError::Failed(format!(
                "deploy lock lost ({reason}); stopping without further writes"
            )));
        }
        self.lock
            .fence
            .put_all(self.client, &[(self.keys.deploy(), encode(record))], vec![])
            .await?;
        self.progress.event("phase", None, &record.phase, "");
        Ok(())
    }

    async fn history(
        &self,
        outcome: &str,
        from: Option<Color>,
        to: Color,
        version: &str,
        reason: Option<String>,
    ) -> Result<(), CoordinatorError> {
        let mut record = history::record("deploy", &self.deploy_id, outcome);
        record.from = from;
        record.to = Some(to);
        record.version = Some(version.to_string());
        record.reason = reason;
        history::append(self.client, self.keys, Some(&self.lock.fence), &record)
            .await
            .map(|_| ())
    }

    /// A deploy whose coordinator died left `deploy` in its phase: say what happened to it.
    async fn reconcile(&self, state: &AppStatus) -> Result<(), CoordinatorError> {
        let Some(previous) = &state.deploy else {
            return Ok(());
        };
        if FINISHED.contains(&previous.phase.as_str()) {
            return Ok(());
        }
        let switched = state
            .active
            .as_ref()
            .is_some_and(|a| a.deploy_id == previous.deploy_id);
        let outcome = if switched { "switched" } else { "not switched" };
        self.progress.event(
            "reconcile",
            None,
            outcome,
            &format!(
                "deploy {} was left in phase {}",
                previous.deploy_id, previous.phase
            ),
        );
        let mut finished = previous.clone();
        finished.phase = if switched { "done" } else { "failed" }.into();
        finished.error = Some(format!(
            "coordinator died in phase {}; reconciled by {}",
            previous.phase, self.deploy_id
        ));
        finished.updated_at = proto::time::now_rfc3339();
        self.put_deploy(&finished).await?;
        let mut record = history::record("reconcile", &previous.deploy_id, outcome);
        record.to = Some(previous.to);
        record.version = Some(previous.version.clone());
        record.reason = finished.error.clone();
        history::append(self.client, self.keys, Some(&self.lock.fence), &record)
            .await
            .map(|_| ())
    }

    /// Failure before the switch: traffic never moved. Stop the failed color (unless kept for
    /// debugging), attach the failing hosts' last log lines, record why, exit 1.
    async fn fail(
        &self,
        record: &mut DeployRecord,
        args: &DeployArgs,
        state: &AppStatus,
        failed: Vec<(String, String)>,
        step: &str,
    ) -> Result<String, CoordinatorError> {
        let to = record.to;
        let mut report = format!(
            "{step} failed for {} on {to}; traffic stays on {}",
            args.version,
            record.from.map_or("nothing".into(), |c| c.to_string())
        );
        for (host, why) in &failed {
            report.push_str(&format!("\n  {host}: {why}"));
            if let Some(h) = state.hosts.get(host) {
                match fleet::logs(h, to, 10).await {
                    Ok(lines) => lines
                        .iter()
                        .for_each(|l| report.push_str(&format!("\n    | {l}"))),
                    Err(e) => report.push_str(&format!("\n    (no logs: {e})")),
                }
            }
        }
        if !args.keep_failed {
            let stopped = self.release(args, Desired::Stopped);
            self.lock
                .fence
                .put_all(
                    self.client,
                    &[(self.keys.release(to), encode(&stopped))],
                    vec![],
                )
                .await?;
            self.progress.event(
                "cleanup",
                None,
                "stopped",
                &format!("releases/{to} desired=stopped"),
            );
        }
        record.phase = "failed".into();
        record.error = Some(report.clone());
        record.updated_at = proto::time::now_rfc3339();
        self.put_deploy(record).await?;
        self.history(
            "failed",
            record.from,
            to,
            &args.version,
            Some(report.clone()),
        )
        .await?;
        Err(CoordinatorError::Failed(report))
    }

    /// Watches the new color for `duration`; Err describes the first problem seen.
    async fn verify_for(
        &self,
        hosts: &[String],
        color: Color,
        version: &str,
        duration: Duration,
    ) -> Result<(), String> {
        self.progress.event(
            "verify-for",
            None,
            "watching",
            &humantime::format_duration(duration).to_string(),
        );
        let end = Instant::now() + duration;
        while Instant::now() < end {
            let state = status::read(self.client, self.keys)
                .await
                .map_err(|e| e.to_string())?;
            for host in hosts {
                let h = state.health.get(host).and_then(|m| m.get(&color));
                if !h.is_some_and(|h| h.state == HealthState::Healthy && h.version == version) {
                    let what = h.map_or("not reporting".to_string(), |h| {
                        format!(
                            "{} {}",
                            h.state.as_str(),
                            h.error.clone().unwrap_or_default()
                        )
                    });
                    return Err(format!("{host} {color}: {what}"));
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    async fn switch_back(
        &self,
        record: &mut DeployRecord,
        from: Option<Color>,
        to: Color,
        args: &DeployArgs,
        switched_at: i64,
        why: String,
    ) -> Result<String, CoordinatorError> {
        let Some(from) = from else {
            return Err(CoordinatorError::Unsafe(format!("{to} turned unhealthy after the first deploy and there is no color to go back to: {why}")));
        };
        self.progress.event("verify-for", None, "failed", &why);
        let state = status::read(self.client, self.keys).await?;
        let old = state
            .releases
            .get(&from)
            .map(|r| r.version.clone())
            .unwrap_or_default();
        let active = ActiveRecord {
            color: from,
            version: old,
            deploy_id: self.deploy_id.clone(),
            token: self.lock.fence.token,
            switched_at: proto::time::now_rfc3339(),
        };
        record.phase = "rolled_back".into();
        record.error = Some(why.clone());
        record.updated_at = proto::time::now_rfc3339();
        let seen = if state.active_mod_revision > 0 {
            state.active_mod_revision
        } else {
            switched_at
        };
        switch::switch(
            self.client,
            self.keys,
            self.lock,
            seen,
            &active,
            record,
            self.progress,
        )
        .await
        .map_err(|e| {
            CoordinatorError::Unsafe(format!(
                "{to} turned unhealthy ({why}) and switching back to {from} failed: {e}"
            ))
        })?;
        self.history(
            "rolled_back",
            Some(from),
            to,
            &args.version,
            Some(why.clone()),
        )
        .await?;
        Err(CoordinatorError::Failed(format!(
            "{} on {to} turned unhealthy during --verify-for ({why}); switched back to {from}",
            args.version
        )))
    }
}
