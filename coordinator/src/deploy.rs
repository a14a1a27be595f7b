//! `coordinator deploy`: the thin loop that runs the pipeline of [`crate::pipeline`]. Each step
//! goes through a seam ([`Store`], [`Probes`], [`Migrator`]) and [`pipeline::next`] decides what
//! follows. Everything before the switch leaves traffic where it was; every write is fenced by the
//! lock token, so a coordinator that lost its lock (paused, partitioned) cannot change anything.
use crate::error::CoordinatorError;
use crate::fleet::{self, Failures, LbPolicy};
use crate::history;
use crate::hooks::{self, Hook, HookContext};
use crate::pipeline::{self, Intent, Next, Plan, Preflight, Step};
use crate::probes::Probes;
use crate::progress::Progress;
use crate::report::Side;
use crate::spec::AppSpec;
use crate::status::AppStatus;
use crate::store::{Store, Write};
use crate::traffic;
use proto::records::{
    ActiveRecord, Artifact, DeployRecord, Desired, LbRecord, ReleaseRecord, ReleaseSnapshot,
    RunSpec, TrafficRecord,
};
use proto::{Color, Operation, Outcome, Phase};
use std::collections::BTreeMap;
use std::time::Duration;

pub struct DeployArgs {
    pub version: String,
    pub artifact: Artifact,
    pub health_timeout: Option<Duration>,
    pub verify_for: Option<Duration>,
    pub keep_failed: bool,
    pub lb_policy: LbPolicy,
    /// Stop once staged and checked; `promote` switches.
    pub no_switch: bool,
    /// Ramp traffic to the new color by the spec's `[canary]` steps before the switch.
    pub canary: bool,
}

/// What `promote` takes from its command line (the version comes from the staged deploy).
pub struct PromoteArgs {
    pub health_timeout: Option<Duration>,
    pub verify_for: Option<Duration>,
    pub keep_failed: bool,
    pub lb_policy: LbPolicy,
}

/// The schema seam: applies pending expand migrations after staging and proves the old color on
/// the expanded schema. Ok(Err) is a failure that left traffic and schema as they were; Err is one
/// that needs a human (a failed revert).
#[allow(async_fn_in_trait)]
pub trait Migrator {
    async fn expand(
        &self,
        state: &AppStatus,
        version: &str,
    ) -> Result<Result<(), Failures>, CoordinatorError>;
}

/// For deploys of apps without `[migrations]`.
pub struct NoMigrations;

impl Migrator for NoMigrations {
    async fn expand(
        &self,
        _: &AppStatus,
        _: &str,
    ) -> Result<Result<(), Failures>, CoordinatorError> {
        Ok(Ok(()))
    }
}

pub struct Deploy<'a, S, P, M> {
    pub store: &'a S,
    pub probes: &'a P,
    /// `None` when the spec has no `[migrations]`.
    pub migrator: Option<&'a M>,
    pub spec: &'a AppSpec,
    pub progress: &'a Progress,
    /// The operation id: the lock, `deploy`, `active` and history all carry it.
    pub op_id: String,
    /// Signs the release so agents with trusted keys run it.
    pub signing_key: Option<&'a proto::signing::SigningKey>,
}

/// What the loop carries from step to step.
struct Run<'s> {
    plan: Plan,
    state: AppStatus,
    record: DeployRecord,
    args: &'s DeployArgs,
    /// The switch's revision once `active` was written: from then on, errors are unsafe.
    switched_at: Option<i64>,
    acks: BTreeMap<String, LbRecord>,
    failures: Failures,
}

