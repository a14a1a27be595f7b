//! `coordinator stop <color>`: stops the idle color on every host, for an operator who wants a
//! version gone without deploying over it (say, so a contract migration may run). The active
//! color is never stopped, and the stop gives up the instant rollback until that color is
//! deployed again; the command says so.
use crate::error::CoordinatorError;
use crate::history;
use crate::progress::Progress;
use crate::status::{self, AppStatus};
use crate::store::EtcdStore;
use etcd_client::{Compare, CompareOp};
use proto::records::{encode, Desired};
use proto::{Color, Keys};
use std::time::Duration;
use tokio::time::Instant;

pub async fn stop_color(
    store: &EtcdStore<'_>,
    state: AppStatus,
    color: Color,
    stop_id: &str,
    progress: &Progress,
) -> Result<String, CoordinatorError> {
    let (client, keys, lock) = (store.client, store.keys, store.lock);
    if let Some(active) = state.active.as_ref().filter(|a| a.color == color) {
        return Err(CoordinatorError::usage(format!(
            "refusing to stop {color}: it is the active color ({}) and takes the traffic",
            active.version
        )));
    }
    let serving = state.lbs_serving(color);
    if !serving.is_empty() {
        return Err(CoordinatorError::usage(format!(
            "refusing to stop {color}: LB {} last acked serving it",
            serving.join(", ")
        )));
    }
    let Some(release) = state.releases.get(&color) else {
        return Ok(format!("{color} has no release: nothing runs there"));
    };
    if release.desired == Desired::Running {
        let mut stopped = release.clone();
        stopped.desired = Desired::Stopped;
        stopped.token = lock.fence.token;
        // Guarded by `active` too: a switch to this color since the read makes the stop fail.
        let guard =
            Compare::mod_revision(keys.active(), CompareOp::Equal, state.active_mod_revision);
        lock.fence
            .put_all(
                client,
                &[(keys.release(color), encode(&stopped))],
                vec![guard],
            )
            .await
            .map_err(|e| match e {
                e @ proto::ProtoError::FenceLost { .. } => CoordinatorError::failed(format!(
                    "stop of {color} refused: the lock or `active` changed meanwhile"
                ))
                .because(e),
                other => other.into(),
            })?;
        progress.event(
            "stop",
            None,
            "written",
            &format!("releases/{color} desired=stopped"),
        );
    }
    let timeout = release.run.stop_timeout + Duration::from_secs(30);
    let still = wait_stopped(client, keys, color, timeout).await?;
    if !still.is_empty() {
        return Err(CoordinatorError::failed(format!(
            "{color} was told to stop but still runs after {}: {}",
            humantime::format_duration(timeout),
            still.join(", ")
        )));
    }
    let mut record = history::record(proto::Operation::Stop, stop_id, proto::Outcome::Stopped);
    record.to = Some(color);
    record.version = Some(release.version.clone());
    history::append(client, keys, Some(&lock.fence), &record).await?;
    Ok(format!(
        "stopped {color} ({}) on every host; `rollback` to it is not possible until it is deployed again",
        release.version
    ))
}

/// Waits until no host reports `color` running; returns the hosts that still do at the deadline.
async fn wait_stopped(
    client: &etcd_client::Client,
    keys: &Keys,
    color: Color,
    timeout: Duration,
) -> Result<Vec<String>, CoordinatorError> {
    let deadline = Instant::now() + timeout;
    loop {
        let running = running_hosts(&status::read(client, keys).await?, color);
        if running.is_empty() || Instant::now() >= deadline {
            return Ok(running);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn running_hosts(state: &AppStatus, color: Color) -> Vec<String> {
    state
        .health
        .iter()
        .filter(|(_, colors)| colors.get(&color).is_some_and(|h| h.state.is_running()))
        .map(|(host, _)| host.clone())
        .collect()
}
