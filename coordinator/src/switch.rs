//! Moving traffic: the fenced write of `active` (guarded by the lock token and by the `active`
//! revision the decision was made on), then every live LB's ack, then a check through each LB.
//! Used by deploy, `switch`, `rollback` and the automatic switch back of `--verify-for`.
use crate::error::CoordinatorError;
use crate::fleet;
use crate::lock::DeployLock;
use crate::progress::Progress;
use crate::status;
use etcd_client::{Compare, CompareOp};
use proto::records::{encode, ActiveRecord, DeployRecord, Desired};
use proto::{Color, Keys};
use std::time::Duration;

/// How long LBs get to ack a switch before it counts as not made safe.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes `active` (and the deploy record, in the same Txn) and waits for every live LB. Returns
/// the revision of the switch. Err(Failed) if the fence refused (nothing changed); Err(Unsafe) when
/// traffic moved but an LB did not follow.
pub async fn switch(
    client: &etcd_client::Client,
    keys: &Keys,
    lock: &DeployLock,
    seen_active_revision: i64,
    active: &ActiveRecord,
    deploy: &DeployRecord,
    progress: &Progress,
) -> Result<i64, CoordinatorError> {
    let lbs: Vec<String> = status::read(client, keys)
        .await?
        .lbs
        .keys()
        .cloned()
        .collect();
    let guard = Compare::mod_revision(keys.active(), CompareOp::Equal, seen_active_revision);
    let puts = [
        (keys.active(), encode(active)),
        (keys.deploy(), encode(deploy)),
    ];
    let revision = lock
        .fence
        .put_all(client, &puts, vec![guard])
        .await
        .map_err(|e| match e {
            proto::ProtoError::FenceLost { .. } => CoordinatorError::Failed(format!(
                "switch to {} refused: the lock or `active` changed since this decision ({e})",
                active.color
            )),
            other => other.into(),
        })?;
    progress.event(
        "switch",
        None,
        "written",
        &format!(
            "active = {} {} at revision {revision}",
            active.color, active.version
        ),
    );
    let acks = fleet::wait_acks(client, keys, &lbs, revision, ACK_TIMEOUT)
        .await
        .map_err(|e| {
            CoordinatorError::Unsafe(format!(
                "switched to {} at revision {revision} but not every LB followed: {e}",
                active.color
            ))
        })?;
    for name in &lbs {
        progress.event(
            "ack",
            Some(name),
            "applied",
            &format!("revision {revision}"),
        );
    }
    fleet::verify_through_lbs(&acks, active.color)
        .await
        .map_err(|e| {
            CoordinatorError::Unsafe(format!(
                "LBs acked {} but do not serve it: {e}",
                active.color
            ))
        })?;
    progress.event(
        "verify",
        None,
        "ok",
        &format!("{} LB(s) serve {}", acks.len(), active.color),
    );
    Ok(revision)
}

/// `coordinator switch <color>` and `rollback`: the target must be running and healthy on every
/// host at its recorded version; otherwise nothing changes (exit 1).
pub async fn switch_command(
    client: &etcd_client::Client,
    keys: &Keys,
    lock: &DeployLock,
    target: Option<Color>,
    kind: &str,
    progress: &Progress,
) -> Result<String, CoordinatorError> {
    let state = status::read(client, keys).await?;
    let current = state.active.as_ref().map(|a| a.color);
    let target = match (target, current) {
        (Some(t), _) => t,
        (None, Some(c)) => c.other(),
        (None, None) => {
            return Err(CoordinatorError::Failed(
                "no active color yet: nothing to roll back".into(),
            ))
        }
    };
    if current == Some(target) {
        return Ok(format!("{target} is already active"));
    }
    let release = state
        .releases
        .get(&target)
        .filter(|r| r.desired == Desired::Running)
        .ok_or_else(|| {
            CoordinatorError::Failed(format!("{target} has no running release to switch to"))
        })?;
    let unhealthy = fleet::unhealthy(&state, target, &release.version);
    if !unhealthy.is_empty() {
        return Err(CoordinatorError::Failed(format!(
            "{target} ({}) is not healthy on {}: traffic stays on {}",
            release.version,
            unhealthy.join(", "),
            current.map_or("nothing".into(), |c| c.to_string())
        )));
    }
    let deploy_id = uuid::Uuid::new_v4().to_string();
    let now = proto::time::now_rfc3339();
    let active = ActiveRecord {
        color: target,
        version: release.version.clone(),
        deploy_id: deploy_id.clone(),
        token: lock.fence.token,
        switched_at: now.clone(),
    };
    let deploy = DeployRecord {
        deploy_id: deploy_id.clone(),
        phase: "switched".into(),
        from: current,
        to: target,
        version: release.version.clone(),
        token: lock.fence.token,
        started_at: now.clone(),
        updated_at: now,
        error: None,
    };
    let result = switch(
        client,
        keys,
        lock,
        state.active_mod_revision,
        &active,
        &deploy,
        progress,
    )
    .await;
    let mut record = crate::history::record(
        kind,
        &deploy_id,
        if result.is_ok() { "done" } else { "failed" },
    );
    record.from = current;
    record.to = Some(target);
    record.version = Some(release.version.clone());
    record.reason = result.as_ref().err().map(|e| e.to_string());
    crate::history::append(client, keys, Some(&lock.fence), &record).await?;
    let revision = result?;
    Ok(format!(
        "traffic on {target} ({}) at revision {revision}",
        release.version
    ))
}
