//! In-memory stand-ins for the seams, for unit tests of the pipeline and switches: a [`MemoryStore`]
//! that keeps the app's state, applies fenced writes with etcd's guard semantics and simulates
//! what agents and sidecars would report; scripted [`FakeProbes`] and [`FakeMigrator`]. Time is
//! tokio's (tests run with `start_paused`), so deadlines pass without real waiting.
use crate::deploy::Migrator;
use crate::error::CoordinatorError;
use crate::fleet::Failures;
use crate::probes::{Probes, SmokeResult};
use crate::spec::{AppSpec, SmokeCheck};
use crate::status::AppStatus;
use crate::store::{Store, Write};
use proto::records::{
    ActiveRecord, Desired, HealthRecord, HealthState, HistoryRecord, HostRecord, LbRecord, Ports,
    ReleaseRecord,
};
use proto::{Color, ProtoError};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use tokio::time::Instant;

/// How a simulated host's agent answers a new release.
#[derive(Debug, Clone, PartialEq)]
pub enum Agent {
    /// Reports the release healthy at once.
    Healthy,
    /// Reports the release `failed` with this error.
    Fails(String),
    /// Never reports (paused, partitioned, slow).
    Silent,
}

#[derive(Default)]
struct Inner {
    state: AppStatus,
    agents: BTreeMap<String, Agent>,
    /// LBs whose sidecar acks every switch.
    following_lbs: BTreeSet<String>,
    history: Vec<HistoryRecord>,
    writes: Vec<Write>,
    lost: Option<String>,
    /// Every read fails once this many more reads have happened (etcd going away).
    reads_left: Option<usize>,
    /// The lock is lost once this many more writes have succeeded.
    writes_left: Option<usize>,
    /// Someone else writes `active` once this many more writes have succeeded.
    active_moves_after: Option<usize>,
}

pub struct MemoryStore {
    inner: Mutex<Inner>,
    changed: tokio::sync::watch::Sender<i64>,
    token: i64,
}

impl MemoryStore {
    /// `hosts` with their agents' behaviour, and `lbs` sidecars that follow every switch.
    pub fn new(hosts: &[(&str, Agent)], lbs: &[&str]) -> MemoryStore {
        let mut inner = Inner::default();
        for (i, (name, agent)) in hosts.iter().enumerate() {
            inner
                .state
                .hosts
                .insert(name.to_string(), host_record(name, i));
            inner
                .state
                .host_members
                .insert(name.to_string(), host_record(name, i));
            inner.agents.insert(name.to_string(), agent.clone());
        }
        for name in lbs {
            inner.state.lbs.insert(name.to_string(), lb_record(0, None));
            inner.state.lbs_alive.insert(name.to_string());
            inner.following_lbs.insert(name.to_string());
        }
        inner.state.revision = 10;
        MemoryStore {
            inner: Mutex::new(inner),
            changed: tokio::sync::watch::channel(10).0,
            token: 7,
        }
    }

    /// A fleet already serving `version` on `color` (as after an earlier deploy).
    pub fn serving(self, color: Color, version: &str) -> MemoryStore {
        self.serving_as("earlier", color, version);
        self
    }

    /// `color` runs `version` healthy everywhere, and `active` (written by `op_id`) names it.
    pub fn serving_as(&self, op_id: &str, color: Color, version: &str) {
        {
            let mut inner = self.inner.lock().unwrap();
            let revision = inner.state.revision;
            inner.state.active = Some(ActiveRecord {
                color,
                version: version.into(),
                deploy_id: op_id.into(),
                token: 1,
                switched_at: "t".into(),
            });
            inner.state.active_mod_revision = revision;
            inner
                .state
                .releases
                .insert(color, release(version, Desired::Running));
            let hosts: Vec<String> = inner.state.hosts.keys().cloned().collect();
            for host in hosts {
                set(
                    &mut inner.state,
                    &host,
                    color,
                    HealthState::Healthy,
                    version,
                    None,
                );
            }
            for lb in inner.state.lbs.values_mut() {
                *lb = lb_record(revision, Some(color));
            }
        }
    }

    /// Resolves once this store's `active` has been written with `color`.
    pub async fn until_switched_to(&self, color: Color) {
        let mut changes = self.changed.subscribe();
        let _ = changes
            .wait_for(|_| self.active_writes().iter().any(|a| a.color == color))
            .await;
    }

