//! Keeps the keys a process owns in etcd (an agent's host and health keys, a sidecar's ack and
//! liveness) written, whatever happens to them:
//! - leased keys vanish when the process dies; a lost lease is replaced and every key rewritten;
//! - durable keys (an LB's last ack) stay after the process dies;
//! - the name claim (`hosts/<host>`, `lb-alive/<name>`) is written only while no *other* process
//!   holds it, so a second agent or sidecar started with the same name (a cloned image) is refused
//!   loudly and the first keeps its record;
//! - a key deleted or changed by someone else (`etcdctl del`, a stray write) is written back at once;
//! - a key dropped from the set (an agent retiring one of its apps) is deleted, in the same task
//!   that writes the others, so an older write can never bring it back after the delete.
//!
//! Writes are retried while etcd is unreachable.
use crate::session::Session;
use crate::ProtoError;
use etcd_client::{Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, WatchOptions};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How a held key is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Under the process's lease: gone when the process dies.
    Leased,
    /// Without a lease: stays when the process dies.
    Durable,
    /// Under the lease, and only while the key is absent or already names this instance.
    Claim,
}

/// One key the holder keeps written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldKey {
    pub key: String,
    pub value: String,
    pub hold: Hold,
}

impl HeldKey {
    pub fn new(key: String, value: String, hold: Hold) -> HeldKey {
        HeldKey { key, value, hold }
    }
}

/// Several owners' held keys (an agent's apps, a sidecar's apps), merged into the one set a
/// single [`hold_keys`] keeps written under one lease.
#[derive(Clone)]
pub struct HeldSet {
    apps: Arc<Mutex<BTreeMap<String, Vec<HeldKey>>>>,
    tx: Arc<watch::Sender<Vec<HeldKey>>>,
}

impl HeldSet {
    /// An empty set, and what [`proto::leased::hold_keys`] follows.
    pub fn new() -> (HeldSet, watch::Receiver<Vec<HeldKey>>) {
        let (tx, rx) = watch::channel(Vec::new());
        (
            HeldSet {
                apps: Arc::default(),
                tx: Arc::new(tx),
            },
            rx,
        )
    }

    /// Replaces `owner`'s keys. Keys identical to what `owner` last published wake nobody: a
    /// reporter republishes at every probe of a starting app, and the holder's round costs the
    /// whole set (every app's keys), so at 20 apps each such wake-up cost 20 times one app's.
    pub fn publish(&self, owner: &str, keys: Vec<HeldKey>) {
        let mut apps = self.apps.lock().expect("held set lock");
        if apps.get(owner) == Some(&keys) {
            return;
        }
        apps.insert(owner.to_string(), keys);
        self.tx
            .send_replace(apps.values().flatten().cloned().collect());
    }

    /// Stops holding `owner`'s keys: the holder deletes them.
    pub fn remove(&self, app: &str) {
        let mut apps = self.apps.lock().expect("held set lock");
        apps.remove(app);
        self.tx
            .send_replace(apps.values().flatten().cloned().collect());
    }
}

/// Identifies this process among others that might use the same name: the machine's boot id and
/// the process's state directory. A restart of the same process (same boot, same directory)
/// takes its previous record over at once; a cloned machine or a second process with another
/// state directory is a different instance.
pub fn instance_id(state_dir: &std::path::Path) -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|b| b.trim().to_string())
        .unwrap_or_else(|_| "unknown-boot".into());
    let dir = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    format!("{boot}:{}", dir.display())
}

/// The `instance` field of a claim's JSON value.
fn instance_of(value: &[u8]) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(value).ok()?;
    json.get("instance")?.as_str().map(str::to_string)
}

