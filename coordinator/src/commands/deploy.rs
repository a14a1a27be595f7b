//! `coordinator deploy`: stage a version on the idle color of every host, check it, switch (or
//! stop after the checks with `--no-switch`, or ramp a canary with `--canary`); `--plan` shows
//! what it would do and the exit code it would have, writing nothing.
use super::checks::{CheckFlags, Checks};
use crate::context::{checked_artifact, load_spec, pretty_json, sha256_of, Global};
use crate::error::{CoordinatorError, Subject};
use crate::locked::{with_lock, LockFor};
use crate::progress::Progress;
use crate::{deploy, history, lock, migrate, pipeline, preview, redeploy, spec, status};
use proto::records::Artifact;
use proto::{Keys, Operation};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The app spec (bluegreen.toml in the app's repository).
    #[arg(long)]
    spec: PathBuf,
    /// The version being deployed (letters, digits, '.', '_', '-').
    #[arg(long, required_unless_present = "from_history")]
    version: Option<String>,
    /// file://, http:// or https:// URL of a tar.gz or a single executable. With
    /// --from-history: only when history kept the URL masked (it had credentials).
    #[arg(long, required_unless_present = "from_history")]
    artifact: Option<String>,
    /// Computed from the artifact when omitted.
    #[arg(long, conflicts_with = "from_history")]
    sha256: Option<String>,
    /// Deploy an earlier version again with what its deploy's history record kept (artifact,
    /// sha256, run and health spec); the spec still gives hooks, smoke checks and migrations.
    #[arg(long, value_name = "VERSION", conflicts_with_all = ["version", "plan"])]
    from_history: Option<String>,
    #[command(flatten)]
    checks: CheckFlags,
    /// Show what the deploy would do now (target color, hosts, LBs that must ack, pending
    /// migrations, lock holder) and exit with the code it would have; writes nothing.
    #[arg(long)]
    plan: bool,
    /// Stop after staging and the checks: the new color runs on every host and the LBs'
    /// preview listener serves it, but traffic stays; `coordinator promote` switches.
    #[arg(long, conflicts_with = "plan")]
    no_switch: bool,
    /// After staging and the checks, send a growing share of requests to the new version
    /// (the spec's [canary] steps), judge it against the stable version from the LBs' request
    /// counts, then switch, or send everyone back and fail (exit 1).
    #[arg(long, conflicts_with = "no_switch")]
    canary: bool,
}

impl Args {
    pub fn name(&self) -> &'static str {
        if self.plan {
            "deploy --plan"
        } else if self.from_history.is_some() {
            "deploy --from-history"
        } else if self.no_switch {
            "deploy --no-switch"
        } else if self.canary {
            "deploy --canary"
        } else {
            "deploy"
        }
    }

    /// `--plan` is a query; a deploy is an action.
    pub fn is_query(&self) -> bool {
        self.plan
    }

    pub async fn run(self, global: &Global) -> Result<(String, i32), CoordinatorError> {
        let plan = self.plan;
        let checks = self.checks.parse()?;
        if let Some(version) = self.from_history {
            let from = FromHistory {
                spec: self.spec,
                version,
                artifact: self.artifact,
                checks,
            };
            return redeploy(global, from, self.no_switch, self.canary)
                .await
                .map(|text| (text, 0));
        }
        let req = DeployRequest {
            spec: self.spec,
            version: self.version.expect("clap requires --version"),
            artifact: self.artifact.expect("clap requires --artifact"),
            sha256: self.sha256,
            checks,
            no_switch: self.no_switch,
            canary: self.canary,
        };
        if plan {
            return deploy_plan(global, req).await;
        }
        run_deploy(global, req).await.map(|text| (text, 0))
    }
}

/// `deploy --from-history VERSION` and `rollback --to VERSION`: what to deploy again.
pub struct FromHistory {
    pub spec: PathBuf,
    pub version: String,
    /// Given again when history kept the URL masked.
    pub artifact: Option<String>,
    pub checks: Checks,
}

/// Deploys `from.version` again from what its history record kept, through the normal pipeline.
/// Refused before anything is written when history has no live deploy of it that kept what it
/// ran (exit 2) or the database's contract migrations forbid it (exit 1).
pub async fn redeploy(
    global: &Global,
    from: FromHistory,
    no_switch: bool,
    canary: bool,
) -> Result<String, CoordinatorError> {
    let to = || Subject::flag_value("--to", &from.version);
    let mut spec = load_spec(global.app.as_deref(), &from.spec)?;
    let keys = Keys::new(&global.prefix, &spec.app)?;
    let client = global.connect().await?;
    let filter = history::Filter {
        version: Some(from.version.clone()),
        ..history::Filter::default()
    };
    let records: Vec<_> = history::list(&client, &keys, usize::MAX, &filter)
        .await?
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    let snapshot = match redeploy::pick(&records, &from.version) {
        Ok(snapshot) => snapshot.clone(),
        Err(_) => {
            let all =
                history::list(&client, &keys, usize::MAX, &history::Filter::default()).await?;
            let all: Vec<_> = all.into_iter().map(|(_, r)| r).collect();
            return Err(to().usage(redeploy::pick(&all, &from.version).unwrap_err()));
        }
    };
    let url =
        redeploy::artifact_url(&snapshot, from.artifact.as_deref()).map_err(|e| to().usage(e))?;
    spec.run.command = snapshot.run.command.clone();
    spec.run.env = snapshot.run.env.clone();
    spec.run.stop_timeout = snapshot.run.stop_timeout;
    spec.health = snapshot.health.clone();
    if let Some(m) = migrate::runner::Migrations::load(&spec, &Progress::silent())? {
        let forbidding = m.forbidding(&from.version).await?;
        if !forbidding.is_empty() {
            return Err(to().failed(format!(
                "the database no longer supports it: {}; nothing was changed",
                forbidding.join("; ")
            )));
        }
    }
    let req = DeployRequest {
        spec: from.spec,
        version: from.version,
        artifact: url,
        sha256: Some(snapshot.artifact.sha256),
        checks: from.checks,
        no_switch,
        canary,
    };
    run_checked_deploy(global, req, spec).await
}

