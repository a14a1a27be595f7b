//! Fenced writes: a Txn that applies only while the deploy lock still has the create revision the
//! writer acquired it at (its fencing token). A paused or partitioned coordinator whose lease
//! expired therefore cannot change anything, even if it wakes up convinced it still holds the lock.
use crate::ProtoError;
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

/// Proof of holding the lock: the lock key and its create revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub lock_key: String,
    pub token: i64,
}

impl Fence {
    /// The guard every fenced write carries.
    pub fn compare(&self) -> Compare {
        Compare::create_revision(self.lock_key.as_str(), CompareOp::Equal, self.token)
    }

    /// Puts `(key, value)` pairs atomically if the fence holds and every extra compare holds.
    /// Returns the revision of the write. A failed guard is [`ProtoError::FenceLost`]: the caller must
    /// stop at once and write nothing else.
    pub async fn put_all(
        &self,
        client: &Client,
        puts: &[(String, String)],
        extra: Vec<Compare>,
    ) -> Result<i64, ProtoError> {
        let first_key = puts.first().map(|(k, _)| k.clone()).unwrap_or_default();
        let mut compares = vec![self.compare()];
        compares.extend(extra);
        let ops: Vec<TxnOp> = puts
            .iter()
            .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None))
            .collect();
        let txn = Txn::new().when(compares).and_then(ops);
        let resp = client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| ProtoError::etcd(format!("fenced write to {first_key}"), e))?;
        if !resp.succeeded() {
            return Err(ProtoError::FenceLost {
                key: first_key,
                lock_key: self.lock_key.clone(),
                token: self.token,
            });
        }
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }
}
