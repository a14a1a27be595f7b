//! The web dashboard (`coordinator ui`): the apps, each app's hosts and LBs, its running
//! operation as a live timeline, the canary's evidence, history and host logs, with the actions
//! an operator takes (promote, canary pause/resume/promote/abort, rollback, lock break).
//!
//! Seams: the dashboard reads etcd through one [`hub::Hub`] per app shown (one watch each, with
//! the dashboard's own credentials) and acts only through a [`Runner`] the command layer hands
//! it, which runs the same command line the CLI would, as the logged-in person's etcd user. It
//! never writes etcd itself. The page (HTML, CSS, a small script) is compiled in: no build step,
//! no CDN, nothing fetched from the internet.
pub mod auth;
pub mod hub;
pub mod routes;
pub mod view;

use crate::actor::Invoker;
use auth::{AppAccess, Session, Sessions};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use futures::future::BoxFuture;
use futures::StreamExt;
use hub::Hub;
use proto::Keys;
use routes::{RouteId, ROUTES};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");

/// The page may load only itself: no inline script, no other origin, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// One command line to run for someone.
pub struct Call {
    /// The person's etcd access (their user, the dashboard's endpoints and TLS).
    pub access: proto::EtcdAccess,
    pub app: String,
    /// The arguments after `coordinator`, exactly as typed on a command line.
    pub args: Vec<String>,
    /// JSON output (progress events and the result event) rather than text.
    pub json: bool,
    pub invoker: Invoker,
}

/// What a command run for someone came to.
#[derive(Debug, Clone)]
pub struct Done {
    pub exit: i32,
    pub text: String,
    pub event: Option<Value>,
}

/// Runs a command line for someone (provided by the command layer).
pub type Runner = Arc<dyn Fn(Call) -> BoxFuture<'static, Done> + Send + Sync>;

/// How the dashboard was started.
pub struct Config {
    pub prefix: String,
    /// The dashboard's own etcd access: endpoints, TLS, and the read-only user its watches use.
    pub access: proto::EtcdAccess,
    /// Whether it serves TLS (the session cookie is then `Secure`).
    pub tls: bool,
    /// Whether etcd has auth on: people log in. Off: anyone who reaches the (loopback) port sees
    /// everything, and acts only with `allow_actions`.
    pub etcd_auth: bool,
    pub allow_actions: bool,
    /// Who history names for an action when nobody logged in (etcd auth off).
    pub anonymous_actor: String,
    /// The `Host` headers a request may carry when the dashboard listens on loopback: a page on
    /// another site whose name was re-pointed at 127.0.0.1 (DNS rebinding) names its own host,
    /// and is refused. `None` off loopback, where TLS (the certificate's name) does this.
    pub allowed_hosts: Option<Vec<String>>,
}

impl Config {
    /// The names a browser on this machine may use for a loopback `listen`.
    pub fn loopback_hosts(listen: std::net::SocketAddr) -> Option<Vec<String>> {
        if !listen.ip().is_loopback() {
            return None;
        }
        let port = listen.port();
        Some(vec![
            format!("{listen}"),
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ])
    }
}

/// Actions running at once at most; more wait their turn (each runs on a thread of its own with
/// its own etcd connection).
const ACTIONS_AT_ONCE: usize = 8;
/// Apps one stream may follow at most.
const STREAM_APPS: usize = 500;

pub struct Dashboard {
    config: Config,
    client: etcd_client::Client,
    hubs: tokio::sync::Mutex<BTreeMap<String, Arc<Hub>>>,
    sessions: Mutex<Sessions>,
    runner: Runner,
    /// Commands running for people (actions and log reads).
    running: Arc<tokio::sync::Semaphore>,
    /// Becomes true when the process is asked to stop: every stream ends, so the server can.
    stopping: tokio::sync::watch::Sender<bool>,
}

type Shared = Arc<Dashboard>;

/// An error answer: a status and a message naming what was wrong.
fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    Refused(status, message.into()).into_response()
}

