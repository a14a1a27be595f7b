//! `coordinator switch <color>` and `rollback`: a pure preflight ([`preflight`]) decides from the
//! app's state whether and where traffic may move; [`switch_command`] carries it out with the
//! [`crate::traffic`] primitives and records the outcome.
use crate::error::CoordinatorError;
use crate::fleet::{self, LbPolicy};
use crate::history;
use crate::probes::Probes;
use crate::progress::Progress;
use crate::report::Side;
use crate::status::AppStatus;
use crate::store::{Store, Write};
use crate::traffic::move_traffic;
use proto::records::{ActiveRecord, DeployRecord, Desired};
use proto::{Color, Operation, Outcome, Phase};

/// What `switch <color>` or `rollback` asks for.
pub struct SwitchRequest {
    pub operation: Operation,
    /// `None` for rollback: the color that is not active.
    pub target: Option<Color>,
    pub op_id: String,
    pub lb_policy: LbPolicy,
}

/// `coordinator switch <color>` and `rollback`: the target must serve its recorded version on
/// every host; otherwise nothing changes (exit 1). One operation id covers lock, `active`,
/// `deploy` and history; the `deploy` record ends `done` (or `failed`), so no later command
/// mistakes a finished switch for a dead deploy.
pub async fn switch_command<S: Store, P: Probes>(
    store: &S,
    state: AppStatus,
    probes: &P,
    req: &SwitchRequest,
    progress: &Progress,
) -> Result<String, CoordinatorError> {
    let plan = match preflight(&state, req.target, req.lb_policy) {
        SwitchPreflight::AlreadyActive(message) => return Ok(message),
        SwitchPreflight::Refuse { movement, why } => {
            if let Some((from, to)) = movement {
                progress.record().movement(from, to);
            }
            return Err(CoordinatorError::failed(why));
        }
        SwitchPreflight::Go(plan) => plan,
    };
    let SwitchPlan {
        current,
        target,
        version,
        lbs,
    } = plan;
    let (from, to) = movement(&state, target, &version);
    progress.record().movement(from, to);
    if req.target.is_none() {
        let placed = store.last_deploy_to(target).await?;
        if let Some(why) = state.releases.get(&target).and_then(|release| {
            replaced_since_deployed(target, release, placed.as_ref(), state.deploy.as_ref())
        }) {
            return Err(CoordinatorError::failed(why));
        }
    }
    let now = proto::time::now_rfc3339();
    let active = ActiveRecord {
        color: target,
        version: version.clone(),
        deploy_id: req.op_id.clone(),
        token: store.token(),
        switched_at: now.clone(),
    };
    let mut deploy = DeployRecord {
        deploy_id: req.op_id.clone(),
        operation: req.operation,
        phase: Phase::Switched,
        from: current,
        to: target,
        version: version.clone(),
        token: store.token(),
        started_at: now.clone(),
        updated_at: now,
        error: None,
    };
    let result = move_traffic(
        store,
        probes,
        &lbs,
        state.active_mod_revision,
        &active,
        &deploy,
        progress,
    )
    .await;
    let moved = !matches!(result, Err(CoordinatorError::Failed(_)));
    // Once `active` is written, a failure to record it is never "nothing decided" (exit 5) or bad
    // input: traffic moved, and the report must say so.
    let after_move = |e: CoordinatorError| {
        if moved {
            CoordinatorError::unsafe_state(format!(
                "traffic moved to {target} ({version}) but recording it failed"
            ))
            .because(e)
        } else {
            e
        }
    };
    if moved {
        deploy.phase = if result.is_ok() {
            Phase::Done
        } else {
            Phase::Failed
        };
        deploy.error = result.as_ref().err().map(|e| e.to_string());
        deploy.updated_at = proto::time::now_rfc3339();
        store
            .put(&[Write::Deploy(deploy.clone())], None)
            .await
            .map_err(after_move)?;
    }
    let mut record = history::record(
        req.operation,
        &req.op_id,
        if result.is_ok() {
            Outcome::Done
        } else {
            Outcome::Failed
        },
    );
    record.from = current;
    record.to = Some(target);
    record.version = Some(version.clone());
    record.reason = result.as_ref().err().map(|e| e.to_string());
    store.append_history(&record).await.map_err(after_move)?;
    let revision = result?;
    Ok(format!(
        "traffic on {target} ({version}) at revision {revision}"
    ))
}

/// Where a switch or rollback goes, once [`preflight`] allowed it.
#[derive(Debug, Clone, PartialEq)]
pub struct SwitchPlan {
    /// The active color before it (none on a fresh app).
    pub current: Option<Color>,
    pub target: Color,
    /// The version `target` runs, which becomes the active one.
    pub version: String,
    /// Every registered LB (but the silent ones, when a split was allowed): each must ack.
    pub lbs: Vec<String>,
}

/// What the state allows a switch or rollback to do.
#[derive(Debug, Clone, PartialEq)]
pub enum SwitchPreflight {
    /// The target already takes the traffic: nothing to do (exit 0).
    AlreadyActive(String),
    /// Refused; nothing changes (exit 1). `movement`: the move it would have been, once the
    /// target and its version are known, for the result event.
    Refuse {
        movement: Option<(Option<Side>, Side)>,
        why: String,
    },
    Go(SwitchPlan),
}

