//! The invariants the fault runner checks after every step, each against the fleet's real state
//! (etcd, the LBs' answers, the processes on the machine), never against the runner's guesses.
use crate::fleet::Fleet;
use crate::procs::keys;
use proto::records::{
    decode, ActiveRecord, Desired, HealthRecord, HealthState, HistoryRecord, ReleaseRecord,
};
use proto::{Color, Operation, Outcome};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// One write of `active`: its revision, the operation id and color it names (empty and `None`
/// for a value that does not read).
type ActiveWrite = (i64, String, Option<Color>);

/// Every write of `active` seen since the run began.
#[derive(Default, Clone)]
pub struct ActiveWrites(Arc<Mutex<Vec<ActiveWrite>>>);

impl ActiveWrites {
    /// Watches `active` from `revision` on, re-opening the watch (on a live member) when it
    /// breaks, until the task is aborted.
    pub fn follow(
        etcd_access: proto::EtcdAccess,
        revision: i64,
    ) -> (ActiveWrites, tokio::task::JoinHandle<()>) {
        let writes = ActiveWrites::default();
        let sink = writes.clone();
        let task = tokio::spawn(async move {
            let key = keys().active();
            let mut next = revision;
            loop {
                let Ok(mut client) = proto::connect_live(&etcd_access).await else {
                    tokio::time::sleep(Duration::from_millis(500)).await; // retry after etcd loss
                    continue;
                };
                let options = etcd_client::WatchOptions::new().with_start_revision(next);
                let Ok(mut stream) = client.watch(key.as_str(), Some(options)).await else {
                    tokio::time::sleep(Duration::from_millis(500)).await; // retry after etcd loss
                    continue;
                };
                while let Ok(Some(resp)) = stream.message().await {
                    for event in resp.events() {
                        let Some(kv) = event.kv() else { continue };
                        next = kv.mod_revision() + 1;
                        if event.event_type() != etcd_client::EventType::Put {
                            continue;
                        }
                        let record = decode::<ActiveRecord>(&key, kv.value()).ok();
                        sink.0.lock().unwrap().push((
                            kv.mod_revision(),
                            record
                                .as_ref()
                                .map(|r| r.deploy_id.clone())
                                .unwrap_or_default(),
                            record.map(|r| r.color),
                        ));
                    }
                }
            }
        });
        (writes, task)
    }

    fn snapshot(&self) -> Vec<ActiveWrite> {
        self.0.lock().unwrap().clone()
    }
}

/// `active` is written at most once per operation id (garbage writes carry no id).
pub fn active_written_once(writes: &ActiveWrites) -> Vec<String> {
    let mut seen: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (revision, id, _) in writes.snapshot() {
        if !id.is_empty() {
            seen.entry(id).or_default().push(revision);
        }
    }
    seen.into_iter()
        .filter(|(_, revisions)| revisions.len() > 1)
        .map(|(id, revisions)| {
            format!(
                "active written {} times by operation {id} (revisions {revisions:?})",
                revisions.len()
            )
        })
        .collect()
}

