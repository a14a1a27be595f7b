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
use std::sync::atomic::{AtomicUsize, Ordering};
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
}

pub struct Dashboard {
    config: Config,
    client: etcd_client::Client,
    hubs: tokio::sync::Mutex<BTreeMap<String, Arc<Hub>>>,
    sessions: Mutex<Sessions>,
    runner: Runner,
    streams: AtomicUsize,
}

type Shared = Arc<Dashboard>;

/// An error answer: a status and a message naming what was wrong.
fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

impl Dashboard {
    pub fn new(config: Config, client: etcd_client::Client, runner: Runner) -> Shared {
        Arc::new(Dashboard {
            config,
            client,
            hubs: Default::default(),
            sessions: Default::default(),
            runner,
            streams: AtomicUsize::new(0),
        })
    }

    /// The router, built from [`ROUTES`].
    pub fn router(self: &Shared) -> Router {
        let mut router = Router::new();
        for route in ROUTES {
            router = router.route(route.path, handler(route.id));
        }
        router
            .layer(axum::middleware::map_response(security_headers))
            .with_state(self.clone())
    }

    /// Etcd watches open now (one per app shown) and browser streams open now.
    pub async fn counts(&self) -> (usize, usize) {
        (
            self.hubs.lock().await.len(),
            self.streams.load(Ordering::Relaxed),
        )
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
    fn session_with_csrf(&self, headers: &HeaderMap) -> Result<(String, Session), Response> {
        let Some((token, session)) = self.session(headers) else {
            return Err(refuse(StatusCode::FORBIDDEN, "no session: log in first"));
        };
        let given = headers
            .get(auth::CSRF_HEADER)
            .and_then(|v| v.to_str().ok());
        if !auth::csrf_matches(&session.csrf, given) {
            return Err(refuse(
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
        };
        self.sessions
            .lock()
            .unwrap()
            .insert(token.clone(), session.clone());
        (token, session)
    }

    /// What the session's user may do with each of `apps`, asked of etcd as that user for the
    /// apps not asked about yet, and remembered.
    async fn access_to(
        &self,
        token: &str,
        session: &Session,
        apps: &[String],
    ) -> BTreeMap<String, AppAccess> {
        let mut known = session.apps.clone();
        let missing: Vec<&String> = apps.iter().filter(|a| !known.contains_key(*a)).collect();
        if !missing.is_empty() {
            let client = if self.config.etcd_auth {
                proto::access::connect(&session.access).await.ok()
            } else {
                None
            };
            for app in missing {
                let access = match (&client, Keys::new(&self.config.prefix, app)) {
                    (_, Err(_)) => AppAccess {
                        read: false,
                        act: false,
                    },
                    (None, Ok(_)) => AppAccess {
                        read: !self.config.etcd_auth,
                        act: !self.config.etcd_auth && self.config.allow_actions,
                    },
                    (Some(client), Ok(keys)) => may(client, &keys).await,
                };
                known.insert(app.clone(), access);
            }
            if let Some(s) = self.sessions.lock().unwrap().touch(token, Instant::now()) {
                s.apps = known.clone();
            }
        }
        apps.iter()
            .filter_map(|a| known.get(a).map(|x| (a.clone(), *x)))
            .collect()
    }

    /// The hub of `app`, started on first use.
    async fn hub(&self, app: &str) -> Result<Arc<Hub>, Response> {
        let mut hubs = self.hubs.lock().await;
        if let Some(hub) = hubs.get(app) {
            return Ok(hub.clone());
        }
        let keys = Keys::new(&self.config.prefix, app)
            .map_err(|e| refuse(StatusCode::NOT_FOUND, e.to_string()))?;
        let hub = Hub::start(&self.client, keys).await.map_err(|e| {
            refuse(
                StatusCode::BAD_GATEWAY,
                format!("reading {app} from etcd: {e}"),
            )
        })?;
        hubs.insert(app.to_string(), hub.clone());
        Ok(hub)
    }

    /// Stops the hubs nobody watches any more.
    async fn release_hubs(&self) {
        let mut hubs = self.hubs.lock().await;
        hubs.retain(|_, hub| {
            let watched = hub.viewers() > 0;
            if !watched {
                hub.stop();
            }
            watched
        });
    }
}

/// What `client`'s user may do with the app of `keys`: read it, and write the keys every action
/// writes (proven without writing anything).
async fn may(client: &etcd_client::Client, keys: &Keys) -> AppAccess {
    let read = proto::access::check_permissions(client, &[keys.app_prefix().to_string()], &[])
        .await
        .is_ok();
    let writes = [keys.lock(), keys.active(), keys.canary_request()];
    let act = read
        && proto::access::check_permissions(client, &[], &writes)
            .await
            .is_ok();
    AppAccess { read, act }
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
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
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
        Err(refused) => return refused,
    };
    d.sessions.lock().unwrap().remove(&token);
    with_cookie(auth::clear_cookie(d.config.tls), json!({"logged_out": true}))
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
        let summary = match d.hub(&app).await {
            Ok(hub) => hub.summary(),
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

/// Decrements the stream count and stops unwatched hubs when a tab's stream ends.
struct StreamGuard(Shared);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
        let d = self.0.clone();
        tokio::spawn(async move { d.release_hubs().await });
    }
}

/// One server-sent-event stream per tab for everything it shows: a snapshot first, then every
/// change as it happens.
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
    let access = d.access_to(&token, &session, &names).await;
    if let Some(app) = names.iter().find(|a| !access.get(*a).is_some_and(|x| x.read)) {
        return refuse(
            StatusCode::FORBIDDEN,
            format!("your etcd user may not read app {app:?} (or it does not exist)"),
        );
    }
    let mut first = Vec::new();
    let mut receivers = Vec::new();
    for app in &names {
        let hub = match d.hub(app).await {
            Ok(hub) => hub,
            Err(refused) => return refused,
        };
        let detail = q.detail.as_deref() == Some(app.as_str());
        receivers.push((detail, hub.subscribe()));
        let data = if detail {
            hub.snapshot(true)
        } else {
            json!({"summary": hub.summary()})
        };
        first.push(hub::message(app, "snapshot", data));
    }
    d.streams.fetch_add(1, Ordering::Relaxed);
    let guard = Arc::new(StreamGuard(d.clone()));
    let live = receivers.into_iter().map(|(detail, rx)| {
        tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |m| {
            futures::future::ready(match m {
                Ok(m) if detail || matches!(&*m.kind, "summary" | "action") => Some(m),
                Ok(_) => None,
                // The tab fell behind: it reconnects and starts from a fresh snapshot.
                Err(_) => Some(hub::message("", "resync", Value::Null)),
            })
        })
    });
    let events = futures::stream::iter(first)
        .chain(futures::stream::select_all(live))
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
        return refuse(StatusCode::BAD_REQUEST, "give host, color (blue or green) and tail");
    };
    let access = d.access_to(&token, &session, std::slice::from_ref(&app)).await;
    if !access.get(&app).is_some_and(|a| a.read) {
        return refuse(StatusCode::FORBIDDEN, format!("your etcd user may not read app {app:?}"));
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
    let done = (d.runner)(call).await;
    let status = if done.exit == 0 {
        StatusCode::OK
    } else {
        StatusCode::BAD_GATEWAY
    };
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], done.text).into_response()
}

