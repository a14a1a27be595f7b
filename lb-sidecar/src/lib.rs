//! The lb-sidecar: one per load balancer. Follows the app's prefix in etcd and keeps nginx serving
//! the active color's healthy hosts (docs/how-it-works.md, "The lb-sidecar"). Fail static: while etcd is
//! unreachable nginx keeps its last good config and the sidecar keeps retrying.
#![forbid(unsafe_code)]

pub mod applier;
pub mod config;
pub mod error;
#[cfg(test)]
mod inject_tests;
pub mod lua;
pub mod metrics;
pub mod nginx;
pub mod render;
pub mod requests;
pub mod state;
pub mod upstreams;

use applier::Applier;
use config::Config;
use error::SidecarError;
use metrics::Metrics;
use nginx::NginxControl;
use proto::leased::{HeldKey, Hold};
use proto::records::{encode, LbAliveRecord, LbRecord};
use proto::watch::{PrefixWatch, WatchEvent};
use proto::Keys;
use requests::Tally;
use state::{Effect, LbState};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Runs until `shutdown` becomes true. nginx keeps serving whatever it was last given. With
/// `[[apps]]`, one follower per app, all under one lease and one status listener.
pub async fn run(config: Config, shutdown: watch::Receiver<bool>) -> Result<(), SidecarError> {
    let multi = !config.apps.is_empty();
    let apps: Vec<Config> = if multi {
        config.apps.clone()
    } else {
        vec![config.clone()]
    };
    // A bad prefix or app name fails before anything is bound.
    for app in &apps {
        Keys::new(&app.prefix, &app.app)?;
    }
    let metrics: Vec<(String, Arc<Metrics>)> = apps
        .iter()
        .map(|a| {
            let labelled = multi.then_some(a.app.as_str());
            (a.app.clone(), Arc::new(Metrics::for_app(labelled)))
        })
        .collect();
    let listener = tokio::net::TcpListener::bind(config.status_listen)
        .await
        .map_err(|e| {
            SidecarError::Setting(format!(
                "status_listen: cannot listen on {}: {e}",
                config.status_listen
            ))
        })?;
    let mut server_shutdown = shutdown.clone();
    let server = axum::serve(listener, metrics::router(metrics.clone())).with_graceful_shutdown(
        async move {
            proto::daemon::shutdown_requested(&mut server_shutdown).await;
        },
    );
    tokio::spawn(async move { server.await });

    let client = proto::connect(&config.etcd).await?;
    if let Some(path) = &config.default_server {
        nginx::install_default_servers(&config, path).await;
    }
    let lua = choose_mode(&config, &apps).await?;
    // One nginx for every app: their debounced changes share reloads (Lua mode has none).
    let hub = (multi && lua.is_none()).then(|| {
        let signaller = nginx::Nginx::new(
            config.nginx.clone(),
            config.listen,
            None,
            config.state_dir.clone(),
        );
        Arc::new(nginx::ReloadHub::new(move || signaller.reload()))
    });
    let mut seams = Vec::new();
    for (i, (app, (_, metrics))) in apps.into_iter().zip(metrics).enumerate() {
        let request_log = start_request_log(&app, metrics.clone());
        let nginx = nginx::Nginx::new(
            app.nginx.clone(),
            app.listen,
            app.public_url.clone(),
            app.state_dir.clone(),
        )
        .with_status_host(app.status_host.clone());
        let nginx = match &hub {
            Some(hub) => nginx.with_hub(hub.clone(), &app.app),
            None => nginx,
        };
        seams.push(AppSeams {
            config: app,
            nginx,
            metrics,
            request_log,
            lua: lua.as_ref().map(|setups| setups[i].clone()),
        });
    }
    follow_apps(&config, client, seams, shutdown).await
}

