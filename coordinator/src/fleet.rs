//! What the fleet reports, judged: which hosts serve a color at a version, which LBs acked a
//! revision. The verdicts are pure functions of an [`AppStatus`]; the waits re-judge on every
//! change the [`Store`] sees, up to a hard deadline.
use crate::error::CoordinatorError;
use crate::progress::Progress;
use crate::status::AppStatus;
use crate::store::Store;
use proto::records::{serves, HealthState, LbRecord};
use proto::Color;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// What a traffic move may do about the LBs: move with none registered (nothing follows or
/// verifies it), or move while a registered LB's sidecar is silent (it keeps serving the old
/// color: the LBs split).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LbPolicy {
    pub allow_no_lb: bool,
    pub allow_split_lbs: bool,
}

/// The LBs a traffic move waits for: every registered one, and none may be silent. A silent
/// sidecar cannot follow the move, so its nginx would keep serving the old color while the others
/// serve the new one, and the move would end "unsafe" after the ack timeout with traffic split.
/// With `allow_split_lbs` the silent ones are left out, knowingly. The error names them.
pub fn lbs_to_follow(status: &AppStatus, policy: LbPolicy) -> Result<Vec<String>, String> {
    let silent: Vec<&String> = status
        .lbs
        .keys()
        .filter(|lb| !status.lbs_alive.contains(*lb))
        .collect();
    if !silent.is_empty() && !policy.allow_split_lbs {
        let names: Vec<&str> = silent.iter().map(|s| s.as_str()).collect();
        return Err(format!(
            "lb {} is registered but its sidecar is silent (cut off, stopped or dead): it could not \
             follow the move and would keep serving the old color; wait for it to come back, \
             remove an LB that is gone for good with `coordinator lb remove {}`, or pass \
             --allow-split-lbs to move the others anyway",
            names.join(", "),
            names[0]
        ));
    }
    Ok(status
        .lbs
        .keys()
        .filter(|lb| status.lbs_alive.contains(*lb))
        .cloned()
        .collect())
}

/// Host name and why it is a problem.
pub type Failures = Vec<(String, String)>;

/// Hosts of `status` where `color` does not serve `version` (empty = every host does).
pub fn unhealthy(status: &AppStatus, color: Color, version: &str) -> Vec<String> {
    status
        .hosts
        .keys()
        .filter(|host| !serves(status.health_of(host, color), version))
        .cloned()
        .collect()
}

/// Where staging stands across `hosts`.
#[derive(Debug, Clone, PartialEq)]
pub enum Staging {
    /// Every host serves the color at the version.
    Ready,
    /// At least one host reported the release `failed`: waiting longer cannot help.
    Failed(Failures),
    /// Hosts still on their way, with what each reports.
    Pending(Failures),
}

/// One host's line in the staging progress: its state for `version`, and any error it reports.
pub fn host_progress(
    status: &AppStatus,
    host: &str,
    color: Color,
    version: &str,
) -> (String, String) {
    match status.health_of(host, color) {
        Some(h) if h.version == version => (
            h.state.as_str().to_string(),
            h.error.clone().unwrap_or_default(),
        ),
        Some(h) if h.version.is_empty() => ("not started yet".to_string(), String::new()),
        Some(h) => (format!("still at {}", h.version), String::new()),
        None => ("not reporting".to_string(), String::new()),
    }
}

/// Where one host stands in staging.
#[derive(Debug, Clone, PartialEq)]
pub enum HostStaging {
    Ready,
    /// It reported the release `failed`, with its error.
    Failed(String),
    /// Still on its way, with what it reports.
    Pending(String),
}

/// Judges one host's staging of `color` at `version`.
pub fn judge(status: &AppStatus, host: &str, color: Color, version: &str) -> HostStaging {
    let record = status.health_of(host, color);
    if serves(record, version) {
        return HostStaging::Ready;
    }
    let (state, error) = host_progress(status, host, color, version);
    match record {
        Some(h) if h.version == version && h.state == HealthState::Failed => {
            HostStaging::Failed(error)
        }
        _ => HostStaging::Pending(state),
    }
}

/// Judges staging of `color` at `version` on `hosts`.
pub fn staging(status: &AppStatus, hosts: &[String], color: Color, version: &str) -> Staging {
    let mut pending = Vec::new();
    let mut failed = Vec::new();
    for host in hosts {
        match judge(status, host, color, version) {
            HostStaging::Ready => {}
            HostStaging::Failed(error) => failed.push((host.clone(), error)),
            HostStaging::Pending(state) => pending.push((host.clone(), state)),
        }
    }
    match (failed.is_empty(), pending.is_empty()) {
        (false, _) => Staging::Failed(failed),
        (true, true) => Staging::Ready,
        (true, false) => Staging::Pending(pending),
    }
}

/// LBs of `lbs` that have not acked `revision` (or later), each with the error it reports.
pub fn missing_acks(status: &AppStatus, lbs: &[String], revision: i64) -> Vec<String> {
    lbs.iter()
        .filter(|name| {
            status
                .lbs
                .get(*name)
                .is_none_or(|a| a.applied_revision < revision)
        })
        .map(
            |name| match status.lbs.get(name).and_then(|a| a.error.clone()) {
                Some(error) => format!("{}: {error}", status.lb_label(name)),
                None => format!("{}: no ack of revision {revision}", status.lb_label(name)),
            },
        )
        .collect()
}