/// Runs one action for the session's person. It runs in its own task: a tab closed mid-action
/// does not cut it short. Its progress lines go to every tab showing the app.
async fn action(
    State(d): State<Shared>,
    headers: HeaderMap,
    Path((app, name)): Path<(String, String)>,
) -> Response {
    let (token, session) = match d.session_with_csrf(&headers) {
        Ok(s) => s,
        Err(refused) => return refused,
    };
    let Some(argv) = routes::action_argv(&name) else {
        return refuse(StatusCode::NOT_FOUND, format!("no action {name:?}"));
    };
    let access = d.access_to(&token, &session, std::slice::from_ref(&app)).await;
    let may = access.get(&app).copied().unwrap_or(AppAccess {
        read: false,
        act: false,
    });
    if !may.act {
        let why = if !d.config.etcd_auth {
            "actions are off: etcd auth is off and the dashboard was started without \
             --allow-actions"
                .to_string()
        } else {
            format!("your etcd user may not change app {app:?}")
        };
        return refuse(StatusCode::FORBIDDEN, why);
    }
    let hub = match d.hub(&app).await {
        Ok(hub) => hub,
        Err(refused) => return refused,
    };
    let id = auth::random_token()[..12].to_string();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let forward = {
        let (hub, app, id, name) = (hub.clone(), app.clone(), id.clone(), name.clone());
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                for l in line.lines().filter(|l| !l.trim().is_empty()) {
                    let event: Value = serde_json::from_str(l).unwrap_or(json!({"detail": l}));
                    hub.send(hub::message(
                        &app,
                        "action",
                        json!({"id": id, "action": name, "event": event}),
                    ));
                }
            }
        })
    };
    let command = format!("ui {}", argv.join(" "));
    let call = Call {
        access: session.access.clone(),
        app: app.clone(),
        args: argv.iter().map(|a| a.to_string()).collect(),
        json: true,
        invoker: Invoker {
            actor: session.actor(&d.config.anonymous_actor),
            command,
            events: Some(tx),
        },
    };
    let runner = d.runner.clone();
    let running = tokio::spawn(async move {
        let done = runner(call).await;
        let _ = forward.await;
        done
    });
    let done = match running.await {
        Ok(done) => done,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("{name}: {e}")),
    };
    hub.send(hub::message(
        &app,
        "action",
        json!({"id": id, "action": name, "event": done.event, "exit": done.exit}),
    ));
    let status = if done.exit == 6 {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::OK
    };
    (
        status,
        Json(json!({"id": id, "action": name, "exit": done.exit, "text": done.text, "result": done.event})),
    )
        .into_response()
}

/// Serves the dashboard on `listener` (over TLS with `tls`) until `shutdown` resolves.
pub async fn serve(
    dashboard: Shared,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = dashboard.router();
    match tls {
        None => axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await,
        Some(acceptor) => {
            axum::serve(TlsListener { listener, acceptor }, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// A TCP listener that hands axum only connections whose TLS handshake finished; a handshake
/// that fails or stalls (5 s) is dropped and never reaches the router.
struct TlsListener {
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.listener.accept().await else {
                continue;
            };
            let handshake = self.acceptor.accept(tcp);
            match tokio::time::timeout(std::time::Duration::from_secs(5), handshake).await {
                Ok(Ok(tls)) => return (tls, addr),
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "dashboard TLS handshake failed"),
                Err(_) => tracing::debug!(%addr, "dashboard TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
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
        return Err(format!("--tls-cert {}: no certificate in it", cert.display()));
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
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
