//! Says which keys one app's registration and health on this host are: the agent holds them
//! under its lease (through [`proto::leased::hold_keys`], one for all its apps), so that a dead
//! agent's keys disappear by themselves.
use crate::apps::HeldSet;
use crate::status::ColorStatus;
use proto::leased::{HeldKey, Hold};
use proto::records::{encode, HostRecord};
use proto::Keys;
use tokio::sync::watch;

pub struct Reporter {
    pub keys: Keys,
    pub host: HostRecord,
    pub statuses: Vec<watch::Receiver<Option<ColorStatus>>>,
    /// Where this app's keys go, beside the agent's other apps'.
    pub held: HeldSet,
}

impl Reporter {
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let app = self.keys.app().to_string();
        let puts = self.puts();
        self.held.publish(&app, puts);
        loop {
            tokio::select! {
                _ = changed(&mut self.statuses) => {
                    let puts = self.puts();
                    self.held.publish(&app, puts);
                }
                _ = crate::status::shutdown_requested(&mut shutdown) => break,
            }
        }
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