/// Lua mode's setup for every app (`None`: reload mode): what `[nginx] mode` says or, unset,
/// Lua whenever nginx takes the Lua balancer (`nginx -t` with the first app's file). Each app
/// keeps the push token already in its include file, so a restarted sidecar reloads nothing.
async fn choose_mode(
    config: &Config,
    apps: &[Config],
) -> Result<Option<Vec<applier::LuaSetup>>, SidecarError> {
    if config.nginx.mode == Some(config::Mode::Reload) {
        tracing::info!(
            "nginx mode: reload ([nginx] mode or a template): every switch reloads nginx"
        );
        forget_lua_states(apps);
        return Ok(None);
    }
    let mut setups = Vec::new();
    for app in apps {
        let current = std::fs::read_to_string(&app.nginx.include_file).unwrap_or_default();
        let token = match lua::token_in(&current) {
            Some(token) => token,
            None => lua::new_token().map_err(|e| SidecarError::io("/dev/urandom", e))?,
        };
        if let Err(e) = lua::check_path("state_dir", &app.state_dir) {
            if config.nginx.mode == Some(config::Mode::Lua) {
                return Err(e);
            }
            tracing::warn!(error = %e, "nginx mode: reload, since Lua mode cannot name this state_dir: every switch reloads nginx");
            forget_lua_states(apps);
            return Ok(None);
        }
        setups.push(applier::LuaSetup {
            token,
            module_file: app.state_dir.join("balancer.lua"),
            state_file: app.state_dir.join("lua-state.json"),
        });
    }
    for app in apps {
        // nginx's workers (another user) load the balancer and the last state from here by
        // name: they may search the directory, and no one else may list or write it.
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&app.state_dir).map_err(|e| SidecarError::io(&app.state_dir, e))?;
        std::fs::set_permissions(&app.state_dir, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| SidecarError::io(&app.state_dir, e))?;
    }
    let first = &apps[0];
    let nginx = nginx::Nginx::new(
        first.nginx.clone(),
        first.listen,
        None,
        first.state_dir.clone(),
    );
    match applier_for(first, nginx).check_lua(&setups[0]).await {
        Ok(()) => {
            tracing::info!(
                "nginx mode: lua (switches, canary weights and host changes never reload nginx)"
            );
            Ok(Some(setups))
        }
        Err(complaint) if config.nginx.mode == Some(config::Mode::Lua) => {
            Err(SidecarError::Setting(format!(
                "nginx.mode: \"lua\", but nginx -t refuses the Lua balancer: {complaint}"
            )))
        }
        Err(complaint) => {
            tracing::warn!(%complaint, "nginx mode: reload, since nginx does not take the Lua balancer (install libnginx-mod-http-lua, lua-resty-core and lua-cjson and load the module, or set [nginx] mode = \"reload\" to say so): every switch reloads nginx");
            forget_lua_states(apps);
            Ok(None)
        }
    }
}

/// Reload mode: an earlier Lua mode's last states go, so that a later return to Lua mode never
/// serves one of them (weeks old, maybe) before its first push.
fn forget_lua_states(apps: &[Config]) {
    for app in apps {
        let _ = std::fs::remove_file(app.state_dir.join("lua-state.json"));
    }
}

/// An app's applier over `nginx`, with the app's host names, certificate and status host.
fn applier_for<N: NginxControl>(config: &Config, nginx: N) -> Applier<N> {
    Applier::new(
        nginx,
        config.template.clone(),
        &config.app,
        config.listen.to_string(),
        config.preview_listen.to_string(),
    )
    .with_server_names(config.server_names.clone())
    .with_tls(config.tls.clone())
    .with_status_host(config.status_host.clone())
}

/// One app a sidecar serves: its settings and the seams its follower works through.
pub struct AppSeams<N> {
    pub config: Config,
    pub nginx: N,
    pub metrics: Arc<Metrics>,
    pub request_log: RequestLog,
    /// Lua mode's setup; `None`: reload mode.
    pub lua: Option<applier::LuaSetup>,
}