/// A refusal not yet turned into a response (small, so helpers can return it in a `Result`).
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl Dashboard {
    pub fn new(config: Config, client: etcd_client::Client, runner: Runner) -> Shared {
        Arc::new(Dashboard {
            config,
            client,
            hubs: Default::default(),
            sessions: Default::default(),
            runner,
            running: Arc::new(tokio::sync::Semaphore::new(ACTIONS_AT_ONCE)),
            stopping: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Ends every stream (the server then stops once requests in flight are answered) and waits,
    /// up to `patience`, for the actions still running: a rollback is not cut in half by a
    /// restart of the dashboard.
    pub async fn stop(&self, patience: std::time::Duration) {
        let _ = self.stopping.send(true);
        let all = ACTIONS_AT_ONCE as u32;
        match tokio::time::timeout(patience, self.running.acquire_many(all)).await {
            Ok(_) => {}
            Err(_) => tracing::warn!("stopping with actions still running"),
        }
    }

    /// The router, built from [`ROUTES`].
    pub fn router(self: &Shared) -> Router {
        let mut router = Router::new();
        for route in ROUTES {
            router = router.route(route.path, handler(route.id));
        }
        router
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                guard_origin,
            ))
            .layer(axum::middleware::map_response(security_headers))
            .with_state(self.clone())
    }

    /// The session of a request, if its cookie names a live one.
    fn session(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
        let token = auth::token_in_cookies(cookies)?;
        let mut sessions = self.sessions.lock().unwrap();
        let session = sessions.touch(token, Instant::now())?.clone();
        Some((token.to_string(), session))
    }

    /// The session of a request that changes state: 403 without a session or its CSRF token,
    /// before anything is read or written.
    fn session_with_csrf(&self, headers: &HeaderMap) -> Result<(String, Session), Refused> {
        let Some((token, session)) = self.session(headers) else {
            return Err(Refused(
                StatusCode::FORBIDDEN,
                "no session: log in first".into(),
            ));
        };
        let given = headers.get(auth::CSRF_HEADER).and_then(|v| v.to_str().ok());
        if !auth::csrf_matches(&session.csrf, given) {
            return Err(Refused(
                StatusCode::FORBIDDEN,
                format!("missing or wrong {} header", auth::CSRF_HEADER),
            ));
        }
        Ok((token, session))
    }

    fn new_session(&self, user: Option<String>, access: proto::EtcdAccess) -> (String, Session) {
        let token = auth::random_token();
        let session = Session {
            user,
            access,
            csrf: auth::random_token(),
            apps: BTreeMap::new(),
            last_used: Instant::now(),
            ended: Default::default(),
        };
        self.sessions
            .lock()
            .unwrap()
            .insert(token.clone(), session.clone());
        (token, session)
    }

    /// What the session's user may do with each of `apps`, asked of etcd as that user for the
    /// apps not asked about in the last [`auth::ACCESS_TTL`], and remembered. An answer etcd
    /// could not give (unreachable) is not remembered: the next request asks again.
    async fn access_to(
        &self,
        token: &str,
        session: &Session,
        apps: &[String],
    ) -> BTreeMap<String, AppAccess> {
        let now = Instant::now();
        let mut known = session.apps.clone();
        let missing: Vec<&String> = apps
            .iter()
            .filter(|a| !known.get(*a).is_some_and(|x| x.fresh(now)))
            .collect();
        if !missing.is_empty() {
            let client = if self.config.etcd_auth {
                proto::access::connect(&session.access).await.ok()
            } else {
                None
            };
            for app in missing {
                let access = match (&client, Keys::new(&self.config.prefix, app)) {
                    (_, Err(_)) => Some((false, false)),
                    (None, Ok(_)) if !self.config.etcd_auth => {
                        Some((true, self.config.allow_actions))
                    }
                    (None, Ok(_)) => None,
                    (Some(client), Ok(keys)) => may(client, &keys).await,
                };
                match access {
                    Some((read, act)) => {
                        known.insert(
                            app.clone(),
                            AppAccess {
                                read,
                                act,
                                checked: now,
                            },
                        );
                    }
                    None => {
                        known.remove(app);
                    }
                }
            }
            if let Some(s) = self.sessions.lock().unwrap().touch(token, now) {
                s.apps = known.clone();
            }
        }
        apps.iter()
            .filter_map(|a| known.get(a).map(|x| (a.clone(), *x)))
            .collect()
    }

    /// The hub of `app`, started on first use (or again, when its watch ended), and a
    /// subscription to it when `subscribe`: taken under the hubs' lock, so that a tab closing
    /// elsewhere cannot stop the hub between its start and this tab's subscription.
    async fn hub(
        &self,
        app: &str,
        subscribe: bool,
    ) -> Result<
        (
            Arc<Hub>,
            Option<tokio::sync::broadcast::Receiver<hub::Message>>,
        ),
        Refused,
    > {
        let mut hubs = self.hubs.lock().await;
        let hub = match hubs.get(app) {
            Some(hub) if !hub.is_dead() => hub.clone(),
            _ => {
                let keys = Keys::new(&self.config.prefix, app)
                    .map_err(|e| Refused(StatusCode::NOT_FOUND, e.to_string()))?;
                let hub = Hub::start(&self.client, keys).await.map_err(|e| {
                    Refused(
                        StatusCode::BAD_GATEWAY,
                        format!("reading {app} from etcd: {e}"),
                    )
                })?;
                if let Some(old) = hubs.insert(app.to_string(), hub.clone()) {
                    old.stop();
                }
                hub
            }
        };
        let rx = subscribe.then(|| hub.subscribe());
        Ok((hub, rx))
    }

    /// Stops the hubs nobody watches any more.
    async fn release_hubs(&self) {
        let mut hubs = self.hubs.lock().await;
        hubs.retain(|_, hub| {
            let needed = hub.in_use();
            if !needed {
                hub.stop();
            }
            needed
        });
    }
}

/// What `client`'s user may do with the app of `keys`: read everything the dashboard shows of it
/// (the range its hub reads and watches), and write the keys every action writes (proven
/// without writing anything). `None`: etcd did not answer.
async fn may(client: &etcd_client::Client, keys: &Keys) -> Option<(bool, bool)> {
    let range = etcd_client::GetOptions::new()
        .with_range(keys.coordinator_end())
        .with_count_only();
    let read = match client.clone().get(keys.app_prefix(), Some(range)).await {
        Ok(_) => true,
        Err(e) => match proto::ProtoError::etcd("read", e) {
            e if e.is_permission_denied() => false,
            _ => return None,
        },
    };
    let writes = [keys.lock(), keys.active(), keys.canary_request()];
    let act = read
        && proto::access::check_permissions(client, &[], &writes)
            .await
            .is_ok();
    Some((read, act))
}

/// Refuses a request whose `Host` is not this dashboard's (when it listens on loopback), and a
/// state-changing request whose `Origin` is another site's.
async fn guard_origin(
    State(d): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // HTTP/2 names the host in `:authority`, which hyper puts in the URI; HTTP/1.1 in `Host`.
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            let host = request.headers().get(header::HOST)?;
            host.to_str().ok().map(str::to_string)
        })
        .unwrap_or_default();
    if let Some(allowed) = &d.config.allowed_hosts {
        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(&host)) {
            return refuse(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "Host {host:?} is not this dashboard; use http://{}",
                    allowed[0]
                ),
            );
        }
    }
    if request.method() != axum::http::Method::GET {
        let origin = request
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok());
        if let Some(origin) = origin {
            let same = origin
                .split_once("://")
                .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(&host));
            if !same {
                return refuse(
                    StatusCode::FORBIDDEN,
                    format!("a request from {origin} may not change anything here"),
                );
            }
        }
    }
    next.run(request).await
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

