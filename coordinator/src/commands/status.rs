//! `coordinator status`: the active color, releases, every host's health, every LB's ack, the
//! lock holder and the last deploy; `--watch` redraws on every change.
use crate::context::Global;
use crate::error::CoordinatorError;
use crate::status;

#[derive(clap::Args)]
pub struct Args {
    /// Keep watching: redraw on every change (from an etcd watch, no polling) until Ctrl-C.
    /// JSON: one status document per line.
    #[arg(long)]
    watch: bool,
}

impl Args {
    pub async fn run(self, global: &Global) -> Result<String, CoordinatorError> {
        if self.watch {
            crate::live::watch_status(global).await
        } else {
            show(global).await
        }
    }
}

/// `coordinator status`.
async fn show(global: &Global) -> Result<String, CoordinatorError> {
    let (keys, client) = global.existing_app().await?;
    let mut status = status::read(&client, &keys).await?;
    for release in status.releases.values_mut() {
        release.run.env = proto::secrets::mask_env(&release.run.env);
        release.artifact.url = proto::secrets::mask_text(&release.artifact.url);
    }
    Ok(if global.json {
        serde_json::to_string_pretty(&status).expect("status serializes") + "\n"
    } else {
        status::render_text(global.app.as_deref().unwrap_or_default(), &status)
    })
}
