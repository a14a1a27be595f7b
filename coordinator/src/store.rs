//! The control-plane seam: everything a command reads from and writes to etcd, as a trait, so the
//! deploy pipeline and switches run unchanged over an in-memory store in unit tests. The etcd
//! implementation is [`EtcdStore`]; every write it makes is fenced by the lock token.
use crate::error::CoordinatorError;
use crate::history;
use crate::lock::DeployLock;
use crate::status::{self, AppStatus};
use etcd_client::{Compare, CompareOp};
use proto::records::{
    encode, ActiveRecord, DeployRecord, HistoryRecord, ReleaseRecord, TrafficRecord,
};
use proto::watch::{PrefixWatch, WatchEvent};
use proto::{Color, Keys, ProtoError};
use tokio::time::Instant;

/// One record a command writes. Keys are formed by the store (from `proto::Keys`), never here.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Active(ActiveRecord),
    Release(Color, ReleaseRecord),
    Deploy(DeployRecord),
    /// A canary's split (`active/traffic`).
    Traffic(TrafficRecord),
}

/// What a coordinator command needs from the control plane while it holds the lock.
#[allow(async_fn_in_trait)]
pub trait Store {
    /// One consistent read of the app's state.
    async fn read(&self) -> Result<AppStatus, CoordinatorError>;
    /// Writes every record in one transaction guarded by the lock token, and by `active`'s mod
    /// revision when `active_seen` is given (a switch decided on an `active` that has since moved
    /// must not happen). Returns the write's revision; a failed guard is `ProtoError::FenceLost`.
    async fn put(
        &self,
        writes: &[Write],
        active_seen: Option<i64>,
    ) -> Result<i64, CoordinatorError>;
    /// Appends an immutable, fenced history record; returns its revision.
    async fn append_history(&self, record: &HistoryRecord) -> Result<i64, CoordinatorError>;
    /// The newest record in history that placed a release on `color` ([`history::placed_release`]);
    /// `None` when there is none.
    async fn last_deploy_to(&self, color: Color)
        -> Result<Option<HistoryRecord>, CoordinatorError>;
    /// The newest status this store has read or been handed back by a wait, taken (a fresh read
    /// when there is none). Waits start here: the watch replays everything after its revision,
    /// so a wait right after a read or another wait does not read the whole app again.
    async fn latest(&self) -> Result<AppStatus, CoordinatorError>;
    /// Hands a status back when a wait ends, for the next wait to start from.
    fn remember(&self, status: AppStatus);
    /// Brings `status` up to date with what changed after its revision, once anything has, or
    /// returns it unchanged at `deadline`. Waits are driven by this: a watch whose events are
    /// applied to the status in hand, never a re-read of the app per change or per tick (at
    /// thousands of hosts each re-read is megabytes).
    async fn follow(
        &self,
        status: &mut AppStatus,
        deadline: Instant,
    ) -> Result<(), CoordinatorError>;
    /// Why the lock is lost, once it is: the caller must stop writing.
    fn lock_lost(&self) -> Option<String>;
    /// The fencing token of the held lock.
    fn token(&self) -> i64;
}

/// [`Store`] over etcd with a held [`DeployLock`].
pub struct EtcdStore<'a> {
    pub client: &'a etcd_client::Client,
    pub keys: &'a Keys,
    pub lock: &'a DeployLock,
    /// The app's watch, kept open across waits and resumed where the last one stopped.
    watch: tokio::sync::Mutex<Option<PrefixWatch>>,
    /// See [`Store::latest`].
    latest: std::sync::Mutex<Option<AppStatus>>,
    /// What [`Store::read`] covers.
    scope: status::Scope,
}

impl<'a> EtcdStore<'a> {
    pub fn new(client: &'a etcd_client::Client, keys: &'a Keys, lock: &'a DeployLock) -> Self {
        EtcdStore {
            client,
            keys,
            lock,
            watch: tokio::sync::Mutex::new(None),
            latest: std::sync::Mutex::new(None),
            scope: status::Scope::Whole,
        }
    }

    /// Reads only what `scope` covers (a traffic move's reads leave out what it never decides on).
    pub fn reading(self, scope: status::Scope) -> Self {
        EtcdStore { scope, ..self }
    }

    /// Until when a call etcd did not answer is retried (see [`history::TRANSIENT_BUDGET`]).
    fn retry_until(&self) -> Instant {
        Instant::now() + history::TRANSIENT_BUDGET
    }