/// Waits until the claim `key` is free or held by `instance` (our own previous run), for at most
/// `wait` (a dead holder's lease expires within its TTL). Errors when another live process still
/// holds it: the caller must not start.
pub async fn await_claim(
    client: &Client,
    key: &str,
    instance: &str,
    wait: Duration,
) -> Result<(), ProtoError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut warned = false;
    loop {
        let mut c = client.clone();
        let resp = c
            .get(key, None)
            .await
            .map_err(|e| ProtoError::etcd(format!("read {key}"), e))?;
        let holder = match resp.kvs().first() {
            None => return Ok(()),
            // Every process's claim is leased: a value without a lease is nobody's (a stray write).
            Some(kv) if kv.lease() == 0 => return Ok(()),
            Some(kv) => instance_of(kv.value()),
        };
        if holder.as_deref() == Some(instance) {
            return Ok(());
        }
        let holder = holder.unwrap_or_else(|| "an unreadable value".into());
        if tokio::time::Instant::now() >= deadline {
            return Err(ProtoError::Setting(format!(
                "{key} is held by another process ({holder}) that is still alive: two processes \
                 were started with the same name; give this one another name"
            )));
        }
        if !warned {
            tracing::warn!(%key, %holder, ?wait, "name held by another process; waiting for its lease to expire");
            warned = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// When etcd last confirmed this process's held keys (milliseconds since the epoch, 0: never):
/// a write of them, or a renewal of their lease. The daemons' `/metrics` report it as the last
/// successful etcd write, so an alert can fire on an agent that runs but no longer reaches etcd.
static LAST_CONFIRMED_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Seconds since the epoch of the last confirmation, if there was one.
pub fn last_confirmed_seconds() -> Option<f64> {
    match LAST_CONFIRMED_MS.load(std::sync::atomic::Ordering::Relaxed) {
        0 => None,
        ms => Some(ms as f64 / 1000.0),
    }
}

pub(crate) fn confirmed() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    LAST_CONFIRMED_MS.store(now, std::sync::atomic::Ordering::Relaxed);
}

/// Holds `keys` (the full desired set) until `shutdown` becomes true. On shutdown the lease is
/// left to expire, so a restarted process can take the keys over seamlessly.
pub async fn hold_keys(
    client: Client,
    ttl: Duration,
    instance: String,
    mut keys: watch::Receiver<Vec<HeldKey>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conflict_logged = false;
    // A write refused every round (a role without the key) must not log twice a second forever.
    let mut repeats = crate::repeats::Repeats::new(Duration::from_secs(30));
    let mut lost_before = false;
    loop {
        if lost_before {
            // Leases are lost together when etcd is overloaded past their TTL; thousands of
            // holders granting and rewriting every key at the same instant keep it overloaded.
            // A random pause of up to half the TTL spreads them out.
            let pause = jitter(ttl / 2);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = crate::daemon::shutdown_requested(&mut shutdown) => return,
            }
        }
        lost_before = true;
        let session = tokio::select! {
            s = grant(&client, ttl) => s,
            _ = crate::daemon::shutdown_requested(&mut shutdown) => return,
        };
        tracing::info!(
            lease_id = session.lease_id(),
            "holding keys under a new lease"
        );
        let mut dirty = true;
        let mut guard: Option<Guard> = None;
        // What this session has written and etcd holds: a change rewrites only the keys whose
        // value changed (one write per health change, not one per held key: at thousands of
        // hosts every write is an fsync and an event to every watcher).
        let mut in_etcd = BTreeMap::new();
        let mut last_revision = 0;
        // The keys and values last written in full, and how long to wait before reopening a
        // guard watch that could not be opened (an overloaded etcd must not be answered with
        // more load: before, every holder without a guard rewrote every key every 5 s).
        let mut held_last: Vec<HeldKey> = Vec::new();
        let mut reopen_delay = GUARD_REOPEN_MIN;
        loop {
            if dirty {
                let held = keys.borrow_and_update().clone();
                // The guard opens before the write, at etcd's current revision, and knows the
                // values about to be written: their echoes are ours. (Opened after the write, from
                // its revision, it would start in the past and have to catch up inside etcd: at
                // thousands of holders that stalls etcd's apply loop.)
                let watched: Vec<String> = held.iter().map(|h| h.key.clone()).collect();
                if guard.as_ref().is_none_or(|g| g.keys != watched) {
                    guard = Guard::open(&client, watched, None).await;
                }
                if let Some(g) = guard.as_mut() {
                    g.remember(&held);
                }
                let lease = session.lease_id();
                let written =
                    write_all(&client, lease, &instance, &held, &mut in_etcd, &mut repeats);
                match written.await {
                    Written::All(revision) => {
                        confirmed();
                        dirty = false;
                        conflict_logged = false;
                        last_revision = last_revision.max(revision);
                        held_last = held;
                    }
                    Written::Conflict(key, holder) => {
                        if !conflict_logged {
                            tracing::error!(%key, %holder, "another process holds this name: not overwriting its record; rename one of them");
                            conflict_logged = true;
                        }
                    }
                    Written::Failed => {}
                }
            }
            let retry = tokio::time::sleep(if dirty {
                Duration::from_millis(500)
            } else if guard.is_none() {
                reopen_delay
            } else {
                Duration::from_secs(86_400)
            });
            tokio::select! {
                changed = keys.changed() => {
                    if changed.is_err() { return; }
                    dirty = true;
                }
                _ = retry, if dirty || guard.is_none() => {
                    if dirty {
                        continue; // the write is retried at the top
                    }
                    // Resume the guard where the last write left off: etcd replays anything
                    // written to our keys since, so nothing needs rewriting.
                    let watched: Vec<String> = held_last.iter().map(|h| h.key.clone()).collect();
                    guard = Guard::open(&client, watched, Some(last_revision + 1)).await;
                    match guard.as_mut() {
                        Some(g) => {
                            g.remember(&held_last);
                            reopen_delay = GUARD_REOPEN_MIN;
                        }
                        None => reopen_delay = (reopen_delay * 2).min(GUARD_REOPEN_MAX),
                    }
                }
                tampered = next_tamper(&mut guard) => {
                    match tampered {
                        Tamper::Key(key) => {
                            tracing::warn!(%key, "own key deleted or changed by someone else; writing it back");
                            in_etcd.remove(&key);
                            dirty = true;
                        }
                        // Reopened from the last write's revision after a pause.
                        Tamper::Broken => {}
                        // What happened to our keys since the last write is gone: check them all.
                        Tamper::Compacted => {
                            in_etcd.clear();
                            dirty = true;
                        }
                    }
                }
                lost = session.lost() => {
                    tracing::warn!(error = %lost, "lease lost; writing every key again under a new one");
                    break;
                }
                _ = crate::daemon::shutdown_requested(&mut shutdown) => return,
            }
        }
    }
}