impl<S: Store, P: Probes, M: Migrator> Deploy<'_, S, P, M> {
    /// A deploy from `state`, the app as the lock holder found it after reconciling
    /// ([`crate::locked::run_locked`]).
    pub async fn run(
        &self,
        state: AppStatus,
        args: &DeployArgs,
    ) -> Result<String, CoordinatorError> {
        let intent = Intent {
            version: args.version.clone(),
            lb_policy: args.lb_policy,
            migrations: self.migrator.is_some(),
            verify_for: args.verify_for.unwrap_or(self.spec.switch.verify_for),
            no_switch: args.no_switch,
            canary: args.canary,
        };
        let plan = match pipeline::preflight(&state, &intent) {
            Preflight::AlreadyActive(message) => return Ok(message),
            Preflight::Refuse(why) => return Err(CoordinatorError::failed(why)),
            Preflight::Go(plan) => plan,
        };
        self.record_movement(&state, &plan, &args.version);
        let shown_from = plan.from.map_or("none".into(), |c| c.to_string());
        let pre_deploy = self
            .hook(&state, &plan, &args.version, Hook::PreDeploy)
            .await;
        pre_deploy.map_err(|why| {
            CoordinatorError::failed(format!(
                "{why}\nnothing was changed; traffic stays on {shown_from}"
            ))
        })?;
        self.progress.event(
            "preflight",
            None,
            "ok",
            &format!(
                "{} host(s), {} LB(s), {shown_from} -> {}",
                plan.hosts.len(),
                plan.lbs.len(),
                plan.to
            ),
        );
        self.drain(&state, plan.to).await?;
        let record = self.open_record(Operation::Deploy, &plan, &args.version);
        let release = self.release(args, plan.to, Desired::Running);
        self.store
            .put(
                &[
                    Write::Deploy(record.clone()),
                    Write::Release(plan.to, release),
                ],
                None,
            )
            .await?;
        self.progress.event(
            "stage",
            None,
            "written",
            &format!("releases/{} = {}", plan.to, args.version),
        );
        let run = Run {
            plan,
            state,
            record,
            args,
            switched_at: None,
            acks: BTreeMap::new(),
            failures: Vec::new(),
        };
        self.drive(run).await
    }

    /// Before `color` is replaced: the requests LBs still hold open to it (websockets,
    /// streams, kept there since the switch away from it) get up to `[switch] drain_timeout` to
    /// finish. Then it is replaced anyway; its agent stops the old version with `stop_timeout`.
    async fn drain(&self, state: &AppStatus, color: Color) -> Result<(), CoordinatorError> {
        if state.open_connections(color).is_empty() {
            return Ok(());
        }
        let timeout = self.spec.switch.drain_timeout;
        let shown = |open: &BTreeMap<String, u64>| {
            open.iter()
                .map(|(lb, n)| format!("{n} on {lb}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let left = crate::fleet::wait_drained(self.store, color, timeout, |open| {
            self.progress.event(
                "drain",
                None,
                "waiting",
                &format!(
                    "{color} still has open requests ({}); waiting up to {} before replacing it",
                    shown(open),
                    humantime::format_duration(timeout)
                ),
            )
        })
        .await?;
        if left.is_empty() {
            self.progress.event(
                "drain",
                None,
                "ok",
                &format!("{color} has no open request left"),
            );
        } else {
            self.progress.event(
                "drain",
                None,
                "timeout",
                &format!(
                    "{color} still has open requests after {} ({}): replacing it; its agent stops it with run.stop_timeout",
                    humantime::format_duration(timeout),
                    shown(&left)
                ),
            );
        }
        Ok(())
    }

    /// `coordinator promote`: switches to the version a `deploy --no-switch` staged, after the
    /// same checks again (the fleet may have changed since): every host healthy on it, the
    /// active color still serving, the smoke checks. Migrations ran when it was staged.
    pub async fn promote(
        &self,
        state: AppStatus,
        promote: &PromoteArgs,
    ) -> Result<String, CoordinatorError> {
        let staged = staged_deploy(&state)?;
        let release = state.releases.get(&staged.to).cloned().expect("checked");
        let args = DeployArgs {
            version: staged.version.clone(),
            artifact: release.artifact.clone(),
            health_timeout: promote.health_timeout,
            verify_for: promote.verify_for,
            keep_failed: promote.keep_failed,
            lb_policy: promote.lb_policy,
            no_switch: false,
            canary: false,
        };
        let intent = Intent {
            version: args.version.clone(),
            lb_policy: args.lb_policy,
            migrations: false,
            verify_for: args.verify_for.unwrap_or(self.spec.switch.verify_for),
            no_switch: false,
            canary: false,
        };
        let plan = match pipeline::preflight(&state, &intent) {
            Preflight::AlreadyActive(message) => return Ok(message),
            Preflight::Refuse(why) => return Err(CoordinatorError::failed(why)),
            Preflight::Go(plan) if plan.to != staged.to => {
                return Err(CoordinatorError::failed(format!(
                    "{} was staged on {} but traffic has moved since; deploy it again",
                    staged.version, staged.to
                )))
            }
            Preflight::Go(plan) => plan,
        };
        self.record_movement(&state, &plan, &args.version);
        self.progress.event(
            "preflight",
            None,
            "ok",
            &format!(
                "promoting {} on {} (staged by {})",
                staged.version, staged.to, staged.deploy_id
            ),
        );
        let record = self.open_record(Operation::Promote, &plan, &args.version);
        self.put_record(&record).await?;
        let run = Run {
            plan,
            state,
            record,
            args: &args,
            switched_at: None,
            acks: BTreeMap::new(),
            failures: Vec::new(),
        };
        self.drive(run).await
    }

    /// Runs the steps after staging until the pipeline says where it ends.
    async fn drive(&self, mut run: Run<'_>) -> Result<String, CoordinatorError> {
        let mut step = Step::AwaitHealthy;
        loop {
            let passed = match self.step(&mut run, step).await {
                Ok(passed) => passed,
                Err(e) => return Err(self.after_switch(&run, e)),
            };
            match pipeline::next(&run.plan, step, passed) {
                Next::Run(s) => step = s,
                Next::FailBeforeSwitch => return self.fail(&mut run, step).await,
                Next::SwitchRefused => return self.refused(&mut run).await,
                Next::Unsafe => return self.unsafe_end(&mut run, step).await,
                Next::SwitchBack => return self.switch_back(&mut run).await,
                Next::Finish => return self.finish(&mut run).await,
                Next::Staged => return self.staged(&mut run).await,
            }
        }
    }

    /// Runs one step; Ok(false) is the step failing (its reasons are in `run.failures`).
    async fn step(&self, run: &mut Run<'_>, step: Step) -> Result<bool, CoordinatorError> {
        let (to, version) = (run.plan.to, run.args.version.clone());
        let outcome: Result<(), Failures> = match step {
            Step::AwaitHealthy => {
                let timeout = run
                    .args
                    .health_timeout
                    .unwrap_or(self.spec.health.startup_timeout + Duration::from_secs(30));
                fleet::wait_healthy(
                    self.store,
                    &run.plan.hosts,
                    to,
                    &version,
                    timeout,
                    self.progress,
                )
                .await?
            }
            Step::Migrate => match self.migrator {
                Some(m) => m.expand(&run.state, &version).await?,
                None => Ok(()),
            },
            Step::RecheckActive => self.recheck_active(&run.state).await?,
            Step::Smoke => {
                let hosts: Vec<_> = run.state.hosts.values().cloned().collect();
                // Results come only once every host's checks and retries are done, which can take
                // a while: say when the step began, so a slow smoke step is not read as a wait.
                self.progress.event(
                    "smoke",
                    None,
                    "started",
                    &format!(
                        "{} check(s) on {} host(s)",
                        self.spec.smoke.len(),
                        hosts.len()
                    ),
                );
                let results = self
                    .probes
                    .smoke(&hosts, &self.spec.smoke, to, &version)
                    .await;
                match fleet::report_smoke(results, self.progress) {
                    Ok(()) => self
                        .hook(&run.state, &run.plan, &version, Hook::PostStage)
                        .await
                        .map_err(|why| vec![("post_stage hook".to_string(), why)]),
                    Err(failures) => Err(failures),
                }
            }
            Step::Canary => self.canary(run).await?,
            Step::Switch => {
                run.record.phase = Phase::Switching;
                self.put_record(&run.record).await?;
                run.record.phase = Phase::Switched;
                run.record.updated_at = proto::time::now_rfc3339();
                let active = self.active_record(to, &version);
                // After a canary, the split goes with the switch: the new color is stable now.
                let split_done = run.plan.canary.then(|| {
                    Write::Traffic(TrafficRecord {
                        stable: to,
                        canary: to.other(),
                        weight: 0,
                        step: 0,
                        sticky: Default::default(),
                        deploy_id: self.op_id.clone(),
                        token: self.store.token(),
                        set_at: proto::time::now_rfc3339(),
                    })
                });
                let seen_revision = run.state.active_mod_revision;
                match traffic::write_active(
                    self.store,
                    &active,
                    &run.record,
                    split_done.as_slice(),
                    seen_revision,
                    self.progress,
                )
                .await?
                {
                    Ok(revision) => {
                        run.switched_at = Some(revision);
                        Ok(())
                    }
                    Err(why) => Err(vec![("active".into(), why)]),
                }
            }
            Step::AwaitAcks => {
                let revision = run.switched_at.expect("acks follow the switch");
                match traffic::await_acks(self.store, &run.plan.lbs, revision, self.progress)
                    .await?
                {
                    Ok(acks) => {
                        run.acks = acks;
                        Ok(())
                    }
                    Err(why) => Err(vec![(
                        "LBs".into(),
                        format!("not every LB followed: {why}"),
                    )]),
                }
            }
            Step::VerifyLbs => {
                let revision = run.switched_at.expect("verification follows the switch");
                traffic::verify(
                    self.probes,
                    &run.acks,
                    &run.plan.lbs,
                    to,
                    revision,
                    self.progress,
                )
                .await
                .map_err(|why| vec![("LBs".into(), format!("the LBs do not serve it: {why}"))])
            }
            Step::VerifyFor => {
                let duration = run.plan.verify_for;
                self.progress.event(
                    "verify-for",
                    None,
                    "watching",
                    &humantime::format_duration(duration).to_string(),
                );
                // Besides health: the new color's answers against the old color's in the minute
                // before the switch, from the LBs' request counts (nothing to compare with on a
                // first deploy).
                let at_switch = self.store.latest().await?;
                let section = self.spec.canary.clone().unwrap_or_default();
                let mut regression = run.plan.from.map(|from| {
                    crate::canary::Regression::new(&at_switch.lb_stats, from, to, &section)
                });
                self.store.remember(at_switch);
                fleet::watch_serving(
                    self.store,
                    &run.plan.hosts,
                    to,
                    &version,
                    duration,
                    |status| match regression.as_mut() {
                        Some(r) => r.check(status),
                        None => Ok(()),
                    },
                )
                .await?
                .map_err(|why| vec![(to.to_string(), why)])
            }
        };
        run.failures = outcome.err().unwrap_or_default();
        Ok(run.failures.is_empty())
    }

    /// `--canary`: the ramp, and on its failure every LB back to the stable color before the
    /// failure is reported (which then stops the canary color unless `--keep-failed`).
    async fn canary(&self, run: &mut Run<'_>) -> Result<Result<(), Failures>, CoordinatorError> {
        let from = run
            .plan
            .from
            .expect("preflight refuses a canary without a stable color");
        let section = self.spec.canary.clone().unwrap_or_default();
        let sticky = section.sticky().map_err(CoordinatorError::usage)?;
        run.record.phase = Phase::Canary;
        run.record.updated_at = proto::time::now_rfc3339();
        self.put_record(&run.record).await?;
        let mut ramp = crate::canary::Ramp {
            store: self.store,
            progress: self.progress,
            section: &section,
            sticky,
            op_id: &self.op_id,
            lbs: &run.plan.lbs,
            stable: from,
            canary: run.plan.to,
            version: &run.args.version,
            active_seen: run.state.active_mod_revision,
            looks: 0,
            handled: None,
            suspects: Vec::new(),
        };
        let why = match ramp.run().await? {
            // Every weight was written guarded by `active` as preflight saw it: the switch's
            // guard still holds.
            crate::canary::RampEnd::Promote => return Ok(Ok(())),
            crate::canary::RampEnd::Abort(why) => why,
        };
        match ramp.set_weight(0, 0).await? {
            Ok(()) => Ok(Err(vec![("canary".into(), why)])),
            Err(back) => Err(CoordinatorError::unsafe_state(format!(
                "{why}; sending every user back to {from} failed: {back}"
            ))),
        }
    }

    /// Where this operation sends traffic, for its `result` event.
    fn record_movement(&self, state: &AppStatus, plan: &Plan, version: &str) {
        self.progress.record().movement(
            state.active.as_ref().map(|a| Side {
                color: a.color,
                version: Some(a.version.clone()),
            }),
            Side {
                color: plan.to,
                version: Some(version.to_string()),
            },
        );
    }

    /// The `deploy` record an operation starts with (phase staging).
    fn open_record(&self, operation: Operation, plan: &Plan, version: &str) -> DeployRecord {
        let now = proto::time::now_rfc3339();
        DeployRecord {
            deploy_id: self.op_id.clone(),
            operation,
            phase: Phase::Staging,
            from: plan.from,
            to: plan.to,
            version: version.to_string(),
            token: self.store.token(),
            started_at: now.clone(),
            updated_at: now,
            error: None,
        }
    }

    /// Runs a gate hook of the spec, reporting it as a progress event; Err is its failure.
    async fn hook(
        &self,
        state: &AppStatus,
        plan: &Plan,
        version: &str,
        hook: Hook,
    ) -> Result<(), String> {
        let context = HookContext {
            app: self.spec.app.clone(),
            operation: self.progress.record().facts().command.unwrap_or_default(),
            op_id: Some(self.op_id.clone()),
            version: Some(version.to_string()),
            color: Some(plan.to.to_string()),
            from_color: plan.from.map(|c| c.to_string()),
            from_version: state.active.as_ref().map(|a| a.version.clone()),
            outcome: None,
            exit: None,
        };
        let ran = hooks::run(
            self.spec.hooks.as_ref(),
            hook,
            &self.spec.base_dir,
            &context,
        )
        .await;
        match &ran {
            Ok(Some(took)) => self.progress.event(
                "hook",
                None,
                "ok",
                &format!("{} in {} ms", hook.as_str(), took.as_millis()),
            ),
            Ok(None) => {}
            Err(why) => self.progress.event("hook", None, "failed", why),
        }
        ran.map(|_| ())
    }

    /// The active color must still serve on every host after staging (and migrations).
    async fn recheck_active(
        &self,
        before: &AppStatus,
    ) -> Result<Result<(), Failures>, CoordinatorError> {
        let Some(active) = &before.active else {
            return Ok(Ok(()));
        };
        let now = self.store.read().await?;
        let sick = fleet::unhealthy(&now, active.color, &active.version);
        if sick.is_empty() {
            return Ok(Ok(()));
        }
        let why = format!("active {} became unhealthy during staging", active.color);
        Ok(Err(sick.into_iter().map(|h| (h, why.clone())).collect()))
    }

    fn release(&self, args: &DeployArgs, color: Color, desired: Desired) -> ReleaseRecord {
        let mut release = ReleaseRecord {
            version: args.version.clone(),
            artifact: args.artifact.clone(),
            run: RunSpec {
                command: self.spec.run.command.clone(),
                env: self.spec.run.env.clone(),
                stop_timeout: self.spec.run.stop_timeout,
            },
            health: self.spec.health.clone(),
            desired,
            deploy_id: self.op_id.clone(),
            token: self.store.token(),
            signature: None,
        };
        let at = proto::signing::Placement {
            app: &self.spec.app,
            color,
        };
        release.signature = self.signing_key.map(|key| key.sign(&release, at));
        release
    }

    fn active_record(&self, color: Color, version: &str) -> ActiveRecord {
        ActiveRecord {
            color,
            version: version.to_string(),
            deploy_id: self.op_id.clone(),
            token: self.store.token(),
            switched_at: proto::time::now_rfc3339(),
        }
    }

    async fn put_record(&self, record: &DeployRecord) -> Result<(), CoordinatorError> {
        self.store
            .put(&[Write::Deploy(record.clone())], None)
            .await?;
        self.progress
            .event("phase", None, record.phase.as_str(), "");
        Ok(())
    }

    async fn history(
        &self,
        run: &Run<'_>,
        outcome: Outcome,
        reason: Option<String>,
    ) -> Result<(), CoordinatorError> {
        let mut record = history::record(run.record.operation, &self.op_id, outcome);
        record.from = run.plan.from;
        record.to = Some(run.plan.to);
        record.version = Some(run.args.version.clone());
        record.reason = reason;
        if matches!(run.record.operation, Operation::Deploy | Operation::Promote) {
            record.release = Some(self.snapshot(run.args, run.plan.to));
        }
        if outcome == Outcome::Staged {
            let checks = crate::spec::PromoteChecks {
                smoke: self.spec.smoke.clone(),
                switch: self.spec.switch.clone(),
            };
            record.details = serde_json::json!({ "promote": checks });
        }
        self.store.append_history(&record).await.map(|_| ())
    }

    /// What this deploy runs, as history keeps it for `rollback --to` (URL credentials masked).
    fn snapshot(&self, args: &DeployArgs, color: Color) -> ReleaseSnapshot {
        let release = self.release(args, color, Desired::Running);
        let (url, _) = proto::secrets::mask_url(&release.artifact.url);
        ReleaseSnapshot {
            artifact: Artifact {
                url,
                sha256: release.artifact.sha256,
            },
            run: release.run,
            health: release.health,
        }
    }

    /// Closes the record with `phase` and `error`, and writes the history record.
    async fn close(
        &self,
        run: &mut Run<'_>,
        phase: Phase,
        outcome: Outcome,
        error: Option<String>,
    ) -> Result<(), CoordinatorError> {
        run.record.phase = phase;
        run.record.error = error.clone();
        run.record.updated_at = proto::time::now_rfc3339();
        self.put_record(&run.record).await?;
        self.history(run, outcome, error).await
    }

    async fn finish(&self, run: &mut Run<'_>) -> Result<String, CoordinatorError> {
        let revision = run.switched_at.expect("finish follows the switch");
        self.close(run, Phase::Done, Outcome::Done, None)
            .await
            .map_err(|e| self.after_switch(run, e))?;
        Ok(format!(
            "deployed {} to {} on {} host(s); traffic on {} at revision {revision}",
            run.args.version,
            run.plan.to,
            run.plan.hosts.len(),
            run.plan.to
        ))
    }

    /// `--no-switch`: the new color is staged and checked on every host; traffic never moved.
    async fn staged(&self, run: &mut Run<'_>) -> Result<String, CoordinatorError> {
        self.close(run, Phase::Staged, Outcome::Staged, None)
            .await?;
        Ok(format!(
            "staged {} on {} on {} host(s) and checked it; traffic stays on {}. The LBs' preview \
             listener serves it; `coordinator promote` switches traffic to it",
            run.args.version,
            run.plan.to,
            run.plan.hosts.len(),
            run.plan.from.map_or("nothing".into(), |c| c.to_string())
        ))
    }

    /// Any error once `active` was written is unsafe: traffic moved and the rest is unknown.
    fn after_switch(&self, run: &Run<'_>, e: CoordinatorError) -> CoordinatorError {
        match (run.switched_at, e) {
            (
                Some(revision),
                e @ (CoordinatorError::Usage(_)
                | CoordinatorError::Proto(_)
                | CoordinatorError::Unreachable(_)
                | CoordinatorError::Failed(_)),
            ) => CoordinatorError::unsafe_state(format!(
                "traffic moved to {} at revision {revision}, then",
                run.plan.to
            ))
            .because(e),
            (_, e) => e,
        }
    }

    /// Failure before the switch: traffic never moved. Stop the failed color (unless kept for
    /// debugging), attach the failing hosts' last log lines, record why, exit 1.
    async fn fail(&self, run: &mut Run<'_>, step: Step) -> Result<String, CoordinatorError> {
        let to = run.plan.to;
        let stays = run.plan.from.map_or("nothing".into(), |c| c.to_string());
        let mut report = pipeline::failure_headline(step, &run.args.version, to, &run.failures);
        report.push_str(&format!("; traffic stays on {stays}"));
        // All hosts at once: each fetch has its own deadline, so frozen hosts cost one, not N.
        let hosts = &run.state.hosts;
        let logs = futures::future::join_all(run.failures.iter().map(|(host, _)| async move {
            match hosts.get(host) {
                Some(h) => Some(self.probes.logs(h, to, 10).await),
                None => None,
            }
        }))
        .await;
        for ((host, why), logs) in run.failures.iter().zip(logs) {
            report.push_str(&format!("\n  {host}: {why}"));
            match logs {
                // The report lands in history, which every auditor reads: app log lines are
                // masked like any output, and capped.
                Some(Ok(lines)) => lines.iter().for_each(|l| {
                    report.push_str(&format!("\n    | {}", proto::secrets::shown_line(l)))
                }),
                Some(Err(e)) => report.push_str(&format!("\n    (no logs: {e})")),
                None => {}
            }
        }
        if !run.args.keep_failed {
            let stopped = self.release(run.args, to, Desired::Stopped);
            self.store.put(&[Write::Release(to, stopped)], None).await?;
            self.progress.event(
                "cleanup",
                None,
                "stopped",
                &format!("releases/{to} desired=stopped"),
            );
        }
        self.close(run, Phase::Failed, Outcome::Failed, Some(report.clone()))
            .await?;
        Err(CoordinatorError::failed(report))
    }

    /// The switch's guard failed: another writer moved `active` or the lock is gone. Nothing
    /// changed; close the deploy record and write the history record if the fence still allows.
    /// (Leaving the record open made the next command reconcile this deploy again: two history
    /// records for one operation, found by the fault runner.)
    async fn refused(&self, run: &mut Run<'_>) -> Result<String, CoordinatorError> {
        let why = failures_text(&run.failures);
        let _ = self
            .close(run, Phase::Failed, Outcome::Failed, Some(why.clone()))
            .await;
        Err(CoordinatorError::failed(why))
    }

    async fn unsafe_end(&self, run: &mut Run<'_>, step: Step) -> Result<String, CoordinatorError> {
        let revision = run.switched_at.unwrap_or_default();
        let why = format!(
            "switched to {} at revision {revision} but {} ({} step)",
            run.plan.to,
            failures_text(&run.failures),
            step.as_str()
        );
        self.close(run, Phase::Failed, Outcome::Failed, Some(why.clone()))
            .await
            .map_err(|e| self.after_switch(run, e))?;
        Err(CoordinatorError::unsafe_state(why))
    }

    /// `--verify-for` saw the new color fail: put traffic back on the old color.
    async fn switch_back(&self, run: &mut Run<'_>) -> Result<String, CoordinatorError> {
        let (to, from) = (
            run.plan.to,
            run.plan.from.expect("switch back needs an old color"),
        );
        let why = failures_text(&run.failures);
        self.progress.event("verify-for", None, "failed", &why);
        let state = self
            .store
            .read()
            .await
            .map_err(|e| self.after_switch(run, e))?;
        let old_version = run
            .state
            .active
            .as_ref()
            .map(|a| a.version.clone())
            .unwrap_or_default();
        let active = self.active_record(from, &old_version);
        run.record.phase = Phase::RolledBack;
        run.record.error = Some(why.clone());
        run.record.updated_at = proto::time::now_rfc3339();
        traffic::move_traffic(
            self.store,
            self.probes,
            &run.plan.lbs,
            state.active_mod_revision,
            &active,
            &run.record,
            self.progress,
        )
        .await
        .map_err(|e| {
            CoordinatorError::unsafe_state(format!(
                "{to} turned unhealthy ({why}) and switching back to {from} failed"
            ))
            .because(e)
        })?;
        self.history(run, Outcome::RolledBack, Some(why.clone()))
            .await
            .map_err(|e| {
                CoordinatorError::unsafe_state(format!("switched back to {from}, then")).because(e)
            })?;
        Err(CoordinatorError::failed(format!(
            "{} on {to} turned unhealthy during --verify-for ({why}); switched back to {from}",
            run.args.version
        )))
    }
}

/// The deploy `promote` finishes: the last operation ended `staged`, and its color still runs
/// what it staged.
fn staged_deploy(state: &AppStatus) -> Result<DeployRecord, CoordinatorError> {
    let Some(staged) = state.deploy.clone().filter(|d| d.phase == Phase::Staged) else {
        let last = state.deploy.as_ref().map_or("no deploy yet".into(), |d| {
            format!(
                "the last operation, {} {}, is {}",
                d.operation, d.deploy_id, d.phase
            )
        });
        return Err(CoordinatorError::failed(format!(
            "nothing is staged to promote ({last}): run `coordinator deploy --no-switch` first"
        )));
    };
    match state.releases.get(&staged.to) {
        Some(r) if r.version == staged.version && r.desired == Desired::Running => Ok(staged),
        other => Err(CoordinatorError::failed(format!(
            "{} was staged on {} by {}, but releases/{} is now {}; deploy it again",
            staged.version,
            staged.to,
            staged.deploy_id,
            staged.to,
            other.map_or("gone".into(), |r| format!(
                "{} ({:?})",
                r.version, r.desired
            ))
        ))),
    }
}

fn failures_text(failures: &Failures) -> String {
    failures
        .iter()
        .map(|(what, why)| format!("{what}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}
