//! Who is looking at the dashboard and what they may do. A person logs in with an etcd user and
//! password; the dashboard keeps that user's etcd access for the session and acts with it, so
//! etcd's own roles decide what a person may see and change (the dashboard adds no permission
//! model of its own). Sessions live in memory: a restarted dashboard asks everyone to log in
//! again, which is the safe side.
//!
//! Everything here is pure but the random tokens, so the unit tests cover the rules a browser can
//! probe: the cookie's attributes, the CSRF comparison, the listen address policy and session
//! expiry.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The session cookie's name.
pub const COOKIE: &str = "bluegreen_session";
/// The header every state-changing request carries its session's CSRF token in. A cross-site
/// page cannot read the token (it is only in the dashboard's own responses) and cannot set a
/// custom header on a cross-site request without a CORS preflight the dashboard never answers.
pub const CSRF_HEADER: &str = "x-bluegreen-csrf";
/// A session unused for this long is gone: a laptop left open in a meeting room is not logged in
/// forever.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(8 * 3600);
/// Sessions kept at most: past it, the least recently used goes, so a script opening sessions
/// (with etcd auth off each page load opens one) cannot grow the dashboard's memory without end.
pub const MAX_SESSIONS: usize = 10_000;

/// What a session's etcd user may do with one app, as etcd answered for that user (reads tried,
/// writes proven without writing: see `proto::access::check_permissions`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AppAccess {
    pub read: bool,
    pub act: bool,
    /// When etcd answered: an answer older than [`ACCESS_TTL`] is asked again, so a role
    /// revoked in etcd stops showing the app within a minute.
    pub checked: Instant,
}

/// How long an answer about a person's access to an app is trusted.
pub const ACCESS_TTL: Duration = Duration::from_secs(60);

impl AppAccess {
    pub fn fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.checked) < ACCESS_TTL
    }
}

/// One logged-in person (or, with etcd auth off, one browser).
#[derive(Debug, Clone)]
pub struct Session {
    /// The etcd user; `None` with etcd auth off.
    pub user: Option<String>,
    /// Their access to etcd: the dashboard's endpoints and TLS with their user and password.
    pub access: proto::EtcdAccess,
    pub csrf: String,
    /// Per app the person was shown: what their user may do with it (asked of etcd with their
    /// credentials, remembered for [`ACCESS_TTL`]).
    pub apps: BTreeMap<String, AppAccess>,
    pub last_used: Instant,
    /// Set to true when the session ends (logout); dropped when it expires. Its streams end with
    /// it.
    pub ended: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl Session {
    /// Who history names for this session's actions.
    pub fn actor(&self, fallback: &str) -> String {
        self.user.clone().unwrap_or_else(|| fallback.to_string())
    }
}

/// The sessions, by their cookie's token.
#[derive(Debug, Default)]
pub struct Sessions {
    by_token: BTreeMap<String, Session>,
}

impl Sessions {
    pub fn insert(&mut self, token: String, session: Session) {
        if self.by_token.len() >= MAX_SESSIONS {
            let oldest = self
                .by_token
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(t, _)| t.clone());
            if let Some(oldest) = oldest {
                self.by_token.remove(&oldest);
            }
        }
        self.by_token.insert(token, session);
    }

    /// The session of `token`, if it exists and was used within [`IDLE_TIMEOUT`] of `now`; using
    /// it keeps it alive.
    pub fn touch(&mut self, token: &str, now: Instant) -> Option<&mut Session> {
        self.by_token
            .retain(|_, s| now.saturating_duration_since(s.last_used) < IDLE_TIMEOUT);
        let session = self.by_token.get_mut(token)?;
        session.last_used = now;
        Some(session)
    }

    /// Ends the session of `token`: its open streams end too.
    pub fn remove(&mut self, token: &str) {
        if let Some(session) = self.by_token.remove(token) {
            let _ = session.ended.send(true);
        }
    }

    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }
}

/// The session token in a `Cookie` header, if there is one.
pub fn token_in_cookies(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value of a new session: never readable by scripts, never sent along with a
/// request another site starts, and over TLS only when the dashboard serves TLS.
pub fn set_cookie(token: &str, tls: bool) -> String {
    let secure = if tls { "; Secure" } else { "" };
    format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}")
}

