//! `coordinator stop <color>`: stop the idle color on every host (never the active one), for an
//! operator who wants a version gone without deploying over it; gives up the instant rollback.
use crate::context::{parse_duration, Global};
use crate::error::CoordinatorError;
use crate::locked::{with_lock, LockFor};
use crate::stop;
use proto::{Color, Operation};
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// The idle color to stop.
    #[arg(value_parser = ["blue", "green"])]
    color: String,
    /// How long to wait for another operation's deploy lock before giving up (exit 3).
    #[arg(long, default_value = "30s")]
    lock_wait: String,
}

impl Args {
    pub async fn run(self, global: &Global) -> Result<String, CoordinatorError> {
        let color = super::color(&self.color)?;
        stop(
            global,
            color,
            parse_duration("--lock-wait", &self.lock_wait)?,
        )
        .await
    }
}

/// `coordinator stop <color>`: the idle color only.
async fn stop(
    global: &Global,
    color: Color,
    lock_wait: Duration,
) -> Result<String, CoordinatorError> {
    let keys = global.keys()?;
    let client = global.connect().await?;
    let progress = global.progress();
    let id = format!("stop-{}", uuid::Uuid::new_v4());
    let op = LockFor::new(&id, Operation::Stop, lock_wait);
    with_lock(
        global,
        &client,
        &keys,
        op,
        &progress,
        async |store, state| stop::stop_color(store, state, color, &id, &progress).await,
    )
    .await
}