/// One watch stream over exactly the held keys, to notice deletions and foreign writes.
struct Guard {
    keys: Vec<String>,
    stream: etcd_client::WatchStream,
    /// The last few values this process wrote per key: their echoes are not tampering.
    written: BTreeMap<String, VecDeque<String>>,
}

impl Guard {
    /// Watches `keys` from revision `from`, or from etcd's current revision with `None`.
    async fn open(client: &Client, keys: Vec<String>, from: Option<i64>) -> Option<Guard> {
        let mut c = client.clone();
        let options = || {
            Some(match from {
                Some(revision) => WatchOptions::new().with_start_revision(revision),
                None => WatchOptions::new(),
            })
        };
        let first = keys.first()?.clone();
        let open = async {
            let mut stream = c.watch(first.as_str(), options()).await?;
            for key in keys.iter().skip(1) {
                stream.watch(key.as_str(), options()).await?;
            }
            Ok::<_, etcd_client::Error>(stream)
        };
        match tokio::time::timeout(Duration::from_secs(5), open).await {
            Ok(Ok(stream)) => Some(Guard {
                keys,
                stream,
                written: BTreeMap::new(),
            }),
            _ => None,
        }
    }

    fn remember(&mut self, held: &[HeldKey]) {
        for h in held {
            let values = self.written.entry(h.key.clone()).or_default();
            if values.back() != Some(&h.value) {
                values.push_back(h.value.clone());
            }
            while values.len() > 4 {
                values.pop_front();
            }
        }
    }

    fn is_ours(&self, key: &str, value: &[u8]) -> bool {
        self.written
            .get(key)
            .is_some_and(|values| values.iter().any(|v| v.as_bytes() == value))
    }
}

