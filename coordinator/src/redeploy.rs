//! Deploying an earlier version again from what history kept of it (`rollback --to VERSION`,
//! `deploy --from-history VERSION`). A deploy's or promote's history record keeps the artifact
//! (URL credentials masked), sha256, run and health spec; the redeploy goes through the normal
//! pipeline with them, so it stages, checks and switches like any deploy. These are the pure
//! decisions: which record, and what the command line must still supply.
use proto::records::{HistoryRecord, ReleaseSnapshot};
use proto::{Operation, Outcome};

/// The newest record of `version` that went live (deploy or promote, done) and kept what it ran.
pub fn pick<'a>(
    history: &'a [HistoryRecord],
    version: &str,
) -> Result<&'a ReleaseSnapshot, String> {
    let found = history
        .iter()
        .rev()
        .filter(|r| r.version.as_deref() == Some(version))
        .find_map(redeployable);
    found.ok_or_else(|| {
        let known = versions(history);
        let known = if known.is_empty() {
            "no version in history can be redeployed yet (records keep what they ran since this \
             release of bluegreen)"
                .to_string()
        } else {
            format!("redeployable versions: {}", known.join(", "))
        };
        format!("no deploy of {version} that went live is in history with what it ran; {known}")
    })
}

/// What a record lets a redeploy run, when it is a deploy or promote that ended done.
pub fn redeployable(record: &HistoryRecord) -> Option<&ReleaseSnapshot> {
    let went_live = matches!(record.kind, Operation::Deploy | Operation::Promote)
        && record.outcome == Outcome::Done;
    record.release.as_ref().filter(|_| went_live)
}

/// Every version history can redeploy, each once, in the order they last went live (newest last).
pub fn versions(history: &[HistoryRecord]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for record in history {
        if let (Some(_), Some(v)) = (redeployable(record), &record.version) {
            out.retain(|seen| seen != v);
            out.push(v.clone());
        }
    }
    out
}

/// The artifact URL to deploy: the kept one, unless it was kept masked; then the operator gives
/// it again with `--artifact` (checked against the kept sha256 by every agent).
pub fn artifact_url(snapshot: &ReleaseSnapshot, given: Option<&str>) -> Result<String, String> {
    match given {
        Some(url) => Ok(url.to_string()),
        None if snapshot.artifact.url.contains("***") => Err(format!(
            "its artifact URL was kept masked ({}): give it again with --artifact",
            snapshot.artifact.url
        )),
        None => Ok(snapshot.artifact.url.clone()),
    }
}

#[cfg(test)]
#[path = "redeploy_tests.rs"]
mod tests;