fn handler(id: RouteId) -> MethodRouter<Shared> {
    match id {
        RouteId::Index => get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        RouteId::Script => get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        RouteId::Style => get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        RouteId::Login => post(login),
        RouteId::Session => get(session),
        RouteId::Logout => post(logout),
        RouteId::Apps => get(apps),
        RouteId::Stream => get(stream),
        RouteId::Logs => get(logs),
        RouteId::Action => post(action),
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn with_cookie(cookie: String, body: Value) -> Response {
    let mut response = Json(body).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

fn session_doc(d: &Dashboard, session: &Session) -> Value {
    json!({
        "user": session.user,
        "csrf": session.csrf,
        "etcd_auth": d.config.etcd_auth,
        "allow_actions": d.config.etcd_auth || d.config.allow_actions,
        "actions": routes::ACTIONS.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
    })
}

#[derive(Deserialize)]
struct LoginForm {
    user: String,
    password: String,
}

async fn login(State(d): State<Shared>, Json(form): Json<LoginForm>) -> Response {
    if !d.config.etcd_auth {
        return refuse(
            StatusCode::BAD_REQUEST,
            "etcd auth is off: there is nobody to log in as",
        );
    }
    if form.user.is_empty() || form.user.len() > 128 {
        return refuse(StatusCode::BAD_REQUEST, "user: give your etcd user name");
    }
    let access = match d.config.access.as_user(&form.user, &form.password) {
        Ok(access) => access,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    if let Err(e) = proto::access::connect(&access).await {
        tracing::info!(user = %form.user, error = %e, "dashboard login refused");
        return refuse(
            StatusCode::UNAUTHORIZED,
            format!("etcd refused user {:?} with that password", form.user),
        );
    }
    let (token, session) = d.new_session(Some(form.user), access);
    with_cookie(
        auth::set_cookie(&token, d.config.tls),
        session_doc(&d, &session),
    )
}

/// The session of this browser; with etcd auth off, one is made (there is no login).
async fn session(State(d): State<Shared>, headers: HeaderMap) -> Response {
    if let Some((_, session)) = d.session(&headers) {
        return Json(session_doc(&d, &session)).into_response();
    }
    if d.config.etcd_auth {
        return refuse(StatusCode::UNAUTHORIZED, "log in with your etcd user");
    }
    let (token, session) = d.new_session(None, d.config.access.clone());
    with_cookie(
        auth::set_cookie(&token, d.config.tls),
        session_doc(&d, &session),
    )
}

async fn logout(State(d): State<Shared>, headers: HeaderMap) -> Response {
    let (token, _) = match d.session_with_csrf(&headers) {
        Ok(s) => s,
        Err(refused) => return refused.into_response(),
    };
    d.sessions.lock().unwrap().remove(&token);
    with_cookie(
        auth::clear_cookie(d.config.tls),
        json!({"logged_out": true}),
    )
}

/// The apps this session's user may read, each with its summary and whether they may act.
async fn apps(State(d): State<Shared>, headers: HeaderMap) -> Response {
    let Some((token, session)) = d.session(&headers) else {
        return refuse(StatusCode::UNAUTHORIZED, "log in first");
    };
    let names = match proto::watch::list_apps(&d.client, &d.config.prefix).await {
        Ok(names) => names,
        Err(e) => return refuse(StatusCode::BAD_GATEWAY, format!("listing apps: {e}")),
    };
    let access = d.access_to(&token, &session, &names).await;
    let mut out = Vec::new();
    for (app, may) in access.into_iter().filter(|(_, a)| a.read) {
        let summary = match d.hub(&app, false).await {
            Ok((hub, _)) => hub.summary(),
            Err(_) => Value::Null,
        };
        out.push(json!({"app": app, "act": may.act, "summary": summary}));
    }
    Json(out).into_response()
}

#[derive(Deserialize)]
struct StreamQuery {
    /// The apps whose summaries the tab shows, comma separated.
    #[serde(default)]
    apps: String,
    /// The app the tab shows whole (hosts, timeline, history, canary), if any.
    detail: Option<String>,
}

/// Stops the hubs nobody watches any more when a tab's stream ends.
struct StreamGuard(Shared);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let d = self.0.clone();
        tokio::spawn(async move { d.release_hubs().await });
    }
}

/// One server-sent-event stream per tab for everything it shows: a snapshot first, then every
/// change as it happens. It ends with the session (logout, expiry) and when the dashboard stops.
async fn stream(
    State(d): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> Response {
    let Some((token, session)) = d.session(&headers) else {
        return refuse(StatusCode::UNAUTHORIZED, "log in first");
    };
    let mut names: Vec<String> = q
        .apps
        .split(',')
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    if let Some(detail) = &q.detail {
        if !names.contains(detail) {
            names.push(detail.clone());
        }
    }
    if names.len() > STREAM_APPS {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("apps: at most {STREAM_APPS} in one stream"),
        );
    }
    let known = match proto::watch::list_apps(&d.client, &d.config.prefix).await {
        Ok(known) => known,
        Err(e) => return refuse(StatusCode::BAD_GATEWAY, format!("listing apps: {e}")),
    };
    if let Some(app) = names.iter().find(|a| !known.contains(*a)) {
        return refuse(StatusCode::NOT_FOUND, format!("no app {app:?}"));
    }
    let access = d.access_to(&token, &session, &names).await;
    if let Some(app) = names
        .iter()
        .find(|a| !access.get(*a).is_some_and(|x| x.read))
    {
        return refuse(
            StatusCode::FORBIDDEN,
            format!("your etcd user may not read app {app:?}"),
        );
    }
    let mut first = Vec::new();
    let mut receivers = Vec::new();
    for app in &names {
        let (hub, rx) = match d.hub(app, true).await {
            Ok(subscribed) => subscribed,
            Err(refused) => return refused.into_response(),
        };
        let detail = q.detail.as_deref() == Some(app.as_str());
        receivers.push((detail, rx.expect("subscribed")));
        let data = if detail {
            let mut data = hub.snapshot(true);
            data["act"] = json!(access.get(app).is_some_and(|a| a.act));
            data
        } else {
            json!({"summary": hub.summary()})
        };
        first.push(hub::message(app, "snapshot", hub.revision(), data));
    }
    let guard = Arc::new(StreamGuard(d.clone()));
    let live = receivers.into_iter().map(|(detail, rx)| {
        tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |m| {
            futures::future::ready(match m {
                Ok(m) if detail || matches!(&*m.kind, "summary" | "action" | "resync") => Some(m),
                Ok(_) => None,
                // The tab fell behind: it reconnects and starts from a fresh snapshot.
                Err(_) => Some(hub::message("", "resync", 0, Value::Null)),
            })
        })
    });
    let mut ended = session.ended.subscribe();
    let mut stopping = d.stopping.subscribe();
    let end = async move {
        tokio::select! {
            _ = ended.wait_for(|e| *e) => {}
            _ = stopping.wait_for(|s| *s) => {}
        }
    };
    let events = futures::stream::iter(first)
        .chain(futures::stream::select_all(live))
        .take_until(Box::pin(end))
        .map(move |m| {
            let _alive = &guard;
            Ok::<_, std::convert::Infallible>(Event::default().data(&*m.json))
        });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[derive(Deserialize)]
struct LogsQuery {
    host: String,
    color: String,
    #[serde(default = "default_tail")]
    tail: u32,
}

fn default_tail() -> u32 {
    200
}

/// The last lines of one color's app log on one host, through its agent (as `coordinator logs`).
async fn logs(
    State(d): State<Shared>,
    headers: HeaderMap,
    Path(app): Path<String>,
    query: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some((token, session)) = d.session(&headers) else {
        return refuse(StatusCode::UNAUTHORIZED, "log in first");
    };
    let Ok(Query(q)) = query else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "give host, color (blue or green) and tail",
        );
    };
    let access = d
        .access_to(&token, &session, std::slice::from_ref(&app))
        .await;
    if !access.get(&app).is_some_and(|a| a.read) {
        return refuse(
            StatusCode::FORBIDDEN,
            format!("your etcd user may not read app {app:?}"),
        );
    }
    // `--flag=value`: a value is never taken for a flag of its own.
    let args = vec![
        "logs".to_string(),
        format!("--host={}", q.host),
        format!("--color={}", q.color),
        format!("--tail={}", q.tail.min(5000)),
    ];
    let call = Call {
        access: session.access.clone(),
        app,
        args,
        json: false,
        invoker: Invoker {
            actor: session.actor(&d.config.anonymous_actor),
            command: "ui logs".into(),
            events: None,
        },
    };
    let Ok(_turn) = d.running.clone().acquire_owned().await else {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "the dashboard is stopping");
    };
    let done = (d.runner)(call).await;
    let status = if done.exit == 0 {
        StatusCode::OK
    } else {
        StatusCode::BAD_GATEWAY
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        done.text,
    )
        .into_response()
}

