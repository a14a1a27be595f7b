//! `coordinator logs`: the last log lines of one color on one host, through its agent;
//! `--follow` streams new ones.
use crate::context::{pretty_json, registered_host, Global};
use crate::error::CoordinatorError;
use crate::probes::Probes;
use proto::Color;

#[derive(clap::Args)]
pub struct Args {
    /// The host, as `host list` names it.
    #[arg(long)]
    host: String,
    /// The color whose app's log to read.
    #[arg(long, value_parser = ["blue", "green"])]
    color: String,
    /// How many of the last lines.
    #[arg(long, default_value = "50")]
    tail: u32,
    /// Keep streaming new lines until Ctrl-C. JSON: one {"host","color","line"} per line.
    #[arg(long, short = 'f')]
    follow: bool,
}

impl Args {
    pub async fn run(self, global: &Global) -> Result<String, CoordinatorError> {
        let color = super::color(&self.color)?;
        if self.follow {
            crate::live::follow_logs(global, &self.host, color, self.tail).await
        } else {
            logs(global, &self.host, color, self.tail).await
        }
    }
}

/// `coordinator logs --host H --color C --tail N`.
async fn logs(
    global: &Global,
    host: &str,
    color: Color,
    tail: u32,
) -> Result<String, CoordinatorError> {
    let record = registered_host(global, host).await?;
    let lines = global
        .probes()
        .logs(&record, color, tail)
        .await
        .map_err(CoordinatorError::failed)?;
    let lines: Vec<String> = lines.iter().map(|l| proto::secrets::mask_text(l)).collect();
    if global.json {
        let doc = serde_json::json!({"host": host, "color": color, "lines": lines});
        return Ok(pretty_json(&doc));
    }
    Ok(lines.into_iter().map(|l| l + "\n").collect())
}
