//! A prefix watch that survives etcd restarts: it resumes from the last seen revision + 1 after a
//! reconnect, and when that revision was compacted away it re-reads the prefix and hands the caller
//! a fresh snapshot instead of silently missing events (the kube-rs watcher's "relist" rule).
use crate::ProtoError;
use backon::{BackoffBuilder, ExponentialBuilder};
use etcd_client::{Client, EventType, GetOptions, WatchOptions, WatchStream};
use std::time::Duration;

/// One key's change; `value == None` means the key was deleted (or its lease expired).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub key: String,
    pub value: Option<Vec<u8>>,
    pub mod_revision: i64,
}

/// The whole prefix as of `revision`.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub revision: i64,
    pub entries: Vec<(String, Vec<u8>)>,
}

/// What [`PrefixWatch::next`] yields.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// Changes that happened at `revision` (one etcd transaction or several batched together).
    Changes { revision: i64, changes: Vec<Change> },
    /// The watch fell behind a compaction: forget everything and start from this snapshot.
    Resync(Snapshot),
}

pub struct PrefixWatch {
    client: Client,
    /// Where the watched range starts (named after the common case: a prefix).
    prefix: String,
    /// Where it ends (exclusive).
    end: Vec<u8>,
    /// The first revision not yet delivered.
    next_revision: i64,
    stream: Option<WatchStream>,
    /// Breaks in a row without a delivered message: after a few, the backlog is skipped by
    /// re-reading the prefix (a backlog that cannot be delivered would otherwise loop forever).
    broken_in_row: u32,
}

/// Breaks in a row after which the watch re-reads the prefix instead of resuming.
const RELIST_AFTER_BREAKS: u32 = 3;

/// Keys per page of [`read_prefix`]: with values bounded by their writers, a page stays far
/// below etcd's response limits however large the prefix grows.
const PAGE_KEYS: i64 = 500;

/// Largest message this client decodes (etcd-client's default is 4 MiB): a watch backlog arrives
/// as one response, and a watcher that cannot decode it could never catch up.
pub const MAX_DECODE_BYTES: usize = 256 << 20;

/// Reads every key under `prefix` as of one revision, page by page (a single response for a
/// large prefix would exceed etcd's and the client's message limits).
pub async fn read_prefix(client: &Client, prefix: &str) -> Result<Snapshot, ProtoError> {
    read_snapshot(client, prefix.as_bytes(), &prefix_end(prefix)).await
}

/// Every key in `[from, end)` as one [`Snapshot`].
async fn read_snapshot(client: &Client, from: &[u8], end: &[u8]) -> Result<Snapshot, ProtoError> {
    let (revision, kvs) = read_range(client, from, end, 0).await?;
    let entries = kvs
        .into_iter()
        .map(|c| (c.key, c.value.unwrap_or_default()))
        .collect();
    Ok(Snapshot { revision, entries })
}

/// Every key in `[from, end)` as of `revision` (0: the current one), page by page, each as a
/// [`Change`] carrying its value and mod revision. Returns the revision read at, so that several
/// ranges can be read at one revision.
pub async fn read_range(
    client: &Client,
    from: &[u8],
    end: &[u8],
    mut revision: i64,
) -> Result<(i64, Vec<Change>), ProtoError> {
    let mut kv = client
        .kv_client()
        .max_decoding_message_size(MAX_DECODE_BYTES);
    let what = || format!("read {}", String::from_utf8_lossy(from));
    let mut from = from.to_vec();
    let mut entries = Vec::new();
    loop {
        let mut options = GetOptions::new()
            .with_range(end.to_vec())
            .with_limit(PAGE_KEYS);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let resp = kv
            .get(from.clone(), Some(options))
            .await
            .map_err(|e| ProtoError::etcd(what(), e))?;
        if revision == 0 {
            revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        }
        for kv in resp.kvs() {
            entries.push(Change {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                value: Some(kv.value().to_vec()),
                mod_revision: kv.mod_revision(),
            });
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok((revision, entries)),
        }
    }
}

/// The apps under `prefix`, in order. A user who may not read the whole prefix (a least-privilege
/// coordinator or auditor role) gets the index `deploy/etcd-auth.sh` keeps instead.
pub async fn list_apps(client: &Client, prefix: &str) -> Result<Vec<String>, ProtoError> {
    match scan_apps(client, prefix).await {
        Err(e) if e.is_permission_denied() => indexed_apps(client, prefix).await,
        other => other,
    }
}

