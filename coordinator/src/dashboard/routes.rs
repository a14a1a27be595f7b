//! Every route the dashboard serves, as data: the router is built from this table (one handler
//! per [`RouteId`], matched exhaustively), so a route cannot exist without saying who may call
//! it, and the tests walk the same table to prove each state-changing route refuses a request
//! without a session or without its CSRF token.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteId {
    Index,
    Script,
    Style,
    Login,
    Session,
    Logout,
    Apps,
    Stream,
    Logs,
    Action,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The page and its assets (they hold no data), and login itself.
    Public,
    /// Reads: a session.
    Session,
    /// Anything that changes state: a session and its CSRF token in
    /// [`super::auth::CSRF_HEADER`].
    SessionAndCsrf,
}

#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub id: RouteId,
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
    /// Whether it changes anything (a session, the fleet).
    pub changes_state: bool,
}

const fn route(
    id: RouteId,
    method: &'static str,
    path: &'static str,
    access: Access,
    changes_state: bool,
) -> Route {
    Route {
        id,
        method,
        path,
        access,
        changes_state,
    }
}

/// The routes. Login changes state (it makes a session) but cannot need one: it takes JSON only,
/// which a cross-site form cannot send without a preflight, and a forged login would only log
/// the victim in as the attacker.
pub const ROUTES: &[Route] = &[
    route(RouteId::Index, "GET", "/", Access::Public, false),
    route(
        RouteId::Script,
        "GET",
        "/assets/app.js",
        Access::Public,
        false,
    ),
    route(
        RouteId::Style,
        "GET",
        "/assets/app.css",
        Access::Public,
        false,
    ),
    route(RouteId::Login, "POST", "/api/login", Access::Public, true),
    route(
        RouteId::Session,
        "GET",
        "/api/session",
        Access::Public,
        false,
    ),
    route(
        RouteId::Logout,
        "POST",
        "/api/logout",
        Access::SessionAndCsrf,
        true,
    ),
    route(RouteId::Apps, "GET", "/api/apps", Access::Session, false),
    route(
        RouteId::Stream,
        "GET",
        "/api/stream",
        Access::Session,
        false,
    ),
    route(
        RouteId::Logs,
        "GET",
        "/api/apps/{app}/logs",
        Access::Session,
        false,
    ),
    route(
        RouteId::Action,
        "POST",
        "/api/apps/{app}/actions/{action}",
        Access::SessionAndCsrf,
        true,
    ),
];

/// The actions a person may start, each the command line the CLI runs for it (the command layer
/// parses and runs it exactly as typed).
pub const ACTIONS: &[(&str, &[&str])] = &[
    ("promote", &["promote"]),
    ("canary-pause", &["canary", "pause"]),
    ("canary-resume", &["canary", "resume"]),
    ("canary-promote", &["canary", "promote"]),
    ("canary-abort", &["canary", "abort"]),
    ("rollback", &["rollback"]),
    ("lock-break", &["lock", "break", "--yes"]),
];

/// The command line of action `name`, if it is one.
pub fn action_argv(name: &str) -> Option<&'static [&'static str]> {
    ACTIONS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, argv)| *argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_that_changes_state_needs_a_session_and_a_token_but_login() {
        for r in ROUTES {
            if r.changes_state && r.id != RouteId::Login {
                assert_eq!(r.access, Access::SessionAndCsrf, "{} {}", r.method, r.path);
            }
            if r.method != "GET" {
                assert!(r.changes_state, "{} {} is not a GET", r.method, r.path);
            }
        }
    }
}
