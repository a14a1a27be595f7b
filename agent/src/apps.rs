//! One agent, many apps: each `[[apps]]` entry gets its own control plane (supervisors, release
//! feed, reporter) over its own process runtime, and every app's keys are held under the agent's
//! one lease ([`HeldSet`]). A `SIGHUP` re-reads the config: a new entry starts at once, without
//! touching the other apps; an entry that left the config is retired only once
//! `coordinator host remove` has marked the host as leaving that app (so no LB routes to it and no
//! deploy waits for it), and then its processes are stopped and its keys deleted.
use crate::config::{AppConfig, Config};
use crate::runtime::{AppRuntime, ProcessRuntime, RunningApp};
use crate::{metrics, ControlPlane, ControlPlaneSettings};
pub use proto::leased::HeldSet;
use proto::records::HostRecord;
use proto::{Color, Keys};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// What the agent's API needs of one running app.
#[derive(Clone)]
pub struct AppView {
    pub ports: proto::records::Ports,
    pub state_dir: std::path::PathBuf,
    pub statuses: Vec<watch::Receiver<Option<crate::status::ColorStatus>>>,
}

/// The apps the agent's API answers for, by name; changed by reloads.
pub type AppViews = Arc<RwLock<BTreeMap<String, AppView>>>;

/// What every app of this agent shares.
pub struct Shared {
    pub client: etcd_client::Client,
    pub config: Config,
    pub held: HeldSet,
    pub metrics: Arc<metrics::AgentMetrics>,
    pub http: reqwest::Client,
    pub trusted: proto::signing::TrustedKeys,
    pub instance: String,
    pub views: AppViews,
    pub shutdown: watch::Receiver<bool>,
}

/// One running app: its control plane and how to stop it alone.
struct Running {
    config: AppConfig,
    plane: ControlPlane,
    /// Its supervisors and reporter, taken by a retirement or awaited at shutdown.
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    runtime: Arc<ProcessRuntime>,
    stop: watch::Sender<bool>,
    /// Set once a retirement is waiting for this app's leaving mark.
    retiring: bool,
    /// The retirement under way, and whether it may still be called off.
    retirement: Option<(tokio::task::JoinHandle<()>, Arc<Mutex<Retirement>>)>,
}

/// A retirement is called off when its app is listed again before its mark appears; once the
/// mark is seen it is committed and runs to its end.
#[derive(Default)]
struct Retirement {
    committed: bool,
    cancelled: bool,
}

