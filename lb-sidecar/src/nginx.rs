//! The nginx side effects: validate a candidate include with `nginx -t`, swap the include file
//! atomically, SIGHUP the master, and poll the status location until the new revision answers.
use crate::config::NginxConfig;
use crate::error::SidecarError;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The main config an nginx started without `-c` reads (Debian's build).
const DEFAULT_MAIN_CONFIG: &str = "/etc/nginx/nginx.conf";
use std::time::Duration;
use tokio::time::Instant;

/// What the sidecar needs from nginx, as a seam: [`Nginx`] drives a real one; hollow LBs (scale
/// benchmarks, in the test-support crate) run the same follower and applier over a stand-in.
pub trait NginxControl: Send + Sync + 'static {
    /// nginx's loopback-only status listener.
    fn status_listen(&self) -> std::net::SocketAddr;
    /// The public listener as a URL reachable from this host.
    fn public_url(&self) -> String;
    /// `nginx -t` of `text` in place of the include file; Err carries nginx's complaint.
    fn validate(&self, text: &str) -> impl std::future::Future<Output = Result<(), String>> + Send;
    /// What nginx was last given, if anything.
    fn current(&self) -> Option<String>;
    /// Replaces the include file atomically.
    fn install(&self, text: &str) -> Result<(), SidecarError>;
    /// Asks nginx to load the installed file; returns the workers of the generation before.
    fn reload(&self) -> Result<Vec<i32>, SidecarError>;
    /// With several apps on one nginx: the batch this app's debounced changes go through, and
    /// the app's name there. None (the default): every change reloads on its own.
    fn batch(&self) -> Option<(&ReloadHub, &str)> {
        None
    }
    /// [`NginxControl::reload`] for a debounced change, which may share one reload with the other
    /// apps' changes of the same batch (see [`ReloadHub`]); without a batch, at once.
    fn reload_in_batch(
        &self,
    ) -> impl std::future::Future<Output = Result<Vec<i32>, SidecarError>> + Send {
        async move {
            match self.batch() {
                Some((hub, app)) => hub.reload(app).await,
                None => self.reload(),
            }
        }
    }
    /// Puts this app's debounced change into the batch that reloads at `at` or sooner, and says
    /// when that is.
    fn batch_join(&self, at: Instant) -> Instant {
        match self.batch() {
            Some((hub, app)) => hub.join(app, at),
            None => at,
        }
    }
    /// This app's change is applied, dropped, or applied at once (a switch): it no longer holds
    /// the batch back.
    fn batch_leave(&self) {
        if let Some((hub, app)) = self.batch() {
            hub.leave(app);
        }
    }
    /// Lua mode: hands nginx's balancer a traffic state (JSON) with the push token. Err carries
    /// why nginx refused it (or could not be reached); it then keeps serving the state before.
    fn push(
        &self,
        _token: &str,
        _state: &str,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send {
        async { Err("this nginx takes no pushed state (reload mode)".to_string()) }
    }
    /// Lua mode: requests open to each color's upstreams now (websockets and streams for as long
    /// as they last); None when nginx cannot say.
    fn open_connections(
        &self,
    ) -> impl std::future::Future<Output = Option<std::collections::BTreeMap<proto::Color, u64>>> + Send
    {
        async { None }
    }
    /// Waits until no worker of `old` still accepts connections; false after `timeout`.
    fn wait_old_workers(
        &self,
        old: &[i32],
        timeout: Duration,
    ) -> impl std::future::Future<Output = bool> + Send;
    /// Waits until nginx answers `expected` ("<revision> <color>"); false after `timeout`.
    fn wait_serving(
        &self,
        expected: &str,
        timeout: Duration,
    ) -> impl std::future::Future<Output = bool> + Send;
}

pub struct Nginx {
    /// With several apps: the batch this app's debounced reloads go through, and its name there.
    hub: Option<(std::sync::Arc<ReloadHub>, String)>,
    config: NginxConfig,
    public_url: String,
    status_url: String,
    /// The `Host` of this app's status server, when several apps share the status listener.
    status_host: Option<String>,
    state_dir: PathBuf,
    http: reqwest::Client,
}

impl Nginx {
    /// `listen` is the public listener; its status location is asked over it, from this host.
    /// `public_url` is how other machines reach it (default: the listener's own URL).
    /// `state_dir` holds the candidate and test configs, away from any `*.conf` glob of the main
    /// config (a copy of the main config included into it breaks nginx).
    pub fn new(
        config: NginxConfig,
        listen: SocketAddr,
        public_url: Option<String>,
        state_dir: PathBuf,
    ) -> Nginx {
        let host = if listen.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            listen.ip().to_string()
        };
        let local_url = format!("http://{host}:{}", listen.port());
        let status_url = format!(
            "http://{}{}",
            config.status_listen,
            crate::render::STATUS_PATH
        );
        let public_url = public_url.unwrap_or(local_url);
        // A fresh connection per poll: a kept-alive one could still be served by an old worker.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("http client");
        Nginx {
            hub: None,
            config,
            public_url,
            status_url,
            status_host: None,
            state_dir,
            http,
        }
    }

    /// Sends this app's debounced reloads through `hub`, as `app`.
    pub fn with_hub(mut self, hub: std::sync::Arc<ReloadHub>, app: &str) -> Nginx {
        self.hub = Some((hub, app.to_string()));
        self
    }

    /// Asks for the revision as `host` (the app's status server among several).
    pub fn with_status_host(mut self, host: Option<String>) -> Nginx {
        self.status_host = host;
        self
    }

    /// `<pid file><suffix>`: beside nginx's pid file, which every sidecar of this nginx knows.
    fn sibling_of_pid_file(&self, suffix: &str) -> PathBuf {
        let mut name = self.config.pid_file.as_os_str().to_os_string();
        name.push(suffix);
        PathBuf::from(name)
    }

    fn sibling(&self, suffix: &str) -> PathBuf {
        let mut name = self
            .config
            .include_file
            .file_name()
            .unwrap_or_default()
            .to_os_string();
        name.push(suffix);
        self.config.include_file.with_file_name(name)
    }

    /// Only our nginx gets a signal: the pid must be an nginx master running `main_config` (its
    /// process title, from `/proc/<pid>/cmdline`, says both). A pid file left behind by a killed
    /// nginx may name any process by now.
    pub fn check_master(&self, pid: i32) -> Result<(), SidecarError> {
        let pid_file = self.config.pid_file.display();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).map_err(|_| {
            SidecarError::Reload(format!(
                "nginx is not running: pid file {pid_file} names pid {pid}, which does not exist"
            ))
        })?;
        let title = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let main = self.config.main_config.display().to_string();
        let ours = title.starts_with("nginx: master process")
            && (title.contains(&main) || (!title.contains(" -c ") && main == DEFAULT_MAIN_CONFIG));
        if ours {
            Ok(())
        } else {
            Err(SidecarError::Reload(format!(
                "refusing to signal pid {pid} from {pid_file}: it is not an nginx master running {main} ({:?}); nginx is down or the pid file is stale",
                title.trim()
            )))
        }
    }

    /// The master's pid, from the pid file.
    pub fn master_pid(&self) -> Result<i32, SidecarError> {
        let pid_file = &self.config.pid_file;
        let text = std::fs::read_to_string(pid_file)
            .map_err(|e| SidecarError::Reload(format!("pid file {}: {e}", pid_file.display())))?;
        text.trim().parse().map_err(|_| {
            SidecarError::Reload(format!(
                "pid file {} holds {:?}",
                pid_file.display(),
                text.trim()
            ))
        })
    }

    /// What the status location answers now ("<revision> <color>"), if anything.
    pub async fn status(&self) -> Option<String> {
        let mut request = self.http.get(&self.status_url);
        if let Some(host) = &self.status_host {
            request = request.header(reqwest::header::HOST, host);
        }
        let resp = request.timeout(Duration::from_secs(1)).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.text().await.ok().map(|t| t.trim().to_string())
    }
}