/// Keeps an app's hub while an action reports through it.
struct ActionGuard(Arc<Hub>);

impl Drop for ActionGuard {
    fn drop(&mut self) {
        self.0.actions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs one action for the session's person. It runs in its own task, to its end, even if the
/// tab that asked closes; its progress lines and its result go to every tab showing the app.
async fn action(
    State(d): State<Shared>,
    headers: HeaderMap,
    Path((app, name)): Path<(String, String)>,
) -> Response {
    let (token, session) = match d.session_with_csrf(&headers) {
        Ok(s) => s,
        Err(refused) => return refused.into_response(),
    };
    let Some(argv) = routes::action_argv(&name) else {
        return refuse(StatusCode::NOT_FOUND, format!("no action {name:?}"));
    };
    let access = d
        .access_to(&token, &session, std::slice::from_ref(&app))
        .await;
    if !access.get(&app).is_some_and(|a| a.act) {
        let why = if !d.config.etcd_auth {
            "actions are off: etcd auth is off and the dashboard was started without \
             --allow-actions"
                .to_string()
        } else {
            format!("your etcd user may not change app {app:?}")
        };
        return refuse(StatusCode::FORBIDDEN, why);
    }
    let hub = match d.hub(&app, false).await {
        Ok((hub, _)) => hub,
        Err(refused) => return refused.into_response(),
    };
    hub.actions.fetch_add(1, Ordering::Relaxed);
    let keep = ActionGuard(hub.clone());
    let Ok(turn) = d.running.clone().acquire_owned().await else {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "the dashboard is stopping");
    };
    let id = auth::random_token()[..12].to_string();
    let actor = session.actor(&d.config.anonymous_actor);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let forward = {
        let (hub, app, id, name, actor) = (
            hub.clone(),
            app.clone(),
            id.clone(),
            name.clone(),
            actor.clone(),
        );
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                for l in line.lines().filter(|l| !l.trim().is_empty()) {
                    let event: Value = serde_json::from_str(l).unwrap_or(json!({"detail": l}));
                    let data = json!({"id": id, "action": name, "actor": actor, "event": event});
                    hub.send(hub::message(&app, "action", 0, data));
                }
            }
        })
    };
    let call = Call {
        access: session.access.clone(),
        app: app.clone(),
        args: argv.iter().map(|a| a.to_string()).collect(),
        json: true,
        invoker: Invoker {
            actor: actor.clone(),
            command: format!("ui {}", argv.join(" ")),
            events: Some(tx),
        },
    };
    let runner = d.runner.clone();
    let running = tokio::spawn(async move {
        let done = runner(call).await;
        let _ = forward.await;
        let data = json!({"id": id, "action": name, "actor": actor, "event": done.event,
                          "exit": done.exit, "text": done.text});
        keep.0.send(hub::message(&app, "action", 0, data.clone()));
        drop((keep, turn));
        (done, data)
    });
    let (done, data) = match running.await {
        Ok(finished) => finished,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("action: {e}")),
    };
    let status = if done.exit == 6 {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::OK
    };
    (status, Json(data)).into_response()
}

