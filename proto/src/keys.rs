//! The only place an etcd key string is formed; everything else asks [`Keys`] (who reads which key:
//! docs/architecture.md).
use crate::{Color, ProtoError};

/// Key builder for one app under one prefix, e.g. `/bluegreen` + `shop`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// `<prefix>/<app>/`, always with the trailing slash so prefix reads never match `shop2`.
    base: String,
}

/// What a key under an app's prefix is, parsed back from its string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppKey {
    Lock,
    Active,
    Traffic,
    Release(Color),
    Deploy,
    History(i64),
    Host(String),
    HostMember(String),
    HostLeaving(String),
    Health { host: String, color: Color },
    Lb(String),
    LbAlive(String),
    LbStats(String),
    CanaryRequest,
}

/// Where every app under `prefix` lives: `<prefix>/`.
pub fn apps_prefix(prefix: &str) -> String {
    format!("{}/", prefix.trim_end_matches('/'))
}

/// Where the app names are listed for users who may not read the whole prefix:
/// `<prefix>:apps/<app>`, beside the prefix rather than under it, so it can be no app's name.
/// `deploy/etcd-auth.sh` writes an app's entry and lets its coordinator and auditor read them.
pub fn apps_index_prefix(prefix: &str) -> String {
    format!("{}:apps/", prefix.trim_end_matches('/'))
}

/// The app a key under [`apps_prefix`] belongs to (its first segment), if it has one.
pub fn app_of(prefix: &str, key: &str) -> Option<String> {
    let rest = key.strip_prefix(&apps_prefix(prefix))?;
    let app = rest.split('/').next()?;
    (!app.is_empty() && rest.len() > app.len()).then(|| app.to_string())
}

/// Width of the zero-padded revision in history keys, so keys sort like revisions.
const HISTORY_WIDTH: usize = 20;

impl Keys {
    /// Validates the prefix (`/x`, no trailing slash) and the app name (one path segment).
    pub fn new(prefix: &str, app: &str) -> Result<Self, ProtoError> {
        if !prefix.starts_with('/') || prefix.ends_with('/') && prefix.len() > 1 {
            return Err(ProtoError::InvalidKeyLayout(format!(
                "prefix {prefix:?} must start with '/' and not end with '/'"
            )));
        }
        validate_segment("app", app)?;
        let prefix = prefix.trim_end_matches('/');
        Ok(Keys {
            base: format!("{prefix}/{app}/"),
        })
    }

    /// The app's name (the last segment of its prefix).
    pub fn app(&self) -> &str {
        let base = self.base.trim_end_matches('/');
        base.rsplit('/').next().unwrap_or(base)
    }

    /// Everything of this app: the range sidecars and `status` read.
    pub fn app_prefix(&self) -> &str {
        &self.base
    }

    /// The first segment of keys nobody needs in a deploy: `~` sorts after every lowercase name.
    const DETAIL: &'static str = "~detail/";

    pub fn lock(&self) -> String {
        format!("{}lock", self.base)
    }

    pub fn active(&self) -> String {
        format!("{}active", self.base)
    }

    /// `active/traffic`: the canary split beside `active`. Its name sorts right after `active`,
    /// inside [`Keys::lb_view_range`], so a sidecar sees it in the same revision order as
    /// everything else it renders, and acks its revision the same way.
    pub fn traffic(&self) -> String {
        format!("{}active/traffic", self.base)
    }

    pub fn release(&self, color: Color) -> String {
        format!("{}releases/{color}", self.base)
    }

    pub fn releases_prefix(&self) -> String {
        format!("{}releases/", self.base)
    }

    pub fn deploy(&self) -> String {
        format!("{}deploy", self.base)
    }

    pub fn history(&self, revision: i64) -> String {
        format!(
            "{}history/{revision:0width$}",
            self.base,
            width = HISTORY_WIDTH
        )
    }

    pub fn history_prefix(&self) -> String {
        format!("{}history/", self.base)
    }

    pub fn host(&self, host: &str) -> String {
        format!("{}hosts/{host}", self.base)
    }

