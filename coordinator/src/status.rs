//! `coordinator status`: one consistent read of the app's prefix, shown as a table or JSON.
use proto::records::{
    decode, ActiveRecord, CanaryRequest, DeployRecord, HealthRecord, HostLeavingRecord, HostRecord,
    LbRecord, LbStatsRecord, LockRecord, ReleaseRecord, TrafficRecord, Validate,
};
use proto::watch::{prefix_end, read_range, Change};
use proto::{AppKey, Color, Keys};
use serde::Serialize;
use std::collections::BTreeMap;

/// Everything `status` shows; invalid values are listed as problems naming their key.
#[derive(Debug, Default, Clone, Serialize)]
pub struct AppStatus {
    pub revision: i64,
    pub active: Option<ActiveRecord>,
    /// A canary's split (`active/traffic`), when one is set.
    pub traffic: Option<TrafficRecord>,
    /// mod revision of `active` (0 when missing): what a switch must compare against.
    pub active_mod_revision: i64,
    pub deploy: Option<DeployRecord>,
    pub releases: BTreeMap<Color, ReleaseRecord>,
    pub hosts: BTreeMap<String, HostRecord>,
    /// Every registered host (durable, its last host record), alive or not.
    pub host_members: BTreeMap<String, HostRecord>,
    /// Hosts this app is being removed from (`host-leaving/<host>`, by `host remove` while their
    /// agent runs). They are left out of `hosts`, `host_members` and `health`, so that every
    /// decision (a deploy's plan, silent hosts, a switch's checks) leaves them out as well.
    pub leaving: BTreeMap<String, HostLeavingRecord>,
    /// A leaving host's records, kept aside (and kept current) so that the mark's deletion (an
    /// operator changing their mind) brings the host back as a fresh read would.
    #[serde(skip)]
    shelved: BTreeMap<String, AppStatus>,
    pub health: BTreeMap<String, BTreeMap<Color, HealthRecord>>,
    /// Every registered LB (durable) with its last ack, alive or not.
    pub lbs: BTreeMap<String, LbRecord>,
    /// The LBs whose sidecar is running (holds `lb-alive/<name>` under its lease).
    pub lbs_alive: std::collections::BTreeSet<String>,
    pub lock: Option<LockRecord>,
    /// Each LB's request counts per color (running totals; a canary compares differences).
    pub lb_stats: BTreeMap<String, LbStatsRecord>,
    /// The last operator request to a canary (`coordinator canary pause|resume|promote|abort`).
    pub canary_request: Option<CanaryRequest>,
    /// Why `active` exists but cannot be used (garbage, a bad color or version): no command may
    /// guess the live color then.
    pub active_invalid: Option<String>,
    pub problems: Vec<String>,
    /// The problems by the key they are about, so that a key's next change replaces its problem.
    #[serde(skip)]
    pub problem_keys: BTreeMap<String, String>,
    /// The hosts whose records changed since a waiter started recording (`Some`), so that it
    /// re-judges only those; `None` (a fresh read) means anything may have changed.
    #[serde(skip)]
    pub touched: Option<std::collections::BTreeSet<String>>,
}

impl AppStatus {
    /// Whether the agent of `host`, marked leaving, still holds its `hosts/<host>` key.
    pub fn leaving_alive(&self, host: &str) -> bool {
        self.shelved
            .get(host)
            .is_some_and(|shelf| shelf.hosts.contains_key(host))
    }

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

/// Every change to what [`read`] reads (and to history) from `revision` on: the app's prefix up to
/// [`proto::Keys::coordinator_end`], so never the LBs' upstream lists.
pub fn watch_from(
    client: &etcd_client::Client,
    keys: &proto::Keys,
    revision: i64,
) -> proto::watch::PrefixWatch {
    proto::watch::PrefixWatch::range_from_revision(
        client,
        keys.app_prefix(),
        &keys.coordinator_end(),
        revision,
    )
}

/// What a read of the app covers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum Scope {
    /// Everything a command decides on (see [`read`]).
    #[default]
    Whole,
    /// What a traffic move (`switch`, `rollback`) decides on: [`Scope::Whole`] without the hosts'
    /// durable membership records and the LBs' request counts. A move checks the live hosts'
    /// health, not which silent hosts are still members, and never a canary's numbers; the
    /// membership records (a copy of each host's record) were a third of the bytes a rollback
    /// read at thousands of hosts.
    Move,
}