/// Keeps every app of `apps` following etcd, all under one lease taken with `sidecar`'s TTL and
/// state directory, until `shutdown`: the real sidecar over real nginx, or a hollow LB (the scale
/// benchmarks' test support) over a stand-in. The first follower to end (shutdown, or an app that
/// could not start) ends the sidecar: nginx keeps serving what it was last given.
pub async fn follow_apps<N: NginxControl>(
    sidecar: &Config,
    client: etcd_client::Client,
    apps: Vec<AppSeams<N>>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), SidecarError> {
    std::fs::create_dir_all(&sidecar.state_dir)
        .map_err(|e| SidecarError::io(&sidecar.state_dir, e))?;
    let instance = proto::leased::instance_id(&sidecar.state_dir);
    let (held, held_rx) = proto::leased::HeldSet::new();
    let holding = tokio::spawn(proto::leased::hold_keys(
        client.clone(),
        sidecar.lease_ttl,
        instance.clone(),
        held_rx,
        shutdown.clone(),
    ));
    let mut followers = tokio::task::JoinSet::new();
    for app in apps {
        followers.spawn(follow_in(
            app,
            client.clone(),
            (held.clone(), instance.clone()),
            shutdown.clone(),
        ));
    }
    let result = match followers.join_next().await {
        Some(Ok(result)) => result,
        Some(Err(e)) => Err(SidecarError::Setting(format!("a follower failed: {e}"))),
        None => Ok(()),
    };
    if result.is_ok() {
        while followers.join_next().await.is_some() {}
        let _ = holding.await;
    }
    result
}

/// Where nginx logs requests to, and the tally they go into: the socket in the state directory.
/// Without it (a path nginx cannot take, a socket that cannot be bound) the LB still serves;
/// only a canary's analysis has no numbers from it, which it reports as insufficient data.
/// Where nginx's request log goes and what counts it (none for a hollow LB).
pub type RequestLog = Option<(String, Arc<Mutex<Tally>>)>;

fn start_request_log(config: &Config, metrics: Arc<Metrics>) -> RequestLog {
    let path = requests::socket_path(&config.state_dir);
    let shown = path.display().to_string();
    if shown.len() > 100 || shown.contains(|c: char| c.is_whitespace() || ",;{}'\"".contains(c)) {
        tracing::warn!(path = %shown, "request log off: nginx cannot take this socket path (a shorter state_dir without spaces or ,;{{}} fixes it)");
        return None;
    }
    if let Err(e) = std::fs::create_dir_all(&config.state_dir) {
        tracing::warn!(path = %shown, error = %e, "request log off: no state directory");
        return None;
    }
    let tally = Arc::new(Mutex::new(Tally::default()));
    let senders = requests::Senders::new(config.nginx.pid_file.clone());
    match requests::listen(&path, tally.clone(), metrics, senders) {
        Ok(_task) => Some((shown, tally)),
        Err(e) => {
            tracing::warn!(path = %shown, error = %e, "request log off: cannot bind its socket");
            None
        }
    }
}