    /// Another writer changes `active` (an operator's etcdctl) after `n` more successful writes.
    pub fn move_active_after_writes(&self, n: usize) {
        self.inner.lock().unwrap().active_moves_after = Some(n);
    }

    /// The lock is lost after `n` more successful writes.
    pub fn lose_lock_after_writes(&self, n: usize) {
        self.inner.lock().unwrap().writes_left = Some(n);
    }

    pub fn set_agent(&self, host: &str, agent: Agent) {
        self.inner.lock().unwrap().agents.insert(host.into(), agent);
    }

    /// The LB's sidecar stops acking (paused, partitioned) but its liveness key has not expired
    /// yet.
    pub fn freeze_lb(&self, name: &str) {
        self.inner.lock().unwrap().following_lbs.remove(name);
    }

    /// The LB's sidecar stops acking (paused, partitioned) and its liveness key expires; its
    /// durable record (last ack) stays.
    pub fn silence_lb(&self, name: &str) {
        let mut inner = self.inner.lock().unwrap();
        inner.following_lbs.remove(name);
        inner.state.lbs_alive.remove(name);
    }

    /// A host whose agent lost its lease: its `hosts/` and health keys expire, its membership
    /// stays.
    pub fn silence_host(&self, host: &str) {
        let mut inner = self.inner.lock().unwrap();
        inner.state.hosts.remove(host);
        inner.state.health.remove(host);
        self.bump(&mut inner);
    }

    /// What a host reports for a color, as an agent's write would change it.
    pub fn set_health(&self, host: &str, color: Color, state: HealthState, version: &str) {
        let mut inner = self.inner.lock().unwrap();
        set(&mut inner.state, host, color, state, version, None);
        self.bump(&mut inner);
    }

    pub fn set_deploy(&self, record: proto::records::DeployRecord) {
        let mut inner = self.inner.lock().unwrap();
        inner.state.deploy = Some(record);
        self.bump(&mut inner);
    }

    /// The split as a canary's coordinator last wrote it.
    pub fn set_traffic(&self, record: proto::records::TrafficRecord) {
        let mut inner = self.inner.lock().unwrap();
        inner.state.traffic = Some(record);
        self.bump(&mut inner);
    }

    /// `lb` says `open` requests are still open to `color` (an LB in Lua mode).
    pub fn set_open(&self, lb: &str, color: Color, open: u64) {
        let mut inner = self.inner.lock().unwrap();
        inner.state.lb_stats.insert(
            lb.to_string(),
            stats_with_open(Some(BTreeMap::from([(color, open)]))),
        );
        self.bump(&mut inner);
    }

    pub fn set_active_invalid(&self, problem: &str) {
        let mut inner = self.inner.lock().unwrap();
        inner.state.active = None;
        inner.state.active_invalid = Some(problem.into());
    }

    /// After `n` more successful reads, every read fails as if etcd were gone.
    pub fn fail_reads_after(&self, n: usize) {
        self.inner.lock().unwrap().reads_left = Some(n);
    }

    pub fn snapshot(&self) -> AppStatus {
        self.inner.lock().unwrap().state.clone()
    }

    pub fn history(&self) -> Vec<HistoryRecord> {
        self.inner.lock().unwrap().history.clone()
    }

    pub fn writes(&self) -> Vec<Write> {
        self.inner.lock().unwrap().writes.clone()
    }

    /// How many times `active` was written.
    pub fn active_writes(&self) -> Vec<ActiveRecord> {
        self.writes()
            .into_iter()
            .filter_map(|w| match w {
                Write::Active(a) => Some(a),
                _ => None,
            })
            .collect()
    }

    fn bump(&self, inner: &mut Inner) -> i64 {
        inner.state.revision += 1;
        let revision = inner.state.revision;
        self.changed.send_replace(revision);
        revision
    }

