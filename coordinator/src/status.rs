//! `coordinator status`: one consistent read of the app's prefix, shown as a table or JSON.
use proto::records::{
    decode, ActiveRecord, DeployRecord, HealthRecord, HostRecord, LbRecord, LockRecord,
    ReleaseRecord,
};
use proto::watch::read_prefix;
use proto::{AppKey, Color, Keys};
use serde::Serialize;
use std::collections::BTreeMap;

/// Everything `status` shows; invalid values are listed as problems naming their key.
#[derive(Debug, Default, Clone, Serialize)]
pub struct AppStatus {
    pub revision: i64,
    pub active: Option<ActiveRecord>,
    /// mod revision of `active` (0 when missing): what a switch must compare against.
    pub active_mod_revision: i64,
    pub deploy: Option<DeployRecord>,
    pub releases: BTreeMap<Color, ReleaseRecord>,
    pub hosts: BTreeMap<String, HostRecord>,
    /// Every registered host (durable, its last host record), alive or not.
    pub host_members: BTreeMap<String, HostRecord>,
    pub health: BTreeMap<String, BTreeMap<Color, HealthRecord>>,
    /// Every registered LB (durable) with its last ack, alive or not.
    pub lbs: BTreeMap<String, LbRecord>,
    /// The LBs whose sidecar is running (holds `lb-alive/<name>` under its lease).
    pub lbs_alive: std::collections::BTreeSet<String>,
    pub lock: Option<LockRecord>,
    /// Why `active` exists but cannot be used (garbage, a bad color or version): no command may
    /// guess the live color then.
    pub active_invalid: Option<String>,
    pub problems: Vec<String>,
}

impl AppStatus {
    /// The registered hosts whose agent is silent (no live `hosts/<host>`): cut off, stopped or
    /// dead. Their apps may still run whatever they ran; no deploy may leave them behind.
    pub fn silent_hosts(&self) -> Vec<String> {
        self.host_members
            .keys()
            .filter(|host| !self.hosts.contains_key(*host))
            .cloned()
            .collect()
    }

    /// The registered LBs that last acked serving `color`: that color must not be restaged or
    /// stopped while any of them does, alive or not (a silent sidecar's nginx may still serve it).
    pub fn lbs_serving(&self, color: Color) -> Vec<String> {
        self.lbs
            .iter()
            .filter(|(_, ack)| ack.color == Some(color))
            .map(|(name, _)| self.lb_label(name))
            .collect()
    }

    /// `name`, marked when its sidecar is silent.
    pub fn lb_label(&self, name: &str) -> String {
        if self.lbs_alive.contains(name) {
            name.to_string()
        } else {
            format!("{name} (sidecar silent)")
        }
    }

    /// What `host` reports for `color`, if anything.
    pub fn health_of(&self, host: &str, color: Color) -> Option<&HealthRecord> {
        self.health.get(host).and_then(|m| m.get(&color))
    }
}

pub async fn read(
    client: &etcd_client::Client,
    keys: &Keys,
) -> Result<AppStatus, proto::ProtoError> {
    let snapshot = read_prefix(client, keys.app_prefix()).await?;
    let mut status = AppStatus {
        revision: snapshot.revision,
        ..Default::default()
    };
    for (key, value) in &snapshot.entries {
        let result = match keys.parse(key) {
            Some(AppKey::Active) => decode(key, value)
                .map(|a| status.active = Some(a))
                .inspect_err(|e| status.active_invalid = Some(e.to_string())),
            Some(AppKey::Deploy) => decode(key, value).map(|d| status.deploy = Some(d)),
            Some(AppKey::Release(c)) => decode(key, value).map(|r| {
                status.releases.insert(c, r);
            }),
            Some(AppKey::Host(h)) => decode(key, value).map(|r| {
                status.hosts.insert(h, r);
            }),
            Some(AppKey::HostMember(h)) => decode(key, value).map(|r| {
                status.host_members.insert(h, r);
            }),
            Some(AppKey::Health { host, color }) => decode(key, value).map(|r| {
                status.health.entry(host).or_default().insert(color, r);
            }),
            Some(AppKey::Lb(name)) => decode(key, value).map(|r| {
                status.lbs.insert(name, r);
            }),
            Some(AppKey::LbAlive(name)) => {
                decode::<proto::records::LbAliveRecord>(key, value).map(|_| {
                    status.lbs_alive.insert(name);
                })
            }
            Some(AppKey::Lock) => decode(key, value).map(|r| status.lock = Some(r)),
            _ => {
                // A host or LB key whose name breaks the name rule is reported, never used.
                if let Some(problem) = keys.bad_name(key) {
                    status.problems.push(problem);
                }
                Ok(())
            }
        };
        if let Err(e) = result {
            status.problems.push(e.to_string());
        }
    }
    status.active_mod_revision = active_mod_revision(client, keys).await?;
    Ok(status)
}