/// The `Set-Cookie` value that ends a session in the browser.
pub fn clear_cookie(tls: bool) -> String {
    let secure = if tls { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{secure}")
}

/// Whether `given` is the session's CSRF token, in time independent of where they differ.
pub fn csrf_matches(expected: &str, given: Option<&str>) -> bool {
    let Some(given) = given else { return false };
    if expected.is_empty() || expected.len() != given.len() {
        return false;
    }
    expected
        .bytes()
        .zip(given.bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// Where the dashboard may listen. A person's etcd password crosses the wire at login, so any
/// address other than loopback needs TLS; with etcd auth off nobody logs in and anyone who
/// reaches the port sees everything, so it serves loopback only.
pub fn check_listen(addr: SocketAddr, tls: bool, etcd_auth: bool) -> Result<(), String> {
    let loopback = addr.ip().is_loopback();
    if !etcd_auth && !loopback {
        return Err(format!(
            "{addr}: etcd auth is off, so the dashboard would show everything to anyone \
             who reaches it; it listens on loopback only (127.0.0.1) until etcd auth is on"
        ));
    }
    if !loopback && !tls {
        return Err(format!(
            "{addr} is not loopback: people's etcd passwords would cross the network in \
             clear text; give --tls-cert and --tls-key"
        ));
    }
    Ok(())
}

/// A random token of 32 bytes, hex: session ids and CSRF tokens.
pub fn random_token() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random number generator failed");
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_http_only_and_strict() {
        let cookie = set_cookie("abc", false);
        assert!(cookie.contains("HttpOnly"), "{cookie}");
        assert!(cookie.contains("SameSite=Strict"), "{cookie}");
        assert!(!cookie.contains("Secure"), "{cookie}");
        assert!(set_cookie("abc", true).contains("; Secure"));
        assert_eq!(
            token_in_cookies("a=1; bluegreen_session=abc; b=2"),
            Some("abc")
        );
        assert_eq!(token_in_cookies("a=1; bluegreen_session="), None);
        assert_eq!(token_in_cookies("xbluegreen_session=abc"), None);
    }

    #[test]
    fn a_csrf_token_must_match_exactly() {
        assert!(csrf_matches("abcd", Some("abcd")));
        assert!(!csrf_matches("abcd", Some("abce")));
        assert!(!csrf_matches("abcd", Some("abc")));
        assert!(!csrf_matches("abcd", None));
        assert!(!csrf_matches("", Some("")));
    }

    #[test]
    fn only_loopback_goes_without_tls_and_without_etcd_auth() {
        let lo: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert!(check_listen(lo, false, true).is_ok());
        assert!(check_listen(lo, false, false).is_ok());
        let err = check_listen(any, false, true).unwrap_err();
        assert!(err.contains("--tls-cert"), "{err}");
        assert!(check_listen(any, true, true).is_ok());
        let err = check_listen(any, true, false).unwrap_err();
        assert!(err.contains("etcd auth is off"), "{err}");
    }

    #[test]
    fn an_idle_session_expires() {
        let mut sessions = Sessions::default();
        let start = Instant::now();
        sessions.insert(
            "t".into(),
            Session {
                user: Some("alice".into()),
                access: proto::EtcdAccess::default(),
                csrf: "c".into(),
                apps: BTreeMap::new(),
                last_used: start,
                ended: Default::default(),
            },
        );
        assert!(sessions
            .touch("t", start + Duration::from_secs(60))
            .is_some());
        assert!(sessions
            .touch("t", start + Duration::from_secs(60) + IDLE_TIMEOUT)
            .is_none());
        assert!(sessions.is_empty());
    }

    #[test]
    fn past_the_cap_the_least_recently_used_session_goes() {
        let mut sessions = Sessions::default();
        let start = Instant::now();
        for i in 0..=MAX_SESSIONS {
            sessions.insert(
                format!("t{i}"),
                Session {
                    user: None,
                    access: proto::EtcdAccess::default(),
                    csrf: "c".into(),
                    apps: BTreeMap::new(),
                    last_used: start + Duration::from_millis(i as u64),
                    ended: Default::default(),
                },
            );
        }
        assert_eq!(sessions.len(), MAX_SESSIONS);
        let now = start + Duration::from_secs(1);
        assert!(sessions.touch("t0", now).is_none(), "the oldest went");
        assert!(sessions.touch(&format!("t{MAX_SESSIONS}"), now).is_some());
    }

    #[test]
    fn tokens_are_long_and_differ() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
