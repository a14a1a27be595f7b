//! Errors of the coordinator, each mapped to the documented exit code (README, "coordinator").
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CoordinatorError {
    /// Bad usage, config or input; nothing was changed.
    #[error("{0}")]
    Usage(String),
    /// The lock was not acquired in time.
    #[error("lock not acquired: {0}")]
    LockTimeout(String),
    /// The operation failed and traffic is on the old color.
    #[error("{0}")]
    Failed(String),
    /// Traffic may have moved and could not be made safe: a human must look.
    #[error("unsafe, needs a human: {0}")]
    Unsafe(String),
    /// etcd did not answer: nothing was decided (or, after a switch, see `Unsafe`).
    #[error("control plane unreachable: {0}")]
    Unreachable(String),
    #[error("{}", describe(.0))]
    Proto(#[from] proto::ProtoError),
}

impl CoordinatorError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CoordinatorError::Usage(_) => 2,
            CoordinatorError::LockTimeout(_) => 3,
            CoordinatorError::Failed(_) => 1,
            CoordinatorError::Unsafe(_) => 4,
            CoordinatorError::Unreachable(_) => 5,
            // A lost fence means another coordinator owns the app now: ours changed nothing more.
            CoordinatorError::Proto(
                proto::ProtoError::FenceLost { .. } | proto::ProtoError::LeaseLost { .. },
            ) => 1,
            CoordinatorError::Proto(
                proto::ProtoError::Etcd { .. } | proto::ProtoError::WatchCanceled { .. },
            ) => 5,
            // A bad key layout or record: input the command cannot use.
            CoordinatorError::Proto(_) => 2,
        }
    }
}

fn describe(e: &proto::ProtoError) -> String {
    if e.is_unreachable() {
        format!("control plane unreachable: {}", e.brief())
    } else {
        e.to_string()
    }
}
