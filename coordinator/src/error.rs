//! Errors of the coordinator, each mapped to the exit code of DESIGN.md §5.
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
    #[error(transparent)]
    Proto(#[from] proto::ProtoError),
}

impl CoordinatorError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CoordinatorError::Usage(_) => 2,
            CoordinatorError::LockTimeout(_) => 3,
            CoordinatorError::Failed(_) => 1,
            CoordinatorError::Unsafe(_) => 4,
            // A lost fence means another coordinator owns the app now: ours changed nothing more.
            CoordinatorError::Proto(
                proto::ProtoError::FenceLost { .. } | proto::ProtoError::LeaseLost { .. },
            ) => 1,
            // etcd unreachable before anything was written.
            CoordinatorError::Proto(_) => 2,
        }
    }
}