/// The apps this agent runs, started, reloaded and retired one by one.
pub struct Apps {
    shared: Arc<Shared>,
    running: BTreeMap<String, Running>,
    /// Retirements report here when they are done, so the app can be listed again later.
    retired_tx: tokio::sync::mpsc::UnboundedSender<String>,
    retired_rx: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Apps {
    pub fn new(shared: Shared) -> Apps {
        let (retired_tx, retired_rx) = tokio::sync::mpsc::unbounded_channel();
        Apps {
            shared: Arc::new(shared),
            running: BTreeMap::new(),
            retired_tx,
            retired_rx,
        }
    }

    /// Starts one app's control plane (its directories first). The other apps are not touched.
    pub fn start(&mut self, app: AppConfig) -> Result<(), crate::error::AgentError> {
        let s = &self.shared;
        let keys = Keys::new(&s.config.prefix, &app.name)?;
        prepare_dirs(&app.state_dir)?;
        let runtime = Arc::new(ProcessRuntime {
            app: app.name.clone(),
            address: s.config.address.clone(),
            ports: app.ports,
            state_dir: app.state_dir.clone(),
            http: s.http.clone(),
            app_log_level: s.config.app_log_level.clone(),
            secrets_dir: app.secrets_dir.clone(),
            run_as: app.run_as.clone(),
            download: s.config.download,
            metrics: s.metrics.clone(),
        });
        let host = HostRecord {
            host: s.config.host.clone(),
            address: s.config.address.clone(),
            ports: app.ports,
            grpc: s.config.grpc.endpoint().to_string(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: proto::time::now_rfc3339(),
            instance: Some(s.instance.clone()),
        };
        // The app's own stop, also set by the agent's.
        let (stop, app_shutdown) = watch::channel(false);
        let forward = stop.clone();
        let mut agent_shutdown = s.shutdown.clone();
        let mut stopped = app_shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = proto::daemon::shutdown_requested(&mut agent_shutdown) => { let _ = forward.send(true); }
                _ = proto::daemon::shutdown_requested(&mut stopped) => {}
            }
        });
        let mut plane = ControlPlane::spawn_in(
            ControlPlaneSettings {
                client: s.client.clone(),
                keys,
                host,
                lease_ttl: s.config.lease_ttl,
                max_restarts: s.config.max_restarts,
                trusted: s.trusted.clone(),
                state_dir: app.state_dir.clone(),
            },
            runtime.clone(),
            app_shutdown.clone(),
            s.held.clone(),
        );
        s.metrics.watch_statuses(&app.name, plane.statuses.clone());
        s.views.write().expect("views lock").insert(
            app.name.clone(),
            AppView {
                ports: app.ports,
                state_dir: app.state_dir.clone(),
                statuses: plane.statuses.clone(),
            },
        );
        tokio::spawn(cap_logs(
            app.state_dir.clone(),
            s.config.log_max_bytes,
            app_shutdown,
        ));
        tracing::info!(app = %app.name, blue = app.ports.blue, green = app.ports.green, "app started");
        let tasks = Arc::new(Mutex::new(std::mem::take(&mut plane.tasks)));
        self.running.insert(
            app.name.clone(),
            Running {
                config: app,
                plane,
                tasks,
                runtime,
                stop,
                retiring: false,
                retirement: None,
            },
        );
        Ok(())
    }

    /// Waits for every app's supervisors and reporter to end (after the agent's shutdown): they
    /// leave the apps running, and a supervisor cut short could leave a half-written pid file.
    pub async fn join(self) {
        for running in self.running.into_values() {
            running.plane.feed.abort();
            let tasks = std::mem::take(&mut *running.tasks.lock().expect("tasks lock"));
            for task in tasks {
                let _ = task.await;
            }
        }
    }

    /// Applies a re-read config: starts the apps it adds, retires the ones it drops (once they
    /// are marked leaving), and says which other changes wait for a restart.
    pub async fn reload(&mut self, new: Config) {
        while let Ok(name) = self.retired_rx.try_recv() {
            self.running.remove(&name);
        }
        for (what, same) in restart_only_changes(&self.shared.config, &new) {
            if !same {
                tracing::warn!(
                    setting = what,
                    "changed in the config: takes effect when the agent restarts"
                );
            }
        }
        let wanted: BTreeMap<&str, &AppConfig> =
            new.apps.iter().map(|a| (a.name.as_str(), a)).collect();
        let mut added = Vec::new();
        for app in &new.apps {
            match self.running.get(&app.name) {
                None => added.push(app.clone()),
                Some(r) if r.retiring => {}
                Some(r) if r.config != *app => tracing::warn!(app = %app.name,
                    "its entry changed: takes effect when the agent restarts"),
                Some(_) => {}
            }
        }
        // An app listed again before its mark appeared keeps running as if nothing happened.
        for app in &new.apps {
            let Some(r) = self.running.get_mut(&app.name) else {
                continue;
            };
            let Some((task, state)) = r.retirement.as_ref() else {
                continue;
            };
            let mut state = state.lock().expect("retirement lock");
            if state.committed {
                tracing::warn!(app = %app.name,
                    "listed again while it is being retired (it was marked leaving): it starts on a reload after its retirement");
            } else {
                state.cancelled = true;
                task.abort();
                drop(state);
                r.retirement = None;
                r.retiring = false;
                tracing::info!(app = %app.name, "listed again before it was marked leaving: it stays");
            }
        }
        // Every app still running (kept, retiring, or about to be), with the new ones: no port,
        // name or state_dir may collide, since a dropped app runs until it is marked leaving.
        let mut kept: Vec<AppConfig> = self.running.values().map(|r| r.config.clone()).collect();
        kept.extend(added.iter().cloned());
        if let Err(e) = crate::config::check_apps_apart(&kept) {
            tracing::error!(error = %e, "config reload refused; the running apps are unchanged");
            return;
        }
        // A new app passes what the agent's start checks: its keys in this agent's role, and its
        // host name not held by another agent (an app moved here from another one).
        if !added.is_empty() {
            let s = self.shared.clone();
            if let Err(e) = check_access(&s.client, &s.config, &added).await {
                tracing::error!(error = %e, "config reload refused; the running apps are unchanged");
                return;
            }
            for app in added {
                let name = app.name.clone();
                let started = match claim(&s.client, &s.config, &s.instance, &name).await {
                    Ok(()) => self.start(app),
                    Err(e) => Err(e),
                };
                if let Err(e) = started {
                    tracing::error!(app = %name, error = %e, "could not start the app");
                }
            }
        }
        let dropped: Vec<String> = self
            .running
            .iter()
            .filter(|(name, r)| !wanted.contains_key(name.as_str()) && !r.retiring)
            .map(|(name, _)| name.clone())
            .collect();
        for name in dropped {
            self.retire(&name);
        }
    }

    /// Retires `name` in the background: waits for its leaving mark, stops its control plane,
    /// stops both colors' processes, then deletes its keys for this host.
    fn retire(&mut self, name: &str) {
        let Some(running) = self.running.get_mut(name) else {
            return;
        };
        let shared = self.shared.clone();
        let keys = match Keys::new(&shared.config.prefix, name) {
            Ok(k) => k,
            Err(_) => return,
        };
        running.retiring = true;
        let stop = running.stop.clone();
        let runtime = running.runtime.clone();
        let tasks = running.tasks.clone();
        let feed = running.plane.feed.abort_handle();
        let done = self.retired_tx.clone();
        let name = name.to_string();
        let state = Arc::new(Mutex::new(Retirement::default()));
        let mine = state.clone();
        let task = tokio::spawn(async move {
            let host = shared.config.host.clone();
            let mut agent_shutdown = shared.shutdown.clone();
            let mark = keys.host_leaving(&host);
            let marked_at = tokio::select! {
                marked = wait_for_key(&shared.client, &mark, &name, &host) => match marked {
                    Some(revision) => revision,
                    None => return,
                },
                _ = proto::daemon::shutdown_requested(&mut agent_shutdown) => return,
            };
            {
                let mut state = mine.lock().expect("retirement lock");
                if state.cancelled {
                    return;
                }
                state.committed = true;
            }
            // The LBs stop routing here when they apply the mark: the processes stop after that
            // (or after a bound, for an LB that is down and routes nowhere anyway).
            tokio::select! {
                _ = wait_lbs_applied(&shared.client, &keys, marked_at, LBS_APPLY_BOUND) => {}
                _ = proto::daemon::shutdown_requested(&mut agent_shutdown) => return,
            }
            tracing::info!(app = %name, "marked leaving this host: stopping it and deleting its keys");
            let _ = stop.send(true);
            feed.abort();
            let tasks = std::mem::take(&mut *tasks.lock().expect("tasks lock"));
            for task in tasks {
                let _ = task.await;
            }
            shared.held.remove(&name);
            shared.views.write().expect("views lock").remove(&name);
            shared.metrics.forget_statuses(&name);
            for color in Color::ALL {
                if let Some(mut adopted) = runtime.adopt(color) {
                    let how = RunningApp::stop(&mut adopted.process, Duration::from_secs(10)).await;
                    tracing::info!(app = %name, %color, how = %how, "stopped");
                }
                runtime.forget(color);
            }
            // The key holder deletes the app's keys (they left its set), in the task that writes
            // them, so no older write of theirs can follow the delete. The mark goes last, once
            // they are gone: while it exists, a half-done retirement is visible and honoured.
            let mut owned: Vec<String> =
                Color::ALL.iter().map(|c| keys.health(&host, *c)).collect();
            owned.push(keys.host(&host));
            owned.push(keys.host_member(&host));
            tokio::select! {
                _ = wait_gone(&shared.client, &owned) => {}
                _ = proto::daemon::shutdown_requested(&mut agent_shutdown) => return,
            }
            let mut c = shared.client.clone();
            loop {
                match c.delete(mark.as_str(), None).await {
                    Ok(_) => break,
                    Err(e) => {
                        let e = proto::ProtoError::etcd(format!("delete {mark}"), e);
                        if e.is_permission_denied() {
                            tracing::error!(key = %mark, error = %e.brief(),
                                "this agent's etcd role may not delete the leaving mark (re-run deploy/etcd-auth.sh); the app is retired, delete the mark with etcdctl");
                            break;
                        }
                        tracing::warn!(key = %mark, error = %e, "cannot delete; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                            _ = proto::daemon::shutdown_requested(&mut agent_shutdown) => return,
                        }
                    }
                }
            }
            tracing::info!(app = %name, "retired from this host");
            let _ = done.send(name);
        });
        running.retirement = Some((task, state));
    }
}