    /// What agents and sidecars do in answer to a write.
    fn react(inner: &mut Inner, write: &Write, revision: i64) {
        match write {
            Write::Release(color, r) => {
                let agents: Vec<(String, Agent)> = inner
                    .agents
                    .iter()
                    .map(|(h, a)| (h.clone(), a.clone()))
                    .collect();
                for (host, agent) in agents {
                    let (state, error) = match (&agent, r.desired) {
                        (_, Desired::Stopped) => (HealthState::Stopped, None),
                        (Agent::Healthy, _) => (HealthState::Healthy, None),
                        (Agent::Fails(e), _) => (HealthState::Failed, Some(e.clone())),
                        (Agent::Silent, _) => continue,
                    };
                    set(&mut inner.state, &host, *color, state, &r.version, error);
                }
            }
            Write::Active(a) => {
                let following: Vec<String> = inner.following_lbs.iter().cloned().collect();
                for lb in following {
                    inner
                        .state
                        .lbs
                        .insert(lb, lb_record(revision, Some(a.color)));
                }
            }
            // A following LB acks a new split with the color it serves unchanged.
            Write::Traffic(_) => {
                let following: Vec<String> = inner.following_lbs.iter().cloned().collect();
                for lb in following {
                    let color = inner.state.lbs.get(&lb).and_then(|r| r.color);
                    inner.state.lbs.insert(lb, lb_record(revision, color));
                }
            }
            Write::Deploy(_) => {}
        }
    }
}

impl Store for MemoryStore {
    async fn read(&self) -> Result<AppStatus, CoordinatorError> {
        let mut inner = self.inner.lock().unwrap();
        match &mut inner.reads_left {
            Some(0) => return Err(CoordinatorError::unreachable("etcd: connection refused")),
            Some(n) => *n -= 1,
            None => {}
        }
        Ok(inner.state.clone())
    }

    async fn put(
        &self,
        writes: &[Write],
        active_seen: Option<i64>,
    ) -> Result<i64, CoordinatorError> {
        let mut inner = self.inner.lock().unwrap();
        if inner.writes_left == Some(0) {
            inner.lost = Some("lease expired".into());
        }
        let guard_failed = active_seen.is_some_and(|seen| seen != inner.state.active_mod_revision);
        if inner.lost.is_some() || guard_failed {
            return Err(ProtoError::FenceLost {
                key: "memory".into(),
                lock_key: "lock".into(),
                token: self.token,
            }
            .into());
        }
        let revision = inner.state.revision + 1;
        for write in writes {
            match write {
                Write::Active(a) => {
                    inner.state.active = Some(a.clone());
                    inner.state.active_invalid = None;
                    inner.state.active_mod_revision = revision;
                }
                Write::Release(color, r) => {
                    inner.state.releases.insert(*color, r.clone());
                }
                Write::Deploy(d) => inner.state.deploy = Some(d.clone()),
                Write::Traffic(t) => inner.state.traffic = Some(t.clone()),
            }
            inner.writes.push(write.clone());
        }
        if let Some(n) = &mut inner.writes_left {
            *n -= 1;
        }
        self.bump(&mut inner);
        if let Some(n) = &mut inner.active_moves_after {
            *n = n.saturating_sub(1);
            if *n == 0 {
                inner.active_moves_after = None;
                let moved = self.bump(&mut inner);
                inner.state.active_mod_revision = moved;
            }
        }
        for write in writes {
            Self::react(&mut inner, write, revision);
        }
        Ok(revision)
    }

    async fn append_history(&self, record: &HistoryRecord) -> Result<i64, CoordinatorError> {
        let mut inner = self.inner.lock().unwrap();
        if inner.lost.is_some() {
            return Err(ProtoError::FenceLost {
                key: "history".into(),
                lock_key: "lock".into(),
                token: self.token,
            }
            .into());
        }
        inner.history.push(record.clone());
        Ok(self.bump(&mut inner))
    }

    async fn latest(&self) -> Result<AppStatus, CoordinatorError> {
        self.read().await
    }

    async fn last_deploy_to(
        &self,
        color: Color,
    ) -> Result<Option<HistoryRecord>, CoordinatorError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .history
            .iter()
            .rev()
            .find(|r| crate::history::placed_release(r, color))
            .cloned())
    }

    fn remember(&self, _status: AppStatus) {}

    async fn follow(
        &self,
        status: &mut AppStatus,
        deadline: Instant,
    ) -> Result<(), CoordinatorError> {
        let mut changes = self.changed.subscribe();
        let revision = status.revision;
        if tokio::time::timeout_at(deadline, changes.wait_for(|r| *r > revision))
            .await
            .is_ok()
        {
            *status = self.read().await?;
        }
        Ok(())
    }

    fn lock_lost(&self) -> Option<String> {
        self.inner.lock().unwrap().lost.clone()
    }

    fn token(&self) -> i64 {
        self.token
    }
}

