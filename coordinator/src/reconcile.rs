//! Closing the record of an operation whose coordinator died mid-way. Every lock-taking command
//! runs this first ([`crate::locked::run_locked`]), so a dead deploy is reported once, by whoever comes next, and a finished one
//! (any operation whose `deploy` record is terminal) never is. The decision is
//! [`crate::pipeline::reconcile`]; this writes it.
use crate::error::CoordinatorError;
use crate::history;
use crate::pipeline;
use crate::progress::Progress;
use crate::status::AppStatus;
use crate::store::{Store, Write};
use proto::records::TrafficRecord;
use proto::{Operation, Phase};

/// Closes the operation `state` shows a dead coordinator left behind, if any; `true` when it
/// wrote (the caller's `state` is stale then).
pub async fn previous<S: Store>(
    store: &S,
    state: &AppStatus,
    op_id: &str,
    progress: &Progress,
) -> Result<bool, CoordinatorError> {
    let Some(previous) = &state.deploy else {
        return Ok(false);
    };
    let Some(decision) = pipeline::reconcile(Some(previous), state.active.as_ref()) else {
        return Ok(false);
    };
    progress.event(
        "reconcile",
        None,
        decision.outcome.as_str(),
        &format!(
            "{} {} was left in phase {}",
            decision.operation, previous.deploy_id, previous.phase
        ),
    );
    let mut finished = previous.clone();
    finished.phase = decision.phase;
    finished.error = Some(format!(
        "coordinator died in phase {}; reconciled by {op_id}",
        previous.phase
    ));
    finished.updated_at = proto::time::now_rfc3339();
    store.put(&[Write::Deploy(finished.clone())], None).await?;
    let mut record = history::record(Operation::Reconcile, &previous.deploy_id, decision.outcome);
    record.from = previous.from;
    record.to = Some(previous.to);
    record.version = Some(previous.version.clone());
    record.reason = finished.error.clone();
    record.details =
        serde_json::json!({ "operation": decision.operation, "phase": previous.phase });
    // Recorded before the canary's LBs are waited for: the operation is closed whatever they do.
    store.append_history(&record).await?;
    if previous.phase == Phase::Canary {
        back_to_stable(store, state, &previous.deploy_id, progress).await?;
    }
    Ok(true)
}

/// A canary whose coordinator died leaves part of the traffic on a color nobody judges any more:
/// send everyone back to the stable color (fenced by this command's lock) and wait for every live
/// LB. A registered LB whose sidecar is gone cannot ack; it is named, and takes weight 0 when its
/// sidecar returns. Waiting for it would fail every lock-taking command, `lb remove` of that very
/// LB included, which is the way out.
async fn back_to_stable<S: Store>(
    store: &S,
    state: &AppStatus,
    deploy_id: &str,
    progress: &Progress,
) -> Result<(), CoordinatorError> {
    let Some(traffic) = state
        .traffic
        .as_ref()
        .filter(|t| t.deploy_id == deploy_id && t.weight > 0)
    else {
        return Ok(());
    };
    let record = TrafficRecord {
        weight: 0,
        token: store.token(),
        set_at: proto::time::now_rfc3339(),
        ..traffic.clone()
    };
    let revision = store
        .put(&[Write::Traffic(record)], Some(state.active_mod_revision))
        .await?;
    progress.event(
        "reconcile",
        None,
        "weight 0",
        &format!(
            "canary {deploy_id}: every user back to {} at revision {revision}",
            traffic.stable
        ),
    );
    let (lbs, gone): (Vec<String>, Vec<String>) = state
        .lbs
        .keys()
        .cloned()
        .partition(|lb| state.lbs_alive.contains(lb));
    if !gone.is_empty() {
        progress.event(
            "reconcile",
            None,
            "not waited for",
            &format!(
                "LB(s) {} have no live sidecar: each takes weight 0 when its sidecar returns \
                 (or `coordinator lb remove` it)",
                gone.join(", ")
            ),
        );
    }
    crate::traffic::await_acks(store, &lbs, revision, progress)
        .await?
        .map(|_| ())
        .map_err(|why| {
            CoordinatorError::unsafe_state(format!(
                "canary {deploy_id} sent back to {} at revision {revision}, but not every LB followed: {why}",
                traffic.stable
            ))
        })
}