impl NginxControl for Nginx {
    /// nginx's loopback-only status listener.
    fn status_listen(&self) -> std::net::SocketAddr {
        self.config.status_listen
    }

    /// The public listener as a URL reachable from this host (an unspecified address becomes loopback).
    fn public_url(&self) -> String {
        self.public_url.clone()
    }

    /// Runs `nginx -t` against the main config with `text` in place of the include file. When the
    /// main config does not name the include file literally (a glob, say), the candidate is checked
    /// inside a minimal main config instead, which still catches every error of the file itself.
    async fn validate(&self, text: &str) -> Result<(), String> {
        let candidate = self.state_dir.join("candidate.include");
        let test_main = self.state_dir.join("test-main.nginx");
        // Private, and removed after the check: in Lua mode it holds the push token.
        write_private(&candidate, text).map_err(|e| e.to_string())?;
        let include = self.config.include_file.display().to_string();
        let main = std::fs::read_to_string(&self.config.main_config).unwrap_or_default();
        let main = if !main.is_empty() && main.contains(&include) {
            main.replace(&include, &candidate.display().to_string())
        } else {
            format!(
                "{}events {{}}\nhttp {{\n    include {};\n}}\n",
                module_lines(&main),
                candidate.display()
            )
        };
        write_private(&test_main, &main).map_err(|e| e.to_string())?;
        let output = tokio::process::Command::new(&self.config.binary)
            .arg("-t")
            .arg("-q")
            .arg("-e")
            .arg("stderr")
            .arg("-c")
            .arg(&test_main)
            .output()
            .await
            .map_err(|e| format!("cannot run {}: {e}", self.config.binary.display()));
        let _ = std::fs::remove_file(&candidate);
        let output = output?;
        if output.status.success() {
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            Err(stderr
                .lines()
                .filter(|l| !l.trim().is_empty())
                .collect::<Vec<_>>()
                .join("; ")
                .replace(&candidate.display().to_string(), &include))
        }
    }