/// The app names in the index (`keys::apps_index_prefix`).
async fn indexed_apps(client: &Client, prefix: &str) -> Result<Vec<String>, ProtoError> {
    let index = crate::keys::apps_index_prefix(prefix);
    let resp = client
        .clone()
        .get(
            index.as_str(),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .map_err(|e| ProtoError::etcd(format!("list apps under {index}"), e))?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            key.strip_prefix(&index).map(str::to_string)
        })
        .filter(|app| !app.is_empty() && !app.contains('/'))
        .collect())
}

/// The apps that have keys under `prefix`, in order: one keys-only read of a single key per app
/// (it skips from each app to the end of its range), so a fleet of thousands costs nothing here.
async fn scan_apps(client: &Client, prefix: &str) -> Result<Vec<String>, ProtoError> {
    let apps_prefix = crate::keys::apps_prefix(prefix);
    let end = prefix_end(&apps_prefix);
    let mut from = apps_prefix.as_bytes().to_vec();
    let mut apps: Vec<String> = Vec::new();
    loop {
        let options = GetOptions::new()
            .with_range(end.clone())
            .with_keys_only()
            .with_limit(1);
        let resp = client
            .clone()
            .get(from.clone(), Some(options))
            .await
            .map_err(|e| ProtoError::etcd(format!("list apps under {apps_prefix}"), e))?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(apps);
        };
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        match crate::keys::app_of(prefix, &key) {
            Some(app) => {
                from = prefix_end(&format!("{apps_prefix}{app}/"));
                apps.push(app);
            }
            // A key right under the prefix that is no app's: step over it.
            None => {
                from = kv.key().to_vec();
                from.push(0);
            }
        }
    }
}

