//! `coordinator switch <color>`: send traffic to a color, with the same safety checks as a
//! rollback. Its flags ([`MoveFlags`]) and body serve `rollback` too.
use super::remember_spec;
use crate::context::{parse_duration, Global};
use crate::error::CoordinatorError;
use crate::fleet::LbPolicy;
use crate::locked::{with_lock, LockFor};
use crate::switch;
use proto::{Color, Operation};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// The color to send traffic to.
    #[arg(value_parser = ["blue", "green"])]
    color: String,
    #[command(flatten)]
    flags: MoveFlags,
}

impl Args {
    pub async fn run(self, global: &Global) -> Result<String, CoordinatorError> {
        let target = super::color(&self.color)?;
        self.flags.move_to(global, Some(target)).await
    }
}

/// What `switch` and `rollback` share: the lock wait, writing without LBs, the spec for hooks.
#[derive(clap::Args)]
pub struct MoveFlags {
    /// How long to wait for another operation's deploy lock before giving up (exit 3).
    #[arg(long, default_value = "30s")]
    lock_wait: String,
    /// Write `active` even when no LB is registered.
    #[arg(long)]
    allow_no_lb: bool,
    /// Move traffic even while a registered LB's sidecar is silent: that LB keeps serving the
    /// old color (an emergency that knowingly splits the LBs).
    #[arg(long)]
    allow_split_lbs: bool,
    /// The app spec, for its hooks (post_switch, post_rollback, on_failure) and webhooks.
    #[arg(long)]
    spec: Option<PathBuf>,
}

impl MoveFlags {
    /// `rollback --to VERSION`: a deploy of `version` from history, with these flags' lock wait,
    /// LB policy and spec.
    pub async fn redeploy(
        self,
        global: &Global,
        version: String,
        artifact: Option<String>,
        signing_key: Option<PathBuf>,
    ) -> Result<String, CoordinatorError> {
        let checks = super::checks::Checks {
            lock_wait: parse_duration("--lock-wait", &self.lock_wait)?,
            health_timeout: None,
            verify_for: None,
            keep_failed: false,
            lb_policy: LbPolicy {
                allow_no_lb: self.allow_no_lb,
                allow_split_lbs: self.allow_split_lbs,
            },
            signing_key,
        };
        let from = super::deploy::FromHistory {
            spec: self.spec.expect("clap requires --spec with --to"),
            version,
            artifact,
            checks,
        };
        super::deploy::redeploy(global, from, false, false).await
    }
}

impl MoveFlags {
    /// Traffic to `target` (None: rollback, the color that is not active).
    pub async fn move_to(
        self,
        global: &Global,
        target: Option<Color>,
    ) -> Result<String, CoordinatorError> {
        remember_spec(global, self.spec.as_deref())?;
        let lock_wait = parse_duration("--lock-wait", &self.lock_wait)?;
        let lb_policy = LbPolicy {
            allow_no_lb: self.allow_no_lb,
            allow_split_lbs: self.allow_split_lbs,
        };
        move_to(global, target, lock_wait, lb_policy).await
    }
}

async fn move_to(
    global: &Global,
    target: Option<Color>,
    lock_wait: Duration,
    lb_policy: LbPolicy,
) -> Result<String, CoordinatorError> {
    let keys = global.keys()?;
    let client = global.connect().await?;
    let progress = global.progress();
    let operation = if target.is_some() {
        Operation::Switch
    } else {
        Operation::Rollback
    };
    let op_id = format!("{operation}-{}", uuid::Uuid::new_v4());
    let request = switch::SwitchRequest {
        operation,
        target,
        op_id: op_id.clone(),
        lb_policy,
    };
    let probes = global.probes();
    // A move decides on the live hosts' health and the LBs: it does not read the hosts'
    // membership records or the LBs' request counts.
    let op = LockFor::new(&op_id, operation, lock_wait).reading(crate::status::Scope::Move);
    with_lock(
        global,
        &client,
        &keys,
        op,
        &progress,
        async |store, state| {
            switch::switch_command(store, state, &probes, &request, &progress).await
        },
    )
    .await
}