/// Every operation has at most one history record, and every record of a switch that succeeded
/// names an `active` write of that operation to that color.
pub async fn history_is_true(
    client: &etcd_client::Client,
    writes: &ActiveWrites,
    reported: &mut BTreeSet<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let prefix = keys().history_prefix();
    let Ok(resp) = client
        .clone()
        .get(
            prefix.as_str(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
    else {
        return problems;
    };
    let mut per_op: BTreeMap<String, Vec<HistoryRecord>> = BTreeMap::new();
    for kv in resp.kvs() {
        let key = String::from_utf8_lossy(kv.key()).to_string();
        match decode::<HistoryRecord>(&key, kv.value()) {
            Ok(r) => per_op.entry(r.deploy_id.clone()).or_default().push(r),
            Err(e) => problems.push(format!("unreadable history record {key}: {e}")),
        }
    }
    let writes = writes.snapshot();
    for (id, records) in &per_op {
        if records.len() > 1 && reported.insert(format!("dup {id}")) {
            problems.push(format!(
                "operation {id} has {} history records",
                records.len()
            ));
        }
        for r in records {
            let switched = matches!(
                r.kind,
                Operation::Deploy | Operation::Switch | Operation::Rollback
            ) && r.outcome == Outcome::Done;
            if switched
                && !writes.iter().any(|(_, w, c)| w == id && *c == r.to)
                && reported.insert(format!("false {id}"))
            {
                problems.push(format!(
                    "history says {} {id} succeeded to {:?}, but active was never written by it",
                    r.kind, r.to
                ));
            }
        }
    }
    problems
}

async fn get<T: serde::de::DeserializeOwned + proto::records::Validate>(
    client: &etcd_client::Client,
    key: &str,
) -> Option<T> {
    let resp = client.clone().get(key, None).await.ok()?;
    let kv = resp.kvs().first()?;
    decode::<T>(key, kv.value()).ok()
}

pub use crate::procs::active;

/// The live color's release is the version `active` names: a live color is never restaged.
pub async fn live_color_kept(client: &etcd_client::Client) -> Vec<String> {
    let Some(active) = active(client).await else {
        return Vec::new();
    };
    let release: Option<ReleaseRecord> = get(client, &keys().release(active.color)).await;
    match release {
        Some(r) if r.version == active.version && r.desired == Desired::Running => Vec::new(),
        Some(r) => vec![format!(
            "live color {} replaced: active names {}, its release is {} ({:?})",
            active.color, active.version, r.version, r.desired
        )],
        None => vec![format!("live color {} has no release", active.color)],
    }
}

/// Every LB answers with the active color within `bound`.
pub async fn lbs_converge(
    fleet: &Fleet,
    client: &etcd_client::Client,
    bound: Duration,
) -> Vec<String> {
    let Some(active) = active(client).await else {
        return Vec::new();
    };
    let http = crate::load::fresh_connections(Duration::from_secs(2));
    let mut problems = Vec::new();
    for (i, lb) in fleet.lbs.iter().enumerate() {
        let url = lb.url("/api/v1/status");
        let deadline = Instant::now() + bound;
        let mut last;
        loop {
            match http.get(&url).send().await {
                Ok(resp) => {
                    let color = resp
                        .headers()
                        .get("x-bluegreen-color")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    if color == active.color.as_str() {
                        break;
                    }
                    last = format!("serves {color:?}");
                }
                Err(e) => last = format!("{e}"),
            }
            if Instant::now() >= deadline {
                problems.push(format!(
                    "lb-{i} did not converge to {} within {bound:?}: {last}",
                    active.color
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await; // poll until the deadline
        }
    }
    problems
}

/// After a fault heals, the fleet is whole again within `bound`: every host's agent is back in
/// etcd, the live color is healthy at the live version on every host, and every LB routes the
/// live color to every host. The runner waits for this before the next step, so one step's
/// fault never overlaps the next one's (an app killed while its host's twin was still out of the
/// upstream is two faults, not one), and the step's excuses last until it holds.
pub async fn fleet_settles(
    fleet: &Fleet,
    client: &etcd_client::Client,
    bound: Duration,
) -> Vec<String> {
    let Some(live) = active(client).await else {
        return Vec::new();
    };
    let mut wanted: Vec<String> = fleet
        .hosts
        .iter()
        .map(|h| format!("{}:{}", h.address, h.ports.of(live.color)))
        .collect();
    wanted.sort();
    let settle_deadline = Instant::now() + bound;
    loop {
        let unsettled = unsettled(fleet, client, &live, &wanted).await;
        if unsettled.is_empty() {
            return Vec::new();
        }
        if Instant::now() >= settle_deadline {
            return vec![format!(
                "the fleet did not settle within {bound:?} after the fault healed: {}",
                unsettled.join("; ")
            )];
        }
        tokio::time::sleep(Duration::from_millis(200)).await; // poll until the deadline
    }
}

/// What still keeps the fleet from being whole (empty when it is).
async fn unsettled(
    fleet: &Fleet,
    client: &etcd_client::Client,
    live: &ActiveRecord,
    wanted: &[String],
) -> Vec<String> {
    let k = keys();
    let mut problems = Vec::new();
    for h in &fleet.hosts {
        if crate::procs::get_raw(client, &k.host(&h.host))
            .await
            .is_none()
        {
            problems.push(format!("{} not in etcd", h.host));
            continue;
        }
        let key = k.health(&h.host, live.color);
        let health = crate::procs::get_raw(client, &key)
            .await
            .and_then(|b| decode::<HealthRecord>(&key, &b).ok());
        match health {
            Some(r) if r.state == HealthState::Healthy && r.version == live.version => {}
            other => problems.push(format!(
                "{} {}: {:?}",
                h.host,
                live.color,
                other.map(|r| (r.state, r.version))
            )),
        }
    }
    for s in &fleet.sidecars {
        let upstreams = crate::lb::upstreams(client, &s.name, live.color).await;
        if upstreams != wanted {
            problems.push(format!("{} routes to {upstreams:?}", s.name));
        }
    }
    problems
}

/// No app process of a host other than the one its pid files name per color, and no healthy
/// color running another version than its release; both allowed `bound` to settle.
pub async fn processes_match_releases(
    fleet: &Fleet,
    client: &etcd_client::Client,
    bound: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + bound;
    loop {
        let mut problems = Vec::new();
        for host in &fleet.hosts {
            let known: BTreeSet<u32> = Color::ALL.iter().filter_map(|c| host.app_pid(*c)).collect();
            for pid in apps_under(&host.state_dir) {
                if !known.contains(&pid) {
                    problems.push(format!("{}: orphan app process {pid}", host.host));
                }
            }
            for color in Color::ALL {
                let release: Option<ReleaseRecord> = get(client, &keys().release(color)).await;
                let health: Option<HealthRecord> =
                    get(client, &keys().health(&host.host, color)).await;
                if let (Some(r), Some(h)) = (release, health) {
                    if r.desired == Desired::Running && h.state == HealthState::Healthy {
                        // What the process itself says it is, not only what the agent reports.
                        let url = host.url(color, "/api/v1/status");
                        let served = crate::procs::get_json(&url)
                            .await
                            .and_then(|v| v["version"].as_str().map(str::to_string));
                        for (who, version) in [
                            ("its agent reports", Some(h.version.clone())),
                            ("the app answers", served),
                        ] {
                            if let Some(v) = version.filter(|v| v != &r.version) {
                                problems.push(format!(
                                    "{} {color}: {who} {v} but its release is {}",
                                    host.host, r.version
                                ));
                            }
                        }
                    }
                }
            }
        }
        if problems.is_empty() || Instant::now() >= deadline {
            return problems;
        }
        tokio::time::sleep(Duration::from_millis(500)).await; // poll until the deadline
    }
}

/// Processes whose working directory is under `state_dir` (the apps an agent started there).
fn apps_under(state_dir: &std::path::Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd"))
                .is_ok_and(|cwd| cwd.starts_with(state_dir))
        })
        .collect()
}

/// The lock is free within `bound` once no command runs.
pub async fn lock_freed(client: &etcd_client::Client, bound: Duration) -> Vec<String> {
    let key = keys().lock();
    let deadline = Instant::now() + bound;
    loop {
        match client.clone().get(key.as_str(), None).await {
            Ok(resp) if resp.kvs().is_empty() => return Vec::new(),
            _ if Instant::now() >= deadline => {
                return vec![format!(
                    "the lock is still held {bound:?} after its holder ended"
                )]
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await, // poll until the deadline
        }
    }
}
