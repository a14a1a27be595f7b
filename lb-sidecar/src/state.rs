//! What the sidecar knows of the app's prefix: the active record, the registered hosts and their
//! health. Pure: fed key changes, it says whether they matter and which hosts each color's upstream
//! gets, so the rules (never an empty upstream, garbage ignored) are unit-tested.
use proto::records::{decode, ActiveRecord, HealthRecord, HealthState, HostRecord};
use proto::{AppKey, Color, Keys};
use std::collections::BTreeMap;

#[derive(Debug, Default, Clone)]
pub struct LbState {
    pub active: Option<ActiveRecord>,
    pub hosts: BTreeMap<String, HostRecord>,
    pub health: BTreeMap<(String, Color), HealthState>,
}

/// How much a change matters to nginx.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Effect {
    None,
    /// Hosts or health changed: debounce, then reload if the rendered upstreams differ.
    Topology,
    /// `active` changed: apply at once.
    Switch,
}

impl LbState {
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
            Some(AppKey::Host(host)) => {
                match value {
                    None => self.hosts.remove(&host).map(|_| ()).unwrap_or(()),
                    Some(bytes) => {
                        let record: HostRecord = decode(key, bytes).map_err(|e| e.to_string())?;
                        if self.hosts.get(&host) == Some(&record) {
                            return Ok(Effect::None);
                        }
                        self.hosts.insert(host, record);
                    }
                }
                Ok(Effect::Topology)
            }
            Some(AppKey::Health { host, color }) => {
                let state = match value {
                    None => None,
                    Some(bytes) => Some(
                        decode::<HealthRecord>(key, bytes)
                            .map_err(|e| e.to_string())?
                            .state,
                    ),
                };
                let old = match state {
                    Some(s) => self.health.insert((host, color), s),
                    None => self.health.remove(&(host, color)),
                };
                Ok(if old == state {
                    Effect::None
                } else {
                    Effect::Topology
                })
            }
            _ => Ok(Effect::None),
        }
    }

    /// The `address:port` list for `color`: the hosts reporting it healthy, or, when none is, every
    /// registered host (a fleet-wide health blip must not empty the upstream; nginx's own passive
    /// checks and `proxy_next_upstream` then do what they can).
    pub fn upstream(&self, color: Color) -> Vec<String> {
        let address = |h: &HostRecord| format!("{}:{}", h.address, h.ports.of(color));
        let healthy: Vec<String> = self
            .hosts
            .iter()
            .filter(|(name, _)| {
                self.health.get(&(name.to_string(), color)) == Some(&HealthState::Healthy)
            })
            .map(|(_, h)| address(h))
            .collect();
        if healthy.is_empty() {
            self.hosts.values().map(address).collect()
        } else {
            healthy
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::records::{encode, Ports};

    fn keys() -> Keys {
        Keys::new("/bluegreen", "shop").unwrap()
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
            s.upstream(Color::Blue),
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
        assert_eq!(s.upstream(Color::Blue), vec!["127.0.0.11:8080"]);
        health(&mut s, "a", Color::Blue, HealthState::Unhealthy);
        assert_eq!(s.upstream(Color::Blue).len(), 2, "never empty");
        // A dead host's keys expire: it leaves the upstream.
        s.apply(&keys(), &keys().host("b"), None).unwrap();
        assert_eq!(s.upstream(Color::Green), vec!["127.0.0.11:8081"]);
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
}
