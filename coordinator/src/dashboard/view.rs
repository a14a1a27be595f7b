//! What the dashboard shows, computed from the app's state as `status` reads it: pure functions
//! from [`AppStatus`] (and one key's change) to the JSON the page renders. The browser only
//! draws; every judgement (which LB lags, what a change means for the timeline, a canary's
//! per-interval numbers) is made here, where the unit tests reach it.
use crate::status::AppStatus;
use proto::records::{decode, HistoryRecord};
use proto::requests::ColorCounts;
use proto::{AppKey, Color, Keys};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// How many timeline events, history records and canary points the dashboard keeps per app.
pub const TIMELINE_LEN: usize = 400;
pub const HISTORY_LEN: usize = 300;
pub const SERIES_LEN: usize = 600;

/// Milliseconds since the epoch, the dashboard's clock for its own events.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn rfc3339_ms(text: &str) -> Option<u64> {
    let at = humantime::parse_rfc3339_weak(text).ok()?;
    at.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

/// One host's row of the grid: per color its state, version, restarts and since when.
pub fn host_row(status: &AppStatus, host: &str) -> Value {
    let colors: BTreeMap<&str, Value> = Color::ALL
        .iter()
        .filter_map(|c| {
            let h = status.health_of(host, *c)?;
            Some((
                c.as_str(),
                json!({
                    "state": h.state.as_str(),
                    "version": h.version,
                    "restarts": h.restarts,
                    "since": h.since,
                    "error": h.error,
                }),
            ))
        })
        .collect();
    let record = status
        .hosts
        .get(host)
        .or_else(|| status.host_members.get(host));
    json!({
        "host": host,
        "address": record.map(|r| r.address.clone()),
        "alive": status.hosts.contains_key(host),
        "leaving": status.leaving.contains_key(host),
        "colors": colors,
    })
}

/// Every host the app knows: registered, alive, or reporting health.
pub fn host_names(status: &AppStatus) -> Vec<String> {
    let mut names: std::collections::BTreeSet<String> =
        status.host_members.keys().cloned().collect();
    names.extend(status.hosts.keys().cloned());
    names.extend(status.health.keys().cloned());
    names.into_iter().collect()
}

/// The grid's counts: hosts per color and state ("none" when a color reports nothing), and the
/// silent agents.
pub fn counts(status: &AppStatus) -> Value {
    let hosts = host_names(status);
    let mut per: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    for host in &hosts {
        for color in Color::ALL {
            let state = status
                .health_of(host, color)
                .map_or("none", |h| h.state.as_str());
            *per.entry(color.as_str())
                .or_default()
                .entry(state)
                .or_default() += 1;
        }
    }
    json!({"hosts": hosts.len(), "silent": status.silent_hosts().len(), "per_color": per})
}

/// One LB: the revision it serves, whether its sidecar runs, whether it follows `active`, and how
/// long after the last switch it acked.
pub fn lb_row(status: &AppStatus, name: &str) -> Value {
    let record = status.lbs.get(name);
    let switched_at = status
        .active
        .as_ref()
        .and_then(|a| rfc3339_ms(&a.switched_at));
    let follows = record.is_some_and(|r| r.applied_revision >= status.active_mod_revision);
    let latency_ms = match (record, switched_at) {
        (Some(r), Some(at)) if follows => {
            rfc3339_ms(&r.reloaded_at).and_then(|t| t.checked_sub(at))
        }
        _ => None,
    };
    let open = status
        .lb_stats
        .get(name)
        .and_then(|s| s.open.clone())
        .unwrap_or_default();
    json!({
        "name": name,
        "alive": status.lbs_alive.contains(name),
        "revision": record.map(|r| r.applied_revision),
        "color": record.and_then(|r| r.color),
        "error": record.and_then(|r| r.error.clone()),
        "follows": follows,
        "switch_ms": latency_ms,
        "open": open,
    })
}