/// Claims the LB name for one app, then keeps its nginx serving what etcd says until
/// `shutdown`. Its keys go into `held`, which the sidecar holds under its one lease with its
/// other apps' keys (as `instance`).
async fn follow_in<N: NginxControl>(
    app: AppSeams<N>,
    client: etcd_client::Client,
    (held, instance): (proto::leased::HeldSet, String),
    shutdown: watch::Receiver<bool>,
) -> Result<(), SidecarError> {
    let AppSeams {
        config,
        nginx,
        metrics,
        request_log,
        lua,
    } = app;
    let keys = Keys::new(&config.prefix, &config.app)?;
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|e| SidecarError::io(&config.state_dir, e))?;
    let mut applier = applier_for(&config, nginx).with_lua(lua);
    let tally = match request_log {
        Some((path, tally)) => {
            applier = applier.with_request_log(path);
            Some(tally)
        }
        None => None,
    };
    // One sidecar per LB name: a second one must not overwrite the first one's acks. Our own
    // previous run is taken over at once; a dead stranger's lease expires within its TTL.
    let started_at = proto::time::now_rfc3339();
    let alive = HeldKey::new(
        keys.lb_alive(&config.name),
        encode(&LbAliveRecord {
            instance: instance.clone(),
            started_at: started_at.clone(),
        }),
        Hold::Claim,
    );
    proto::leased::await_claim(
        &client,
        &alive.key,
        &instance,
        config.lease_ttl + Duration::from_secs(2),
    )
    .await
    .map_err(|e| SidecarError::Setting(format!("name {:?}: {e}", config.name)))?;
    held.publish(&config.app, vec![alive.clone()]);
    // The upstream lists' key is newer than most roles: a role without it costs `lb list
    // --verbose` this LB's lists, never its acks, and is said once instead of retried forever.
    let lists_key = keys.lb_upstreams(&config.name);
    let upstream_lists = match proto::access::check_permissions(
        &client,
        &[],
        std::slice::from_ref(&lists_key),
    )
    .await
    {
        Err(e) if e.is_permission_denied() => {
            tracing::warn!(key = %lists_key,
                    "this sidecar's etcd role may not write its upstream lists: re-run deploy/etcd-auth.sh; until then `coordinator lb list --verbose` shows none for this LB");
            false
        }
        _ => true,
    };
    let upstreams = upstreams::UpstreamPolicy {
        enforced: true,
        own: [
            config.listen,
            config.preview_listen,
            config.status_listen,
            config.nginx.status_listen,
        ]
        .into_iter()
        .chain(config.tls.as_ref().map(|t| t.listen))
        .collect(),
        local: upstreams::local_addresses(),
        allow: config.upstreams_allow.clone(),
    };
    let follower = Follower {
        keys,
        client,
        applier,
        metrics,
        config,
        held,
        alive,
        ack_key: None,
        upstreams_key: None,
        upstream_lists,
        stats: tally.map(|tally| Stats {
            tally,
            instance,
            started_at,
            key: None,
            published: None,
        }),
        repeats: proto::repeats::Repeats::new(Duration::from_secs(30)),
        state: LbState {
            upstreams,
            ..LbState::default()
        },
        ack: None,
        revision: 0,
        failed: false,
        last_reload: None,
    };
    follower.run(shutdown).await;
    Ok(())
}

struct Follower<N: NginxControl> {
    keys: Keys,
    client: etcd_client::Client,
    applier: Applier<N>,
    metrics: Arc<Metrics>,
    config: Config,
    /// Where this app's keys go: the sidecar holds every app's under its one lease.
    held: proto::leased::HeldSet,
    /// Our liveness and claim on the LB name (leased), held beside the durable ack.
    alive: HeldKey,
    /// The durable ack, once written.
    ack_key: Option<HeldKey>,
    /// The upstream lists the ack counts, durable; rewritten only when a list changes.
    upstreams_key: Option<HeldKey>,
    /// Whether this sidecar's etcd role lets it write those lists.
    upstream_lists: bool,
    /// nginx's request counts, when it logs to this sidecar.
    stats: Option<Stats>,
    /// Holds back identical error lines while a failed apply is retried.
    repeats: proto::repeats::Repeats,
    state: LbState,
    /// The last ack written, kept so that an error can be added to it without losing the rest.
    ack: Option<LbRecord>,
    /// The newest etcd revision processed.
    revision: i64,
    /// The last apply failed: nginx does not serve what etcd says.
    failed: bool,
    /// When nginx last reloaded (any cause): health churn waits `min_reload_interval` after it.
    last_reload: Option<Instant>,
}

/// The request tally and the leased `lb-stats/<name>` key it is published to.
struct Stats {
    tally: Arc<Mutex<Tally>>,
    instance: String,
    started_at: String,
    key: Option<HeldKey>,
    published: Option<Instant>,
}

/// How often changed request counts are published while an operation or a canary may read them
/// (its analysis looks about as often), and otherwise: every publication is an etcd revision kept
/// until compaction, so an idle fleet must not write one per LB per second.
const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// How often the TLS certificate's files are checked for a change.
const CERTIFICATE_CHECK_INTERVAL: Duration = Duration::from_secs(5);
const IDLE_STATS_INTERVAL: Duration = Duration::from_secs(60);