/// What the guard watch saw.
enum Tamper {
    /// A key whose value in etcd is no longer ours.
    Key(String),
    /// The watch broke; it can resume from the last write's revision.
    Broken,
    /// The watch cannot resume (its revision was compacted, or etcd cancelled it).
    Compacted,
}

/// Bounds of the pause before a guard watch that broke or could not be opened is reopened.
const GUARD_REOPEN_MIN: Duration = Duration::from_secs(5);
const GUARD_REOPEN_MAX: Duration = Duration::from_secs(60);

/// Resolves with what the guard saw; the guard is dropped when it broke. Pending forever
/// without a guard.
async fn next_tamper(guard: &mut Option<Guard>) -> Tamper {
    let Some(g) = guard.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        match g.stream.message().await {
            Ok(Some(message)) if message.compact_revision() > 0 || message.canceled() => {
                *guard = None;
                return Tamper::Compacted;
            }
            Ok(Some(message)) => {
                for event in message.events() {
                    let Some(kv) = event.kv() else { continue };
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    let foreign = match event.event_type() {
                        EventType::Delete => true,
                        EventType::Put => !g.is_ours(&key, kv.value()),
                    };
                    if foreign {
                        return Tamper::Key(key);
                    }
                }
            }
            Ok(None) | Err(_) => {
                *guard = None;
                return Tamper::Broken;
            }
        }
    }
}

/// A pseudo-random duration in `[0, max)`, from the clock's nanoseconds: enough to spread
/// processes apart, no more.
fn jitter(max: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos()) as u64;
    let spread = (nanos.wrapping_mul(6_364_136_223_846_793_005) >> 11) % 1_000_000;
    max.mul_f64(spread as f64 / 1_000_000.0)
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

enum Written {
    /// Every key is written; the revision of the last write.
    All(i64),
    /// A claim is held by another instance (key, holder): nothing after it was written.
    Conflict(String, String),
    /// etcd refused or did not answer; retry.
    Failed,
}

/// Writes every key not already in etcd with its value (`in_etcd`, updated here): claims first,
/// so that a claim not held writes nothing else; then the leased keys, then the durable ones. A
/// leased or durable key that fails does not keep the others from etcd (a role that lacks one
/// key, e.g. a membership key added by a newer version, must not take the host's health down
/// with it); it is retried with the next round.
async fn write_all(
    client: &Client,
    lease_id: i64,
    instance: &str,
    held: &[HeldKey],
    in_etcd: &mut BTreeMap<String, String>,
    repeats: &mut crate::repeats::Repeats,
) -> Written {
    let mut ordered: Vec<&HeldKey> = Vec::new();
    for hold in [Hold::Claim, Hold::Leased, Hold::Durable] {
        ordered.extend(held.iter().filter(|h| h.hold == hold));
    }
    let mut revision = 0;
    let mut failed = false;
    for h in ordered {
        if in_etcd.get(&h.key) == Some(&h.value) {
            continue;
        }
        let written = match h.hold {
            Hold::Claim => claim(client, lease_id, instance, h).await,
            Hold::Leased => put(client, h, Some(lease_id)).await,
            Hold::Durable => put(client, h, None).await,
        };
        match written {
            Ok(Ok(rev)) => {
                revision = revision.max(rev);
                in_etcd.insert(h.key.clone(), h.value.clone());
            }
            // Raced with a deletion or a concurrent claim: the next round decides.
            Ok(Err(holder)) if holder.is_empty() => return Written::Failed,
            Ok(Err(holder)) => return Written::Conflict(h.key.clone(), holder),
            Err(e) => {
                let line = format!("{}: {e}", h.key);
                if let Some(held_back) = repeats.admit(&line, tokio::time::Instant::now()) {
                    tracing::warn!(key = %h.key, error = %e, held_back, "etcd write failed, will retry");
                }
                if h.hold == Hold::Claim {
                    return Written::Failed;
                }
                failed = true;
            }
        }
    }
    let dropped: Vec<String> = in_etcd
        .keys()
        .filter(|k| !held.iter().any(|h| &h.key == *k))
        .cloned()
        .collect();
    for key in dropped {
        let mut c = client.clone();
        match tokio::time::timeout(Duration::from_secs(3), c.delete(key.as_str(), None)).await {
            Ok(Ok(resp)) => {
                revision = revision.max(resp.header().map_or(0, |h| h.revision()));
                in_etcd.remove(&key);
            }
            outcome => {
                let error = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_string(),
                };
                let line = format!("{key}: {error}");
                if let Some(held_back) = repeats.admit(&line, tokio::time::Instant::now()) {
                    tracing::warn!(%key, %error, held_back, "etcd delete of a dropped key failed, will retry");
                }
                failed = true;
            }
        }
    }
    if failed {
        Written::Failed
    } else {
        Written::All(revision)
    }
}

