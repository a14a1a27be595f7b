//! `coordinator apps`: the apps that have keys under the prefix (no --app needed).
use crate::context::{pretty_json, Global};
use crate::error::CoordinatorError;

/// `coordinator apps`: the apps that have keys under the prefix, one per line (JSON: an array).
pub async fn run(global: &Global) -> Result<String, CoordinatorError> {
    let client = global.connect().await?;
    let apps = proto::watch::list_apps(&client, &global.prefix).await?;
    Ok(if global.json {
        pretty_json(&apps)
    } else {
        apps.iter().map(|a| format!("{a}\n")).collect()
    })
}