/// The end of the key range holding every key that starts with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl PrefixWatch {
    /// Reads the prefix and returns the snapshot plus a watch that continues right after it.
    pub async fn start(
        client: &Client,
        prefix: &str,
    ) -> Result<(Snapshot, PrefixWatch), ProtoError> {
        let mut watch = PrefixWatch::from_revision(client, prefix, 0);
        let snapshot = watch.watch_then_read().await?;
        Ok((snapshot, watch))
    }

    /// Opens the watch at etcd's current revision, then reads the prefix; events the read
    /// already holds are skipped by [`PrefixWatch::next`]. The other order (read, then watch
    /// from the read's revision) creates a watcher that starts in the past and must catch up from
    /// etcd's backend, under the lock etcd's apply loop needs: thousands of them at once (hollow
    /// hosts starting or re-reading together) stalled etcd past its lease renewals.
    async fn watch_then_read(&mut self) -> Result<Snapshot, ProtoError> {
        self.next_revision = 0;
        self.stream = None;
        let mut stream = self.open().await?;
        let what = || format!("watch {}", self.prefix);
        let created = async {
            loop {
                match stream.message().await {
                    Ok(Some(m)) if m.canceled() => {
                        return Err(ProtoError::WatchCanceled {
                            prefix: self.prefix.clone(),
                            reason: m.cancel_reason().to_string(),
                        })
                    }
                    Ok(Some(m)) if m.created() => return Ok(()),
                    Ok(Some(_)) => continue,
                    Ok(None) => {
                        return Err(ProtoError::WatchCanceled {
                            prefix: self.prefix.clone(),
                            reason: "closed before it was created".into(),
                        })
                    }
                    Err(e) => return Err(ProtoError::etcd(what(), e)),
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(5), created).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(ProtoError::WatchCanceled {
                    prefix: self.prefix.clone(),
                    reason: "not created within 5s".into(),
                })
            }
        }
        let snapshot = read_snapshot(&self.client, self.prefix.as_bytes(), &self.end).await?;
        self.stream = Some(stream);
        self.next_revision = snapshot.revision + 1;
        Ok(snapshot)
    }

    /// A watch that delivers every change from `revision` on (inclusive).
    pub fn from_revision(client: &Client, prefix: &str, revision: i64) -> PrefixWatch {
        PrefixWatch {
            client: client.clone(),
            prefix: prefix.to_string(),
            end: prefix_end(prefix),
            next_revision: revision,
            stream: None,
            broken_in_row: 0,
        }
    }

    /// [`PrefixWatch::from_revision`] over the keys in `[from, end)`.
    pub fn range_from_revision(
        client: &Client,
        from: &str,
        end: &str,
        revision: i64,
    ) -> PrefixWatch {
        let mut watch = PrefixWatch::from_revision(client, from, revision);
        watch.end = end.as_bytes().to_vec();
        watch
    }

    /// [`PrefixWatch::start`] over the keys in `[from, end)`: one range, so one revision orders
    /// every change in it.
    pub async fn start_range(
        client: &Client,
        from: &str,
        end: &str,
    ) -> Result<(Snapshot, PrefixWatch), ProtoError> {
        let mut watch = PrefixWatch::from_revision(client, from, 0);
        watch.end = end.as_bytes().to_vec();
        let snapshot = watch.watch_then_read().await?;
        Ok((snapshot, watch))
    }

    pub fn next_revision(&self) -> i64 {
        self.next_revision
    }

    /// Waits for the next batch of changes. Reconnects with capped exponential backoff for as long
    /// as etcd is unreachable (the caller keeps acting on what it knows: fail static). Returns an
    /// error only when etcd cancels the watch for a reason other than compaction.
    pub async fn next(&mut self) -> Result<WatchEvent, ProtoError> {
        let mut backoff = reconnect_backoff();
        loop {
            if self.stream.is_none() {
                match self.open().await {
                    Ok(stream) => self.stream = Some(stream),
                    Err(e) => {
                        let delay = backoff.next().unwrap_or(Duration::from_secs(2));
                        tracing::warn!(prefix = %self.prefix, error = %e, ?delay, "etcd watch unavailable, retrying");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                }
            }
            let stream = self.stream.as_mut().expect("opened above");
            let message = match stream.message().await {
                Ok(Some(m)) => {
                    self.broken_in_row = 0;
                    m
                }
                Ok(None) | Err(_) => {
                    self.stream = None;
                    self.broken_in_row += 1;
                    let delay = backoff.next().unwrap_or(Duration::from_secs(2));
                    tracing::warn!(prefix = %self.prefix, revision = self.next_revision, breaks = self.broken_in_row, ?delay, "etcd watch broken, resuming");
                    tokio::time::sleep(delay).await;
                    if self.broken_in_row >= RELIST_AFTER_BREAKS {
                        let resume_from = self.next_revision;
                        match self.watch_then_read().await {
                            Ok(snapshot) => {
                                tracing::warn!(prefix = %self.prefix, revision = snapshot.revision, "watch kept breaking at the same revision; re-read the prefix instead");
                                self.broken_in_row = 0;
                                return Ok(WatchEvent::Resync(snapshot));
                            }
                            Err(_) => self.next_revision = resume_from,
                        }
                    }
                    continue;
                }
            };
            if message.compact_revision() > 0 {
                tracing::warn!(prefix = %self.prefix, compacted = message.compact_revision(), "watch revision compacted, re-reading");
                let resume_from = self.next_revision;
                match self.watch_then_read().await {
                    Ok(snapshot) => return Ok(WatchEvent::Resync(snapshot)),
                    Err(e) => {
                        tracing::warn!(prefix = %self.prefix, error = %e, "re-read after compaction failed, retrying");
                        // Force another compaction answer (or success) on the next open.
                        self.next_revision = resume_from;
                        self.stream = None;
                        tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(2))).await;
                        continue;
                    }
                }
            }
            if message.canceled() {
                self.stream = None;
                return Err(ProtoError::WatchCanceled {
                    prefix: self.prefix.clone(),
                    reason: message.cancel_reason().to_string(),
                });
            }
            if message.events().is_empty() {
                continue; // created / progress notifications
            }
            let mut changes: Vec<Change> = message
                .events()
                .iter()
                .filter_map(|ev| {
                    let kv = ev.kv()?;
                    Some(Change {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        value: match ev.event_type() {
                            EventType::Put => Some(kv.value().to_vec()),
                            EventType::Delete => None,
                        },
                        mod_revision: kv.mod_revision(),
                    })
                })
                .collect();
            // Already delivered, or held by the read a watch-then-read started with.
            changes.retain(|c| c.mod_revision >= self.next_revision);
            if changes.is_empty() {
                continue;
            }
            let revision = changes
                .iter()
                .map(|c| c.mod_revision)
                .max()
                .unwrap_or(self.next_revision);
            self.next_revision = revision + 1;
            return Ok(WatchEvent::Changes { revision, changes });
        }
    }

    /// Opens the stream from `next_revision` (0: from etcd's current revision).
    async fn open(&mut self) -> Result<WatchStream, ProtoError> {
        let mut options = WatchOptions::new().with_range(self.end.clone());
        if self.next_revision > 0 {
            options = options.with_start_revision(self.next_revision);
        }
        let mut client = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_DECODE_BYTES);
        let open = client.watch(self.prefix.as_str(), Some(options));
        match tokio::time::timeout(Duration::from_secs(5), open).await {
            Ok(r) => r.map_err(|e| ProtoError::etcd(format!("watch {}", self.prefix), e)),
            Err(_) => Err(ProtoError::WatchCanceled {
                prefix: self.prefix.clone(),
                reason: "open timed out".into(),
            }),
        }
    }
}

/// 100 ms doubling to 2 s, forever: reconnecting to etcd must never give up.
fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_covers_exactly_the_prefix() {
        assert_eq!(prefix_end("/bluegreen/shop/"), b"/bluegreen/shop0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }
}