struct DeployRequest {
    spec: std::path::PathBuf,
    version: String,
    artifact: String,
    sha256: Option<String>,
    checks: Checks,
    /// Stop after staging and checks; `promote` switches.
    no_switch: bool,
    /// Ramp traffic to the new version by the spec's `[canary]` steps before the switch.
    canary: bool,
}

/// `deploy`'s input, checked completely before etcd is touched (every error is exit 2).
struct CheckedDeploy {
    spec: spec::AppSpec,
    /// `None` until computed: `--plan` does not fetch the artifact to hash it.
    sha256: Option<String>,
    signing_key: Option<proto::signing::SigningKey>,
}

fn check_deploy_input(
    global: &Global,
    req: &DeployRequest,
) -> Result<CheckedDeploy, CoordinatorError> {
    let spec = load_spec(global.app.as_deref(), &req.spec)?;
    proto::check_name("--version", &req.version).map_err(CoordinatorError::usage)?;
    let sha256 = checked_artifact(&req.artifact, req.sha256.as_deref())?;
    let signing_key = req.checks.signing_key()?;
    Ok(CheckedDeploy {
        spec,
        sha256,
        signing_key,
    })
}

/// `coordinator deploy --plan`: the preview document and the exit code the deploy would have.
async fn deploy_plan(
    global: &Global,
    req: DeployRequest,
) -> Result<(String, i32), CoordinatorError> {
    let CheckedDeploy { spec, .. } = check_deploy_input(global, &req)?;
    let migrations = migrate::runner::Migrations::load(&spec, &Progress::silent())?;
    let pending = preview::pending_migrations(migrations.as_ref()).await;
    let keys = Keys::new(&global.prefix, &spec.app)?;
    let client = global.connect().await?;
    let state = status::read(&client, &keys).await?;
    let holder = lock::status(&client, &keys)
        .await?
        .map(|held| held.holder());
    let intent = pipeline::Intent {
        version: req.version.clone(),
        lb_policy: req.checks.lb_policy,
        migrations: migrations.is_some(),
        verify_for: req.checks.verify_for.unwrap_or(spec.switch.verify_for),
        no_switch: req.no_switch,
        canary: req.canary,
    };
    let preview = preview::judge(&spec.app, &state, &intent, holder, pending);
    let text = if global.json {
        pretty_json(&preview)
    } else {
        preview.render_text()
    };
    Ok((text, preview.exit))
}

/// `coordinator deploy`. Input is checked completely before etcd is touched (exit 2).
async fn run_deploy(global: &Global, req: DeployRequest) -> Result<String, CoordinatorError> {
    let spec = load_spec(global.app.as_deref(), &req.spec)?;
    run_checked_deploy(global, req, spec).await
}

/// A deploy of `spec` (as loaded, or with a redeploy's run and health from history).
async fn run_checked_deploy(
    global: &Global,
    req: DeployRequest,
    spec: spec::AppSpec,
) -> Result<String, CoordinatorError> {
    let CheckedDeploy {
        sha256,
        signing_key,
        ..
    } = check_deploy_input(global, &req)?;
    global.recorder.spec(&spec);
    let sha256 = match sha256 {
        Some(hex) => hex,
        None => sha256_of(&req.artifact).await?,
    };
    let progress = global.progress();
    let migrations = migrate::runner::Migrations::load(&spec, &progress)?;
    if let Some(m) = &migrations {
        m.precheck().await?;
    }
    let keys = Keys::new(&global.prefix, &spec.app)?;
    let client = global.connect().await?;
    let op_id = uuid::Uuid::new_v4().to_string();
    let args = deploy::DeployArgs {
        version: req.version.clone(),
        artifact: Artifact {
            url: req.artifact.clone(),
            sha256,
        },
        health_timeout: req.checks.health_timeout,
        verify_for: req.checks.verify_for,
        keep_failed: req.checks.keep_failed,
        lb_policy: req.checks.lb_policy,
        no_switch: req.no_switch,
        canary: req.canary,
    };
    let probes = global.probes();
    let op =
        LockFor::new(&op_id, Operation::Deploy, req.checks.lock_wait).version(Some(&req.version));
    with_lock(
        global,
        &client,
        &keys,
        op,
        &progress,
        async |store, state| {
            let migrator = migrations
                .as_ref()
                .map(|m| migrate::expand::SchemaMigrator {
                    migrations: m,
                    client: &client,
                    keys: &keys,
                    lock: store.lock,
                    spec: &spec,
                    probes: &probes,
                    progress: &progress,
                    op_id: &op_id,
                });
            let pipeline = deploy::Deploy {
                store,
                probes: &probes,
                migrator: migrator.as_ref(),
                spec: &spec,
                progress: &progress,
                op_id: op_id.clone(),
                signing_key: signing_key.as_ref(),
            };
            pipeline.run(state, &args).await
        },
    )
    .await
}