/// Waits until every host in `hosts` serves `color` at `version`. Err as soon as one reports
/// `failed`, or with every laggard at the deadline. Progress is shown per host as it changes.
/// Each batch of events re-judges only the hosts it touched that are not yet seen ready (at
/// thousands of hosts, re-judging all of them per batch was the coordinator's main CPU cost:
/// 2.4 CPU-s of a 5,000-host deploy), and once none is left one full pass confirms that no host
/// regressed meanwhile.
pub async fn wait_healthy<S: Store>(
    store: &S,
    hosts: &[String],
    color: Color,
    version: &str,
    timeout: Duration,
    progress: &Progress,
) -> Result<Result<(), Failures>, CoordinatorError> {
    let deadline = Instant::now() + timeout;
    let mut shown: BTreeMap<String, String> = BTreeMap::new();
    let mut status = store.latest().await?;
    // The hosts not yet seen ready, with what each last reported.
    let mut pending: BTreeMap<String, String> = hosts
        .iter()
        .map(|h| (h.clone(), "not reporting".to_string()))
        .collect();
    let verdict = loop {
        // Only hosts whose records changed since the last pass can have moved (all of them
        // after a fresh read).
        let to_judge: Vec<String> = match status.touched.replace(Default::default()) {
            None => pending.keys().cloned().collect(),
            Some(touched) => touched
                .into_iter()
                .filter(|h| pending.contains_key(h))
                .collect(),
        };
        let mut failed = Vec::new();
        for host in to_judge {
            let (state, error) = host_progress(&status, &host, color, version);
            if shown.get(&host) != Some(&state) {
                progress.event("stage", Some(&host), &state, &error);
                shown.insert(host.clone(), state);
            }
            match judge(&status, &host, color, version) {
                HostStaging::Ready => {
                    pending.remove(&host);
                }
                HostStaging::Failed(error) => failed.push((host, error)),
                HostStaging::Pending(state) => {
                    pending.insert(host, state);
                }
            }
        }
        if !failed.is_empty() {
            break Err(failed);
        }
        if pending.is_empty() {
            // Every host was seen ready; one full pass confirms none regressed meanwhile.
            match staging(&status, hosts, color, version) {
                Staging::Ready => break Ok(()),
                Staging::Failed(failed) => break Err(failed),
                Staging::Pending(regressed) => pending.extend(regressed),
            }
        }
        if Instant::now() >= deadline {
            break Err(pending
                .into_iter()
                .map(|(h, s)| (h, format!("not healthy at {version} in time: {s}")))
                .collect());
        }
        store.follow(&mut status, deadline).await?;
    };
    status.touched = None;
    store.remember(status);
    Ok(verdict)
}

/// Waits until every LB in `lbs` acks `revision` (or later). Err names the LBs that did not.
pub async fn wait_acks<S: Store>(
    store: &S,
    lbs: &[String],
    revision: i64,
    timeout: Duration,
) -> Result<Result<BTreeMap<String, LbRecord>, String>, CoordinatorError> {
    let deadline = Instant::now() + timeout;
    let mut status = store.latest().await?;
    loop {
        let missing = missing_acks(&status, lbs, revision);
        if missing.is_empty() {
            let acks = status.lbs.clone();
            store.remember(status);
            return Ok(Ok(acks));
        }
        if Instant::now() >= deadline {
            store.remember(status);
            return Ok(Err(missing.join("; ")));
        }
        store.follow(&mut status, deadline).await?;
    }
}

/// Waits until no LB has requests open to `color` (see [`AppStatus::open_connections`]), up to
/// `timeout`; `progress` sees each new count. Returns what is still open (empty: drained).
pub async fn wait_drained<S: Store>(
    store: &S,
    color: Color,
    timeout: Duration,
    mut progress: impl FnMut(&BTreeMap<String, u64>),
) -> Result<BTreeMap<String, u64>, CoordinatorError> {
    let deadline = Instant::now() + timeout;
    let mut status = store.latest().await?;
    let mut shown = None;
    loop {
        let open = status.open_connections(color);
        if open.is_empty() || Instant::now() >= deadline {
            store.remember(status);
            return Ok(open);
        }
        if shown.as_ref() != Some(&open) {
            progress(&open);
            shown = Some(open);
        }
        store.follow(&mut status, deadline).await?;
    }
}

/// Watches `color` on `hosts` for `duration`; Err describes the first host that stopped serving
/// `version`, or what `also` found wrong (it sees the status after every change).
pub async fn watch_serving<S: Store>(
    store: &S,
    hosts: &[String],
    color: Color,
    version: &str,
    duration: Duration,
    mut also: impl FnMut(&crate::status::AppStatus) -> Result<(), String>,
) -> Result<Result<(), String>, CoordinatorError> {
    let end = Instant::now() + duration;
    let mut status = store.latest().await?;
    loop {
        if let Err(why) = also(&status) {
            store.remember(status);
            return Ok(Err(why));
        }
        for host in hosts {
            let h = status.health_of(host, color);
            if !serves(h, version) {
                let what = h.map_or("not reporting".to_string(), |h| {
                    format!(
                        "{} {}",
                        h.state.as_str(),
                        h.error.clone().unwrap_or_default()
                    )
                });
                let why = format!("{host} {color}: {}", what.trim_end());
                store.remember(status);
                return Ok(Err(why));
            }
        }
        if Instant::now() >= end {
            store.remember(status);
            return Ok(Ok(()));
        }
        store.follow(&mut status, end).await?;
    }
}

/// Shows each smoke result and collects the failures.
pub fn report_smoke(
    results: Vec<crate::probes::SmokeResult>,
    progress: &Progress,
) -> Result<(), Failures> {
    let mut failures = Vec::new();
    for r in results {
        match r.outcome {
            Ok(()) => progress.event("smoke", Some(&r.host), "passed", &r.path),
            Err(e) => {
                progress.event("smoke", Some(&r.host), "failed", &e);
                failures.push((r.host, e));
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}