/// Backoff for re-applying after a failure: 500 ms doubling to 10 s, reset by a success.
#[derive(Debug)]
struct Retry {
    at: Option<Instant>,
    delay: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            at: None,
            delay: Duration::from_millis(500),
        }
    }
}

impl Retry {
    fn schedule(&mut self) {
        self.at = Some(Instant::now() + self.delay);
        self.delay = (self.delay * 2).min(Duration::from_secs(10));
    }

    /// After an apply: keep retrying while it fails, stop (and reset) once it works.
    fn after(&mut self, failed: bool) {
        if failed {
            self.schedule();
        } else {
            *self = Retry::default();
        }
    }
}

impl<N: NginxControl> Follower<N> {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut watch = loop {
            tokio::select! {
                started = self.watch_view() => match started {
                    Ok((snapshot, watch)) => {
                        self.resync(snapshot).await;
                        break watch;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "etcd unreachable; nginx keeps its last config, retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
                _ = proto::daemon::shutdown_requested(&mut shutdown) => return,
            }
        };
        let mut debounce_until: Option<Instant> = None;
        // After a failed apply (nginx down, disk full, a reload nginx refused), try again until
        // nginx serves what etcd says, not only when the next etcd event comes.
        let mut retry = Retry::default();
        if self.failed {
            retry.schedule();
        }
        let mut stats_tick = tokio::time::interval(STATS_INTERVAL);
        stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut certificate_tick = tokio::time::interval(CERTIFICATE_CHECK_INTERVAL);
        certificate_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut certificate = self.certificate_stamp();
        loop {
            let debounce = tokio::time::sleep_until(
                debounce_until.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400)),
            );
            let retry_at = retry.at;
            tokio::select! {
                event = watch.next() => match event {
                    Ok(WatchEvent::Changes { revision, changes }) => {
                        self.metrics.saw_event();
                        let seen = Instant::now();
                        self.revision = revision;
                        let mut effect = Effect::None;
                        for change in changes {
                            match self.state.apply(&self.keys, &change.key, change.value.as_deref()) {
                                Ok(e) => effect = effect.max(e),
                                Err(problem) => self.report_error(problem),
                            }
                        }
                        match effect {
                            Effect::Switch => {
                                // A switch reloads at once, never waiting for other apps; it
                                // carries this app's pending change with it.
                                debounce_until = None;
                                self.applier.nginx.batch_leave();
                                if self.apply(true).await {
                                    self.metrics.observe_switch(seen.elapsed());
                                }
                                retry.after(self.failed);
                            }
                            Effect::Topology => {
                                if debounce_until.is_none() {
                                    // With other apps on this nginx, the first one's change opens
                                    // a batch that every app's change joins: one reload for all.
                                    let at = self.churn_reload_at();
                                    debounce_until = Some(self.applier.nginx.batch_join(at));
                                }
                            }
                            Effect::None => {}
                        }
                    }
                    Ok(WatchEvent::Resync(snapshot)) => {
                        debounce_until = None;
                        self.resync(snapshot).await;
                        retry.after(self.failed);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "watch canceled; re-reading");
                        if let Ok((snapshot, w)) = self.watch_view().await {
                            watch = w;
                            self.resync(snapshot).await;
                        }
                    }
                },
                _ = debounce, if debounce_until.is_some() => {
                    debounce_until = None;
                    let applied = self.apply(false).await;
                    self.applier.nginx.batch_leave();
                    if applied {
                        self.prevalidate_other().await;
                    }
                    retry.after(self.failed);
                }
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                    tracing::info!(delay = ?retry.delay, "retrying the last failed apply");
                    if self.apply(true).await {
                        self.prevalidate_other().await;
                    }
                    retry.after(self.failed);
                }
                _ = stats_tick.tick(), if self.stats.is_some() => {
                    let draining = self.read_open_connections().await;
                    self.publish_stats(draining);
                }
                _ = certificate_tick.tick(), if self.config.tls.is_some() => {
                    let now = self.certificate_stamp();
                    if now != certificate && self.state.active.is_some() {
                        tracing::info!("the TLS certificate or key changed: reloading nginx");
                        self.applier.certificate_changed();
                        self.apply(true).await;
                        retry.after(self.failed);
                    }
                    certificate = now;
                }
                _ = proto::daemon::shutdown_requested(&mut shutdown) => return,
            }
        }
    }

    /// Lua mode: takes nginx's open requests per color into the tally; true when the idle
    /// color's count moved (a color draining after a switch, which the next deploy waits for).
    async fn read_open_connections(&mut self) -> bool {
        if self.applier.mode() != config::Mode::Lua {
            return false;
        }
        let (Some(active), Some(stats)) = (&self.state.active, &self.stats) else {
            return false;
        };
        let idle = active.color.other();
        match self.applier.nginx.open_connections().await {
            Some(open) => stats.tally.lock().unwrap().set_open(open, idle),
            None => false,
        }
    }

    /// Publishes the request counts if they changed, every second while they are read (or the
    /// idle color's open requests move), every minute otherwise.
    fn publish_stats(&mut self, draining: bool) {
        let wanted = self.state.counts_wanted() || draining;
        let Some(stats) = self.stats.as_mut() else {
            return;
        };
        if !wanted
            && stats
                .published
                .is_some_and(|t| t.elapsed() < IDLE_STATS_INTERVAL)
        {
            return;
        }
        let changed = stats
            .tally
            .lock()
            .unwrap()
            .take_changed(&stats.instance, &stats.started_at);
        if let Some(record) = changed {
            stats.published = Some(Instant::now());
            stats.key = Some(HeldKey::new(
                self.keys.lb_stats(&self.config.name),
                encode(&record),
                Hold::Leased,
            ));
            self.send_held();
        }
    }

    /// When the TLS certificate and key files last changed (none without TLS): a renewed
    /// certificate is loaded by the next reload, which the sidecar then makes at once.
    fn certificate_stamp(&self) -> Option<Vec<Option<std::time::SystemTime>>> {
        let tls = self.config.tls.as_ref()?;
        Some(
            [&tls.cert, &tls.key]
                .iter()
                .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
                .collect(),
        )
    }

    /// Tells the key holder what this LB holds now: liveness, its ack, its request counts.
    fn send_held(&self) {
        let held = std::iter::once(self.alive.clone())
            .chain(self.ack_key.clone())
            .chain(self.upstreams_key.clone())
            .chain(self.stats.as_ref().and_then(|s| s.key.clone()))
            .collect();
        self.held.publish(&self.config.app, held);
    }

    /// Which color each upstream address serves, for attributing logged requests.
    fn update_addresses(&self) {
        let Some(stats) = &self.stats else {
            return;
        };
        let addresses = self
            .state
            .hosts
            .values()
            .flat_map(|h| {
                [proto::Color::Blue, proto::Color::Green]
                    .map(|c| (format!("{}:{}", h.address, h.ports.of(c)), c))
            })
            .collect();
        stats.tally.lock().unwrap().set_addresses(addresses);
    }

    /// Reads and watches the keys this LB renders from (see `Keys::lb_view_range`).
    async fn watch_view(&self) -> Result<(proto::watch::Snapshot, PrefixWatch), proto::ProtoError> {
        let (from, end) = self.keys.lb_view_range();
        PrefixWatch::start_range(&self.client, &from, &end).await
    }

    /// Rebuilds the state from a full read (start, compaction) and applies it.
    async fn resync(&mut self, snapshot: proto::watch::Snapshot) {
        let mut state = LbState {
            upstreams: self.state.upstreams.clone(),
            ..LbState::default()
        };
        for (key, value) in &snapshot.entries {
            if let Err(problem) = state.apply(&self.keys, key, Some(value)) {
                self.report_error(problem);
            }
        }
        // A garbage `active` at start leaves no decision: keep what nginx serves.
        if state.active.is_none() {
            state.active = self.state.active.clone();
        }
        self.state = state;
        self.revision = snapshot.revision;
        self.metrics.saw_event();
        if self.state.active.is_some() {
            self.apply(true).await;
            self.prevalidate_other().await;
        } else if self.ack.is_none() {
            // Register before any traffic decision, so the first switch waits for this LB too.
            let ack = self.empty_ack();
            self.publish(ack);
        }
    }

    fn empty_ack(&self) -> LbRecord {
        LbRecord {
            applied_revision: 0,
            color: None,
            upstream_counts: Default::default(),
            upstreams: Vec::new(),
            config_sha256: String::new(),
            reloaded_at: String::new(),
            error: None,
            url: Some(self.applier.nginx.public_url()),
            host: self.applier.server_names.first().cloned(),
        }
    }

    /// When a reload for health churn seen now may happen: after the debounce, and no sooner than
    /// `min_reload_interval` after the last reload.
    fn churn_reload_at(&self) -> Instant {
        let debounced = Instant::now() + self.config.debounce;
        if self.applier.mode() == config::Mode::Lua {
            // A pushed state reloads nothing.
            return debounced;
        }
        match self.last_reload {
            Some(last) => debounced.max(last + self.config.min_reload_interval),
            None => debounced,
        }
    }

    /// Applies the current state; true when nginx now serves it.
    async fn apply(&mut self, force: bool) -> bool {
        let applied = self.try_apply(force).await;
        self.failed = !applied;
        applied
    }

    async fn try_apply(&mut self, force: bool) -> bool {
        match self.applier.apply(&self.state, self.revision, force).await {
            Ok(Some((ack, upstreams))) => {
                tracing::info!(revision = ack.applied_revision, color = ?ack.color, upstreams = ?upstreams.upstreams, "nginx serving");
                if self.upstream_lists {
                    self.upstreams_key = Some(HeldKey::new(
                        self.keys.lb_upstreams(&self.config.name),
                        encode(&upstreams),
                        Hold::Durable,
                    ));
                }
                self.metrics.reloaded(ack.applied_revision);
                self.last_reload = Some(Instant::now());
                self.update_addresses();
                *self.metrics.color.lock().unwrap() = ack.color.map(|c| c.to_string());
                *self.metrics.error.lock().unwrap() = None;
                self.publish(ack);
                true
            }
            Ok(None) => true,
            Err(e) => {
                self.metrics.reload_failed();
                self.report_error(e.to_string());
                false
            }
        }
    }

    /// Validates the idle color's variant now, so that the next switch is only a swap and a SIGHUP.
    async fn prevalidate_other(&mut self) {
        let Some(active) = self.state.active.clone() else {
            return;
        };
        if let Err(e) = self
            .applier
            .prepare(&self.state, active.color.other(), &active.version)
            .await
        {
            tracing::warn!(error = %e, "pre-validation of the idle color failed; a switch will validate again");
        }
    }

    /// Puts the error into the ack (keeping what is served) so the coordinator and operators see it.
    fn report_error(&mut self, error: String) {
        // Keys and values from etcd in it are data: no newline or escape sequence reaches a log.
        let error = proto::text::escaped(&error).into_owned();
        if let Some(held_back) = self.repeats.admit(&error, Instant::now()) {
            tracing::error!(%error, held_back, "not applied; nginx keeps its last good config");
        }
        *self.metrics.error.lock().unwrap() = Some(error.clone());
        let mut ack = self.ack.clone().unwrap_or_else(|| self.empty_ack());
        ack.error = Some(error);
        self.publish(ack);
    }

    fn publish(&mut self, ack: LbRecord) {
        // The ack is durable: a silent LB stays a member, and the color it last acked stays
        // protected until it acks another one or an operator removes it.
        self.ack_key = Some(HeldKey::new(
            self.keys.lb(&self.config.name),
            encode(&ack),
            Hold::Durable,
        ));
        self.send_held();
        self.ack = Some(LbRecord { error: None, ..ack });
    }
}