impl Scope {
    /// The subtrees of the app this scope leaves out, in key order.
    fn skipped(self, keys: &Keys) -> Vec<String> {
        let mut skipped = vec![keys.history_prefix()];
        if self == Scope::Move {
            skipped.extend([keys.host_members_prefix(), keys.lb_stats_prefix()]);
        }
        skipped.sort();
        skipped
    }
}

/// One consistent read of everything a command decides on: the app's prefix without its history
/// (which only grows, and is read page by page by `history` itself) and without the LBs'
/// upstream lists (`Keys::lb_upstreams`), at a single revision.
pub async fn read(
    client: &etcd_client::Client,
    keys: &Keys,
) -> Result<AppStatus, proto::ProtoError> {
    read_scope(client, keys, Scope::Whole).await
}

/// [`read`] of what `scope` covers: the ranges between the subtrees it leaves out, all at the
/// revision of the first.
pub async fn read_scope(
    client: &etcd_client::Client,
    keys: &Keys,
    scope: Scope,
) -> Result<AppStatus, proto::ProtoError> {
    let mut from = keys.app_prefix().as_bytes().to_vec();
    let mut revision = 0;
    let mut kvs = Vec::new();
    let end = keys.coordinator_end();
    for skipped in scope.skipped(keys) {
        let (at, part) = read_range(client, &from, skipped.as_bytes(), revision).await?;
        revision = at;
        kvs.extend(part);
        from = prefix_end(&skipped);
    }
    let (_, last) = read_range(client, &from, end.as_bytes(), revision).await?;
    kvs.extend(last);
    let mut status = AppStatus {
        revision,
        ..Default::default()
    };
    for change in &kvs {
        status.apply(keys, change);
    }
    status.revision = revision;
    Ok(status)
}

