//! `coordinator rollback`: switch back to the previous color (it must be healthy on every host);
//! waits for every LB's ack.
use super::switch::MoveFlags;
use crate::context::Global;
use crate::error::CoordinatorError;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    flags: MoveFlags,
}

impl Args {
    pub async fn run(self, global: &Global) -> Result<String, CoordinatorError> {
        self.flags.move_to(global, None).await
    }
}
