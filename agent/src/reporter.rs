//! Writes this host's registration and both colors' health into etcd under the agent's own lease,
//! so that a dead agent's keys disappear by themselves. A lost lease (etcd partition longer than the
//! TTL) is replaced by a new one and every key is written again.
use crate::status::ColorStatus;
use etcd_client::{Client, PutOptions};
use proto::records::{encode, HostRecord};
use proto::session::Session;
use proto::Keys;
use std::time::Duration;
use tokio::sync::watch;

pub struct Reporter {
    pub client: Client,
    pub keys: Keys,
    pub host: HostRecord,
    pub lease_ttl: Duration,
    pub statuses: Vec<watch::Receiver<Option<ColorStatus>>>,
}

impl Reporter {
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let session = tokio::select! {
                s = self.grant() => s,
                _ = crate::status::shutdown_requested(&mut shutdown) => return,
            };
            tracing::info!(host = %self.host.host, lease_id = session.lease_id(), "registered in etcd");
            let mut dirty = true;
            loop {
                if dirty {
                    dirty = !self.write_all(session.lease_id()).await;
                }
                let retry = tokio::time::sleep(Duration::from_millis(if dirty { 500 } else { 86_400_000 }));
                tokio::select! {
                    _ = changed(&mut self.statuses) => dirty = true,
                    _ = retry => {}
                    lost = session.lost() => {
                        tracing::warn!(host = %self.host.host, error = %lost, "lease lost; registering again");
                        break;
                    }
                    // Keys are not revoked on shutdown: the apps keep running, and a restarted agent
                    // takes the keys over under its new lease before this one expires.
                    _ = crate::status::shutdown_requested(&mut shutdown) => return,
                }
            }
        }
    }

    /// Grants a lease, retrying with backoff for as long as etcd is unreachable.
    async fn grant(&self) -> Session {
        let mut delay = Duration::from_millis(100);
        loop {
            match Session::grant(&self.client, self.lease_ttl).await {
                Ok(s) => return s,
                Err(e) => {
                    tracing::warn!(error = %e, ?delay, "cannot grant lease, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Writes the host key and every known color status; false if any write failed.
    async fn write_all(&mut self, lease_id: i64) -> bool {
        let mut puts = vec![(self.keys.host(&self.host.host), encode(&self.host))];
        for rx in &mut self.statuses {
            if let Some(status) = rx.borrow_and_update().as_ref() {
                puts.push((self.keys.health(&self.host.host, status.color), encode(&status.record())));
            }
        }
        for (key, value) in puts {
            let put = self.client.put(key.as_str(), value, Some(PutOptions::new().with_lease(lease_id)));
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
}

/// Resolves when any of the status channels has a new value.
async fn changed(statuses: &mut [watch::Receiver<Option<ColorStatus>>]) {
    let futures = statuses.iter_mut().map(|rx| Box::pin(rx.changed()));
    let (result, _, _) = futures::future::select_all(futures).await;
    if result.is_err() {
        std::future::pending::<()>().await;
    }
}
