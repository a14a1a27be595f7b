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
    /// The newest fencing token accepted per color (with trusted keys): an older one is a
    /// replayed record.
    pub floor: TokenFloor,
}

/// The newest operation token this agent accepted a signed release with, per color, kept in its
/// state dir so a restart does not forget it. Tokens only grow (each is a new lock's revision).
#[derive(Debug)]
pub struct TokenFloor {
    path: std::path::PathBuf,
    seen: std::sync::Mutex<std::collections::BTreeMap<Color, i64>>,
}

impl TokenFloor {
    pub fn load(state_dir: &std::path::Path) -> TokenFloor {
        let path = state_dir.join("accepted-tokens.json");
        let seen = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        TokenFloor {
            path,
            seen: std::sync::Mutex::new(seen),
        }
    }

    /// Accepts `token` for `color` unless it is below the newest accepted; Err says so.
    fn admit(&self, color: Color, token: i64) -> Result<(), String> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let newest = seen.get(&color).copied().unwrap_or(i64::MIN);
        if token < newest {
            return Err(format!(
                "release of operation token {token} is older than the newest this agent accepted \
                 for {color} ({newest}): a replayed record"
            ));
        }
        if token > newest {
            seen.insert(color, token);
            // Best effort: an unwritable state dir costs the floor across a restart only.
            if let Ok(json) = serde_json::to_vec(&*seen) {
                let _ = std::fs::write(&self.path, json);
            }
        }
        Ok(())
    }
}

impl DesiredFeed {
    /// Follows `active` and `releases/` with one watch each, never the whole app prefix: every
    /// host's health report would otherwise reach every agent, which at thousands of hosts is
    /// millions of events per deploy. The two watches may deliver out of step; the only effect is
    /// a pin (refusing to touch a color believed live) lifted when `active` arrives.
    pub async fn run(self) {
        let active = self.keys.active();
        let releases = self.keys.releases_prefix();
        tokio::join!(self.follow(&active), self.follow(&releases));
    }

    /// Reads `prefix`, applies it, then applies every change, re-reading after a compaction or a
    /// cancelled watch.
    async fn follow(&self, prefix: &str) {
        let mut delay = Duration::from_millis(100);
        let mut watch = loop {
            match PrefixWatch::start(&self.client, prefix).await {
                Ok((snapshot, watch)) => {
                    self.apply_snapshot(prefix, &snapshot.entries);
                    break watch;
                }
                Err(e) => {
                    tracing::warn!(%prefix, error = %e, ?delay, "cannot read releases from etcd, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        };
        loop {
            match watch.next().await {
                Ok(WatchEvent::Changes { changes, .. }) => {
                    for change in changes {
                        self.apply(&change.key, change.value.as_deref());
                    }
                }
                Ok(WatchEvent::Resync(snapshot)) => self.apply_snapshot(prefix, &snapshot.entries),
                Err(e) => {
                    tracing::warn!(%prefix, error = %e, "watch canceled, starting over");
                    match PrefixWatch::start(&self.client, prefix).await {
                        Ok((snapshot, w)) => {
                            self.apply_snapshot(prefix, &snapshot.entries);
                            watch = w;
                        }
                        Err(e) => {
                            tracing::warn!(%prefix, error = %e, "re-read failed");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            }
        }
    }

    /// Applies a full read of `prefix`: every key it holds, and "absent" for each key the agent
    /// follows under `prefix` that the read did not return.
    fn apply_snapshot(&self, prefix: &str, entries: &[(String, Vec<u8>)]) {
        let mut followed: Vec<String> = Color::ALL.map(|c| self.keys.release(c)).to_vec();
        followed.push(self.keys.active());
        for (key, value) in entries {
            self.apply(key, Some(value));
        }
        for key in followed.iter().filter(|k| k.starts_with(prefix)) {
            if !entries.iter().any(|(seen, _)| seen == key) {
                self.apply(key, None);
            }
        }
    }

    fn apply(&self, key: &str, value: Option<&[u8]>) {
        match self.keys.parse(key) {
            Some(AppKey::Release(color)) => {
                let desired = match value {
                    None => DesiredRelease::Absent,
                    Some(bytes) => match decode::<ReleaseRecord>(key, bytes) {
                        Ok(r) => match self.check_signature(&r, color) {
                            Ok(()) => DesiredRelease::Release(r),
                            Err(e) => {
                                tracing::warn!(%key, version = %r.version, error = %e, "unsigned release: not started (kept if it already runs)");
                                DesiredRelease::Unsigned {
                                    error: format!("{key}: {e}"),
                                    release: r,
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
    fn check_signature(&self, release: &ReleaseRecord, color: Color) -> Result<(), String> {
        if !self.trusted.required() || release.desired == proto::records::Desired::Stopped {
            return Ok(());
        }
        let at = proto::signing::Placement {
            app: self.keys.app(),
            color,
        };
        self.trusted.verify(release, at)?;
        self.floor.admit(color, release.token)
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

#[cfg(test)]
mod floor_tests {
    use super::*;

    /// A signed record from an older operation (a lower token) is refused for that color, also
    /// after a restart; the other color has its own floor.
    #[test]
    fn an_older_operations_record_is_refused_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let floor = TokenFloor::load(dir.path());
        floor.admit(Color::Green, 40).unwrap();
        floor.admit(Color::Green, 57).unwrap();
        floor.admit(Color::Green, 57).unwrap();
        let restarted = TokenFloor::load(dir.path());
        let err = restarted.admit(Color::Green, 41).unwrap_err();
        assert!(
            err.contains("41") && err.contains("57") && err.contains("replayed"),
            "{err}"
        );
        restarted.admit(Color::Blue, 41).unwrap();
    }
}
