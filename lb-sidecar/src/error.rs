//! Errors of the lb-sidecar; each names the file, key or nginx step that failed.
use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SidecarError {
    #[error("config {path}: {reason}")]
    Config { path: String, reason: String },
    #[error("config: {0}")]
    Setting(String),
    #[error("cannot render: {0}")]
    Render(String),
    #[error("nginx -t rejected the config for {color}: {output}")]
    Invalid { color: String, output: String },
    #[error("nginx reload: {0}")]
    Reload(String),
    #[error("state push: {0}")]
    Push(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Proto(#[from] proto::ProtoError),
}

impl SidecarError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SidecarError::Io {
            path: path.into(),
            source,
        }
    }
}
