//! What the sidecar knows of the app's prefix: the active record, the registered hosts and their
//! health. Pure: fed key changes, it says whether they matter and which hosts each color's upstream
//! gets, so the rules (never an empty upstream, garbage ignored) are unit-tested.
use proto::records::{
    decode, ActiveRecord, DeployRecord, HealthRecord, HealthState, HostRecord, TrafficRecord,
};
use proto::{AppKey, Color, Keys};
use std::collections::BTreeMap;

#[derive(Debug, Default, Clone)]
pub struct LbState {
    pub active: Option<ActiveRecord>,
    /// A canary's split (`active/traffic`), when one is set.
    pub traffic: Option<TrafficRecord>,
    pub hosts: BTreeMap<String, HostRecord>,
    /// Hosts this app is being removed from (`host-leaving/<host>`): never routed to, not even
    /// as a backup, whatever their agent still reports.
    pub leaving: std::collections::BTreeSet<String>,
    /// What each host reports per color, without the app's body (which changes every probe).
    pub health: BTreeMap<(String, Color), HealthRecord>,
    /// An operation is under way (the `deploy` record's phase is not final): a canary or a
    /// deploy's verification may be reading this LB's request counts.
    pub operation_running: bool,
    /// Where a host's address may point (never into this LB).
    pub upstreams: crate::upstreams::UpstreamPolicy,
}

/// How much a change matters to nginx.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Effect {
    None,
    /// Hosts or health changed: debounce, then reload if the rendered upstreams differ.
    Topology,
    /// `active`, the canary split or a leaving mark changed: apply at once, and ack.
    Switch,
}

impl LbState {
    /// Whether request counts are being read now: during an operation, or while a canary split
    /// is set.
    pub fn counts_wanted(&self) -> bool {
        self.operation_running || self.traffic.as_ref().is_some_and(|t| t.weight > 0)
    }

