//! Errors of the etcd contract: each names the key or operation that failed.
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProtoError {
    #[error("invalid color {0:?}: expected \"blue\" or \"green\"")]
    InvalidColor(String),
    #[error("invalid key layout: {0}")]
    InvalidKeyLayout(String),
    #[error("invalid value at {key}: {reason}")]
    InvalidRecord { key: String, reason: String },
    #[error("etcd {what}: {source}")]
    Etcd {
        what: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("lease {lease_id:x} lost: {reason}")]
    LeaseLost { lease_id: i64, reason: String },
    #[error(
        "fenced write to {key} rejected: lock {lock_key} no longer has create revision {token}"
    )]
    FenceLost {
        key: String,
        lock_key: String,
        token: i64,
    },
    #[error("watch on {prefix} canceled by etcd: {reason}")]
    WatchCanceled { prefix: String, reason: String },
}

impl ProtoError {
    pub fn etcd(what: impl Into<String>, source: etcd_client::Error) -> Self {
        ProtoError::Etcd {
            what: what.into(),
            source,
        }
    }

    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ProtoError::InvalidRecord {
            key: key.into(),
            reason: reason.into(),
        }
    }
}
