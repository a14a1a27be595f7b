//! Errors of the coordinator, each mapped to the exit code of DESIGN.md §5.
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CoordinatorError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Proto(#[from] proto::ProtoError),
}

impl CoordinatorError {
    /// 2 = bad usage, config or input (an unreachable etcd included: nothing was changed).
    pub fn exit_code(&self) -> i32 {
        match self {
            CoordinatorError::Usage(_) | CoordinatorError::Proto(_) => 2,
        }
    }
}
