//! Keeps a set of keys written under this process's own lease (an agent's host and health keys, a
//! sidecar's ack), so they vanish when the process dies. Writes are retried while etcd is
//! unreachable; a lost lease is replaced by a new one and every key is written again.
use crate::session::Session;
use etcd_client::{Client, PutOptions};
use std::time::Duration;
use tokio::sync::watch;

/// Holds `keys` (the full desired set of `(key, value)`) until `shutdown` becomes true. On shutdown
/// the lease is left to expire, so a restarted process can take the keys over seamlessly.
pub async fn hold_keys(
    client: Client,
    ttl: Duration,
    mut keys: watch::Receiver<Vec<(String, String)>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let session = tokio::select! {
            s = grant(&client, ttl) => s,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        tracing::info!(
            lease_id = session.lease_id(),
            "holding keys under a new lease"
        );
        let mut dirty = true;
        loop {
            if dirty {
                let puts = keys.borrow_and_update().clone();
                dirty = !write_all(&client, session.lease_id(), &puts).await;
            }
            let retry = tokio::time::sleep(if dirty {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(86_400)
            });
            tokio::select! {
                changed = keys.changed() => {
                    if changed.is_err() { return; }
                    dirty = true;
                }
                _ = retry => {}
                lost = session.lost() => {
                    tracing::warn!(error = %lost, "lease lost; writing every key again under a new one");
                    break;
                }
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }
}

async fn grant(client: &Client, ttl: Duration) -> Session {
    let mut delay = Duration::from_millis(100);
    loop {
        match Session::grant(client, ttl).await {
            Ok(s) => return s,
            Err(e) => {
                tracing::warn!(error = %e, ?delay, "cannot grant lease, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Writes every pair under `lease_id`; false if any write failed (the caller retries them all).
async fn write_all(client: &Client, lease_id: i64, puts: &[(String, String)]) -> bool {
    let mut client = client.clone();
    for (key, value) in puts {
        let put = client.put(
            key.as_str(),
            value.as_str(),
            Some(PutOptions::new().with_lease(lease_id)),
        );
        match tokio::time::timeout(Duration::from_secs(3), put).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(%key, error = %e, "etcd write failed, will retry");
                return false;
            }
            Err(_) => {
                tracing::warn!(%key, "etcd write timed out, will retry");
                return false;
            }
        }
    }
    true
}
