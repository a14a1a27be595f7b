//! The deploy lock (docs/how-it-works.md, "A deploy, step by step"): a key under the
//! coordinator's lease, acquired with `Txn If CreateRevision(lock)==0`; its create revision is the
//! fencing token every later write is guarded by. Waiters watch the key for its delete rather than
//! sleeping on the TTL. Commands take it through [`crate::locked::with_lock`], never directly.
use crate::error::{CoordinatorError, Problem, Subject};
use crate::progress::Progress;
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, WatchOptions};
use proto::fence::Fence;
use proto::records::{decode, encode, LockRecord};
use proto::session::Session;
use proto::{Keys, ProtoError};
use std::time::Duration;
use tokio::time::Instant;

/// Default TTL of the coordinator's lease (`--lock-ttl`): renewed every third of it, declared lost
/// by the coordinator itself two thirds after the last acknowledged renewal, so a paused or
/// partitioned coordinator stops before etcd hands the lock to another.
pub const LOCK_TTL: Duration = Duration::from_secs(15);

/// The shortest `--lock-ttl`: below it, a renewal delayed by a busy machine (a CI runner on two
/// cores) would look like a partition and stop a healthy deploy with "lock lost".
pub const MIN_LOCK_TTL: Duration = Duration::from_secs(5);

/// `--lock-ttl`, checked against [`MIN_LOCK_TTL`].
pub fn check_ttl(ttl: Duration) -> Result<Duration, CoordinatorError> {
    if ttl < MIN_LOCK_TTL {
        let given = humantime::format_duration(ttl);
        let minimum = humantime::format_duration(MIN_LOCK_TTL);
        return Err(Subject::flag_value("--lock-ttl", given)
            .usage(format!("shorter than the minimum {minimum}")));
    }
    Ok(ttl)
}

pub struct DeployLock {
    pub session: Session,
    pub fence: Fence,
    client: etcd_client::Client,
}

