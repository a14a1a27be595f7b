//! Moving traffic: the fenced write of `active` (guarded by the lock token and by the `active`
//! revision the decision was made on), then every registered LB's ack, then a check through each
//! LB of what the sidecar says it serves. Used by deploy, `switch`, `rollback` and the automatic
//! switch back of `--verify-for`.
use crate::error::CoordinatorError;
use crate::fleet;
use crate::history;
use crate::probes::Probes;
use crate::progress::Progress;
use crate::reconcile;
use crate::report::Side;
use crate::store::{Store, Write};
use proto::records::{ActiveRecord, DeployRecord, Desired, LbRecord};
use proto::{Color, Operation, Outcome, Phase, ProtoError};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long LBs get to ack a switch before it counts as not made safe.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes `active`, the operation's `deploy` record and `also` in one fenced Txn. Ok(Err) when
/// the guard failed (the lock or `active` changed since the decision): nothing was written.
pub async fn write_active<S: Store>(
    store: &S,
    active: &ActiveRecord,
    deploy: &DeployRecord,
    also: &[Write],
    seen_active_revision: i64,
    progress: &Progress,
) -> Result<Result<i64, String>, CoordinatorError> {
    let mut writes = vec![Write::Active(active.clone()), Write::Deploy(deploy.clone())];
    writes.extend_from_slice(also);
    match store.put(&writes, Some(seen_active_revision)).await {
        Ok(revision) => {
            progress.record().revision(revision);
            progress.event(
                "switch",
                None,
                "written",
                &format!(
                    "active = {} {} at revision {revision}",
                    active.color, active.version
                ),
            );
            Ok(Ok(revision))
        }
        Err(CoordinatorError::Proto(e @ ProtoError::FenceLost { .. })) => Ok(Err(format!(
            "switch to {} refused: the lock or `active` changed since this decision ({e})",
            active.color
        ))),
        Err(e) => Err(e),
    }
}

/// Waits for every LB in `lbs` to ack `revision`; Ok(Err) names those that did not in time.
pub async fn await_acks<S: Store>(
    store: &S,
    lbs: &[String],
    revision: i64,
    progress: &Progress,
) -> Result<Result<BTreeMap<String, LbRecord>, String>, CoordinatorError> {
    let acks = fleet::wait_acks(store, lbs, revision, ACK_TIMEOUT).await?;
    if acks.is_ok() {
        for name in lbs {
            progress.event(
                "ack",
                Some(name),
                "applied",
                &format!("revision {revision}"),
            );
        }
    }
    Ok(acks)
}

/// Checks through every acked LB that it serves `color` at `revision` or later.
pub async fn verify<P: Probes>(
    probes: &P,
    acks: &BTreeMap<String, LbRecord>,
    lbs: &[String],
    color: Color,
    revision: i64,
    progress: &Progress,
) -> Result<(), String> {
    let ours: BTreeMap<String, LbRecord> = acks
        .iter()
        .filter(|(name, _)| lbs.contains(name))
        .map(|(n, r)| (n.clone(), r.clone()))
        .collect();
    probes.verify_lbs(&ours, color, revision).await?;
    progress.event(
        "verify",
        None,
        "ok",
        &format!("{} LB(s) serve {color}", ours.len()),
    );
    Ok(())
}

/// Write, acks, verification. Err(Failed) if the guard refused (nothing changed); Err(Unsafe)
/// when traffic moved but an LB did not follow or does not serve it.
pub async fn move_traffic<S: Store, P: Probes>(
    store: &S,
    probes: &P,
    lbs: &[String],
    seen_active_revision: i64,
    active: &ActiveRecord,
    deploy: &DeployRecord,
    progress: &Progress,
) -> Result<i64, CoordinatorError> {
    let revision = write_active(store, active, deploy, &[], seen_active_revision, progress)
        .await?
        .map_err(CoordinatorError::Failed)?;
    let unsafe_after = |why: String| {
        CoordinatorError::Unsafe(format!(
            "switched to {} at revision {revision} but {why}",
            active.color
        ))
    };
    let acks = await_acks(store, lbs, revision, progress)
        .await
        .map_err(|e| unsafe_after(e.to_string()))?
        .map_err(|e| unsafe_after(format!("not every LB followed: {e}")))?;
    verify(probes, &acks, lbs, active.color, revision, progress)
        .await
        .map_err(|e| unsafe_after(format!("the LBs do not serve it: {e}")))?;
    Ok(revision)
}