    async fn push(&self, token: &str, state: &str) -> Result<(), String> {
        let url = format!(
            "http://{}{}",
            self.config.status_listen,
            crate::lua::STATE_PATH
        );
        let mut request = self
            .http
            .put(&url)
            .header(crate::lua::TOKEN_HEADER, token)
            .body(state.to_string());
        if let Some(host) = &self.status_host {
            request = request.header(reqwest::header::HOST, host);
        }
        let response = request
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| format!("PUT {url}: {e}"))?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!(
                "nginx refused the state ({status}): {}",
                body.trim()
            ))
        }
    }

    async fn open_connections(&self) -> Option<std::collections::BTreeMap<proto::Color, u64>> {
        let url = format!(
            "http://{}{}",
            self.config.status_listen,
            crate::lua::CONNECTIONS_PATH
        );
        let mut request = self.http.get(&url);
        if let Some(host) = &self.status_host {
            request = request.header(reqwest::header::HOST, host);
        }
        let response = request.timeout(Duration::from_secs(1)).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        crate::lua::parse_connections(&response.text().await.ok()?)
    }

    /// What nginx was last given (the file on disk), if anything.
    fn current(&self) -> Option<String> {
        std::fs::read_to_string(&self.config.include_file).ok()
    }

    /// Replaces the include file atomically (write beside it, rename over it), readable by its
    /// owner only: in Lua mode it holds the token that lets a state be pushed to nginx.
    fn install(&self, text: &str) -> Result<(), SidecarError> {
        let tmp = self.sibling(".tmp");
        write_private(&tmp, text)?;
        std::fs::rename(&tmp, &self.config.include_file)
            .map_err(|e| SidecarError::io(&self.config.include_file, e))
    }

    fn batch(&self) -> Option<(&ReloadHub, &str)> {
        self.hub
            .as_ref()
            .map(|(hub, app)| (hub.as_ref(), app.as_str()))
    }

    /// SIGHUP to the master: nginx re-reads its config, starts new workers and lets the old ones
    /// finish their in-flight requests. Returns the workers that ran before, which must stop
    /// accepting before the switch is complete (see [`Nginx::wait_old_workers`]).
    fn reload(&self) -> Result<Vec<i32>, SidecarError> {
        SIGNALS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = self.master_pid()?;
        self.check_master(pid)?;
        // One reload at a time on this nginx, whoever sends it (another app of this sidecar, or
        // another sidecar): a SIGHUP sent while the master still starts the previous generation
        // is applied after it, so the workers of that previous generation (not yet started when
        // this one looked for the old workers) would go on accepting with a config that lacks
        // this change. The previous reload's old workers must have stopped accepting first.
        // (Without a writable place beside the pid file, reloads go on unserialized.)
        let lock_path = self.sibling_of_pid_file(".bluegreen-reload");
        let held = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .ok()
            .and_then(|f| nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).ok());
        use std::io::{Read, Seek, Write};
        let mut held = held;
        if let Some(file) = held.as_mut() {
            let mut previous = String::new();
            let _ = file.read_to_string(&mut previous);
            let previous: Vec<i32> = previous
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            let end = std::time::Instant::now() + Duration::from_secs(5);
            while previous.iter().any(|&p| accepting_worker(p)) && std::time::Instant::now() < end {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let old = workers_of(pid);
        kill(Pid::from_raw(pid), Signal::SIGHUP)
            .map_err(|e| SidecarError::Reload(format!("SIGHUP to nginx master {pid}: {e}")))?;
        if let Some(file) = held.as_mut() {
            let shown: Vec<String> = old.iter().map(|p| p.to_string()).collect();
            let _ = file.set_len(0);
            let _ = file.rewind();
            let _ = file.write_all(shown.join(" ").as_bytes());
        }
        Ok(old)
    }

    /// Waits until every worker of the old generation has left its accept loop (its title says
    /// "shutting down", set right before it closes its listening sockets) or exited. Until then an
    /// old worker may still accept a new connection and serve it with the old config, so a new
    /// revision answering on one connection does not yet mean every connection gets it.
    async fn wait_old_workers(&self, old: &[i32], timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if old.iter().all(|&pid| !accepting_worker(pid)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        false
    }

    /// Polls the status location until it answers `expected`; false after `timeout`.
    async fn wait_serving(&self, expected: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.status().await.as_deref() == Some(expected) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        false
    }
}

/// Writes `text` to `path` with mode 0600 (root's, for nginx's master to read).
pub fn write_private(path: &std::path::Path, text: &str) -> Result<(), SidecarError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| SidecarError::io(path, e))
}

