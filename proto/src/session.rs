//! An etcd lease kept alive in the background, like Go's `concurrency.Session`: it reads every
//! keep-alive answer and declares the lease lost when none was acknowledged for two thirds of the
//! TTL (monotonic clock), so the holder stops acting before etcd can expire the lease under it.
use crate::ProtoError;
use etcd_client::Client;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub struct Session {
    client: Client,
    lease_id: i64,
    ttl: Duration,
    lost: watch::Receiver<Option<String>>,
    keeper: JoinHandle<()>,
}

impl Session {
    /// Grants a lease of `ttl` (whole seconds, at least 2) and starts keeping it alive.
    pub async fn grant(client: &Client, ttl: Duration) -> Result<Session, ProtoError> {
        let ttl_secs = ttl.as_secs().max(2) as i64;
        let mut client = client.clone();
        let lease = client
            .lease_grant(ttl_secs, None)
            .await
            .map_err(|e| ProtoError::etcd(format!("grant lease of {ttl_secs}s"), e))?;
        let lease_id = lease.id();
        let ttl = Duration::from_secs(ttl_secs as u64);
        let (tx, lost) = watch::channel(None);
        let keeper = tokio::spawn(keep_alive(client.clone(), lease_id, ttl, tx));
        Ok(Session {
            client,
            lease_id,
            ttl,
            lost,
            keeper,
        })
    }

    pub fn lease_id(&self) -> i64 {
        self.lease_id
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Why the lease was lost, if it was.
    pub fn lost_reason(&self) -> Option<String> {
        self.lost.borrow().clone()
    }

    /// Resolves once the lease is lost, with the reason.
    pub async fn lost(&self) -> ProtoError {
        let mut rx = self.lost.clone();
        let reason = match rx.wait_for(Option::is_some).await {
            Ok(r) => r.clone().unwrap_or_default(),
            Err(_) => "keep-alive task ended".to_string(),
        };
        ProtoError::LeaseLost {
            lease_id: self.lease_id,
            reason,
        }
    }

    /// Stops renewing and revokes the lease, deleting every key attached to it now rather than
    /// after the TTL. Errors are ignored: an unreachable etcd expires the lease anyway.
    pub async fn revoke(mut self) {
        self.keeper.abort();
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.client.lease_revoke(self.lease_id),
        )
        .await;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Renews every ttl/3; a renewal counts only when etcd answers it with a positive TTL.
async fn keep_alive(
    mut client: Client,
    lease_id: i64,
    ttl: Duration,
    lost: watch::Sender<Option<String>>,
) {
    let period = ttl / 3;
    let lost_after = ttl * 2 / 3;
    let mut last_ack = Instant::now();
    let mut stream = None;
    loop {
        let deadline = last_ack + lost_after;
        if Instant::now() >= deadline {
            let _ = lost.send(Some(format!(
                "no keep-alive acknowledged for {lost_after:?}"
            )));
            return;
        }
        if stream.is_none() {
            match tokio::time::timeout_at(deadline, client.lease_keep_alive(lease_id)).await {
                Ok(Ok(pair)) => stream = Some(pair),
                Ok(Err(e)) => {
                    tracing::warn!(lease_id, error = %e, "lease keep-alive stream failed, retrying");
                    tokio::time::sleep(Duration::from_millis(200).min(period)).await;
                    continue;
                }
                Err(_) => continue,
            }
        }
        let (keeper, answers) = stream.as_mut().expect("stream opened above");
        let renewed = async {
            keeper.keep_alive().await?;
            answers.message().await
        };
        match tokio::time::timeout_at(deadline, renewed).await {
            Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                last_ack = Instant::now();
                crate::leased::confirmed();
                tokio::time::sleep(period).await;
            }
            Ok(Ok(Some(_))) => {
                let _ = lost.send(Some("etcd reports the lease expired".into()));
                return;
            }
            Ok(Ok(None)) | Ok(Err(_)) => {
                tracing::warn!(lease_id, "lease keep-alive interrupted, reopening");
                stream = None;
                tokio::time::sleep(Duration::from_millis(200).min(period)).await;
            }
            Err(_) => {}
        }
    }
}