/// What `switch <color>` or `rollback` asks for.
pub struct SwitchRequest {
    pub operation: Operation,
    /// `None` for rollback: the color that is not active.
    pub target: Option<Color>,
    pub op_id: String,
    pub allow_no_lb: bool,
}

/// `coordinator switch <color>` and `rollback`: the target must serve its recorded version on
/// every host; otherwise nothing changes (exit 1). One operation id covers lock, `active`,
/// `deploy` and history; the `deploy` record ends `done` (or `failed`), so no later command
/// mistakes a finished switch for a dead deploy.
pub async fn switch_command<S: Store, P: Probes>(
    store: &S,
    probes: &P,
    req: &SwitchRequest,
    progress: &Progress,
) -> Result<String, CoordinatorError> {
    let state = store.read().await?;
    reconcile::previous(store, &state, &req.op_id, progress).await?;
    let current = state.active.as_ref().map(|a| a.color);
    let target = match (req.target, current, &state.active_invalid) {
        (Some(t), _, _) => t,
        (None, _, Some(problem)) => {
            return Err(CoordinatorError::Failed(format!(
                "`active` is unreadable ({problem}): rollback cannot tell which color is the other one; \
                 name it with `coordinator switch <color>`"
            )))
        }
        (None, Some(c), None) => c.other(),
        (None, None, None) => {
            return Err(CoordinatorError::Failed(
                "no active color yet: nothing to roll back".into(),
            ))
        }
    };
    if current == Some(target) {
        return Ok(format!("{target} is already active"));
    }
    if let Some(staged) = state
        .deploy
        .as_ref()
        .filter(|d| req.target.is_none() && d.phase == Phase::Staged && d.to == target)
    {
        // The other color no longer holds the previous version: a rollback would go forward.
        return Err(CoordinatorError::Failed(format!(
            "{target} holds {}, staged by {} and never promoted, not the previous version: \
             `coordinator promote` switches to it, `coordinator switch {target}` if that is what you mean",
            staged.version, staged.deploy_id
        )));
    }
    let release = state
        .releases
        .get(&target)
        .filter(|r| r.desired == Desired::Running)
        .ok_or_else(|| {
            CoordinatorError::Failed(format!("{target} has no running release to switch to"))
        })?;
    progress.record().movement(
        state.active.as_ref().map(|a| Side {
            color: a.color,
            version: Some(a.version.clone()),
        }),
        Side {
            color: target,
            version: Some(release.version.clone()),
        },
    );
    let stays = current.map_or("nothing".into(), |c| c.to_string());
    let unhealthy = fleet::unhealthy(&state, target, &release.version);
    if !unhealthy.is_empty() {
        return Err(CoordinatorError::Failed(format!(
            "{target} ({}) is not healthy on {}: traffic stays on {stays}",
            release.version,
            unhealthy.join(", "),
        )));
    }
    let lbs: Vec<String> = state.lbs.keys().cloned().collect();
    if lbs.is_empty() && !req.allow_no_lb {
        return Err(CoordinatorError::Failed(format!(
            "no LB is registered, so nothing would follow the switch or verify it: traffic stays on {stays}; \
             pass --allow-no-lb to write `active` anyway"
        )));
    }
    let now = proto::time::now_rfc3339();
    let active = ActiveRecord {
        color: target,
        version: release.version.clone(),
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
        version: release.version.clone(),
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
            CoordinatorError::Unsafe(format!(
                "traffic moved to {target} ({}) but recording it failed: {e}",
                release.version
            ))
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
    record.version = Some(release.version.clone());
    record.reason = result.as_ref().err().map(|e| e.to_string());
    store.append_history(&record).await.map_err(after_move)?;
    let revision = result?;
    Ok(format!(
        "traffic on {target} ({}) at revision {revision}",
        release.version
    ))
}
