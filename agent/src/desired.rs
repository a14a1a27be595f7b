//! Feeds the supervisors what etcd wants: `releases/<color>` and `active`, read once and then
//! followed with a resumable watch. Values that do not parse become [`DesiredRelease::Invalid`]
//! with an error naming the key, and are never acted on; so does a release to run that lacks a
//! valid signature when this agent trusts signing keys.
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
    /// Keys whose signature a release must carry to run (none: no signature needed).
    pub trusted: proto::signing::TrustedKeys,
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
                        Ok(r) => match self.check_signature(&r) {
                            Ok(()) => DesiredRelease::Release(r),
                            Err(e) => {
                                tracing::error!(%key, version = %r.version, error = %e, "release refused");
                                DesiredRelease::Invalid {
                                    version: Some(r.version.clone()),
                                    error: format!("{key}: {e}"),
                                }
                            }
                        },
                        Err(e) => DesiredRelease::Invalid {
                            version: None,
                            error: e.to_string(),
                        },
                    },
                };
                let tx = match color {
                    Color::Blue => &self.blue,
                    Color::Green => &self.green,
                };
                tx.send_if_modified(|old| replace_if_changed(old, desired));
            }
            Some(AppKey::Active) => {
                // Missing active means "no traffic decision yet". An unparsable one is no
                // decision either way: keep the color we knew, so the live color stays protected.
                let active = match value.map(|bytes| decode::<ActiveRecord>(key, bytes)) {
                    None => None,
                    Some(Ok(a)) => Some(a.color),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "ignoring invalid active record; keeping the last known one");
                        return;
                    }
                };
                self.active
                    .send_if_modified(|old| replace_if_changed(old, active));
            }
            _ => {}
        }
    }
}

impl DesiredFeed {
    /// A release to run must be signed by a trusted key (when keys are trusted); stopping needs
    /// no signature, since it runs nothing.
    fn check_signature(&self, release: &ReleaseRecord) -> Result<(), String> {
        if !self.trusted.required() || release.desired == proto::records::Desired::Stopped {
            return Ok(());
        }
        self.trusted.verify(release)
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