/// Scripted answers for smoke checks, LB verification and logs.
#[derive(Default)]
pub struct FakeProbes {
    pub smoke_fails_on: BTreeSet<String>,
    pub lbs_do_not_serve: bool,
}

impl Probes for FakeProbes {
    async fn smoke(
        &self,
        hosts: &[HostRecord],
        checks: &[SmokeCheck],
        _: Color,
        _: &str,
    ) -> Vec<SmokeResult> {
        let mut out = Vec::new();
        for host in hosts {
            for check in checks {
                let outcome = if self.smoke_fails_on.contains(&host.host) {
                    Err(format!("smoke {}: HTTP 500, expected 200", check.path))
                } else {
                    Ok(())
                };
                out.push(SmokeResult {
                    host: host.host.clone(),
                    path: check.path.clone(),
                    outcome,
                });
            }
        }
        out
    }

    async fn verify_lbs(
        &self,
        lbs: &BTreeMap<String, LbRecord>,
        color: Color,
        _: i64,
    ) -> Result<(), String> {
        if self.lbs_do_not_serve {
            let names: Vec<&str> = lbs.keys().map(String::as_str).collect();
            return Err(format!(
                "{} serve the other color, expected {color}",
                names.join(", ")
            ));
        }
        Ok(())
    }

    async fn logs(&self, host: &HostRecord, color: Color, _: u32) -> Result<Vec<String>, String> {
        Ok(vec![format!("last line of {} {color}", host.host)])
    }
}

/// A migrator with a scripted verdict.
pub struct FakeMigrator(pub Result<(), Failures>);

impl Migrator for FakeMigrator {
    async fn expand(
        &self,
        _: &AppStatus,
        _: &str,
    ) -> Result<Result<(), Failures>, CoordinatorError> {
        Ok(self.0.clone())
    }
}

/// A spec with one smoke check, as an app repository would have.
pub fn spec() -> AppSpec {
    toml::from_str(
        "app = \"shop\"\n[run]\ncommand = [\"./app\"]\n[health]\nstartup_timeout = \"10s\"\n\
         [[smoke]]\npath = \"/api/v1/status\"\n",
    )
    .expect("test spec parses")
}

pub fn release(version: &str, desired: Desired) -> ReleaseRecord {
    ReleaseRecord {
        version: version.into(),
        artifact: proto::records::Artifact {
            url: "file:///a.tar.gz".into(),
            sha256: "0".repeat(64),
        },
        run: proto::records::RunSpec {
            command: vec!["./app".into()],
            env: BTreeMap::new(),
            stop_timeout: std::time::Duration::from_secs(5),
        },
        health: Default::default(),
        desired,
        deploy_id: "earlier".into(),
        token: 1,
        signature: None,
    }
}

fn set(
    state: &mut AppStatus,
    host: &str,
    color: Color,
    s: HealthState,
    version: &str,
    error: Option<String>,
) {
    let record = HealthRecord {
        version: version.into(),
        state: s,
        health: serde_json::Value::Null,
        since: "t".into(),
        restarts: 0,
        error,
        unsigned: None,
    };
    state
        .health
        .entry(host.to_string())
        .or_default()
        .insert(color, record);
}

/// An LB's request counts with nothing counted, and `open` requests per color (None: an LB in
/// reload mode, which cannot count them).
pub fn stats_with_open(open: Option<BTreeMap<Color, u64>>) -> proto::records::LbStatsRecord {
    proto::records::LbStatsRecord {
        instance: "i".into(),
        started_at: "t".into(),
        at: "t".into(),
        colors: BTreeMap::new(),
        recent: BTreeMap::new(),
        recent_seconds: 0,
        unattributed: 0,
        open,
    }
}

pub fn host_record(name: &str, i: usize) -> HostRecord {
    HostRecord {
        host: name.into(),
        address: format!("127.0.0.{}", 11 + i),
        ports: Ports {
            blue: 8080,
            green: 8081,
        },
        grpc: format!("127.0.0.{}:7070", 11 + i),
        agent_version: "test".into(),
        started_at: "t".into(),
        instance: None,
    }
}

fn lb_record(revision: i64, color: Option<Color>) -> LbRecord {
    LbRecord {
        host: None,
        applied_revision: revision,
        color,
        upstream_counts: Default::default(),
        upstreams: Vec::new(),
        config_sha256: String::new(),
        reloaded_at: String::new(),
        error: None,
        url: Some("http://127.0.0.1:8000".into()),
    }
}