    pub fn hosts_prefix(&self) -> String {
        format!("{}hosts/", self.base)
    }

    /// A host's durable membership, written by its agent beside the leased `hosts/<host>`: a host
    /// whose agent falls silent (cut off, stopped, dead) stays a member, and a deploy refuses to
    /// shrink the fleet behind its back until it comes back or an operator removes it.
    pub fn host_member(&self, host: &str) -> String {
        format!("{}host-members/{host}", self.base)
    }

    pub fn host_members_prefix(&self) -> String {
        format!("{}host-members/", self.base)
    }

    /// A host this app is being removed from while its agent runs ([`crate::records::HostLeavingRecord`]).
    /// Inside [`Keys::lb_view_range`]: every sidecar stops routing to the host when it appears.
    pub fn host_leaving(&self, host: &str) -> String {
        format!("{}host-leaving/{host}", self.base)
    }

    pub fn health(&self, host: &str, color: Color) -> String {
        format!("{}health/{host}/{color}", self.base)
    }

    pub fn health_prefix(&self) -> String {
        format!("{}health/", self.base)
    }

    pub fn lb(&self, name: &str) -> String {
        format!("{}lbs/{name}", self.base)
    }

    pub fn lbs_prefix(&self) -> String {
        format!("{}lbs/", self.base)
    }

    /// The upstreams an LB serves, per color: the full list its ack only summarizes (a count per
    /// color), written only when it changes. Under [`Keys::DETAIL`], which sorts after every
    /// other part of the app, so the coordinator's reads and watches (`[app_prefix,
    /// coordinator_end)`) never receive it: at thousands of hosts these lists were nearly every
    /// byte a deploy received. `lb list --verbose` reads it.
    pub fn lb_upstreams(&self, name: &str) -> String {
        format!("{}{}lb-upstreams/{name}", self.base, Self::DETAIL)
    }

    pub fn lb_upstreams_prefix(&self) -> String {
        format!("{}{}lb-upstreams/", self.base, Self::DETAIL)
    }

    /// Where the coordinator's view of the app ends: every key it reads or watches sorts before
    /// it, the detail subtree ([`Keys::lb_upstreams`]) after it.
    pub fn coordinator_end(&self) -> String {
        format!("{}{}", self.base, Self::DETAIL)
    }

    /// An LB's liveness, under its sidecar's lease; `lbs/<name>` (its last ack) is durable, so a
    /// silent LB stays a member whose last served color is protected.
    pub fn lb_alive(&self, name: &str) -> String {
        format!("{}lb-alive/{name}", self.base)
    }

    /// An LB's request counts per color, from nginx's access log, under its sidecar's lease: what
    /// a canary's analysis compares. Outside [`Keys::lb_view_range`], so no sidecar receives
    /// another's counts.
    pub fn lb_stats(&self, name: &str) -> String {
        format!("{}lb-stats/{name}", self.base)
    }

    pub fn lb_stats_prefix(&self) -> String {
        format!("{}lb-stats/", self.base)
    }

    /// An operator's request to the running canary (pause, resume, promote, abort). Outside
    /// [`Keys::lb_view_range`]: the sidecars have no use for it.
    pub fn canary_request(&self) -> String {
        format!("{}operator/canary", self.base)
    }

    /// The range an LB renders from, `[active, lb-alive/)`: `active`, `health/` and `hosts/`,
    /// with only low-volume keys between them (`deploy`, `history/`, `host-members/`). One range
    /// keeps one revision order for the sidecar's acks, and leaves out the other LBs' acks (one per
    /// reload of every LB: at 50 LBs, 50 times what a sidecar needs) and `releases/`.
    pub fn lb_view_range(&self) -> (String, String) {
        (self.active(), self.lb_alive(""))
    }

