//! `coordinator promote`: switch to the version `deploy --no-switch` staged, after its checks
//! again (health on every host, the active color still serving, the smoke checks). Without
//! `--spec`, the checks are the ones that deploy kept in its history record.
use super::checks::CheckFlags;
use crate::context::{load_spec, Global};
use crate::deploy;
use crate::error::CoordinatorError;
use crate::locked::{with_lock, LockFor};
use proto::{Keys, Operation};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The app spec (its smoke checks, verification settings, hooks). Without it: the smoke
    /// checks and verification settings the `deploy --no-switch` kept, and no hooks.
    #[arg(long)]
    spec: Option<PathBuf>,
    #[command(flatten)]
    checks: CheckFlags,
}

impl Args {
    pub async fn run(self, global: &Global) -> Result<String, CoordinatorError> {
        let checks = self.checks.parse()?;
        let (spec, client) = match &self.spec {
            Some(path) => {
                let spec = load_spec(global.app.as_deref(), path)?;
                (spec, global.connect().await?)
            }
            None => {
                let (keys, client) = global.existing_app().await?;
                (kept_spec(&client, &keys).await?, client)
            }
        };
        global.recorder.spec(&spec);
        let signing_key = checks.signing_key()?;
        let progress = global.progress();
        let keys = Keys::new(&global.prefix, &spec.app)?;
        let op_id = format!("promote-{}", uuid::Uuid::new_v4());
        let probes = global.probes();
        let args = deploy::PromoteArgs {
            health_timeout: checks.health_timeout,
            verify_for: checks.verify_for,
            keep_failed: checks.keep_failed,
            lb_policy: checks.lb_policy,
        };
        let op = LockFor::new(&op_id, Operation::Promote, checks.lock_wait);
        with_lock(
            global,
            &client,
            &keys,
            op,
            &progress,
            async |store, state| {
                let pipeline: deploy::Deploy<'_, _, _, deploy::NoMigrations> = deploy::Deploy {
                    store,
                    probes: &probes,
                    migrator: None,
                    spec: &spec,
                    progress: &progress,
                    op_id: op_id.clone(),
                    signing_key: signing_key.as_ref(),
                };
                pipeline.promote(state, &args).await
            },
        )
        .await
    }
}

/// The spec of the staged version as its `deploy --no-switch` kept it: the release it wrote and
/// the checks in its history record.
async fn kept_spec(
    client: &etcd_client::Client,
    keys: &Keys,
) -> Result<crate::spec::AppSpec, CoordinatorError> {
    let state = crate::status::read(client, keys).await?;
    let Some(staged) = state
        .deploy
        .as_ref()
        .filter(|d| d.phase == proto::Phase::Staged)
    else {
        return Err(CoordinatorError::failed(
            "nothing is staged to promote: run `coordinator deploy --no-switch` first",
        ));
    };
    let filter = crate::history::Filter {
        version: Some(staged.version.clone()),
        ..Default::default()
    };
    let records = crate::history::list(client, keys, 20, &filter).await?;
    let kept = records
        .iter()
        .rev()
        .find(|(_, r)| r.deploy_id == staged.deploy_id && r.outcome == proto::Outcome::Staged)
        .and_then(|(_, r)| r.details.get("promote").cloned());
    let checks: crate::spec::PromoteChecks = kept
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or_else(|| {
            crate::error::Subject::flag("--spec").usage(format!(
                "{} was staged by {} without the checks promote re-runs in its history record \
                 (an older coordinator staged it): give --spec",
                staged.version, staged.deploy_id
            ))
        })?;
    let release = state.releases.get(&staged.to).ok_or_else(|| {
        CoordinatorError::failed(format!(
            "{} was staged on {}, but releases/{} is gone; deploy it again",
            staged.version, staged.to, staged.to
        ))
    })?;
    Ok(crate::spec::AppSpec::for_promote(
        keys.app(),
        release,
        checks,
    ))
}