/// The lines of a main config that load dynamic modules, for checking a candidate file in a
/// minimal main config: the Lua mode's directives need them.
fn module_lines(main: &str) -> String {
    main.lines()
        .filter(|l| {
            let l = l.trim_start();
            l.starts_with("load_module")
                || (l.starts_with("include") && l.contains("modules-enabled"))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Pids whose parent is `master` (nginx's workers and cache helpers).
pub fn workers_of(master: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| parent_of(*pid) == Some(master))
        .collect()
}

/// The parent pid of `pid`, from /proc (field 4 of stat, after the command in parentheses).
pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A worker still in its accept loop: alive and not titled "... is shutting down".
pub fn accepting_worker(pid: i32) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => {
            !cmdline.is_empty() && !String::from_utf8_lossy(&cmdline).contains("shutting down")
        }
        Err(_) => false,
    }
}

/// The listeners a sidecar serving several apps gives a default server: each listener every app
/// on it names its hosts on (an app without `server_names` is that port's default itself), and
/// the HTTPS listener when every app on it does.
pub fn default_listeners(apps: &[crate::config::Config]) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = Vec::new();
    let mut add = |listen: String, tls: bool, apps: Vec<&crate::config::Config>| {
        if !apps.is_empty()
            && apps.iter().all(|a| !a.server_names.is_empty())
            && !out.iter().any(|(l, _)| *l == listen)
        {
            out.push((listen, tls));
        }
    };
    let mut listens: Vec<SocketAddr> = apps.iter().map(|a| a.listen).collect();
    listens.sort();
    listens.dedup();
    for listen in listens {
        add(
            listen.to_string(),
            false,
            apps.iter().filter(|a| a.listen == listen).collect(),
        );
    }
    if let Some(first) = apps.first() {
        add(
            first.preview_listen.to_string(),
            false,
            apps.iter().collect(),
        );
    }
    let tls: Vec<&crate::config::Config> = apps.iter().filter(|a| a.tls.is_some()).collect();
    if let Some(t) = tls.first().and_then(|a| a.tls.as_ref()) {
        add(t.listen.to_string(), true, tls.clone());
    }
    out
}

/// Writes the default servers of a sidecar serving several apps (`path`, beside the apps'
/// include files) and checks that nginx takes them: another default server on a shared port
/// (Debian's default site claims port 80) makes nginx refuse every reload, so then the file is
/// removed and the sidecar says where unknown host names go instead.
pub async fn install_default_servers(config: &crate::config::Config, path: &std::path::Path) {
    let text = crate::render::default_servers(&default_listeners(&config.apps));
    if std::fs::read_to_string(path).ok().as_deref() != Some(text.as_str()) {
        if let Err(e) = std::fs::write(path, &text) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the default servers; host names no app claims go to nginx's own default server");
            return;
        }
    }
    let checked = tokio::process::Command::new(&config.nginx.binary)
        .args(["-t", "-q", "-e", "stderr", "-c"])
        .arg(&config.nginx.main_config)
        .output()
        .await;
    if let Ok(out) = checked {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && stderr.contains("duplicate default server") {
            let _ = std::fs::remove_file(path);
            tracing::warn!(error = %stderr.trim(), "another server is the default on a shared listener (Debian's default site?): host names no app claims go to it, not to a 404");
        }
    }
}

