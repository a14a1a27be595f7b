//! Feeds the supervisors what etcd wants: `releases/<color>` and `active`, read once and then
//! followed with a resumable watch. Values that do not parse become [`DesiredRelease::Invalid`]
//! with an error naming the key, and are never acted on.
use crate::status::DesiredRelease;
use etcd_client::Client;
use proto::records::{decode, ActiveRecord, ReleaseRecord};
use proto::watch::{PrefixWatch, WatchEvent};
use proto::{AppKey, Color, Keys};
use std::time::Duration;
use tokio::sync::watch;

pub struct DesiredFeed {
    pub client: Client,
    pub keys: Keys,
    pub blue: watch::Sender<DesiredRelease>,
    pub green: watch::Sender<DesiredRelease>,
    pub active: watch::Sender<Option<Color>>,
}

impl DesiredFeed {
    pub async fn run(self) {
        // One watch over the app prefix, filtered to the keys the agent cares about: it keeps a
        // single revision for releases and active, so they are seen in the order they were written.
        let mut delay = Duration::from_millis(100);
        let (snapshot, mut watch) = loop {
            match PrefixWatch::start(&self.client, self.keys.app_prefix()).await {
                Ok(pair) => break pair,
                Err(e) => {
                    tracing::warn!(error = %e, ?delay, "cannot read releases from etcd, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        };
        self.apply_snapshot(&snapshot.entries);
        loop {
            match watch.next().await {
                Ok(WatchEvent::Changes { changes, .. }) => {
                    for change in changes {
                        self.apply(&change.key, change.value.as_deref());
                    }
                }
                Ok(WatchEvent::Resync(snapshot)) => self.apply_snapshot(&snapshot.entries),
                Err(e) => {
                    tracing::warn!(error = %e, "watch canceled, starting over");
                    match PrefixWatch::start(&self.client, self.keys.app_prefix()).await {
                        Ok((snapshot, w)) => {
                            self.apply_snapshot(&snapshot.entries);
                            watch = w;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "re-read failed");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            }
        }
    }

    fn apply_snapshot(&self, entries: &[(String, Vec<u8>)]) {
        let mut seen_release = [false, false];
        let mut seen_active = false;
        for (key, value) in entries {
            match self.keys.parse(key) {
                Some(AppKey::Release(c)) => seen_release[c as usize] = true,
                Some(AppKey::Active) => seen_active = true,
                _ => {}
            }
            self.apply(key, Some(value));
        }
        for color in Color::ALL {
            if !seen_release[color as usize] {
                self.apply(&self.keys.release(color), None);
            }
        }
        if !seen_active {
            self.apply(&self.keys.active(), None);
        }
    }

    fn apply(&self, key: &str, value: Option<&[u8]>) {
        match self.keys.parse(key) {
            Some(AppKey::Release(color)) => {
                let desired = match value {
                    None => DesiredRelease::Absent,
                    Some(bytes) => match decode::<ReleaseRecord>(key, bytes) {
                        Ok(r) => DesiredRelease::Release(r),
                        Err(e) => DesiredRelease::Invalid(e.to_string()),
                    },
                };
                let tx = match color {
                    Color::Blue => &self.blue,
                    Color::Green => &self.green,
                };
                tx.send_if_modified(|old| replace_if_changed(old, desired));
            }
            Some(AppKey::Active) => {
                // Missing or unparsable active means "no traffic decision yet".
                let active = value.and_then(|bytes| match decode::<ActiveRecord>(key, bytes) {
                    Ok(a) => Some(a.color),
                    Err(e) => {
                        tracing::warn!(error = %e, "ignoring invalid active record");
                        None
                    }
                });
                self.active
                    .send_if_modified(|old| replace_if_changed(old, active));
            }
            _ => {}
        }
    }
}

fn replace_if_changed<T: PartialEq>(slot: &mut T, value: T) -> bool {
    if *slot == value {
        false
    } else {
        *slot = value;
        true
    }
}
