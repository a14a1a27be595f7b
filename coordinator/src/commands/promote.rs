//! `coordinator promote`: switch to the version `deploy --no-switch` staged, after its checks
//! again (health on every host, the active color still serving, the smoke checks).
use super::checks::CheckFlags;
use crate::context::{load_spec, Global};
use crate::deploy;
use crate::error::CoordinatorError;
use crate::locked::{with_lock, LockFor};
use proto::{Keys, Operation};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The app spec (its smoke checks and verification settings).
    #[arg(long)]
    spec: PathBuf,
    #[command(flatten)]
    checks: CheckFlags,
}

impl Args {
    pub async fn run(self, global: &Global) -> Result<String, CoordinatorError> {
        let checks = self.checks.parse()?;
        let spec = load_spec(global.app.as_deref(), &self.spec)?;
        global.recorder.spec(&spec);
        let signing_key = checks.signing_key()?;
        let progress = global.progress();
        let keys = Keys::new(&global.prefix, &spec.app)?;
        let client = global.connect().await?;
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
