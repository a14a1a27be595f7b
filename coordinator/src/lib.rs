//! The coordinator: the operator's and CI's view of and handle on a bluegreen app. This first cut
//! reads status; deploy, switch and rollback build on the same etcd contract (issue 4).
#![forbid(unsafe_code)]

pub mod error;
pub mod status;

use error::CoordinatorError;

/// Settings every command shares (flags or `BLUEGREEN_*` env).
#[derive(Debug, Clone)]
pub struct Global {
    pub etcd: Vec<String>,
    pub prefix: String,
    pub app: String,
    pub json: bool,
}

/// `coordinator status`.
pub async fn status(global: &Global) -> Result<String, CoordinatorError> {
    let keys = proto::Keys::new(&global.prefix, &global.app)?;
    let client = proto::connect(&global.etcd).await?;
    let status = status::read(&client, &keys).await?;
    Ok(if global.json {
        serde_json::to_string_pretty(&status).expect("status serializes")
    } else {
        status::render_text(&global.app, &status)
    })
}