impl DeployLock {
    /// Acquires the lock under a lease of `ttl`, waiting up to `wait` for the current holder to
    /// release it (exit 3 after).
    pub async fn acquire(
        client: &etcd_client::Client,
        keys: &Keys,
        record: &LockRecord,
        ttl: Duration,
        wait: Duration,
        progress: &Progress,
    ) -> Result<DeployLock, CoordinatorError> {
        // A leader election or a restarting member answers "unavailable" for a moment: ride it out
        // (a lease granted whose answer was lost simply expires).
        let until = Instant::now() + crate::history::TRANSIENT_BUDGET;
        let session = proto::retry::transient("grant the lock's lease", until, |_| {
            Session::grant(client, ttl)
        })
        .await?;
        let key = keys.lock();
        let deadline = Instant::now() + wait;
        let client = client.clone();
        loop {
            let txn = Txn::new()
                .when(vec![Compare::create_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then(vec![TxnOp::put(
                    key.as_str(),
                    encode(record),
                    Some(PutOptions::new().with_lease(session.lease_id())),
                )])
                .or_else(vec![TxnOp::get(key.as_str(), None)]);
            let until = Instant::now() + crate::history::TRANSIENT_BUDGET;
            let resp = proto::retry::transient("acquire the deploy lock", until, |_| {
                let (mut client, txn) = (client.clone(), txn.clone());
                let key = &key;
                async move {
                    client
                        .txn(txn)
                        .await
                        .map_err(|e| ProtoError::etcd(format!("acquire {key}"), e))
                }
            })
            .await?;
            let current = match resp.op_responses().into_iter().next() {
                Some(etcd_client::TxnOpResponse::Get(get)) => get.kvs().first().cloned(),
                _ => None,
            };
            // A retried acquire whose first answer was lost finds the lock under our own lease.
            let ours = current
                .as_ref()
                .filter(|kv| kv.lease() == session.lease_id())
                .map(|kv| kv.create_revision());
            let revision = match ours {
                Some(token) => token,
                None => resp.header().map(|h| h.revision()).unwrap_or(0),
            };
            if resp.succeeded() || ours.is_some() {
                progress.event("lock", None, "acquired", &format!("token {revision}"));
                let fence = Fence {
                    lock_key: key,
                    token: revision,
                };
                return Ok(DeployLock {
                    session,
                    fence,
                    client,
                });
            }
            let holder = current
                .map(|kv| holder_text(&key, kv.value()))
                .unwrap_or_else(|| "unknown".into());
            if Instant::now() >= deadline {
                session.revoke().await;
                let waited = humantime::format_duration(wait);
                let problem = Problem::new(format!("held by {holder}; waited {waited}"));
                return Err(CoordinatorError::LockTimeout(
                    problem.about(Subject::Key(key)),
                ));
            }
            progress.event("lock", None, "waiting", &format!("held by {holder}"));
            wait_for_delete(&client, &key, revision + 1, deadline).await?;
        }
    }

    /// Releases the lock if it is still ours (guarded by the token) and revokes the lease. etcd
    /// that does not answer is asked again for [`RELEASE_BUDGET`], so a command that ends during a
    /// short outage does not leave the lock to expire with its lease.
    pub async fn release(self) {
        let until = Instant::now() + RELEASE_BUDGET;
        let released = proto::retry::transient("release the deploy lock", until, |_| {
            let txn = Txn::new()
                .when(vec![self.fence.compare()])
                .and_then(vec![TxnOp::delete(self.fence.lock_key.as_str(), None)]);
            let mut client = self.client.clone();
            async move {
                match tokio::time::timeout(Duration::from_secs(2), client.txn(txn)).await {
                    Ok(answer) => answer
                        .map(|_| ())
                        .map_err(|e| ProtoError::etcd("release the deploy lock", e)),
                    Err(_) => Err(ProtoError::etcd(
                        "release the deploy lock",
                        etcd_client::Error::GRpcStatus(tonic::Status::deadline_exceeded(
                            "no answer in 2s",
                        )),
                    )),
                }
            }
        })
        .await;
        if let Err(e) = released {
            tracing::warn!(error = %e.brief(), "deploy lock not released; it expires with its lease within {:?}", self.session.ttl());
        }
        self.session.revoke().await;
    }
}

/// How long [`DeployLock::release`] keeps asking an etcd that does not answer.
const RELEASE_BUDGET: Duration = Duration::from_secs(6);

fn holder_text(key: &str, value: &[u8]) -> String {
    match decode::<LockRecord>(key, value) {
        Ok(l) => format!(
            "{} ({} {}{}, since {})",
            l.holder,
            l.operation,
            l.deploy_id,
            l.version
                .map(|v| format!(", version {v}"))
                .unwrap_or_default(),
            l.acquired_at
        ),
        Err(e) => e.to_string(),
    }
}

/// Waits until the lock key is deleted (released, or its holder's lease expired), or the deadline.
async fn wait_for_delete(
    client: &etcd_client::Client,
    key: &str,
    from: i64,
    deadline: Instant,
) -> Result<(), CoordinatorError> {
    let mut client = client.clone();
    let options = WatchOptions::new().with_start_revision(from);
    let mut stream = client
        .watch(key, Some(options))
        .await
        .map_err(|e| ProtoError::etcd(format!("watch {key}"), e))?;
    loop {
        let message = match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => return Ok(()), // deadline: the caller tries once more, then gives up
            Ok(Ok(Some(m))) => m,
            Ok(_) => return Ok(()), // stream broke: retry the Txn
        };
        if message
            .events()
            .iter()
            .any(|e| e.event_type() == etcd_client::EventType::Delete)
        {
            return Ok(());
        }
    }
}

/// The lock key as it is: its record (or why the value does not parse), lease and token.
#[derive(Debug)]
pub struct HeldLock {
    pub record: Result<LockRecord, String>,
    pub lease: i64,
    pub token: i64,
}

impl HeldLock {
    /// Who holds it, for messages; an unreadable value is shown as such.
    pub fn holder(&self) -> String {
        match &self.record {
            Ok(l) => format!(
                "{} for {} {}{} since {}",
                l.holder,
                l.operation,
                l.deploy_id,
                l.version
                    .as_ref()
                    .map(|v| format!(" (version {v})"))
                    .unwrap_or_default(),
                l.acquired_at
            ),
            Err(e) => format!("an unreadable value ({e})"),
        }
    }
}

/// `lock status`: who holds the lock, or None. A value that does not parse is reported, not an
/// error: an operator must still be able to see and break it.
pub async fn status(
    client: &etcd_client::Client,
    keys: &Keys,
) -> Result<Option<HeldLock>, CoordinatorError> {
    let key = keys.lock();
    let resp = client
        .clone()
        .get(key.as_str(), None)
        .await
        .map_err(|e| ProtoError::etcd(format!("read {key}"), e))?;
    let Some(kv) = resp.kvs().first() else {
        return Ok(None);
    };
    Ok(Some(HeldLock {
        record: decode::<LockRecord>(&key, kv.value()).map_err(|e| e.to_string()),
        lease: kv.lease(),
        token: kv.create_revision(),
    }))
}

/// `lock break`: revokes the holder's lease, which deletes the lock; a lock written without a
/// lease (by hand, or garbage) is deleted, guarded by its token so a new holder is never hit.
/// The next deploy reconciles.
pub async fn break_lock(
    client: &etcd_client::Client,
    keys: &Keys,
) -> Result<Option<HeldLock>, CoordinatorError> {
    let Some(held) = status(client, keys).await? else {
        return Ok(None);
    };
    let key = keys.lock();
    let mut client = client.clone();
    if held.lease != 0 {
        client
            .lease_revoke(held.lease)
            .await
            .map_err(|e| ProtoError::etcd(format!("revoke lease {:x} of {key}", held.lease), e))?;
    } else {
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                key.as_str(),
                CompareOp::Equal,
                held.token,
            )])
            .and_then(vec![TxnOp::delete(key.as_str(), None)]);
        client
            .txn(txn)
            .await
            .map_err(|e| ProtoError::etcd(format!("delete {key}"), e))?;
    }
    Ok(Some(held))
}
