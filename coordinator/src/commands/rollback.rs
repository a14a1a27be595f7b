//! `coordinator rollback`: switch back to the previous color (it must be healthy on every host);
//! waits for every LB's ack. `rollback --to VERSION` deploys an earlier version again from what
//! its history record kept, through the normal deploy pipeline.
use super::switch::MoveFlags;
use crate::context::Global;
use crate::error::CoordinatorError;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    flags: MoveFlags,
    /// Deploy this earlier version again (it need not run anywhere now) with the artifact, run
    /// and health spec its deploy's history record kept; needs --spec.
    #[arg(long, value_name = "VERSION", requires = "spec")]
    to: Option<String>,
    /// With --to, when history kept the artifact URL masked (it had credentials).
    #[arg(long, requires = "to")]
    artifact: Option<String>,
    /// With --to: sign the release written (as for a deploy).
    #[arg(long, env = "BLUEGREEN_SIGNING_KEY_FILE", requires = "to")]
    signing_key: Option<PathBuf>,
}

impl Args {
    pub fn name(&self) -> &'static str {
        if self.to.is_some() {
            "rollback --to"
        } else {
            "rollback"
        }
    }

    pub async fn run(self, global: &Global) -> Result<String, CoordinatorError> {
        match self.to {
            Some(version) => {
                let (artifact, signing_key) = (self.artifact, self.signing_key);
                self.flags
                    .redeploy(global, version, artifact, signing_key)
                    .await
            }
            None => self.flags.move_to(global, None).await,
        }
    }
}