    /// Classifies a key of this app; `None` for keys outside the app or of an unknown shape
    /// (forward compatibility: newer writers may add keys).
    pub fn parse(&self, key: &str) -> Option<AppKey> {
        let rest = key.strip_prefix(&self.base)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["lock"] => Some(AppKey::Lock),
            ["active"] => Some(AppKey::Active),
            ["active", "traffic"] => Some(AppKey::Traffic),
            ["deploy"] => Some(AppKey::Deploy),
            ["releases", color] => color.parse().ok().map(AppKey::Release),
            ["history", rev] => rev.parse().ok().map(AppKey::History),
            ["hosts", host] if is_name(host) => Some(AppKey::Host(host.to_string())),
            ["host-members", host] if is_name(host) => Some(AppKey::HostMember(host.to_string())),
            ["host-leaving", host] if is_name(host) => Some(AppKey::HostLeaving(host.to_string())),
            ["health", host, color] if is_name(host) => {
                color.parse().ok().map(|color| AppKey::Health {
                    host: host.to_string(),
                    color,
                })
            }
            ["lbs", name] if is_name(name) => Some(AppKey::Lb(name.to_string())),
            ["lb-alive", name] if is_name(name) => Some(AppKey::LbAlive(name.to_string())),
            ["lb-stats", name] if is_name(name) => Some(AppKey::LbStats(name.to_string())),
            ["operator", "canary"] => Some(AppKey::CanaryRequest),
            _ => None,
        }
    }

    /// For a key under this app that [`Keys::parse`] refuses only because a name segment breaks
    /// the name rule: the reason, so readers can report it instead of silently skipping it.
    pub fn bad_name(&self, key: &str) -> Option<String> {
        let rest = key.strip_prefix(&self.base)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let (what, name) = match parts.as_slice() {
            ["hosts", host]
            | ["host-members", host]
            | ["host-leaving", host]
            | ["health", host, _] => ("host", *host),
            ["lbs", name] | ["lb-alive", name] | ["lb-stats", name] => ("LB name", *name),
            _ => return None,
        };
        crate::names::check_name(what, name)
            .err()
            .map(|e| format!("{key}: {e}"))
    }
}

fn is_name(segment: &str) -> bool {
    crate::names::check_name("name", segment).is_ok()
}

