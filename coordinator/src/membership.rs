//! The one fenced deletion behind `lb remove` and `host remove`: a member's durable record goes
//! only under the lock, only if it did not change since the operator looked, and only while its
//! process is still silent (its leased key absent), so a member that came back is never forgotten.
use crate::error::{CoordinatorError, Subject};
use crate::lock::DeployLock;
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use proto::{Operation, ProtoError};

/// The two kinds of durable members: hosts (their agents) and LBs (their sidecars).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member {
    Host,
    Lb,
}

impl Member {
    /// The CLI command: `coordinator host …`, `coordinator lb …`.
    pub fn command(self) -> &'static str {
        match self {
            Member::Host => "host",
            Member::Lb => "lb",
        }
    }

    /// What the name is, for the name rule's error.
    pub fn noun(self) -> &'static str {
        match self {
            Member::Host => "host",
            Member::Lb => "lb name",
        }
    }

    /// What removing one gives up, said before asking for `--yes`.
    pub fn consequence(self) -> &'static str {
        match self {
            Member::Host => ", and deploys stop waiting for it",
            Member::Lb => " and the color it last served",
        }
    }

    pub fn operation(self) -> Operation {
        match self {
            Member::Host => Operation::HostRemove,
            Member::Lb => Operation::LbRemove,
        }
    }
}

/// Deletes `record_key` (and the member's `details`, in the same transaction) if `alive_key` is
/// absent and the record is unchanged. `what` is the member the errors concern.
pub async fn forget(
    client: &etcd_client::Client,
    lock: &DeployLock,
    what: Subject,
    record_key: &str,
    alive_key: &str,
    details: &[String],
) -> Result<(), CoordinatorError> {
    let mut c = client.clone();
    let record = c
        .get(record_key, None)
        .await
        .map_err(|e| ProtoError::etcd(format!("read {record_key}"), e))?;
    let Some(kv) = record.kvs().first() else {
        return Err(CoordinatorError::usage("removed meanwhile").about(what.clone()));
    };
    let txn = Txn::new()
        .when(vec![
            lock.fence.compare(),
            Compare::mod_revision(record_key, CompareOp::Equal, kv.mod_revision()),
            Compare::create_revision(alive_key, CompareOp::Equal, 0),
        ])
        .and_then(
            std::iter::once(record_key)
                .chain(details.iter().map(String::as_str))
                .map(|key| TxnOp::delete(key, None))
                .collect::<Vec<_>>(),
        );
    let resp = c
        .txn(txn)
        .await
        .map_err(|e| ProtoError::etcd(format!("delete {record_key}"), e))?;
    if !resp.succeeded() {
        return Err(CoordinatorError::failed(
            "not removed: it came back, changed, or the lock was lost meanwhile",
        )
        .about(what));
    }
    Ok(())
}
