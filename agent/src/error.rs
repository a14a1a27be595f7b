//! Errors of the agent; each names the release, file, URL, port or key concerned.
use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("config {path}: {reason}")]
    Config { path: String, reason: String },
    #[error("config: {0}")]
    Setting(String),
    #[error("download {url}: {reason}")]
    Download { url: String, reason: String },
    #[error("sha256 mismatch for {url}: expected {expected}, got {actual}")]
    ChecksumMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("unpack {url}: {reason}")]
    Unpack { url: String, reason: String },
    #[error("start {command}: {reason}")]
    Spawn { command: String, reason: String },
    #[error("port {port} on {address} is already in use by another process")]
    PortInUse { address: String, port: u16 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Proto(#[from] proto::ProtoError),
}

impl AgentError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AgentError::Io {
            path: path.into(),
            source,
        }
    }
}