/// The refusals of `switch <target>` (`target` None: `rollback`, to the color that is not active),
/// decided from the state alone: an unreadable or missing `active` for a rollback, a rollback onto
/// a version that was staged and never promoted (that would go forward), a target with no
/// running release or not healthy on every host, no LB to follow the switch.
pub fn preflight(state: &AppStatus, target: Option<Color>, policy: LbPolicy) -> SwitchPreflight {
    let refuse = |why: String| SwitchPreflight::Refuse {
        movement: None,
        why,
    };
    let current = state.active.as_ref().map(|a| a.color);
    let rollback = target.is_none();
    let target = match (target, current, &state.active_invalid) {
        (Some(t), _, _) => t,
        (None, _, Some(problem)) => {
            return refuse(format!(
                "`active` is unreadable ({problem}): rollback cannot tell which color is the other one; \
                 name it with `coordinator switch <color>`"
            ))
        }
        (None, Some(c), None) => c.other(),
        (None, None, None) => return refuse("no active color yet: nothing to roll back".into()),
    };
    if current == Some(target) {
        return SwitchPreflight::AlreadyActive(format!("{target} is already active"));
    }
    if let Some(staged) = state
        .deploy
        .as_ref()
        .filter(|d| rollback && d.phase == Phase::Staged && d.to == target)
    {
        // The other color no longer holds the previous version: a rollback would go forward.
        return refuse(format!(
            "{target} holds {}, staged by {} and never promoted, not the previous version: \
             `coordinator promote` switches to it, `coordinator switch {target}` if that is what you mean",
            staged.version, staged.deploy_id
        ));
    }
    let Some(release) = state
        .releases
        .get(&target)
        .filter(|r| r.desired == Desired::Running)
    else {
        return refuse(format!("{target} has no running release to switch to"));
    };
    let movement = movement(state, target, &release.version);
    let stays = current.map_or("nothing".into(), |c| c.to_string());
    let unhealthy = fleet::unhealthy(state, target, &release.version);
    if !unhealthy.is_empty() {
        return SwitchPreflight::Refuse {
            movement: Some(movement),
            why: format!(
                "{target} ({}) is not healthy on {}: traffic stays on {stays}",
                release.version,
                unhealthy.join(", "),
            ),
        };
    }
    if state.lbs.is_empty() && !policy.allow_no_lb {
        return SwitchPreflight::Refuse {
            movement: Some(movement),
            why: format!(
                "no LB is registered, so nothing would follow the switch or verify it: traffic stays on {stays}; \
                 pass --allow-no-lb to write `active` anyway"
            ),
        };
    }
    let lbs = match fleet::lbs_to_follow(state, policy) {
        Ok(lbs) => lbs,
        Err(why) => {
            return SwitchPreflight::Refuse {
                movement: Some(movement),
                why: format!("{why}; traffic stays on {stays}"),
            }
        }
    };
    SwitchPreflight::Go(SwitchPlan {
        current,
        target,
        version: release.version.clone(),
        lbs,
    })
}

/// Why a rollback must not go to `release` on `color`: it is not what history's last deploy to
/// that color placed there (another operation id or version), so something other than a
/// deploy wrote it (an etcd writer replaying an older, validly signed record, say). `None` when
/// it matches, when history has no deploy to that color to compare with, or when the `deploy`
/// record says its own deploy staged it there (a deploy whose history record was never written).
/// An explicit `switch <color>` is the operator's override, after looking.
pub fn replaced_since_deployed(
    color: Color,
    release: &proto::records::ReleaseRecord,
    last_deploy: Option<&proto::records::HistoryRecord>,
    deploy_record: Option<&DeployRecord>,
) -> Option<String> {
    let staged_by_last_operation = deploy_record.is_some_and(|d| {
        d.operation == Operation::Deploy
            && d.to == color
            && d.deploy_id == release.deploy_id
            && d.version == release.version
    });
    if staged_by_last_operation {
        return None;
    }
    let deploy = last_deploy?;
    let version = deploy.version.as_deref().unwrap_or("?");
    // Records written before operation ids were kept in releases match on the version alone.
    let same_operation = release.deploy_id.is_empty() || release.deploy_id == deploy.deploy_id;
    if same_operation && release.version == version {
        return None;
    }
    Some(format!(
        "releases/{color} holds {} (operation {}), but history's last deploy to {color} is {} ({version}): \
         the record was written outside a deploy; traffic stays where it is. Compare `coordinator \
         history` with the record, then `coordinator switch {color}` if it is what you want",
        proto::text::escaped(&release.version),
        proto::text::escaped(if release.deploy_id.is_empty() { "unknown" } else { &release.deploy_id }),
        deploy.deploy_id,
    ))
}

/// The move from the active color to `target` running `version`, as the result event reports it.
fn movement(state: &AppStatus, target: Color, version: &str) -> (Option<Side>, Side) {
    let from = state.active.as_ref().map(|a| Side {
        color: a.color,
        version: Some(a.version.clone()),
    });
    let to = Side {
        color: target,
        version: Some(version.to_string()),
    };
    (from, to)
}

#[cfg(test)]
#[path = "switch_tests.rs"]
mod tests;
