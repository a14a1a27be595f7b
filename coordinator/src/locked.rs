//! The one way a command takes the deploy lock. [`with_lock`] acquires it (waiting up to
//! `--lock-wait`, exit 3 after), closes an operation a dead coordinator left behind, runs the
//! command's body while the lock's lease lives, and releases it on every path. Deploy, promote,
//! switch, rollback, stop, host and LB removal, migrations and a canary abort all go through it,
//! so none of them can skip a step: before it, three of seven raced the lease's loss and four
//! reconciled a dead operation.
use crate::context::Global;
use crate::error::CoordinatorError;
use crate::lock::DeployLock;
use crate::progress::Progress;
use crate::reconcile;
use crate::status::AppStatus;
use crate::store::{EtcdStore, Store};
use proto::records::LockRecord;
use proto::{Keys, Operation};
use std::time::Duration;

/// The operation a command takes the lock for, as the lock record and the history name it.
pub struct LockFor<'a> {
    pub op_id: &'a str,
    pub operation: Operation,
    /// The version it is about, where there is one (a deploy's, a migration's app version).
    pub version: Option<&'a str>,
    /// How long to wait for another holder (`--lock-wait`).
    pub wait: Duration,
    pub on_loss: OnLeaseLoss,
    /// What the body's reads of the app cover.
    pub read: crate::status::Scope,
}

impl<'a> LockFor<'a> {
    /// `operation` under the id `op_id`, waiting up to `wait` for the lock, about no particular
    /// version, stopped when the lease is lost.
    pub fn new(op_id: &'a str, operation: Operation, wait: Duration) -> LockFor<'a> {
        LockFor {
            op_id,
            operation,
            version: None,
            wait,
            on_loss: OnLeaseLoss::Stop,
            read: crate::status::Scope::Whole,
        }
    }

    /// Its reads of the app cover only `read` (see [`crate::status::Scope`]).
    pub fn reading(self, read: crate::status::Scope) -> LockFor<'a> {
        LockFor { read, ..self }
    }

    pub fn version(self, version: Option<&'a str>) -> LockFor<'a> {
        LockFor { version, ..self }
    }

    /// See [`OnLeaseLoss::Finish`].
    pub fn finish_on_lease_loss(self) -> LockFor<'a> {
        LockFor {
            on_loss: OnLeaseLoss::Finish,
            ..self
        }
    }
}

/// What happens to the body when the lock's lease is lost (the coordinator was paused or cut off
/// long enough for etcd to hand the lock to someone else).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLeaseLoss {
    /// Drop the body at its next await and fail (exit 1): another coordinator may own the app
    /// now, and every fenced write the body could still try would be refused anyway.
    Stop,
    /// Let the body run to its end: its fenced writes fail, but what it does outside etcd is not
    /// cut in half. Migrations use this: a migration stopped between two statements of a
    /// non-transactional file would leave a schema no row describes, and the database's own
    /// advisory lock already keeps a second migrator out.
    Finish,
}

/// Takes the deploy lock for `op`, reconciles, runs `body` with the fenced store and the app's
/// state as the reconcile left it, and releases the lock whatever the body returned.
pub async fn with_lock<T>(
    global: &Global,
    client: &etcd_client::Client,
    keys: &Keys,
    op: LockFor<'_>,
    progress: &Progress,
    body: impl AsyncFnOnce(&EtcdStore<'_>, AppStatus) -> Result<T, CoordinatorError>,
) -> Result<T, CoordinatorError> {
    progress.record().operation(op.op_id, keys.app());
    let record = LockRecord {
        deploy_id: op.op_id.into(),
        holder: crate::context::holder(),
        operation: op.operation,
        version: op.version.map(str::to_string),
        acquired_at: proto::time::now_rfc3339(),
    };
    let lock =
        DeployLock::acquire(client, keys, &record, global.lock_ttl, op.wait, progress).await?;
    let store = EtcdStore::new(client, keys, &lock).reading(op.read);
    let locked = run_locked(&store, op.op_id, progress, body);
    let result = match op.on_loss {
        OnLeaseLoss::Stop => tokio::select! {
            r = locked => r,
            lost = lock.session.lost() => Err(CoordinatorError::failed(format!(
                "lock lost mid-{} ({lost}); stopped, the fence rejects anything further",
                op.operation
            ))),
        },
        OnLeaseLoss::Finish => locked.await,
    };
    lock.release().await;
    result
}

/// What every lock holder does first, over any [`Store`] (so the unit tests run it in memory):
/// read the app, close a dead coordinator's operation, and hand the body the state as it is
/// after that (read again when the reconcile wrote).
pub async fn run_locked<S: Store, T>(
    store: &S,
    op_id: &str,
    progress: &Progress,
    body: impl AsyncFnOnce(&S, AppStatus) -> Result<T, CoordinatorError>,
) -> Result<T, CoordinatorError> {
    let state = store.read().await?;
    let state = if reconcile::previous(store, &state, op_id, progress).await? {
        store.read().await?
    } else {
        state
    };
    body(store, state).await
}