    /// Applies one key's new value (`None` = deleted). An invalid value is returned as an error
    /// naming the key, and leaves the state as it was.
    pub fn apply(
        &mut self,
        keys: &Keys,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<Effect, String> {
        match keys.parse(key) {
            Some(AppKey::Active) => match value {
                // Deleting `active` is not a traffic decision: keep serving what we serve.
                None => Ok(Effect::None),
                Some(bytes) => {
                    let record: ActiveRecord = decode(key, bytes).map_err(|e| e.to_string())?;
                    self.active = Some(record);
                    Ok(Effect::Switch)
                }
            },
            // Only whether an operation runs; a record this sidecar cannot read is not its problem
            // (the coordinator reports it), and never a reason to stop counting.
            Some(AppKey::Deploy) => {
                self.operation_running = value
                    .and_then(|bytes| decode::<DeployRecord>(key, bytes).ok())
                    .is_some_and(|d| !d.phase.is_terminal());
                Ok(Effect::None)
            }
            // A traffic change is applied at once, like a switch (and acked the same way).
            Some(AppKey::Traffic) => {
                self.traffic = match value {
                    None => None,
                    Some(bytes) => Some(decode(key, bytes).map_err(|e| e.to_string())?),
                };
                Ok(Effect::Switch)
            }
            Some(AppKey::HostLeaving(host)) => {
                let changed = match value {
                    Some(_) => self.leaving.insert(host),
                    None => self.leaving.remove(&host),
                };
                // An operator's decision, acked like a switch so that `host remove` can tell when
                // no LB routes to the host any more.
                Ok(if changed {
                    Effect::Switch
                } else {
                    Effect::None
                })
            }
            Some(AppKey::Host(host)) => {
                match value {
                    None => self.hosts.remove(&host).map(|_| ()).unwrap_or(()),
                    Some(bytes) => {
                        let record: HostRecord = decode(key, bytes).map_err(|e| e.to_string())?;
                        self.may_route_to(&record)
                            .map_err(|why| format!("{key}: {why}; not routed to"))?;
                        if self.hosts.get(&host) == Some(&record) {
                            return Ok(Effect::None);
                        }
                        self.hosts.insert(host, record);
                    }
                }
                Ok(Effect::Topology)
            }
            Some(AppKey::Health { host, color }) => {
                let record = match value {
                    None => None,
                    Some(bytes) => {
                        let mut r =
                            decode::<HealthRecord>(key, bytes).map_err(|e| e.to_string())?;
                        r.health = serde_json::Value::Null;
                        Some(r)
                    }
                };
                let routing = |r: &HealthRecord| (r.state, r.version.clone());
                let before = self.health.get(&(host.clone(), color)).map(routing);
                let after = record.as_ref().map(routing);
                match record {
                    Some(r) => self.health.insert((host, color), r),
                    None => self.health.remove(&(host, color)),
                };
                Ok(if before == after {
                    Effect::None
                } else {
                    Effect::Topology
                })
            }
            // A host or LB key whose name breaks the name rule is reported, never routed to.
            _ => match keys.bad_name(key) {
                Some(problem) if value.is_some() => Err(problem),
                _ => Ok(Effect::None),
            },
        }
    }

    /// Whether both colors' upstreams of `host` are allowed by [`Self::upstreams`]. A DNS name is
    /// judged by what it resolves to now.
    fn may_route_to(&self, host: &HostRecord) -> Result<(), String> {
        if !self.upstreams.enforced {
            return Ok(());
        }
        let ips: Vec<std::net::IpAddr> = match host.address.parse() {
            Ok(ip) => vec![ip],
            Err(_) => {
                use std::net::ToSocketAddrs;
                (host.address.as_str(), 0)
                    .to_socket_addrs()
                    .map_err(|e| format!("address {}: does not resolve ({e})", host.address))?
                    .map(|a| a.ip())
                    .collect()
            }
        };
        for color in Color::ALL {
            for ip in &ips {
                self.upstreams
                    .check(*ip, host.ports.of(color))
                    .map_err(|why| format!("address {} ({color}): {why}", host.address))?;
            }
        }
        Ok(())
    }

    /// Every registered host's `address:port` for `color`, serving or not: the backups nginx
    /// falls back to when every primary has failed.
    pub fn registered(&self, color: Color) -> Vec<String> {
        self.routable()
            .map(|(_, h)| h)
            .map(|h| format!("{}:{}", h.address, h.ports.of(color)))
            .collect()
    }

    /// The `address:port` list for `color`: the hosts that serve it (for the live color, at the
    /// live version: the same rule the coordinator switched on), or, when none does, every
    /// registered host (a fleet-wide health blip must not empty the upstream; nginx's own passive
    /// checks and `proxy_next_upstream` then do what they can).
    pub fn upstream(&self, color: Color, live_version: Option<&str>) -> Vec<String> {
        let address = |h: &HostRecord| format!("{}:{}", h.address, h.ports.of(color));
        let healthy: Vec<String> = self
            .routable()
            .filter(|(name, _)| {
                let record = self.health.get(&(name.to_string(), color));
                match live_version {
                    Some(version) => proto::records::serves(record, version),
                    // The idle color's version is not the sidecar's to know: healthy is enough.
                    None => record.is_some_and(|r| r.state == HealthState::Healthy),
                }
            })
            .map(|(_, h)| address(h))
            .collect();
        if healthy.is_empty() {
            self.routable().map(|(_, h)| address(h)).collect()
        } else {
            healthy
        }
    }

    /// The registered hosts that are not leaving.
    fn routable(&self) -> impl Iterator<Item = (&String, &HostRecord)> {
        self.hosts
            .iter()
            .filter(|(name, _)| !self.leaving.contains(*name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::records::{encode, Ports};

    fn keys() -> Keys {
        Keys::new("/bluegreen", "shop").unwrap()
    }

    /// Arbitrary keys and values under the app's prefix, control characters included: applying
    /// them never panics, and whatever is kept renders into upstream lines without a control
    /// character (a value cannot add a line to nginx's config or to a log).
    #[test]
    fn arbitrary_records_never_panic_and_never_reach_an_upstream_unescaped() {
        const POOL: [&str; 13] = [
            "a", "1", "{", "}", "\"", ":", ",", "\n", "\u{1b}", "\r", ";", "/", " ",
        ];
        let mut rng = proto::rng::Rng::new(0x2545_f491_4f6c_dd1d);
        let mut state = LbState::default();
        let k = keys();
        for _ in 0..2000 {
            let name = rng.text(&POOL, 5);
            let key = match rng.below(4) {
                0 => k.host(&name),
                1 => k.health(&name, Color::Blue),
                2 => k.active(),
                _ => format!("{}{name}", k.app_prefix()),
            };
            let value = match rng.below(3) {
                0 => rng.text(&POOL, 39),
                1 => serde_json::json!({
                    "host": name, "address": rng.text(&POOL, 9), "ports": {"blue": 8080, "green": 8081},
                    "grpc": "", "agent_version": "0", "started_at": "t"
                })
                .to_string(),
                _ => serde_json::json!({"version": rng.text(&POOL, 7), "state": "healthy", "since": rng.text(&POOL, 7)})
                    .to_string(),
            };
            let _ = state.apply(&k, &key, Some(value.as_bytes()));
        }
        for color in Color::ALL {
            for upstream in state.registered(color) {
                assert!(!upstream.chars().any(char::is_control), "{upstream:?}");
            }
        }
    }

    fn host(state: &mut LbState, name: &str, last: u8) {
        let record = HostRecord {
            host: name.into(),
            address: format!("127.0.0.{last}"),
            ports: Ports {
                blue: 8080,
                green: 8081,
            },
            grpc: String::new(),
            agent_version: "0".into(),
            started_at: "t".into(),
            instance: None,
        };
        assert_eq!(
            state.apply(
                &keys(),
                &keys().host(name),
                Some(encode(&record).as_bytes())
            ),
            Ok(Effect::Topology)
        );
    }

    fn health(state: &mut LbState, name: &str, color: Color, s: HealthState) -> Effect {
        let record = HealthRecord {
            version: "v1".into(),
            state: s,
            health: Default::default(),
            since: "t".into(),
            restarts: 0,
            error: None,
            unsigned: None,
        };
        state
            .apply(
                &keys(),
                &keys().health(name, color),
                Some(encode(&record).as_bytes()),
            )
            .unwrap()
    }

    #[test]
    fn upstream_is_healthy_hosts_else_all_registered() {
        let mut s = LbState::default();
        host(&mut s, "a", 11);
        host(&mut s, "b", 12);
        assert_eq!(
            s.upstream(Color::Blue, None),
            vec!["127.0.0.11:8080", "127.0.0.12:8080"]
        );
        assert_eq!(
            health(&mut s, "a", Color::Blue, HealthState::Healthy),
            Effect::Topology
        );
        assert_eq!(
            health(&mut s, "a", Color::Blue, HealthState::Healthy),
            Effect::None
        );
        assert_eq!(s.upstream(Color::Blue, None), vec!["127.0.0.11:8080"]);
        // The live color routes only to hosts serving the live version.
        assert_eq!(s.upstream(Color::Blue, Some("v1")), vec!["127.0.0.11:8080"]);
        assert_eq!(
            s.upstream(Color::Blue, Some("v2")).len(),
            2,
            "none serves v2: all"
        );
        health(&mut s, "b", Color::Blue, HealthState::Healthy);
        assert_eq!(s.upstream(Color::Blue, Some("v1")).len(), 2);
        health(&mut s, "a", Color::Blue, HealthState::Unhealthy);
        health(&mut s, "b", Color::Blue, HealthState::Unhealthy);
        assert_eq!(s.upstream(Color::Blue, None).len(), 2, "never empty");
        // A dead host's keys expire: it leaves the upstream.
        s.apply(&keys(), &keys().host("b"), None).unwrap();
        assert_eq!(s.upstream(Color::Green, None), vec!["127.0.0.11:8081"]);
    }

    #[test]
    fn a_leaving_host_is_never_routed_to_not_even_as_a_backup() {
        let mut s = LbState::default();
        host(&mut s, "a", 11);
        host(&mut s, "b", 12);
        health(&mut s, "a", Color::Blue, HealthState::Healthy);
        health(&mut s, "b", Color::Blue, HealthState::Healthy);
        let mark = keys().host_leaving("b");
        let effect = s.apply(&keys(), &mark, Some(br#"{"operation":"o","at":"t"}"#));
        assert_eq!(effect, Ok(Effect::Switch));
        assert_eq!(s.upstream(Color::Blue, Some("v1")), vec!["127.0.0.11:8080"]);
        assert_eq!(s.registered(Color::Blue), vec!["127.0.0.11:8080"]);
        // Even when no other host is healthy (the fallback to every registered host).
        health(&mut s, "a", Color::Blue, HealthState::Unhealthy);
        assert_eq!(s.upstream(Color::Blue, None), vec!["127.0.0.11:8080"]);
        // The mark's deletion (its agent retired the app, or an operator changed their mind).
        assert_eq!(s.apply(&keys(), &mark, None), Ok(Effect::Switch));
        assert_eq!(s.registered(Color::Blue).len(), 2);
    }

    #[test]
    fn garbage_active_is_an_error_and_changes_nothing() {
        let mut s = LbState::default();
        let good =
            r#"{"color":"green","version":"v2","deploy_id":"d","token":1,"switched_at":"t"}"#;
        assert_eq!(
            s.apply(&keys(), &keys().active(), Some(good.as_bytes())),
            Ok(Effect::Switch)
        );
        for bad in [
            &b"{"[..],
            br#"{"color":"purple","version":"v","deploy_id":"d","token":1,"switched_at":"t"}"#,
        ] {
            let err = s.apply(&keys(), &keys().active(), Some(bad)).unwrap_err();
            assert!(err.contains("/bluegreen/shop/active"), "{err}");
            assert_eq!(s.active.as_ref().unwrap().color, Color::Green);
        }
        assert_eq!(s.apply(&keys(), &keys().active(), None), Ok(Effect::None));
        assert!(s.active.is_some());
    }

    #[test]
    fn counts_are_wanted_while_an_operation_runs_or_a_canary_splits() {
        let mut s = LbState::default();
        assert!(!s.counts_wanted());
        let deploy = |phase: &str| {
            format!(
                r#"{{"deploy_id":"d","phase":"{phase}","from":"blue","to":"green","version":"v2","token":1,"started_at":"t","updated_at":"t"}}"#
            )
        };
        s.apply(
            &keys(),
            &keys().deploy(),
            Some(deploy("staging").as_bytes()),
        )
        .unwrap();
        assert!(s.counts_wanted());
        s.apply(&keys(), &keys().deploy(), Some(deploy("done").as_bytes()))
            .unwrap();
        assert!(!s.counts_wanted());
        assert_eq!(
            s.apply(&keys(), &keys().deploy(), Some(b"garbage")),
            Ok(Effect::None),
            "not the sidecar's to report"
        );
        let split = r#"{"stable":"blue","canary":"green","weight":100,"step":1,"deploy_id":"d","token":1,"set_at":"t"}"#;
        s.apply(&keys(), &keys().traffic(), Some(split.as_bytes()))
            .unwrap();
        assert!(s.counts_wanted());
    }

    #[test]
    fn a_host_key_with_a_bad_name_is_reported_not_routed() {
        let mut s = LbState::default();
        let key = format!("{}evil;x", keys().hosts_prefix());
        let err = s.apply(&keys(), &key, Some(b"{}")).unwrap_err();
        assert!(
            err.contains("evil;x") && err.contains("not a valid name"),
            "{err}"
        );
        assert!(s.hosts.is_empty());
        assert_eq!(
            s.apply(&keys(), &key, None),
            Ok(Effect::None),
            "its deletion is no news"
        );
    }
}