/// The keys one app's agent must read and write on `host`.
fn access_keys(keys: &Keys, host: &str) -> (Vec<String>, Vec<String>) {
    (
        vec![
            keys.release(Color::Blue),
            keys.release(Color::Green),
            keys.active(),
        ],
        vec![
            keys.host(host),
            keys.host_member(host),
            keys.health(host, Color::Blue),
            keys.health(host, Color::Green),
        ],
    )
}

/// Whether this agent's etcd role allows its own keys in each of `apps`: an agent that could not
/// report would run apps the fleet never sees. With etcd down the check is skipped (the apps keep
/// running and are adopted). A role without the leaving mark (older than this release) only
/// costs the retirement of an app from this host, so it is said, not refused.
pub async fn check_access(
    client: &etcd_client::Client,
    config: &Config,
    apps: &[AppConfig],
) -> Result<(), crate::error::AgentError> {
    let (mut reads, mut writes, mut marks) = (Vec::new(), Vec::new(), Vec::new());
    for app in apps {
        let keys = Keys::new(&config.prefix, &app.name)?;
        let (r, w) = access_keys(&keys, &config.host);
        reads.extend(r);
        writes.extend(w);
        marks.push(keys.host_leaving(&config.host));
    }
    match proto::access::check_permissions(client, &reads, &writes).await {
        Err(e) if e.is_permission_denied() => {
            let user = config.etcd.user.as_deref().unwrap_or("(none)");
            return Err(crate::error::AgentError::Setting(format!(
                "etcd user {user}: {}; nothing was started",
                e.brief()
            )));
        }
        // etcd down at start: the check waits for the next start (a role does not change
        // under a running agent).
        Err(e) => {
            let error = proto::tls_check::explained(&config.etcd, &e).await;
            tracing::warn!(%error, "could not check this agent's etcd permissions; going on");
        }
        Ok(()) => {
            if let Err(e) = proto::access::check_permissions(client, &marks, &marks).await {
                if e.is_permission_denied() {
                    tracing::warn!(error = %e.brief(),
                        "this agent's etcd role may not delete its leaving marks: re-run deploy/etcd-auth.sh, or an app removed from this host leaves its mark behind");
                }
            }
        }
    }
    Ok(())
}