    /// The revision at which every `(key, value)` already holds exactly that value: a fenced
    /// write whose answer was lost did land, and must not be retried against its own guard.
    async fn already_written(&self, puts: &[(String, String)]) -> Result<Option<i64>, ProtoError> {
        let mut client = self.client.clone();
        let mut revision = 0;
        for (key, value) in puts {
            let resp = client
                .get(key.as_str(), None)
                .await
                .map_err(|e| ProtoError::etcd(format!("read {key}"), e))?;
            match resp.kvs().first() {
                Some(kv) if kv.value() == value.as_bytes() => {
                    revision = revision.max(kv.mod_revision())
                }
                _ => return Ok(None),
            }
        }
        Ok(Some(revision))
    }

    fn key_value(&self, write: &Write) -> (String, String) {
        match write {
            Write::Active(a) => (self.keys.active(), encode(a)),
            Write::Release(color, r) => (self.keys.release(*color), encode(r)),
            Write::Deploy(d) => (self.keys.deploy(), encode(d)),
            Write::Traffic(t) => (self.keys.traffic(), encode(t)),
        }
    }
}

impl Store for EtcdStore<'_> {
    async fn read(&self) -> Result<AppStatus, CoordinatorError> {
        let read = proto::retry::transient("read the app", self.retry_until(), |_| {
            status::read_scope(self.client, self.keys, self.scope)
        });
        let status = read.await?;
        self.remember(status.clone());
        Ok(status)
    }

    async fn latest(&self) -> Result<AppStatus, CoordinatorError> {
        let taken = self.latest.lock().unwrap().take();
        match taken {
            Some(status) => Ok(status),
            None => self.read().await,
        }
    }

    fn remember(&self, status: AppStatus) {
        *self.latest.lock().unwrap() = Some(status);
    }

    async fn put(
        &self,
        writes: &[Write],
        active_seen: Option<i64>,
    ) -> Result<i64, CoordinatorError> {
        if let Some(reason) = self.lock_lost() {
            return Err(CoordinatorError::failed(format!(
                "deploy lock lost ({reason}); stopping without further writes"
            )));
        }
        let puts: Vec<(String, String)> = writes.iter().map(|w| self.key_value(w)).collect();
        let guards = active_seen
            .map(|seen| {
                vec![Compare::mod_revision(
                    self.keys.active(),
                    CompareOp::Equal,
                    seen,
                )]
            })
            .unwrap_or_default();
        let (puts, guards) = (&puts, &guards);
        let written =
            proto::retry::transient("fenced write", self.retry_until(), |attempt| async move {
                if attempt > 0 {
                    if let Some(revision) = self.already_written(puts).await? {
                        return Ok(revision);
                    }
                }
                self.lock
                    .fence
                    .put_all(self.client, puts, guards.clone())
                    .await
            });
        Ok(written.await?)
    }

    async fn append_history(&self, record: &HistoryRecord) -> Result<i64, CoordinatorError> {
        history::append(self.client, self.keys, Some(&self.lock.fence), record).await
    }

    async fn last_deploy_to(
        &self,
        color: Color,
    ) -> Result<Option<HistoryRecord>, CoordinatorError> {
        let placed = history::Filter {
            placed_on: Some(color),
            ..Default::default()
        };
        // Newest first, page by page, until the first match: one page unless the color was
        // last deployed long ago.
        let newest = history::list(self.client, self.keys, 1, &placed).await?;
        Ok(newest.into_iter().next().map(|(_, r)| r))
    }

    async fn follow(
        &self,
        status: &mut AppStatus,
        deadline: Instant,
    ) -> Result<(), CoordinatorError> {
        let mut slot = self.watch.lock().await;
        let from = status.revision + 1;
        let watch = match slot.as_mut() {
            Some(watch) if watch.next_revision() == from => watch,
            _ => slot.insert(status::watch_from(self.client, self.keys, from)),
        };
        // The watch itself reconnects for as long as etcd is away; the deadline bounds the wait.
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Err(_) => Ok(()),
            Ok(Ok(WatchEvent::Changes { changes, .. })) => {
                for change in &changes {
                    status.apply(self.keys, change);
                }
                Ok(())
            }
            // Compacted past, or cancelled: one fresh read replaces what the events would have said.
            Ok(Ok(WatchEvent::Resync(_)) | Err(_)) => {
                *slot = None;
                *status = self.read().await?;
                Ok(())
            }
        }
    }

    fn lock_lost(&self) -> Option<String> {
        self.lock.session.lost_reason()
    }

    fn token(&self) -> i64 {
        self.lock.fence.token
    }
}