impl AppStatus {
    /// Applies one key's change (from a read or a watch): the status then is what a fresh read
    /// at `change.mod_revision` would show. A value that does not parse is kept as a problem
    /// naming its key, replaced by the key's next change.
    pub fn apply(&mut self, keys: &Keys, change: &Change) {
        let key = change.key.as_str();
        self.revision = self.revision.max(change.mod_revision);
        if let (
            Some(touched),
            Some(AppKey::Health { host, .. } | AppKey::Host(host) | AppKey::HostLeaving(host)),
        ) = (self.touched.as_mut(), keys.parse(key))
        {
            touched.insert(host);
        }
        self.problem_keys.remove(key);
        let parsed = match keys.parse(key) {
            // A leaving host's records are not this app's any more (see `leaving`): they go to
            // its shelf.
            Some(AppKey::Host(h) | AppKey::HostMember(h) | AppKey::Health { host: h, .. })
                if self.leaving.contains_key(&h) =>
            {
                self.shelved.entry(h).or_default().apply(keys, change);
                None
            }
            parsed => parsed,
        };
        let result = match (parsed, change.value.as_deref()) {
            (Some(AppKey::HostLeaving(h)), None) => {
                self.leaving.remove(&h);
                if let Some(shelf) = self.shelved.remove(&h) {
                    self.hosts.extend(shelf.hosts);
                    self.host_members.extend(shelf.host_members);
                    self.health.extend(shelf.health);
                }
                Ok(())
            }
            (Some(AppKey::HostLeaving(h)), Some(value)) => decode::<HostLeavingRecord>(key, value)
                .map(|record| {
                    let shelf = self.shelved.entry(h.clone()).or_default();
                    shelf.hosts.extend(self.hosts.remove_entry(&h));
                    shelf
                        .host_members
                        .extend(self.host_members.remove_entry(&h));
                    shelf.health.extend(self.health.remove_entry(&h));
                    self.leaving.insert(h, record);
                }),
            (Some(AppKey::Active), None) => {
                (self.active, self.active_invalid, self.active_mod_revision) = (None, None, 0);
                Ok(())
            }
            (Some(AppKey::Active), Some(value)) => {
                self.active_mod_revision = change.mod_revision;
                match decode(key, value) {
                    Ok(a) => {
                        (self.active, self.active_invalid) = (Some(a), None);
                        Ok(())
                    }
                    Err(e) => {
                        (self.active, self.active_invalid) = (None, Some(e.to_string()));
                        Err(e)
                    }
                }
            }
            (Some(AppKey::Deploy), value) => set(&mut self.deploy, key, value),
            (Some(AppKey::Traffic), value) => set(&mut self.traffic, key, value),
            (Some(AppKey::Lock), value) => set(&mut self.lock, key, value),
            (Some(AppKey::Release(c)), value) => set_in(&mut self.releases, c, key, value),
            (Some(AppKey::Host(h)), value) => set_in(&mut self.hosts, h, key, value),
            (Some(AppKey::HostMember(h)), value) => set_in(&mut self.host_members, h, key, value),
            (Some(AppKey::Health { host, color }), value) => {
                let colors = self.health.entry(host.clone()).or_default();
                let result = set_in(colors, color, key, value);
                if colors.is_empty() {
                    self.health.remove(&host);
                }
                result
            }
            (Some(AppKey::Lb(name)), value) => set_in(&mut self.lbs, name, key, value),
            (Some(AppKey::LbAlive(name)), None) => {
                self.lbs_alive.remove(&name);
                Ok(())
            }
            (Some(AppKey::LbAlive(name)), Some(value)) => {
                decode::<proto::records::LbAliveRecord>(key, value).map(|_| {
                    self.lbs_alive.insert(name);
                })
            }
            (Some(AppKey::LbStats(name)), value) => set_in(&mut self.lb_stats, name, key, value),
            (Some(AppKey::CanaryRequest), value) => set(&mut self.canary_request, key, value),
            (Some(AppKey::History(_)), _) => Ok(()),
            (None, value) => {
                // A host or LB key whose name breaks the name rule is reported, never used.
                if let (Some(problem), Some(_)) = (keys.bad_name(key), value) {
                    self.problem_keys.insert(key.to_string(), problem);
                }
                Ok(())
            }
        };
        if let Err(e) = result {
            self.problem_keys.insert(key.to_string(), e.to_string());
        }
        self.problems = self.problem_keys.values().cloned().collect();
    }
}

/// Sets (or with `None`, clears) a single record from its key's value.
fn set<T: serde::de::DeserializeOwned + Validate>(
    slot: &mut Option<T>,
    key: &str,
    value: Option<&[u8]>,
) -> Result<(), proto::ProtoError> {
    *slot = value.map(|v| decode(key, v)).transpose()?;
    Ok(())
}

/// Inserts (or with `None`, removes) one entry of a map of records. An unparsable value removes
/// the entry: what the key held before is no longer what etcd says.
fn set_in<K: Ord, T: serde::de::DeserializeOwned + Validate>(
    map: &mut BTreeMap<K, T>,
    name: K,
    key: &str,
    value: Option<&[u8]>,
) -> Result<(), proto::ProtoError> {
    map.remove(&name);
    if let Some(value) = value {
        map.insert(name, decode(key, value)?);
    }
    Ok(())
}

impl AppStatus {
    /// The LBs with requests still open to `color` (websockets, streams, slow requests), as each
    /// LB in Lua mode last published them; LBs that reload cannot count them and are left out.
    pub fn open_connections(&self, color: Color) -> BTreeMap<String, u64> {
        self.lb_stats
            .iter()
            .filter_map(|(lb, stats)| {
                let open = *stats.open.as_ref()?.get(&color)?;
                (open > 0).then(|| (lb.clone(), open))
            })
            .collect()
    }
}

