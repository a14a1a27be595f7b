use super::*;
use proto::records::{Artifact, HealthSpec, RunSpec};

fn snapshot(url: &str) -> ReleaseSnapshot {
    ReleaseSnapshot {
        artifact: Artifact {
            url: url.into(),
            sha256: "a".repeat(64),
        },
        run: RunSpec {
            command: vec!["./app".into()],
            env: Default::default(),
            stop_timeout: std::time::Duration::from_secs(5),
        },
        health: HealthSpec::default(),
    }
}

fn record(kind: Operation, outcome: Outcome, version: &str, url: Option<&str>) -> HistoryRecord {
    let mut r = crate::history::record(kind, "op", outcome);
    r.version = Some(version.into());
    r.release = url.map(snapshot);
    r
}

#[test]
fn the_newest_live_deploy_of_the_version_is_picked() {
    let history = vec![
        record(
            Operation::Deploy,
            Outcome::Done,
            "v1",
            Some("file:///old/v1"),
        ),
        record(
            Operation::Deploy,
            Outcome::Failed,
            "v1",
            Some("file:///failed/v1"),
        ),
        record(
            Operation::Promote,
            Outcome::Done,
            "v1",
            Some("file:///new/v1"),
        ),
        record(Operation::Rollback, Outcome::Done, "v1", None),
        record(Operation::Deploy, Outcome::Done, "v2", Some("file:///v2")),
    ];
    assert_eq!(pick(&history, "v1").unwrap().artifact.url, "file:///new/v1");
    assert_eq!(versions(&history), vec!["v1".to_string(), "v2".to_string()]);
}

#[test]
fn a_version_that_never_went_live_or_kept_nothing_is_refused_naming_the_ones_that_can() {
    let history = vec![
        record(Operation::Deploy, Outcome::Failed, "v3", Some("file:///v3")),
        record(Operation::Deploy, Outcome::Done, "v0", None),
        record(Operation::Deploy, Outcome::Done, "v2", Some("file:///v2")),
    ];
    for missing in ["v3", "v0", "v9"] {
        let why = pick(&history, missing).unwrap_err();
        assert!(
            why.contains(missing) && why.contains("redeployable versions: v2"),
            "{why}"
        );
    }
    let why = pick(&[], "v1").unwrap_err();
    assert!(
        why.contains("no version in history can be redeployed yet"),
        "{why}"
    );
}

#[test]
fn a_masked_url_must_be_given_again() {
    let masked = snapshot("https://ci.example/app.tar.gz?token=***");
    let why = artifact_url(&masked, None).unwrap_err();
    assert!(why.contains("--artifact"), "{why}");
    assert_eq!(
        artifact_url(&masked, Some("https://ci.example/app.tar.gz?token=t")).unwrap(),
        "https://ci.example/app.tar.gz?token=t"
    );
    assert_eq!(
        artifact_url(&snapshot("file:///a"), None).unwrap(),
        "file:///a"
    );
}
