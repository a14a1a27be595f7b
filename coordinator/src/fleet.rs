//! Reading and waiting on what the fleet reports: hosts' health per color, sidecars' acks, and
//! the apps themselves (smoke checks, verification through each LB, log lines through the agents).
use crate::progress::Progress;
use crate::spec::SmokeCheck;
use crate::status::{read, AppStatus};
use proto::records::{HealthState, HostRecord, LbRecord};
use proto::{Color, Keys};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// Waits until every registered host reports `color` healthy at `version`. Returns the hosts that
/// failed (with their error) as soon as one reports `failed`, or all laggards at the deadline.
pub async fn wait_healthy(
    client: &etcd_client::Client,
    keys: &Keys,
    hosts: &[String],
    color: Color,
    version: &str,
    timeout: Duration,
    progress: &Progress,
) -> Result<(), Vec<(String, String)>> {
    let deadline = Instant::now() + timeout;
    let mut shown: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let status = read(client, keys)
            .await
            .map_err(|e| vec![("etcd".to_string(), e.to_string())])?;
        let mut pending = Vec::new();
        let mut failed = Vec::new();
        for host in hosts {
            let record = status.health.get(host).and_then(|m| m.get(&color));
            let (state, error) = match record {
                Some(h) if h.version == version => (
                    h.state.as_str().to_string(),
                    h.error.clone().unwrap_or_default(),
                ),
                Some(h) => (format!("still at {}", h.version), String::new()),
                None => ("not reporting".to_string(), String::new()),
            };
            if shown.get(host) != Some(&state) {
                progress.event("stage", Some(host), &state, &error);
                shown.insert(host.clone(), state.clone());
            }
            match record {
                Some(h) if h.version == version && h.state == HealthState::Healthy => {}
                Some(h) if h.version == version && h.state == HealthState::Failed => {
                    failed.push((host.clone(), error))
                }
                _ => pending.push((host.clone(), state)),
            }
        }
        if !failed.is_empty() {
            return Err(failed);
        }
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(pending
                .into_iter()
                .map(|(h, s)| (h, format!("not healthy at {version} in time: {s}")))
                .collect());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Hosts of `status` whose `color` is not healthy at `version` (empty = all healthy).
pub fn unhealthy(status: &AppStatus, color: Color, version: &str) -> Vec<String> {
    status
        .hosts
        .keys()
        .filter(|host| {
            !status
                .health
                .get(*host)
                .and_then(|m| m.get(&color))
                .is_some_and(|h| h.state == HealthState::Healthy && h.version == version)
        })
        .cloned()
        .collect()
}

/// Waits until every LB in `lbs` acks `revision` (or later). Err names the LBs that did not.
pub async fn wait_acks(
    client: &etcd_client::Client,
    keys: &Keys,
    lbs: &[String],
    revision: i64,
    timeout: Duration,
) -> Result<BTreeMap<String, LbRecord>, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = read(client, keys).await.map_err(|e| e.to_string())?;
        let missing: Vec<String> = lbs
            .iter()
            .filter(|name| {
                !status
                    .lbs
                    .get(*name)
                    .is_some_and(|a| a.applied_revision >= revision)
            })
            .map(
                |name| match status.lbs.get(name).and_then(|a| a.error.clone()) {
                    Some(error) => format!("{name}: {error}"),
                    None => format!("{name}: no ack of revision {revision}"),
                },
            )
            .collect();
        if missing.is_empty() {
            return Ok(status.lbs);
        }
        if Instant::now() >= deadline {
            return Err(missing.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs every smoke check against `color` on every host, hosts in parallel (a fleet of 50 must
/// not take 50 times one host). Err lists host and reason per failure.
pub async fn smoke(
    hosts: &[HostRecord],
    checks: &[SmokeCheck],
    color: Color,
    version: &str,
    progress: &Progress,
) -> Result<(), Vec<(String, String)>> {
    let http = reqwest::Client::new();
    let per_host = hosts
        .iter()
        .map(|host| smoke_host(&http, host, checks, color, version));
    let mut failures = Vec::new();
    for (host, result) in hosts.iter().zip(futures::future::join_all(per_host).await) {
        for (path, outcome) in result {
            match outcome {
                Ok(()) => progress.event("smoke", Some(&host.host), "passed", &path),
                Err(e) => {
                    progress.event("smoke", Some(&host.host), "failed", &e);
                    failures.push((host.host.clone(), e));
                }
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}

/// Every check on one host, each with its retries: (path, outcome) per check.
async fn smoke_host(
    http: &reqwest::Client,
    host: &HostRecord,
    checks: &[SmokeCheck],
    color: Color,
    version: &str,
) -> Vec<(String, Result<(), String>)> {
    let mut results = Vec::new();
    for check in checks {
        let url = format!(
            "http://{}:{}{}",
            host.address,
            host.ports.of(color),
            check.path
        );
        let mut outcome = Err(String::new());
        for attempt in 0..=check.retries {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            outcome = smoke_once(http, &url, check, color, version)
                .await
                .map_err(|e| format!("smoke {url}: {e}"));
            if outcome.is_ok() {
                break;
            }
        }
        results.push((check.path.clone(), outcome));
    }
    results
}

async fn smoke_once(
    http: &reqwest::Client,
    url: &str,
    check: &SmokeCheck,
    color: Color,
    version: &str,
) -> Result<(), String> {
    let resp = http
        .get(url)
        .timeout(check.timeout)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    if status != check.status {
        return Err(format!("HTTP {status}, expected {}", check.status));
    }
    if check.json.is_empty() {
        return Ok(());
    }
    let body: serde_json::Value = resp.json().await.map_err(|e| format!("not JSON: {e}"))?;
    for (field, expected) in &check.json {
        let expected = expected
            .replace("{color}", color.as_str())
            .replace("{version}", version);
        let actual = body.get(field).map(|v| {
            v.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string())
        });
        if actual.as_deref() != Some(expected.as_str()) {
            return Err(format!("{field} is {actual:?}, expected {expected:?}"));
        }
    }
    Ok(())
}

/// Asks each LB's public URL which color answers; Err names the LBs that do not serve `color`.
pub async fn verify_through_lbs(
    lbs: &BTreeMap<String, LbRecord>,
    color: Color,
) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client");
    let mut wrong = Vec::new();
    for (name, ack) in lbs {
        let Some(url) = &ack.url else { continue };
        let answer = async {
            let body: serde_json::Value = http
                .get(format!("{url}/"))
                .timeout(Duration::from_secs(3))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            body.get("environment")
                .and_then(|e| e.as_str())
                .map(str::to_string)
        };
        match answer.await {
            Some(c) if c == color.as_str() => {}
            other => wrong.push(format!("{name} ({url}) answered {other:?}")),
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("; "))
    }
}

/// The last `tail` log lines of `color` on `host`, through the agent's gRPC `Logs`.
pub async fn logs(host: &HostRecord, color: Color, tail: u32) -> Result<Vec<String>, String> {
    use proto::agent_api::{agent_client::AgentClient, LogsRequest};
    let endpoint = format!("http://{}", host.grpc);
    let connect = AgentClient::connect(endpoint.clone());
    let mut api = tokio::time::timeout(Duration::from_secs(3), connect)
        .await
        .map_err(|_| format!("{endpoint}: timed out"))?
        .map_err(|e| format!("{endpoint}: {e}"))?;
    let request = LogsRequest {
        color: color.to_string(),
        tail,
        follow: false,
    };
    let mut stream = api
        .logs(request)
        .await
        .map_err(|e| format!("{endpoint}: {}", e.message()))?
        .into_inner();
    let mut lines = Vec::new();
    while let Ok(Some(line)) = stream.message().await {
        lines.push(line.line);
    }
    Ok(lines)
}