/// Reload signals sent to nginx by this process (every app's), for `/metrics`.
pub static SIGNALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One nginx reload for the debounced changes of several apps (a host that dies touches every
/// app it runs): each app joins the pending batch when it sees a change, and the batch's one
/// signal goes once every member has installed its file or left (nothing to change, an error, or
/// a switch, which never waits and reloads at once). A member that waits longer than
/// [`BATCH_WAIT`] reloads on its own, so a stuck app cannot hold the others back.
pub struct ReloadHub {
    state: std::sync::Mutex<Batch>,
    signalled: tokio::sync::Notify,
    signal: Box<dyn Fn() -> Result<Vec<i32>, SidecarError> + Send + Sync>,
    /// How long a member waits for the others ([`BATCH_WAIT`]).
    wait: Duration,
}

#[derive(Default)]
struct Batch {
    /// When the pending batch reloads, if one is pending.
    at: Option<Instant>,
    members: std::collections::BTreeSet<String>,
    /// Members whose file is installed and who wait for the signal.
    ready: std::collections::BTreeSet<String>,
    /// Batches signalled so far, and the last one's result (the old workers, or why not).
    signalled: u64,
    result: Option<Result<Vec<i32>, String>>,
}

impl Batch {
    /// A batch its last member left (nothing to change, or it reloaded on its own) is over: the
    /// next change opens a new one at its own time. Kept open, its time (long past) would be
    /// handed to every later change, which then skipped its debounce and reloaded at once, for
    /// every watch event.
    fn close_if_empty(&mut self) {
        if self.members.is_empty() {
            self.at = None;
            self.ready.clear();
        }
    }
}

/// The longest a batch member waits for the others before reloading on its own.
pub const BATCH_WAIT: Duration = Duration::from_secs(2);

impl ReloadHub {
    /// A hub that reloads with `signal` (one nginx master for every app).
    pub fn new(
        signal: impl Fn() -> Result<Vec<i32>, SidecarError> + Send + Sync + 'static,
    ) -> ReloadHub {
        ReloadHub {
            state: std::sync::Mutex::new(Batch::default()),
            signalled: tokio::sync::Notify::new(),
            signal: Box::new(signal),
            wait: BATCH_WAIT,
        }
    }

    /// Adds `app` to the pending batch (opened at `at` if none is); returns when it reloads.
    pub fn join(&self, app: &str, at: Instant) -> Instant {
        let mut b = self.state.lock().expect("batch lock");
        b.members.insert(app.to_string());
        *b.at.get_or_insert(at)
    }

    /// `app` no longer holds the batch back; if every other member is ready, it is signalled.
    pub fn leave(&self, app: &str) {
        let mut b = self.state.lock().expect("batch lock");
        b.members.remove(app);
        b.ready.remove(app);
        if !b.members.is_empty() && b.ready.is_superset(&b.members) {
            self.fire(&mut b);
        }
        b.close_if_empty();
    }

    fn fire(&self, b: &mut Batch) {
        let result = (self.signal)().map_err(|e| e.to_string());
        b.signalled += 1;
        b.result = Some(result);
        b.members.clear();
        b.ready.clear();
        b.at = None;
        self.signalled.notify_waiters();
    }

    /// Reloads for `app`: at once when it is not in the pending batch; otherwise once every
    /// member is ready (or after [`BATCH_WAIT`], on its own).
    pub async fn reload(&self, app: &str) -> Result<Vec<i32>, SidecarError> {
        let signalled = self.signalled.notified();
        tokio::pin!(signalled);
        signalled.as_mut().enable();
        let mine = {
            let mut b = self.state.lock().expect("batch lock");
            if !b.members.contains(app) {
                drop(b);
                return (self.signal)();
            }
            b.ready.insert(app.to_string());
            if b.ready.is_superset(&b.members) {
                self.fire(&mut b);
                return b
                    .result
                    .clone()
                    .expect("just signalled")
                    .map_err(SidecarError::Reload);
            }
            b.signalled
        };
        let deadline = tokio::time::sleep(self.wait);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut signalled => {
                    let b = self.state.lock().expect("batch lock");
                    if b.signalled > mine {
                        return b.result.clone().expect("signalled").map_err(SidecarError::Reload);
                    }
                    drop(b);
                    signalled.set(self.signalled.notified());
                    signalled.as_mut().enable();
                }
                _ = &mut deadline => {
                    let mut b = self.state.lock().expect("batch lock");
                    if b.signalled > mine {
                        return b.result.clone().expect("signalled").map_err(SidecarError::Reload);
                    }
                    b.members.remove(app);
                    b.ready.remove(app);
                    b.close_if_empty();
                    drop(b);
                    tracing::warn!(%app, "the other apps of its reload batch did not come; reloading on its own");
                    return (self.signal)();
                }
            }
        }
    }

    /// Reload signals sent through this hub's batches or at once.
    pub fn signals() -> u64 {
        SIGNALS.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    fn hub() -> (Arc<ReloadHub>, Arc<AtomicU64>) {
        let count = Arc::new(AtomicU64::new(0));
        let c = count.clone();
        let hub = ReloadHub::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(vec![7])
        });
        (Arc::new(hub), count)
    }

    #[tokio::test]
    async fn the_members_of_a_batch_share_one_reload() {
        let (hub, count) = hub();
        let at = Instant::now();
        hub.join("shop", at);
        hub.join("api", at + Duration::from_secs(9));
        let shop = tokio::spawn({
            let hub = hub.clone();
            async move { hub.reload("shop").await }
        });
        tokio::task::yield_now().await;
        assert_eq!(hub.reload("api").await.unwrap(), vec![7]);
        assert_eq!(shop.await.unwrap().unwrap(), vec![7]);
        assert_eq!(count.load(Ordering::SeqCst), 1, "one reload for both");
    }

    #[tokio::test]
    async fn a_batch_opens_at_its_first_member_and_a_switch_never_waits() {
        let (hub, count) = hub();
        let at = Instant::now();
        assert_eq!(hub.join("shop", at), at);
        assert_eq!(
            hub.join("api", at + Duration::from_secs(5)),
            at,
            "the batch's time"
        );
        // A switch of another app: at once, the batch still pending.
        hub.reload("web").await.unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 1);
        // shop has nothing to change: it leaves; api, alone, reloads at once.
        hub.leave("shop");
        hub.reload("api").await.unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_change_after_a_batch_its_members_left_waits_its_own_debounce() {
        let (hub, count) = hub();
        let first = Instant::now();
        assert_eq!(hub.join("shop", first), first);
        // shop's change rendered nothing new: it leaves, and the batch is over.
        hub.leave("shop");
        let later = first + Duration::from_secs(3);
        assert_eq!(
            hub.join("shop", later),
            later,
            "a later change was handed the old batch's time: it would skip its debounce"
        );
        // A member that waited its bound and reloaded alone closes its batch too.
        let mut hub = ReloadHub::new(|| Ok(vec![7]));
        hub.wait = Duration::from_millis(20);
        hub.join("shop", first);
        hub.join("api", first);
        hub.reload("shop").await.unwrap();
        hub.leave("api");
        assert_eq!(hub.join("shop", later), later);
        assert_eq!(count.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_member_leaving_releases_the_ones_that_wait() {
        let (hub, count) = hub();
        hub.join("shop", Instant::now());
        hub.join("api", Instant::now());
        let shop = tokio::spawn({
            let hub = hub.clone();
            async move { hub.reload("shop").await }
        });
        tokio::task::yield_now().await;
        hub.leave("api");
        assert!(shop.await.unwrap().is_ok());
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_member_whose_batch_never_completes_reloads_on_its_own() {
        let count = Arc::new(AtomicU64::new(0));
        let c = count.clone();
        let mut hub = ReloadHub::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(vec![7])
        });
        hub.wait = Duration::from_millis(50);
        hub.join("shop", Instant::now());
        hub.join("api", Instant::now());
        // api never comes: shop waits its bound, then reloads alone.
        hub.reload("shop").await.unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}
