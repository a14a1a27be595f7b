//! `coordinator validate`: check a spec, its migrations (parsed and linted) and optionally the
//! artifact, without etcd or the database: exit 0 when a deploy would accept them, 2 naming what
//! is wrong.
use crate::context::{pretty_json, Global};
use crate::validate::{validate, ValidateRequest};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The app spec to check.
    #[arg(long)]
    spec: PathBuf,
    /// Check the version's format too.
    #[arg(long)]
    version: Option<String>,
    /// Fetch the artifact once and hash it (it is reachable, and is --sha256 when given).
    #[arg(long)]
    artifact: Option<String>,
    /// The sha256 the artifact must have.
    #[arg(long, requires = "artifact")]
    sha256: Option<String>,
}

impl Args {
    /// The report and its verdict as the exit code.
    pub async fn run(self, global: &Global) -> (String, i32) {
        let req = ValidateRequest {
            spec: self.spec,
            version: self.version,
            artifact: self.artifact,
            sha256: self.sha256,
        };
        let report = validate(global.app.as_deref(), &req).await;
        let text = if global.json {
            pretty_json(&report)
        } else {
            report.render_text()
        };
        (text, if report.valid { 0 } else { 2 })
    }
}
