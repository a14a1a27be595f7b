//! `coordinator host list|remove` and `coordinator lb list|remove`: every registered host or LB,
//! alive or not, and forgetting one that is gone for good (under the deploy lock).
use crate::context::{parse_duration, pretty_json, Global};
use crate::error::CoordinatorError;
use crate::locked::{with_lock, LockFor};
use crate::membership::Member;
use crate::{hosts, lbs, status};
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum Action {
    /// Every registered one, alive or not: for a host its address and each color's version and
    /// state, for an LB the color it last acked and its error.
    List {
        /// `lb list` only: also each LB's upstreams per color, as it last served them.
        #[arg(long)]
        verbose: bool,
    },
    /// Forget one whose agent or sidecar is gone for good (refused while it runs); fenced by the
    /// deploy lock and recorded in history.
    Remove {
        /// The host or LB, as `list` names it.
        name: String,
        /// Confirm: without it nothing is removed.
        #[arg(long)]
        yes: bool,
        /// How long to wait for another operation's deploy lock before giving up (exit 3).
        #[arg(long, default_value = "30s")]
        lock_wait: String,
    },
}

impl Action {
    pub fn name(&self, kind: Member) -> String {
        let verb = match self {
            Action::List { .. } => "list",
            Action::Remove { .. } => "remove",
        };
        format!("{} {verb}", kind.command())
    }

    pub fn is_query(&self) -> bool {
        matches!(self, Action::List { .. })
    }

    pub async fn run(self, global: &Global, kind: Member) -> Result<String, CoordinatorError> {
        match self {
            Action::List { verbose } => member_list(global, kind, verbose).await,
            Action::Remove {
                name,
                yes,
                lock_wait,
            } => {
                let lock_wait = parse_duration("--lock-wait", &lock_wait)?;
                member_remove(global, kind, &name, yes, lock_wait).await
            }
        }
    }
}

/// `coordinator host list` and `coordinator lb list`: every registered member, alive or not.
async fn member_list(
    global: &Global,
    kind: Member,
    verbose: bool,
) -> Result<String, CoordinatorError> {
    if verbose && kind == Member::Host {
        return Err(CoordinatorError::usage(
            "--verbose: only `lb list` has more to show (each LB's upstreams)",
        ));
    }
    let (keys, client) = global.existing_app().await?;
    let state = status::read(&client, &keys).await?;
    let mut lb_views = lbs::views(&state);
    if verbose {
        lbs::add_upstreams(&client, &keys, &state, &mut lb_views).await?;
    }
    Ok(match (kind, global.json) {
        (Member::Host, true) => pretty_json(&hosts::views(&state)),
        (Member::Host, false) => hosts::render_text(&hosts::views(&state)),
        (Member::Lb, true) => pretty_json(&lb_views),
        (Member::Lb, false) => lbs::render_text(&lb_views),
    })
}

/// `coordinator host remove NAME --yes` and `coordinator lb remove NAME --yes`: forgets a member
/// that is gone for good, under the deploy lock.
async fn member_remove(
    global: &Global,
    kind: Member,
    name: &str,
    confirmed: bool,
    lock_wait: Duration,
) -> Result<String, CoordinatorError> {
    proto::check_name(kind.noun(), name).map_err(CoordinatorError::usage)?;
    if !confirmed {
        return Err(CoordinatorError::usage(format!(
            "{} remove forgets {name}{}; repeat with --yes to confirm",
            kind.command(),
            kind.consequence()
        )));
    }
    let keys = global.keys()?;
    let client = global.connect().await?;
    let progress = global.progress();
    let id = format!("{}-remove-{}", kind.command(), uuid::Uuid::new_v4());
    let op = LockFor::new(&id, kind.operation(), lock_wait);
    with_lock(
        global,
        &client,
        &keys,
        op,
        &progress,
        async |store, state| match kind {
            Member::Host => hosts::remove(store, state, name, &id).await,
            Member::Lb => lbs::remove(store, state, name, &id).await,
        },
    )
    .await
}
