//! Writes this host's registration and both colors' health into etcd under the agent's own lease
//! (through [`proto::leased::hold_keys`]), so that a dead agent's keys disappear by themselves.
use crate::status::ColorStatus;
use etcd_client::Client;
use proto::leased::{HeldKey, Hold};
use proto::records::{encode, HostRecord};
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
    pub async fn run(mut self, shutdown: watch::Receiver<bool>) {
        let (tx, rx) = watch::channel(self.puts());
        let instance = self.host.instance.clone().unwrap_or_default();
        let holder = tokio::spawn(proto::leased::hold_keys(
            self.client.clone(),
            self.lease_ttl,
            instance,
            rx,
            shutdown.clone(),
        ));
        let mut shutdown = shutdown;
        loop {
            tokio::select! {
                _ = changed(&mut self.statuses) => { let _ = tx.send(self.puts()); }
                _ = crate::status::shutdown_requested(&mut shutdown) => break,
            }
        }
        let _ = holder.await;
    }

    /// The host key (this agent's claim on its host name), the host's durable membership (it
    /// outlives a silent agent, so a deploy can tell "cut off" from "never existed"), and every
    /// known color's health record.
    fn puts(&mut self) -> Vec<HeldKey> {
        let mut puts = vec![
            HeldKey::new(
                self.keys.host(&self.host.host),
                encode(&self.host),
                Hold::Claim,
            ),
            HeldKey::new(
                self.keys.host_member(&self.host.host),
                encode(&self.host),
                Hold::Durable,
            ),
        ];
        for rx in &mut self.statuses {
            if let Some(status) = rx.borrow_and_update().as_ref() {
                puts.push(HeldKey::new(
                    self.keys.health(&self.host.host, status.color),
                    encode(&status.record()),
                    Hold::Leased,
                ));
            }
        }
        puts
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