/// Serves the dashboard on `listener` (over TLS with `tls`) until `shutdown` resolves.
pub async fn serve(
    dashboard: Shared,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = dashboard.router();
    let d = dashboard.clone();
    // Streams never end on their own: end them first, or the server would wait for them.
    let shutdown = async move {
        shutdown.await;
        let _ = d.stopping.send(true);
    };
    match tls {
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(acceptor) => {
            axum::serve(TlsListener::spawn(listener, acceptor)?, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// TLS connections whose handshake finished. Handshakes run concurrently, each bounded (5 s),
/// so a client that never finishes its handshake delays nobody else; a failed one never reaches
/// the router.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        std::net::SocketAddr,
    )>,
    local: std::net::SocketAddr,
}

impl TlsListener {
    fn spawn(
        listener: tokio::net::TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
    ) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            while !tx.is_closed() {
                let (tcp, addr) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, most often: give the process a moment.
                        tracing::warn!(error = %e, "dashboard accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake = acceptor.accept(tcp);
                    match tokio::time::timeout(std::time::Duration::from_secs(5), handshake).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%addr, error = %e, "dashboard TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%addr, "dashboard TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The TLS acceptor of `--tls-cert` and `--tls-key` (PEM).
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--tls-cert {}: no certificate in it",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    // HTTP/2 where the browser speaks it: every tab's stream is then one more stream on one
    // connection, not one of the six HTTP/1.1 connections a browser opens per site.
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
