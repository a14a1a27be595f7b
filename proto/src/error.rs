//! Errors of the etcd contract: each names the key or operation that failed.
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProtoError {
    #[error("invalid color {0:?}: expected \"blue\" or \"green\"")]
    InvalidColor(String),
    /// A setting that cannot be used (a certificate file that cannot be read).
    #[error("{0}")]
    Setting(String),
    #[error("invalid key layout: {0}")]
    InvalidKeyLayout(String),
    #[error("invalid value at {key}: {reason}")]
    InvalidRecord { key: String, reason: String },
    /// Shown with the innermost cause ("invalid peer certificate: UnknownIssuer"), not the
    /// outermost ("transport error"); the whole chain stays available as `source()`.
    #[error("etcd {what}: {}", etcd_reason(source))]
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

/// What etcd (or the way to it) said: a status's message, or a transport failure's innermost
/// cause.
fn etcd_reason(source: &etcd_client::Error) -> String {
    match source {
        etcd_client::Error::GRpcStatus(status) => status.message().to_string(),
        other => root_cause(other),
    }
}

/// The innermost cause of an error chain: what an operator needs from "error sending request:
/// client error (Connect): tcp connect error: Connection refused" is the last part.
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

impl ProtoError {
    pub fn etcd(what: impl Into<String>, source: etcd_client::Error) -> Self {
        ProtoError::Etcd {
            what: what.into(),
            source,
        }
    }

    /// One line for an operator: for etcd transport failures, the innermost cause instead of the
    /// whole gRPC error chain (status, details, metadata).
    pub fn brief(&self) -> String {
        match self {
            ProtoError::Etcd { what, source } => {
                let reason = match source {
                    etcd_client::Error::GRpcStatus(status)
                        if status.code() == tonic::Code::PermissionDenied =>
                    {
                        format!(
                            "{}: this process's etcd user lacks the permission for that key (its role is made by deploy/etcd-auth.sh)",
                            status.message()
                        )
                    }
                    other => etcd_reason(other),
                };
                format!("etcd {what}: {reason}")
            }
            other => other.to_string(),
        }
    }

    /// True when etcd did not answer (as opposed to answering "no"). A permission denied is an
    /// answer: retrying it changes nothing.
    pub fn is_unreachable(&self) -> bool {
        match self {
            ProtoError::Etcd { .. } => !self.is_permission_denied(),
            ProtoError::WatchCanceled { .. } => true,
            _ => false,
        }
    }

    /// True when etcd answered that this process's user may not do it.
    pub fn is_permission_denied(&self) -> bool {
        matches!(
            self,
            ProtoError::Etcd {
                source: etcd_client::Error::GRpcStatus(status),
                ..
            } if status.code() == tonic::Code::PermissionDenied
        )
    }

    /// True when etcd may answer if asked again: it was unreachable, had no leader or timed out.
    /// A refusal (permission denied, a failed guard, a bad request) is never transient.
    pub fn is_transient(&self) -> bool {
        use tonic::Code;
        match self {
            ProtoError::Etcd { source, .. } => match source {
                etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
                etcd_client::Error::GRpcStatus(status) => matches!(
                    status.code(),
                    Code::Unavailable
                        | Code::DeadlineExceeded
                        | Code::Aborted
                        | Code::Unknown
                        | Code::Cancelled
                ),
                _ => false,
            },
            ProtoError::WatchCanceled { .. } => true,
            _ => false,
        }
    }

    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ProtoError::InvalidRecord {
            key: key.into(),
            reason: reason.into(),
        }
    }
}