/// Everything but the host rows: small, sent whole on every change.
pub fn summary(app: &str, status: &AppStatus) -> Value {
    let mut lb_names: std::collections::BTreeSet<String> = status.lbs.keys().cloned().collect();
    lb_names.extend(status.lbs_alive.iter().cloned());
    let lbs: Vec<Value> = lb_names.iter().map(|n| lb_row(status, n)).collect();
    let following = lbs.iter().filter(|l| l["follows"] == true).count();
    let operation = status.deploy.as_ref().map(|d| {
        json!({
            "id": d.deploy_id,
            "operation": d.operation.as_str(),
            "phase": d.phase.as_str(),
            "running": !d.phase.is_terminal(),
            "version": d.version,
            "from": d.from,
            "to": d.to,
            "started_at": d.started_at,
            "updated_at": d.updated_at,
            "error": d.error,
        })
    });
    let draining: BTreeMap<&str, BTreeMap<String, u64>> = Color::ALL
        .iter()
        .map(|c| (c.as_str(), status.open_connections(*c)))
        .filter(|(_, m)| !m.is_empty())
        .collect();
    json!({
        "app": app,
        "revision": status.revision,
        "active": status.active,
        "active_invalid": status.active_invalid,
        "traffic": status.traffic,
        "operation": operation,
        "lock": status.lock,
        "canary_request": status.canary_request,
        "lbs": lbs,
        "lbs_following": following,
        "lbs_registered": lb_names.len(),
        "counts": counts(status),
        "releases": status.releases.iter().map(|(c, r)| (c.as_str(), json!({"version": r.version, "deploy_id": r.deploy_id}))).collect::<BTreeMap<_, _>>(),
        "draining": draining,
        "problems": status.problems,
    })
}

/// One timeline entry, shaped like a `--output json` progress event.
pub fn event(at_ms: u64, step: &str, host: Option<&str>, state: &str, detail: String) -> Value {
    json!({"at_ms": at_ms, "step": step, "host": host, "state": state, "detail": detail})
}

/// What one key's change means for the timeline, judged against the state before it (`before`).
/// Churn nobody reads as progress (request counts, agents' membership records) is left out.
pub fn timeline_event(
    keys: &Keys,
    before: &AppStatus,
    change: &proto::watch::Change,
    at_ms: u64,
) -> Option<Value> {
    let value = change.value.as_deref();
    let ev = |step: &str, host: Option<&str>, state: &str, detail: String| {
        Some(event(at_ms, step, host, state, detail))
    };
    match keys.parse(&change.key)? {
        AppKey::Deploy => {
            let d: proto::records::DeployRecord = decode(&change.key, value?).ok()?;
            let same = before
                .deploy
                .as_ref()
                .is_some_and(|b| b.deploy_id == d.deploy_id && b.phase == d.phase);
            if same {
                return None;
            }
            let error = d.error.map(|e| format!(": {e}")).unwrap_or_default();
            ev(
                "phase",
                None,
                d.phase.as_str(),
                format!(
                    "{} {} of {} to {}{error}",
                    d.operation.as_str(),
                    d.deploy_id,
                    d.version,
                    d.to
                ),
            )
        }
        AppKey::Active => {
            let a: proto::records::ActiveRecord = decode(&change.key, value?).ok()?;
            ev(
                "switch",
                None,
                "written",
                format!(
                    "active = {} {} at revision {}",
                    a.color, a.version, change.mod_revision
                ),
            )
        }
        AppKey::Traffic => match value {
            None => ev(
                "canary",
                None,
                "split removed",
                "every request to the active color".into(),
            ),
            Some(v) => {
                let t: proto::records::TrafficRecord = decode(&change.key, v).ok()?;
                ev(
                    "canary",
                    None,
                    "weight",
                    format!(
                        "step {}: {} to {}",
                        t.step,
                        crate::canary::percent(t.weight),
                        t.canary
                    ),
                )
            }
        },
        AppKey::Release(color) => {
            let r: proto::records::ReleaseRecord = decode(&change.key, value?).ok()?;
            ev("release", None, "written", format!("{color} {}", r.version))
        }
        AppKey::Lb(lb) => {
            let r: proto::records::LbRecord = decode(&change.key, value?).ok()?;
            let old = before.lbs.get(&lb);
            if old.is_some_and(|o| o.applied_revision == r.applied_revision && o.error == r.error) {
                return None;
            }
            match r.error {
                Some(e) => ev("ack", Some(&lb), "error", e),
                None => ev(
                    "ack",
                    Some(&lb),
                    "applied",
                    format!(
                        "revision {} ({})",
                        r.applied_revision,
                        r.color.map_or("-", |c| c.as_str())
                    ),
                ),
            }
        }
        AppKey::Health { host, color } => {
            let Some(v) = value else {
                return ev("health", Some(&host), "gone", format!("{color}"));
            };
            let h: proto::records::HealthRecord = decode(&change.key, v).ok()?;
            let old = before.health_of(&host, color);
            if old.is_some_and(|o| o.state == h.state && o.version == h.version) {
                return None;
            }
            ev(
                "health",
                Some(&host),
                h.state.as_str(),
                format!("{color} {}", h.version),
            )
        }
        AppKey::Host(host) => match value {
            None => ev("agent", Some(&host), "silent", "its lease ended".into()),
            Some(_) if !before.hosts.contains_key(&host) => {
                ev("agent", Some(&host), "up", String::new())
            }
            Some(_) => None,
        },
        AppKey::Lock => match value {
            None => ev("lock", None, "released", String::new()),
            Some(v) => {
                let l: proto::records::LockRecord = decode(&change.key, v).ok()?;
                let same = before
                    .lock
                    .as_ref()
                    .is_some_and(|b| b.deploy_id == l.deploy_id);
                (!same).then(|| {
                    event(
                        at_ms,
                        "lock",
                        None,
                        "taken",
                        format!("{} by {}", l.operation.as_str(), l.holder),
                    )
                })
            }
        },
        AppKey::CanaryRequest => {
            let r: proto::records::CanaryRequest = decode(&change.key, value?).ok()?;
            ev(
                "canary",
                None,
                "requested",
                format!("{} by {}", r.action.as_str(), r.actor),
            )
        }
        AppKey::History(_) => {
            let h: HistoryRecord = decode(&change.key, value?).ok()?;
            let reason = h.reason.map(|r| format!(": {r}")).unwrap_or_default();
            ev(
                "result",
                None,
                h.outcome.as_str(),
                format!("{} {}{reason}", h.kind.as_str(), h.deploy_id),
            )
        }
        AppKey::HostMember(_)
        | AppKey::HostLeaving(_)
        | AppKey::LbAlive(_)
        | AppKey::LbStats(_) => None,
    }
}