type WriteResult = Result<Result<i64, String>, String>;

async fn put(client: &Client, h: &HeldKey, lease: Option<i64>) -> WriteResult {
    let options = lease.map(|l| PutOptions::new().with_lease(l));
    let mut c = client.clone();
    let put = c.put(h.key.as_str(), h.value.as_str(), options);
    match tokio::time::timeout(Duration::from_secs(3), put).await {
        Ok(Ok(resp)) => Ok(Ok(resp.header().map_or(0, |h| h.revision()))),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Puts the claim if the key is absent, or holds our instance (compared on its exact revision,
/// so a concurrent claimant cannot slip in between). Ok(Err(holder)) when someone else holds it.
async fn claim(client: &Client, lease_id: i64, instance: &str, h: &HeldKey) -> WriteResult {
    let key = h.key.as_str();
    let put = || {
        TxnOp::put(
            key,
            h.value.as_str(),
            Some(PutOptions::new().with_lease(lease_id)),
        )
    };
    let mut c = client.clone();
    let attempt = async {
        let absent = Txn::new()
            .when(vec![Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then(vec![put()])
            .or_else(vec![TxnOp::get(key, None)]);
        let resp = c.txn(absent).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        if resp.succeeded() {
            return Ok::<_, etcd_client::Error>(Ok(revision));
        }
        let current = resp.op_responses().into_iter().find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(get) => get.kvs().first().cloned(),
            _ => None,
        });
        let Some(current) = current else {
            return Ok(Err(String::new())); // deleted in between: the next round claims it
        };
        let holder = instance_of(current.value());
        // Every process's claim is leased: a value without a lease is nobody's (a stray write).
        if current.lease() != 0 && holder.as_deref() != Some(instance) {
            return Ok(Err(holder.unwrap_or_else(|| "an unreadable value".into())));
        }
        let ours = Txn::new()
            .when(vec![Compare::mod_revision(
                key,
                CompareOp::Equal,
                current.mod_revision(),
            )])
            .and_then(vec![put()]);
        let resp = c.txn(ours).await?;
        Ok(if resp.succeeded() {
            Ok(resp.header().map_or(0, |h| h.revision()))
        } else {
            Err(String::new())
        })
    };
    match tokio::time::timeout(Duration::from_secs(3), attempt).await {
        Ok(Ok(result)) => Ok(result),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, value: &str) -> HeldKey {
        HeldKey::new(name.into(), value.into(), Hold::Leased)
    }

    #[test]
    fn the_holder_wakes_only_when_an_owner_s_keys_change() {
        let (set, mut held) = HeldSet::new();
        set.publish("shop", vec![key("/a", "1")]);
        set.publish("api", vec![key("/b", "1")]);
        assert!(held.has_changed().unwrap());
        assert_eq!(held.borrow_and_update().len(), 2);

        set.publish("shop", vec![key("/a", "1")]);
        assert!(
            !held.has_changed().unwrap(),
            "the same keys again woke the holder"
        );

        set.publish("shop", vec![key("/a", "2")]);
        assert!(held.has_changed().unwrap());
        let now = held.borrow_and_update().clone();
        assert!(now.contains(&key("/a", "2")) && now.contains(&key("/b", "1")));

        set.remove("api");
        assert!(held.has_changed().unwrap());
        assert_eq!(*held.borrow_and_update(), vec![key("/a", "2")]);
    }
}
