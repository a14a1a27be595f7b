//! `coordinator validate`: every check `deploy` makes of its input before it touches etcd, run on
//! their own (Nomad's `job validate`), so CI can fail a bad spec, a migration that would break the
//! running version, or an unreachable artifact before it asks for the deploy lock. It reads no
//! etcd and no database: it needs nothing but the files (and the artifact's URL, when given).
use crate::error::{CoordinatorError, Subject};
use crate::migrate::files::Phase;
use crate::migrate::runner::Migrations;
use crate::progress::Progress;
use crate::spec::AppSpec;
use serde::Serialize;
use std::path::PathBuf;

pub struct ValidateRequest {
    pub spec: PathBuf,
    /// The version a deploy would name (its format is checked).
    pub version: Option<String>,
    /// When given, fetched once and hashed: the artifact is reachable and is what `sha256` says.
    pub artifact: Option<String>,
    pub sha256: Option<String>,
}

/// One check's verdict.
#[derive(Debug, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// The document `validate --output json` prints.
#[derive(Debug, Serialize)]
pub struct Validation {
    pub spec: String,
    pub app: Option<String>,
    pub valid: bool,
    pub checks: Vec<Check>,
}

impl Validation {
    fn push(&mut self, check: &'static str, verdict: Result<String, CoordinatorError>) {
        let (ok, detail) = match verdict {
            Ok(detail) => (true, detail),
            Err(e) => (false, proto::secrets::mask_text(&e.to_string())),
        };
        self.valid &= ok;
        self.checks.push(Check { check, ok, detail });
    }

    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let mark = if c.ok { "ok  " } else { "FAIL" };
            out.push_str(&format!("{mark} {:<10} {}\n", c.check, c.detail));
        }
        let verdict = if self.valid { "valid" } else { "NOT valid" };
        out.push_str(&format!("{}: {verdict}\n", self.spec));
        out
    }
}

/// Runs every check that applies and reports each; the spec must parse for the others to run.
/// `app` is `--app`, which must match the spec's app when given.
pub async fn validate(app: Option<&str>, req: &ValidateRequest) -> Validation {
    let mut report = Validation {
        spec: req.spec.display().to_string(),
        app: None,
        valid: true,
        checks: Vec::new(),
    };
    let spec = match crate::context::load_spec(app, &req.spec) {
        Ok(spec) => spec,
        Err(e) => {
            report.push("spec", Err(e));
            return report;
        }
    };
    report.app = Some(spec.app.clone());
    report.push("spec", Ok(describe_spec(&spec)));
    if let Some(version) = &req.version {
        let verdict = proto::check_name("--version", version)
            .map(|()| version.clone())
            .map_err(CoordinatorError::usage);
        report.push("version", verdict);
    }
    if spec.migrations.is_some() {
        // Lint findings allowed by a recorded reason are part of the verdict, not progress.
        let quiet = Progress::silent();
        let verdict = Migrations::load(&spec, &quiet).map(|m| describe_migrations(m.as_ref()));
        report.push("migrations", verdict);
    }
    if let Some(url) = &req.artifact {
        report.push("artifact", check_artifact(url, req.sha256.as_deref()).await);
    } else if req.sha256.is_some() {
        report.push(
            "artifact",
            Err(Subject::flag("--sha256").usage("needs --artifact to compare with")),
        );
    }
    report
}

fn describe_spec(spec: &AppSpec) -> String {
    let mut parts = vec![
        format!("app {}", spec.app),
        format!("runs {}", spec.run.command.join(" ")),
        format!(
            "health {} every {:?}",
            spec.health.path, spec.health.interval
        ),
        format!("{} smoke check(s)", spec.smoke.len()),
    ];
    if !spec.switch.verify_for.is_zero() {
        parts.push(format!("verify for {:?}", spec.switch.verify_for));
    }
    parts.join(", ")
}

fn describe_migrations(migrations: Option<&Migrations>) -> String {
    let Some(m) = migrations else {
        return "none".into();
    };
    let contract = m
        .files
        .iter()
        .filter(|f| f.phase == Phase::Contract)
        .count();
    let allowed = m.files.iter().filter(|f| f.reason.is_some()).count();
    format!(
        "{} file(s) in {} ({} expand, {contract} contract; {allowed} destructive with a recorded reason), {} database",
        m.files.len(),
        m.dir.display(),
        m.files.len() - contract,
        m.db.as_str()
    )
}

async fn check_artifact(url: &str, sha256: Option<&str>) -> Result<String, CoordinatorError> {
    let expected = crate::context::checked_artifact(url, sha256)?;
    let bytes = crate::context::artifact_bytes(url).await?;
    let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    let artifact = || Subject::flag_value("--artifact", url);
    if let Some(expected) = expected.filter(|e| *e != actual) {
        return Err(artifact().usage(format!(
            "its sha256 is {actual}, not the {expected} given with --sha256"
        )));
    }
    let owned = url.to_string();
    tokio::task::spawn_blocking(move || unpack_in_scratch(&owned, &bytes))
        .await
        .map_err(|e| artifact().usage(e.to_string()))?
        .map_err(|why| artifact().usage(format!("an agent would refuse it: {why}")))?;
    Ok(format!(
        "{url} reachable, sha256 {actual}, unpacks as an agent unpacks it"
    ))
}

/// Unpacks the artifact in a scratch directory by the agents' own rules, and removes it.
fn unpack_in_scratch(url: &str, bytes: &[u8]) -> Result<(), String> {
    let scratch = tempfile::tempdir().map_err(|e| format!("scratch directory: {e}"))?;
    let file = scratch.path().join("artifact");
    std::fs::write(&file, bytes).map_err(|e| format!("{}: {e}", file.display()))?;
    let dest = scratch.path().join("unpacked");
    std::fs::create_dir(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    proto::unpack::unpack(url, &file, &dest)
}