/// The request totals per color over every LB (running totals; points are their differences).
pub fn totals(status: &AppStatus) -> BTreeMap<Color, ColorCounts> {
    let mut out: BTreeMap<Color, ColorCounts> = BTreeMap::new();
    for stats in status.lb_stats.values() {
        for (color, counts) in &stats.colors {
            out.entry(*color).or_default().merge(counts);
        }
    }
    out
}

/// One point of the canary chart: per color, the requests, error rate and p99 between the
/// `previous` totals and `now`. A color whose totals went down (a sidecar restarted) starts over
/// from zero rather than showing a negative rate.
pub fn series_point(
    at_ms: u64,
    previous: &BTreeMap<Color, ColorCounts>,
    now: &BTreeMap<Color, ColorCounts>,
) -> Value {
    let colors: BTreeMap<&str, Value> = now
        .iter()
        .map(|(color, counts)| {
            let delta = match previous.get(color) {
                Some(p) if p.requests <= counts.requests => counts.since(p),
                _ => ColorCounts::default(),
            };
            let rate = (delta.requests > 0).then(|| delta.errors as f64 / delta.requests as f64);
            (
                color.as_str(),
                json!({
                    "requests": delta.requests,
                    "errors": delta.errors,
                    "error_rate": rate,
                    "p99_ms": delta.quantile_ms(0.99),
                }),
            )
        })
        .collect();
    json!({"at_ms": at_ms, "colors": colors})
}