/// The text form: active color, releases, then one line per host and color.
pub fn render_text(app: &str, s: &AppStatus) -> String {
    // Free text from etcd (errors, holders, problems) is escaped: a record cannot forge a line.
    use proto::text::escaped;
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
    if let Some(t) = s.traffic.as_ref().filter(|t| t.weight > 0) {
        out.push_str(&format!(
            "traffic: {}.{:02} % to canary {} (step {}, by {:?}), the rest to {}\n",
            t.weight / 100,
            t.weight % 100,
            t.canary,
            t.step,
            t.sticky,
            t.stable
        ));
    }
    if let Some(active) = &s.active {
        let draining = s.open_connections(active.color.other());
        if !draining.is_empty() {
            let each: Vec<String> = draining.iter().map(|(lb, n)| format!("{lb} {n}")).collect();
            out.push_str(&format!(
                "draining: {} keeps {} open request(s) from before the switch ({}); a deploy waits for them before replacing it\n",
                active.color.other(),
                draining.values().sum::<u64>(),
                each.join(", ")
            ));
        }
    }
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
                    escaped(&match (&h.error, &h.unsigned) {
                        (Some(e), _) => e.clone(),
                        // Runs, but this host's agent would not start it now.
                        (None, Some(u)) => format!(
                            "unsigned (started before this agent required signatures; a signed deploy replaces it): {u}"
                        ),
                        (None, None) => String::new(),
                    })
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
            .map(|e| format!(": {}", escaped(e)))
            .unwrap_or_default();
        out.push_str(&format!(
            "last deploy: {} {} -> {} ({}){error}\n",
            escaped(&d.deploy_id),
            d.version,
            d.to,
            d.phase
        ));
    }
    match &s.lock {
        Some(l) => out.push_str(&format!(
            "lock: held by {} ({} {}{}, since {})\n",
            escaped(&l.holder),
            l.operation,
            escaped(&l.deploy_id),
            l.version
                .as_ref()
                .map(|v| format!(", version {}", escaped(v)))
                .unwrap_or_default(),
            escaped(&l.acquired_at)
        )),
        None => out.push_str("lock: free\n"),
    }
    for p in &s.problems {
        out.push_str(&format!("problem: {}\n", escaped(p)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{host_record, release};
    use proto::records::{encode, Desired};

    fn put(key: String, value: &str, revision: i64) -> Change {
        Change {
            key,
            value: Some(value.as_bytes().to_vec()),
            mod_revision: revision,
        }
    }

    fn delete(key: String, revision: i64) -> Change {
        Change {
            key,
            value: None,
            mod_revision: revision,
        }
    }

    /// After a switch to blue, green's websockets are still open on one LB: status says green
    /// is draining and where; an LB that cannot count (reload mode) is left out.
    #[test]
    fn status_shows_a_color_draining_and_its_open_requests_per_lb() {
        let stats = |open: Option<u64>| {
            crate::testkit::stats_with_open(
                open.map(|n| BTreeMap::from([(Color::Green, n), (Color::Blue, 40)])),
            )
        };
        let mut s = AppStatus {
            active: Some(ActiveRecord {
                color: Color::Blue,
                version: "v2".into(),
                deploy_id: "op".into(),
                token: 1,
                switched_at: "t".into(),
            }),
            ..AppStatus::default()
        };
        s.lb_stats.insert("lb-1".into(), stats(Some(3)));
        s.lb_stats.insert("lb-2".into(), stats(Some(0)));
        s.lb_stats.insert("lb-3".into(), stats(None));
        assert_eq!(
            s.open_connections(Color::Green),
            BTreeMap::from([("lb-1".to_string(), 3)])
        );
        let text = render_text("shop", &s);
        assert!(
            text.contains(
                "draining: green keeps 3 open request(s) from before the switch (lb-1 3)"
            ),
            "{text}"
        );
        s.lb_stats.insert("lb-1".into(), stats(Some(0)));
        assert!(!render_text("shop", &s).contains("draining"));
    }

    #[test]
    fn a_move_reads_every_key_it_decides_on_and_skips_membership_and_request_counts() {
        let keys = Keys::new("/bluegreen", "shop").unwrap();
        let skipped_by = |scope: Scope, key: &str| {
            scope
                .skipped(&keys)
                .iter()
                .any(|prefix| key.starts_with(prefix.as_str()))
        };
        for scope in [Scope::Whole, Scope::Move] {
            let skipped = scope.skipped(&keys);
            let mut sorted = skipped.clone();
            sorted.sort();
            assert_eq!(skipped, sorted, "{scope:?}: ranges are read in key order");
            for prefix in &skipped {
                assert!(prefix.as_str() > keys.app_prefix() && *prefix < keys.coordinator_end());
            }
            for needed in [
                keys.active(),
                keys.traffic(),
                keys.deploy(),
                keys.release(Color::Green),
                keys.health("h1", Color::Green),
                keys.host("h1"),
                keys.host_leaving("h1"),
                keys.lb("lb-0"),
                keys.lb_alive("lb-0"),
                keys.lock(),
            ] {
                assert!(!skipped_by(scope, &needed), "{scope:?} skips {needed}");
            }
            assert!(skipped_by(scope, &keys.history(7)));
        }
        assert!(skipped_by(Scope::Move, &keys.host_member("h1")));
        assert!(skipped_by(Scope::Move, &keys.lb_stats("lb-0")));
        assert!(!skipped_by(Scope::Whole, &keys.host_member("h1")));
    }

    /// Up to 12 characters, a third of them control characters.
    fn text(rng: &mut proto::rng::Rng) -> String {
        const POOL: [&str; 12] = [
            "a", "Z", "7", " ", ":", "é", "\n", "\r", "\u{1b}", "\t", "\0", "\u{7f}",
        ];
        rng.text(&POOL, 12)
    }

    /// Arbitrary free text in every record `status` shows (health errors, the deploy's error and
    /// id, the lock's holder, undecodable keys): the text output never carries a control
    /// character but the line ends it writes itself, and has as many lines as with plain text.
    #[test]
    fn records_full_of_control_characters_never_forge_a_line() {
        let keys = Keys::new("/bluegreen", "shop").unwrap();
        let mut rng = proto::rng::Rng::new(0x9e37_79b9_7f4a_7c15);
        let render = |texts: &mut dyn FnMut() -> String| {
            let mut status = AppStatus::default();
            let health = serde_json::json!({
                "version": "v1", "state": "failed", "since": texts(), "error": texts()
            });
            let deploy = serde_json::json!({
                "deploy_id": texts(), "operation": "deploy", "version": "v2", "from": "blue",
                "to": "green", "phase": "failed", "error": texts(), "started_at": texts(),
                "updated_at": "t", "token": 1
            });
            let lock = serde_json::json!({
                "holder": texts(), "operation": "deploy", "deploy_id": texts(),
                "acquired_at": texts(), "lease": 1
            });
            for (n, (key, value)) in [
                (keys.host("h1"), encode(&host_record("h1", 0))),
                (keys.health("h1", Color::Blue), health.to_string()),
                (keys.deploy(), deploy.to_string()),
                (keys.lock(), lock.to_string()),
                (keys.release(Color::Green), texts()),
            ]
            .into_iter()
            .enumerate()
            {
                status.apply(&keys, &put(key, &value, n as i64 + 1));
            }
            render_text("shop", &status)
        };
        let plain = render(&mut || "plain".to_string());
        for _ in 0..300 {
            let shown = render(&mut || text(&mut rng));
            assert!(
                !shown.chars().any(|c| c.is_control() && c != '\n'),
                "{shown:?}"
            );
            assert_eq!(shown.lines().count(), plain.lines().count(), "{shown}");
        }
    }

    /// A host marked leaving is out of every decision, whichever order its keys arrive in (a
    /// fresh read sees `health/` before the mark, `host-members/` and `hosts/` after it), and its
    /// later changes do not bring it back.
    #[test]
    fn a_leaving_host_is_left_out_in_any_order() {
        let keys = Keys::new("/bluegreen", "shop").unwrap();
        let host = encode(&host_record("h1", 0));
        let other = encode(&host_record("h2", 0));
        let mark = r#"{"operation":"host-remove-1","at":"t"}"#;
        let health = r#"{"version":"v1","state":"healthy","since":"t"}"#;
        let order = vec![
            put(keys.health("h1", Color::Blue), health, 1),
            put(keys.host_leaving("h1"), mark, 2),
            put(keys.host_member("h1"), &host, 3),
            put(keys.host_member("h2"), &other, 3),
            put(keys.host("h1"), &host, 4),
            put(keys.host("h2"), &other, 4),
        ];
        let reversed: Vec<Change> = order.iter().rev().cloned().collect();
        for order in [order, reversed] {
            let mut status = AppStatus::default();
            for change in &order {
                status.apply(&keys, change);
            }
            assert!(status.leaving.contains_key("h1"));
            assert_eq!(status.hosts.keys().collect::<Vec<_>>(), vec!["h2"]);
            assert_eq!(status.host_members.keys().collect::<Vec<_>>(), vec!["h2"]);
            assert!(status.health.is_empty() && status.silent_hosts().is_empty());
            assert!(status.problems.is_empty(), "{:?}", status.problems);
            // Its agent rewrites its health: still out.
            status.apply(&keys, &put(keys.health("h1", Color::Green), health, 9));
            assert!(status.health.is_empty());
            // The mark deleted (an operator changed their mind): back, as a fresh read shows it,
            // with the health written meanwhile.
            status.apply(&keys, &delete(keys.host_leaving("h1"), 10));
            assert!(status.leaving.is_empty());
            assert!(status.hosts.contains_key("h1") && status.host_members.contains_key("h1"));
            assert_eq!(status.health["h1"].len(), 2, "{:?}", status.health);
        }
    }

    /// Waits apply watch events to the status in hand instead of re-reading: every event kind
    /// must leave it as a fresh read would.
    #[test]
    fn watch_events_applied_in_order_give_what_a_fresh_read_would() {
        let keys = Keys::new("/bluegreen", "shop").unwrap();
        let mut status = AppStatus::default();
        let host = encode(&host_record("h1", 0));
        let running = encode(&release("v2", Desired::Running));
        for change in [
            put(keys.host("h1"), &host, 5),
            put(keys.host_member("h1"), &host, 5),
            put(keys.release(Color::Green), &running, 6),
            put(keys.active(), "not json", 7),
            put(
                keys.lb_alive("lb-1"),
                r#"{"instance":"i","started_at":"t"}"#,
                8,
            ),
        ] {
            status.apply(&keys, &change);
        }
        assert_eq!(status.revision, 8);
        assert!(status.hosts.contains_key("h1") && status.host_members.contains_key("h1"));
        assert_eq!(status.releases[&Color::Green].version, "v2");
        assert!(status.active.is_none() && status.active_invalid.is_some());
        assert_eq!(status.active_mod_revision, 7);
        assert_eq!(status.problems.len(), 1, "{:?}", status.problems);

        // The lease expires; `active` is repaired; an LB's liveness goes.
        let active = proto::records::ActiveRecord {
            color: Color::Green,
            version: "v2".into(),
            deploy_id: "d".into(),
            token: 1,
            switched_at: "t".into(),
        };
        for change in [
            delete(keys.host("h1"), 9),
            put(keys.active(), &encode(&active), 10),
            delete(keys.lb_alive("lb-1"), 11),
            put(keys.release(Color::Blue), "{", 12),
        ] {
            status.apply(&keys, &change);
        }
        assert!(!status.hosts.contains_key("h1"), "an expired host is gone");
        assert_eq!(status.silent_hosts(), vec!["h1".to_string()]);
        assert_eq!(status.active.as_ref().map(|a| a.color), Some(Color::Green));
        assert!(status.active_invalid.is_none());
        assert_eq!(status.active_mod_revision, 10);
        assert!(status.lbs_alive.is_empty());
        assert!(!status.releases.contains_key(&Color::Blue));
        assert_eq!(
            status.problems.len(),
            1,
            "only the broken release: {:?}",
            status.problems
        );
        assert!(
            status.problems[0].contains("releases/blue"),
            "{:?}",
            status.problems
        );
    }
}
