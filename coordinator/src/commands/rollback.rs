//! `coordinator rollback`: switch back to the previous color (it must be healthy on every host);
//! waits for every LB's ack.
use super::remember_spec;
use crate::context::{parse_duration, Global};
use crate::error::CoordinatorError;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// How long to wait for another operation's deploy lock before giving up (exit 3).
    #[arg(long, default_value = "30s")]
    lock_wait: String,
    /// Write `active` even when no LB is registered.
    #[arg(long)]
    allow_no_lb: bool,
    /// The app spec, for its hooks (post_switch, post_rollback, on_failure) and webhooks.
    #[arg(long)]
    spec: Option<PathBuf>,
}

impl Args {
    pub async fn run(self, global: &Global) -> Result<String, CoordinatorError> {
        remember_spec(global, self.spec.as_deref())?;
        let lock_wait = parse_duration("--lock-wait", &self.lock_wait)?;
        super::switch::move_to(global, None, lock_wait, self.allow_no_lb).await
    }
}
