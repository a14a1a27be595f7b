//! The traffic primitives: the fenced write of `active` (guarded by the lock token and by the
//! `active` revision the decision was made on), every registered LB's ack, a check through each
//! LB of what the sidecar says it serves, and the three together. Deploy, `switch`, `rollback`,
//! the automatic switch back of `--verify-for`, the canary's weights and the reconcile of a dead
//! canary use them; they decide nothing themselves.
use crate::error::CoordinatorError;
use crate::fleet;
use crate::probes::Probes;
use crate::progress::Progress;
use crate::store::{Store, Write};
use proto::records::{ActiveRecord, DeployRecord, LbRecord};
use proto::{Color, ProtoError};
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
        .map_err(CoordinatorError::failed)?;
    let unsafe_after = |why: String| {
        CoordinatorError::unsafe_state(format!(
            "switched to {} at revision {revision} but {why}",
            active.color
        ))
    };
    let acks = await_acks(store, lbs, revision, progress)
        .await
        .map_err(|e| {
            let moved = format!("switched to {} at revision {revision}, then", active.color);
            CoordinatorError::unsafe_state(moved).because(e)
        })?
        .map_err(|e| unsafe_after(format!("not every LB followed: {e}")))?;
    verify(probes, &acks, lbs, active.color, revision, progress)
        .await
        .map_err(|e| unsafe_after(format!("the LBs do not serve it: {e}")))?;
    Ok(revision)
}