/// A history record as the page lists it (the key's revision identifies it).
/// The environment a release ran with is masked as `status` masks it: every reader of the
/// dashboard sees history, and an app's environment may carry a literal credential.
pub fn history_row(key: &str, record: &HistoryRecord) -> Value {
    let mut record = record.clone();
    if let Some(release) = record.release.as_mut() {
        release.run.env = proto::secrets::mask_env(&release.run.env);
    }
    let mut row = serde_json::to_value(&record).unwrap_or(Value::Null);
    row["key"] = json!(key);
    row
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::records::{encode, ActiveRecord, HealthRecord, HealthState, LbRecord};
    use proto::watch::Change;

    fn keys() -> Keys {
        Keys::new("/bluegreen", "shop").unwrap()
    }

    fn change(key: String, value: &impl serde::Serialize, rev: i64) -> Change {
        Change {
            key,
            value: Some(encode(value).into_bytes()),
            mod_revision: rev,
        }
    }

    fn health(state: HealthState, version: &str) -> HealthRecord {
        HealthRecord {
            version: version.into(),
            state,
            health: Value::Null,
            since: "2026-12-08T00:00:00Z".into(),
            restarts: 2,
            error: None,
            unsigned: None,
        }
    }

    fn lb(rev: i64, color: Color, at: &str) -> LbRecord {
        serde_json::from_value(json!({
            "applied_revision": rev, "color": color, "upstream_counts": {}, "upstreams": [],
            "reloaded_at": at, "config_sha256": "",
        }))
        .unwrap()
    }

    fn active(rev: i64) -> (AppStatus, Change) {
        let a = ActiveRecord {
            color: Color::Green,
            version: "v2".into(),
            deploy_id: "d1".into(),
            token: 1,
            switched_at: "2026-12-08T00:00:00.000Z".into(),
        };
        let mut s = AppStatus::default();
        let c = change(keys().active(), &a, rev);
        s.apply(&keys(), &c);
        (s, c)
    }

    #[test]
    fn a_health_change_is_on_the_timeline_once() {
        let keys = keys();
        let mut s = AppStatus::default();
        let c = change(
            keys.health("h1", Color::Green),
            &health(HealthState::Starting, "v2"),
            5,
        );
        let ev = timeline_event(&keys, &s, &c, 1).unwrap();
        assert_eq!(ev["step"], "health");
        assert_eq!(ev["host"], "h1");
        assert_eq!(ev["state"], "starting");
        s.apply(&keys, &c);
        // The same state again (a renewed report) is not news.
        let again = change(
            keys.health("h1", Color::Green),
            &health(HealthState::Starting, "v2"),
            6,
        );
        assert!(timeline_event(&keys, &s, &again, 2).is_none());
        let healthy = change(
            keys.health("h1", Color::Green),
            &health(HealthState::Healthy, "v2"),
            7,
        );
        assert_eq!(
            timeline_event(&keys, &s, &healthy, 3).unwrap()["state"],
            "healthy"
        );
    }

    #[test]
    fn the_switch_and_each_lbs_ack_are_on_the_timeline() {
        let keys = keys();
        let (mut s, c) = active(10);
        let ev = timeline_event(&keys, &AppStatus::default(), &c, 1).unwrap();
        assert_eq!(ev["step"], "switch");
        assert!(ev["detail"]
            .as_str()
            .unwrap()
            .contains("green v2 at revision 10"));
        let ack = change(
            keys.lb("lb-0"),
            &lb(10, Color::Green, "2026-12-08T00:00:00.004Z"),
            11,
        );
        let ev = timeline_event(&keys, &s, &ack, 2).unwrap();
        assert_eq!(
            (ev["step"].as_str(), ev["host"].as_str()),
            (Some("ack"), Some("lb-0"))
        );
        s.apply(&keys, &ack);
        let row = lb_row(&s, "lb-0");
        assert_eq!(row["follows"], true);
        assert_eq!(row["switch_ms"], 4);
    }

    #[test]
    fn an_lb_behind_active_does_not_follow() {
        let keys = keys();
        let (mut s, _) = active(10);
        s.apply(
            &keys,
            &change(
                keys.lb("lb-1"),
                &lb(9, Color::Blue, "2026-12-08T00:00:00Z"),
                11,
            ),
        );
        let row = lb_row(&s, "lb-1");
        assert_eq!(row["follows"], false);
        assert_eq!(row["switch_ms"], Value::Null);
        assert_eq!(summary("shop", &s)["lbs_following"], 0);
    }

    #[test]
    fn counts_group_hosts_by_color_and_state() {
        let keys = keys();
        let mut s = AppStatus::default();
        for (i, state) in [
            HealthState::Healthy,
            HealthState::Healthy,
            HealthState::Failed,
        ]
        .iter()
        .enumerate()
        {
            s.apply(
                &keys,
                &change(
                    keys.health(&format!("h{i}"), Color::Blue),
                    &health(*state, "v1"),
                    i as i64 + 1,
                ),
            );
        }
        let c = counts(&s);
        assert_eq!(c["hosts"], 3);
        assert_eq!(c["per_color"]["blue"]["healthy"], 2);
        assert_eq!(c["per_color"]["blue"]["failed"], 1);
        assert_eq!(c["per_color"]["green"]["none"], 3);
        let row = host_row(&s, "h2");
        assert_eq!(row["colors"]["blue"]["state"], "failed");
        assert_eq!(row["colors"]["blue"]["restarts"], 2);
    }

    #[test]
    fn a_series_point_is_the_difference_and_never_negative() {
        let mut before = BTreeMap::new();
        let mut now = BTreeMap::new();
        let mut b = ColorCounts::default();
        for _ in 0..100 {
            b.add(5.0, false);
        }
        let mut n = b.clone();
        for i in 0..100 {
            n.add(50.0, i % 10 == 0);
        }
        before.insert(Color::Blue, b.clone());
        now.insert(Color::Blue, n);
        let p = series_point(1, &before, &now);
        assert_eq!(p["colors"]["blue"]["requests"], 100);
        assert_eq!(p["colors"]["blue"]["errors"], 10);
        assert!((p["colors"]["blue"]["error_rate"].as_f64().unwrap() - 0.1).abs() < 1e-9);
        assert!(p["colors"]["blue"]["p99_ms"].as_f64().unwrap() >= 50.0);
        // Totals that went down: a restarted sidecar, not minus a hundred requests.
        let p = series_point(2, &now, &before);
        assert_eq!(p["colors"]["blue"]["requests"], 0);
        assert_eq!(p["colors"]["blue"]["error_rate"], Value::Null);
    }
}
