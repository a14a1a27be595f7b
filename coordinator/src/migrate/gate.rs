//! The contract gate: a contract migration removes something old code may still use, so it runs
//! only when every color that runs or may run again (the rollback target included) is at least the
//! version the migration `requires`. What runs is read from etcd: both colors' releases and every
//! host's reported health.
use crate::status::AppStatus;
use proto::records::Desired;
use std::cmp::Ordering;

/// Every (where, version) that is running or meant to run, e.g. ("releases/blue", "v1").
pub fn running_versions(status: &AppStatus) -> Vec<(String, String)> {
    let mut running: Vec<(String, String)> = status
        .releases
        .iter()
        .filter(|(_, r)| r.desired == Desired::Running)
        .map(|(color, r)| (format!("releases/{color}"), r.version.clone()))
        .collect();
    for (host, colors) in &status.health {
        for (color, h) in colors {
            if h.state.is_running() {
                running.push((format!("{host} {color}"), h.version.clone()));
            }
        }
    }
    running
}

/// Why a contract migration requiring `requires` may not run; empty when it may.
pub fn contract_blockers(status: &AppStatus, requires: &str) -> Vec<String> {
    let mut blockers: Vec<String> = status
        .problems
        .iter()
        .map(|p| format!("cannot tell what runs: {p}"))
        .collect();
    for (place, version) in running_versions(status) {
        if natural_cmp(&version, requires) == Ordering::Less {
            blockers.push(format!("{place} runs {version}, older than {requires}"));
        }
    }
    blockers
}

/// Why `version` may not run against a database where `applied` are the migration rows: a
/// contract migration that is applied (and not reverted) removed something versions older than
/// its `requires` still use. Each reason names the file, who applied it, and the version needed.
pub fn contract_forbids(
    version: &str,
    files: &[super::files::Migration],
    applied: &[super::plan::AppliedRow],
) -> Vec<String> {
    applied
        .iter()
        .filter(|row| row.phase == "contract" && row.success && row.reverted_at.is_none())
        .filter_map(|row| {
            let file = files.iter().find(|f| f.version == row.version)?;
            let requires = file.requires.as_deref()?;
            (natural_cmp(version, requires) == Ordering::Less).then(|| {
                format!(
                    "contract migration {} (applied by {}) requires {requires} or newer",
                    file.file.display(),
                    row.deploy_id
                )
            })
        })
        .collect()
}

/// Version order as people write versions: digit runs compare as numbers, so v2 < v10 and
/// 1.9.0 < 1.10.0; everything else compares as text.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (chunks(a), chunks(b));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let order = match (x.parse::<u128>(), y.parse::<u128>()) {
                    (Ok(n), Ok(m)) => n.cmp(&m).then(x.len().cmp(&y.len())),
                    _ => x.cmp(y),
                };
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

/// Alternating runs of digits and non-digits.
fn chunks(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = s;
    std::iter::from_fn(move || {
        let first = rest.chars().next()?;
        let digit = first.is_ascii_digit();
        let end = rest
            .find(|c: char| c.is_ascii_digit() != digit)
            .unwrap_or(rest.len());
        let (chunk, tail) = rest.split_at(end);
        rest = tail;
        Some(chunk)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::records::{HealthRecord, HealthState, ReleaseRecord};
    use proto::Color;

    #[test]
    fn natural_order() {
        use Ordering::*;
        for (a, b, want) in [
            ("v1", "v2", Less),
            ("v10", "v2", Greater),
            ("1.9.0", "1.10.0", Less),
            ("v2", "v2", Equal),
            ("v2", "v2.1", Less),
            ("2026-11-28", "2026-12-01", Less),
        ] {
            assert_eq!(natural_cmp(a, b), want, "{a} vs {b}");
        }
    }

    fn release(version: &str, desired: Desired) -> ReleaseRecord {
        let json = serde_json::json!({
            "version": version, "artifact": {"url": "file:///a", "sha256": "0".repeat(64)},
            "run": {"command": ["./a"], "env": {}, "stop_timeout": "1s"},
            "health": {}, "desired": desired, "deploy_id": "d", "token": 1
        });
        serde_json::from_value(json).unwrap()
    }

    fn health(version: &str, state: HealthState) -> HealthRecord {
        serde_json::from_value(serde_json::json!({
            "version": version, "state": state, "since": "now"
        }))
        .unwrap()
    }

    #[test]
    fn the_rollback_target_blocks_a_contract() {
        let mut status = AppStatus::default();
        status
            .releases
            .insert(Color::Blue, release("v1", Desired::Running));
        status
            .releases
            .insert(Color::Green, release("v2", Desired::Running));
        let blockers = contract_blockers(&status, "v2");
        assert_eq!(blockers, ["releases/blue runs v1, older than v2"]);

        status
            .releases
            .insert(Color::Blue, release("v1", Desired::Stopped));
        // Stopped in etcd but a host still reports it running: still blocked.
        status
            .health
            .entry("host-1".into())
            .or_default()
            .insert(Color::Blue, health("v1", HealthState::Healthy));
        assert_eq!(
            contract_blockers(&status, "v2"),
            ["host-1 blue runs v1, older than v2"]
        );
        status
            .health
            .get_mut("host-1")
            .unwrap()
            .insert(Color::Blue, health("v1", HealthState::Stopped));
        assert!(contract_blockers(&status, "v2").is_empty());
    }
}