async fn active_mod_revision(
    client: &etcd_client::Client,
    keys: &Keys,
) -> Result<i64, proto::ProtoError> {
    let key = keys.active();
    let resp = client
        .clone()
        .get(key.as_str(), None)
        .await
        .map_err(|e| proto::ProtoError::etcd(format!("read {key}"), e))?;
    Ok(resp.kvs().first().map_or(0, |kv| kv.mod_revision()))
}

/// The text form: active color, releases, then one line per host and color.
pub fn render_text(app: &str, s: &AppStatus) -> String {
    let mut out = String::new();
    let active = s
        .active
        .as_ref()
        .map_or("none (no traffic decision yet)".to_string(), |a| {
            format!("{} ({})", a.color, a.version)
        });
    out.push_str(&format!(
        "app {app} at revision {}\nactive: {active}\n",
        s.revision
    ));
    for color in Color::ALL {
        match s.releases.get(&color) {
            Some(r) => {
                let desired = format!("{:?}", r.desired).to_lowercase();
                let check = if r.health.mode.checks_version() {
                    String::new()
                } else {
                    format!(
                        "; health mode {}: the app's version is not checked, only what the agent started",
                        r.health.mode.as_str()
                    )
                };
                out.push_str(&format!(
                    "release {color}: {} ({desired}{check})\n",
                    r.version
                ))
            }
            None => out.push_str(&format!("release {color}: none\n")),
        }
    }
    out.push_str(&format!(
        "{:<16} {:<22} {:<6} {:<10} {:<10} {:<8} error\n",
        "HOST", "ADDRESS", "COLOR", "VERSION", "STATE", "RESTARTS"
    ));
    let mut names: Vec<&String> = s.hosts.keys().chain(s.health.keys()).collect();
    names.sort();
    names.dedup();
    for host in names {
        let address = s
            .hosts
            .get(host)
            .map_or("(not registered)".to_string(), |h| h.address.clone());
        for color in Color::ALL {
            let port = s.hosts.get(host).map(|h| h.ports.of(color)).unwrap_or(0);
            match s.health.get(host).and_then(|m| m.get(&color)) {
                Some(h) => out.push_str(&format!(
                    "{host:<16} {:<22} {color:<6} {:<10} {:<10} {:<8} {}\n",
                    format!("{address}:{port}"),
                    h.version,
                    h.state.as_str(),
                    h.restarts,
                    h.error.as_deref().unwrap_or("")
                )),
                None => out.push_str(&format!(
                    "{host:<16} {:<22} {color:<6} {:<10} {:<10}\n",
                    format!("{address}:{port}"),
                    "-",
                    "unknown"
                )),
            }
        }
    }
    for host in s.silent_hosts() {
        out.push_str(&format!(
            "host {host}: registered, agent silent (see `coordinator host list`)\n"
        ));
    }
    for (name, lb) in &s.lbs {
        let color = lb.color.map_or("none".to_string(), |c| c.to_string());
        let alive = if s.lbs_alive.contains(name) {
            ""
        } else {
            " (sidecar silent: not alive)"
        };
        out.push_str(&format!(
            "lb {name}: serving {color} at revision {}{alive}\n",
            lb.applied_revision
        ));
    }
    if let Some(d) = &s.deploy {
        let error = d
            .error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "last deploy: {} {} -> {} ({}){error}\n",
            d.deploy_id, d.version, d.to, d.phase
        ));
    }
    match &s.lock {
        Some(l) => out.push_str(&format!(
            "lock: held by {} ({} {}{}, since {})\n",
            l.holder,
            l.operation,
            l.deploy_id,
            l.version
                .as_ref()
                .map(|v| format!(", version {v}"))
                .unwrap_or_default(),
            l.acquired_at
        )),
        None => out.push_str("lock: free\n"),
    }
    for p in &s.problems {
        out.push_str(&format!("problem: {p}\n"));
    }
    out
}