/// A name that becomes one key segment (app, host, LB name): see [`crate::names`].
pub fn validate_segment(what: &str, value: &str) -> Result<(), ProtoError> {
    crate::names::check_name(what, value).map_err(ProtoError::InvalidKeyLayout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new("/bluegreen", "shop").unwrap()
    }

    /// Every key a coordinator needs sorts before `coordinator_end`, the upstream lists after.
    #[test]
    fn the_detail_subtree_sorts_after_everything_a_coordinator_reads() {
        let k = keys();
        let end = k.coordinator_end();
        let needed = [
            k.lock(),
            k.active(),
            k.traffic(),
            k.release(Color::Green),
            k.deploy(),
            k.host("zz-last-host"),
            k.health("zz", Color::Green),
            k.lb("zz"),
            k.lb_alive("zz"),
            k.lb_stats("zz"),
            k.history_prefix() + "zz",
        ];
        for key in needed {
            assert!(key.as_str() < end.as_str(), "{key} sorts after {end}");
        }
        assert!(k.lb_upstreams("lb-1").as_str() > end.as_str());
        assert!(k.lb_upstreams("lb-1").starts_with(k.app_prefix()));
    }

    #[test]
    fn builds_every_key_of_the_contract() {
        let k = keys();
        assert_eq!(k.app_prefix(), "/bluegreen/shop/");
        assert_eq!(k.lock(), "/bluegreen/shop/lock");
        assert_eq!(k.active(), "/bluegreen/shop/active");
        assert_eq!(k.release(Color::Green), "/bluegreen/shop/releases/green");
        assert_eq!(k.deploy(), "/bluegreen/shop/deploy");
        assert_eq!(
            k.history(42),
            "/bluegreen/shop/history/00000000000000000042"
        );
        assert_eq!(k.host("host-a"), "/bluegreen/shop/hosts/host-a");
        assert_eq!(
            k.health("host-a", Color::Blue),
            "/bluegreen/shop/health/host-a/blue"
        );
        assert_eq!(k.lb("lb-1"), "/bluegreen/shop/lbs/lb-1");
        assert_eq!(k.lb_alive("lb-1"), "/bluegreen/shop/lb-alive/lb-1");
        assert_eq!(app_of("/bluegreen", &k.active()).as_deref(), Some("shop"));
        assert_eq!(
            app_of("/bluegreen/", "/bluegreen/shop/hosts/a").as_deref(),
            Some("shop")
        );
        assert_eq!(app_of("/bluegreen", "/bluegreen/loose-key"), None);
        assert_eq!(app_of("/bluegreen", "/other/shop/active"), None);
        let (from, end) = k.lb_view_range();
        let inside = |key: &str| from.as_str() <= key && key < end.as_str();
        for rendered in [
            k.active(),
            k.health("h-1", Color::Blue),
            k.host("h-1"),
            k.host("~"),
        ] {
            assert!(inside(&rendered), "{rendered} must be in the LB's range");
        }
        for other in [
            k.lb("lb-1"),
            k.lb_alive("lb-1"),
            k.lb_stats("lb-1"),
            k.canary_request(),
            k.release(Color::Green),
            k.lock(),
        ] {
            assert!(!inside(&other), "{other} must not be in the LB's range");
        }
        assert_eq!(k.host_member("h1"), "/bluegreen/shop/host-members/h1");
    }

    #[test]
    fn history_keys_sort_like_revisions() {
        let k = keys();
        assert!(k.history(9) < k.history(10));
        assert!(k.history(99) < k.history(1000));
    }

    #[test]
    fn parse_inverts_build() {
        let k = keys();
        assert_eq!(k.parse(&k.lock()), Some(AppKey::Lock));
        assert_eq!(k.parse(&k.active()), Some(AppKey::Active));
        assert_eq!(
            k.parse(&k.release(Color::Blue)),
            Some(AppKey::Release(Color::Blue))
        );
        assert_eq!(k.parse(&k.history(7)), Some(AppKey::History(7)));
        assert_eq!(k.parse(&k.host("h1")), Some(AppKey::Host("h1".into())));
        assert_eq!(
            k.parse(&k.host_member("h1")),
            Some(AppKey::HostMember("h1".into()))
        );
        assert_eq!(
            k.parse(&k.host_leaving("h1")),
            Some(AppKey::HostLeaving("h1".into()))
        );
        let (from, to) = k.lb_view_range();
        assert!(from < k.host_leaving("h1") && k.host_leaving("h1") < to);
        assert_eq!(
            k.parse(&k.health("h1", Color::Green)),
            Some(AppKey::Health {
                host: "h1".into(),
                color: Color::Green
            })
        );
        assert_eq!(k.parse(&k.lb("lb")), Some(AppKey::Lb("lb".into())));
        assert_eq!(
            k.parse(&k.lb_alive("lb")),
            Some(AppKey::LbAlive("lb".into()))
        );
        assert_eq!(
            k.parse(&k.lb_stats("lb")),
            Some(AppKey::LbStats("lb".into()))
        );
        assert_eq!(k.parse(&k.canary_request()), Some(AppKey::CanaryRequest));
    }

    #[test]
    fn parse_rejects_foreign_and_malformed_keys() {
        let k = keys();
        assert_eq!(k.parse("/bluegreen/shop2/active"), None);
        assert_eq!(k.parse("/bluegreen/shop/releases/red"), None);
        assert_eq!(k.parse("/bluegreen/shop/health/h1/purple"), None);
        assert_eq!(k.parse("/bluegreen/shop/hosts/"), None);
        assert_eq!(k.parse("/bluegreen/shop/history/abc"), None);
        assert_eq!(k.parse("/bluegreen/shop/something-new"), None);
    }

    #[test]
    fn rejects_bad_layout() {
        assert!(Keys::new("bluegreen", "shop").is_err());
        assert!(Keys::new("/bluegreen/", "shop").is_err());
        assert!(Keys::new("/bluegreen", "a/b").is_err());
        assert!(Keys::new("/bluegreen", "").is_err());
        assert!(validate_segment("host", "host a").is_err());
    }
}