/// Claims `app`'s host name for this agent: a second agent with the same host name (a cloned
/// image, a copy-pasted config) must not overwrite the first one's records. Our own previous run
/// is taken over at once; a dead stranger's lease expires within its TTL.
pub async fn claim(
    client: &etcd_client::Client,
    config: &Config,
    instance: &str,
    app: &str,
) -> Result<(), crate::error::AgentError> {
    let keys = Keys::new(&config.prefix, app)?;
    proto::leased::await_claim(
        client,
        &keys.host(&config.host),
        instance,
        config.lease_ttl + Duration::from_secs(2),
    )
    .await
    .map_err(|e| crate::error::AgentError::Setting(format!("host {:?} in {app}: {e}", config.host)))
}

/// Waits until none of `keys` exists (the key holder deleting them), checking a few times a
/// second; a retirement is rare and short.
async fn wait_gone(client: &etcd_client::Client, keys: &[String]) {
    let mut c = client.clone();
    loop {
        let mut present = false;
        for key in keys {
            match c
                .get(
                    key.as_str(),
                    Some(etcd_client::GetOptions::new().with_count_only()),
                )
                .await
            {
                Ok(resp) if resp.count() == 0 => {}
                _ => present = true,
            }
        }
        if !present {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The longest a retirement waits for the live LBs to apply the leaving mark.
const LBS_APPLY_BOUND: Duration = Duration::from_secs(15);

/// Waits until every LB whose sidecar is alive has acked `revision` or later, or `bound` passed.
async fn wait_lbs_applied(
    client: &etcd_client::Client,
    keys: &Keys,
    revision: i64,
    bound: Duration,
) {
    let waited = async {
        let from = keys.lb_alive("");
        let end =
            String::from_utf8_lossy(&proto::watch::prefix_end(&keys.lbs_prefix())).to_string();
        let Ok((snapshot, mut watch)) =
            proto::watch::PrefixWatch::start_range(client, &from, &end).await
        else {
            return;
        };
        let mut seen: BTreeMap<String, Vec<u8>> = snapshot.entries.into_iter().collect();
        loop {
            if lbs_applied(keys, &seen, revision) {
                return;
            }
            match watch.next().await {
                Ok(proto::watch::WatchEvent::Changes { changes, .. }) => {
                    for c in changes {
                        match c.value {
                            Some(v) => seen.insert(c.key, v),
                            None => seen.remove(&c.key),
                        };
                    }
                }
                Ok(proto::watch::WatchEvent::Resync(s)) => seen = s.entries.into_iter().collect(),
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(bound, waited).await;
}

/// Whether every live LB (an `lb-alive/<name>` key) has an ack at `revision` or later. Pure.
pub fn lbs_applied(keys: &Keys, seen: &BTreeMap<String, Vec<u8>>, revision: i64) -> bool {
    seen.keys()
        .filter_map(|k| match keys.parse(k) {
            Some(proto::AppKey::LbAlive(name)) => Some(name),
            _ => None,
        })
        .all(|name| {
            seen.get(&keys.lb(&name))
                .and_then(|v| serde_json::from_slice::<proto::records::LbRecord>(v).ok())
                .is_some_and(|ack| ack.applied_revision >= revision)
        })
}

/// Waits until `key` exists (watched, never polled), and says the revision it was seen at.
/// `None` if the watch fails for good.
async fn wait_for_key(
    client: &etcd_client::Client,
    key: &str,
    app: &str,
    host: &str,
) -> Option<i64> {
    let end = format!("{key}\0");
    let (snapshot, mut watch) = loop {
        match proto::watch::PrefixWatch::start_range(client, key, &end).await {
            Ok(started) => break started,
            Err(e) => {
                tracing::warn!(%key, error = %e, "cannot watch the leaving mark; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    if !snapshot.entries.is_empty() {
        // The mark's own revision (what the LBs ack), not the read's, which may be later.
        let mut c = client.clone();
        return match c.get(key, None).await {
            Ok(resp) => resp
                .kvs()
                .first()
                .map(|kv| kv.mod_revision())
                .or(Some(snapshot.revision)),
            Err(_) => Some(snapshot.revision),
        };
    }
    tracing::warn!(%app, %host,
        "left this agent's config but is not marked leaving: still running and registered; run `coordinator --app {app} host remove {host} --yes`, and it is retired then");
    loop {
        match watch.next().await {
            Ok(proto::watch::WatchEvent::Changes { changes, .. }) => {
                if let Some(put) = changes.iter().find(|c| c.value.is_some()) {
                    return Some(put.mod_revision);
                }
            }
            Ok(proto::watch::WatchEvent::Resync(s)) => {
                if !s.entries.is_empty() {
                    return Some(s.revision);
                }
            }
            Err(e) => {
                tracing::error!(%key, error = %e, "watch of the leaving mark ended; restart the agent to retire the app");
                return None;
            }
        }
    }
}

/// The agent-wide settings a reload does not apply, each with whether it stayed the same.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<(&'static str, bool)> {
    vec![
        ("etcd", old.etcd == new.etcd),
        ("prefix", old.prefix == new.prefix),
        ("host", old.host == new.host),
        ("address", old.address == new.address),
        ("grpc", old.grpc == new.grpc),
        ("metrics_listen", old.metrics_listen == new.metrics_listen),
        ("lease_ttl", old.lease_ttl == new.lease_ttl),
        ("trusted_keys", old.trusted_keys == new.trusted_keys),
    ]
}

/// An app's directories: logs and pid files (which hold the release, env included) for the
/// agent's user only; the state dir stays traversable so an app can reach its unpacked artifact.
pub fn prepare_dirs(state_dir: &std::path::Path) -> Result<(), crate::error::AgentError> {
    use crate::error::AgentError;
    use std::os::unix::fs::PermissionsExt;
    for (dir, mode) in [
        (state_dir.to_path_buf(), 0o711),
        (state_dir.join("logs"), 0o700),
        (state_dir.join("artifacts"), 0o755),
    ] {
        std::fs::create_dir_all(&dir).map_err(|e| AgentError::io(&dir, e))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
            .map_err(|e| AgentError::io(&dir, e))?;
    }
    Ok(())
}

/// Keeps each color's log file of one app under `max_bytes`.
async fn cap_logs(state_dir: std::path::PathBuf, max_bytes: u64, mut stop: watch::Receiver<bool>) {
    loop {
        for color in Color::ALL {
            let path = crate::logs::log_path(&state_dir, color);
            if let Err(e) = crate::logs::cap(&path, max_bytes) {
                tracing::warn!(path = %path.display(), error = %e, "cannot rotate log");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = proto::daemon::shutdown_requested(&mut stop) => return,
        }
    }
}

/// In the `[[apps]]` form, the agent's own `state_dir` must not hold pid files of apps a
/// single-app agent ran there, unless an entry claims that directory: restarting into
/// `[[apps]]` would otherwise leave them running with nobody managing them.
pub fn check_unclaimed_layout(config: &Config) -> Result<(), crate::error::AgentError> {
    // An app dropped from the config and never retired (the agent restarted before its mark):
    // its processes would run on with nobody managing them.
    let listed = |dir: &std::path::Path| config.apps.iter().any(|a| a.state_dir == dir);
    let app_dirs = std::fs::read_dir(config.state_dir.join("apps"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    for dir in app_dirs.filter(|d| !listed(d)) {
        for color in Color::ALL {
            let pid = crate::runtime::pid_path(&dir, color);
            if pid.exists() {
                let app = dir.file_name().unwrap_or_default().to_string_lossy();
                return Err(crate::error::AgentError::Setting(format!(
                    "{} holds {app}'s {color} process, and the config no longer lists {app}: \
                     list it again, then remove it from this host with `coordinator --app {app} \
                     host remove` and a SIGHUP (the agent stops it then), or stop it first",
                    pid.display()
                )));
            }
        }
    }
    if listed(&config.state_dir) {
        return Ok(());
    }
    for color in Color::ALL {
        let pid = crate::runtime::pid_path(&config.state_dir, color);
        if pid.exists() {
            return Err(crate::error::AgentError::Setting(format!(
                "state_dir {} holds {} from a single-app agent; give the app that ran there \
                 `state_dir = \"{}\"` in its [[apps]] entry so it is adopted, or stop it first",
                config.state_dir.display(),
                pid.display(),
                config.state_dir.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(state_dir: &std::path::Path, apps: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            format!(
                "host = \"h\"\nrun_as = \"root\"\nstate_dir = \"{}\"\n{apps}",
                state_dir.display()
            ),
        )
        .unwrap();
        Config::load(crate::config::Cli {
            config: Some(path),
            settings: Default::default(),
        })
        .unwrap()
    }

    /// A restart must not leave an app's processes running with nobody managing them: pid files
    /// of a single-app agent, or of an `[[apps]]` entry since dropped, refuse the start until an
    /// entry claims them.
    #[test]
    fn a_start_over_running_apps_no_entry_lists_is_refused_naming_them() {
        let state = tempfile::tempdir().unwrap();
        let shop = "[[apps]]\nname = \"shop\"\nports = { blue = 1, green = 2 }\n";
        let api = "[[apps]]\nname = \"api\"\nports = { blue = 3, green = 4 }\n";
        assert!(check_unclaimed_layout(&config(state.path(), shop)).is_ok());
        let api_dir = state.path().join("apps").join("api");
        std::fs::create_dir_all(&api_dir).unwrap();
        std::fs::write(crate::runtime::pid_path(&api_dir, Color::Green), "{}").unwrap();
        let err = check_unclaimed_layout(&config(state.path(), shop))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("api's green process") && err.contains("host remove"),
            "{err}"
        );
        assert!(check_unclaimed_layout(&config(state.path(), &format!("{shop}{api}"))).is_ok());
        // The single-app layout, unclaimed, then claimed.
        std::fs::write(crate::runtime::pid_path(state.path(), Color::Blue), "{}").unwrap();
        let both = format!("{shop}{api}");
        let err = check_unclaimed_layout(&config(state.path(), &both))
            .unwrap_err()
            .to_string();
        assert!(err.contains("from a single-app agent"), "{err}");
        let claimed = format!("{shop}state_dir = \"{}\"\n{api}", state.path().display());
        assert!(check_unclaimed_layout(&config(state.path(), &claimed)).is_ok());
    }

    #[test]
    fn every_live_lb_must_have_acked_the_mark() {
        let keys = Keys::new("/bluegreen", "shop").unwrap();
        let ack = |revision: i64| {
            format!(r#"{{"applied_revision":{revision},"color":"blue","config_sha256":"","reloaded_at":"","error":null}}"#).into_bytes()
        };
        let mut seen = BTreeMap::new();
        assert!(lbs_applied(&keys, &seen, 10), "no LB: nothing to wait for");
        seen.insert(keys.lb_alive("lb-1"), b"{}".to_vec());
        assert!(!lbs_applied(&keys, &seen, 10), "alive without an ack");
        seen.insert(keys.lb("lb-1"), ack(9));
        assert!(!lbs_applied(&keys, &seen, 10));
        seen.insert(keys.lb("lb-1"), ack(10));
        assert!(lbs_applied(&keys, &seen, 10));
        // A silent LB (no lb-alive) is not waited for: it routes nowhere new.
        seen.insert(keys.lb("lb-2"), ack(3));
        assert!(lbs_applied(&keys, &seen, 10));
    }
}
