//! One color on this host: converges the running process to `releases/<color>`, polls its health,
//! restarts it after crashes, and publishes a [`ColorStatus`] on every change. Safety rules live
//! here: a bad release never touches the running process, and the active color is never replaced.
use crate::error::AgentError;
use crate::health;
use crate::process::{port_in_use, AppProcess, Exit, Launch, PidFile};
use crate::status::{ColorStatus, DesiredRelease};
use crate::{artifact, logs};
use proto::records::{Desired, HealthState, ReleaseRecord};
use proto::Color;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

/// Probe period while a process is starting: fast, so a healthy start is seen within ~100 ms.
const STARTING_PROBE: Duration = Duration::from_millis(100);
/// A process healthy this long has proven itself: its crash counter starts over.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// What every color's supervisor shares.
pub struct HostContext {
    pub host: String,
    pub address: String,
    pub ports: proto::records::Ports,
    pub state_dir: PathBuf,
    pub http: reqwest::Client,
    pub max_restarts: u32,
    pub app_log_level: String,
}

/// The release this color runs and its current process.
struct Current {
    release: ReleaseRecord,
    dir: PathBuf,
    process: Option<AppProcess>,
    /// Set after a crash: when to start the process again.
    restart_at: Option<Instant>,
    restarts: u32,
    crashes_in_row: u32,
    /// True for the first process of a freshly installed release: if it dies before it was ever
    /// healthy, the release is broken and the previous one is put back.
    first_launch: bool,
    ever_healthy: bool,
    launched_at: Instant,
    healthy_since: Option<Instant>,
    /// The release this one replaced, put back if this one dies at once.
    previous: Option<(ReleaseRecord, PathBuf)>,
}

pub struct Supervisor {
    color: Color,
    ctx: Arc<HostContext>,
    desired: watch::Receiver<DesiredRelease>,
    active: watch::Receiver<Option<Color>>,
    status: watch::Sender<Option<ColorStatus>>,
    current: Option<Current>,
    /// A failed or refused release: reported as the state until etcd asks for something else,
    /// while whatever ran before keeps running.
    pinned: Option<ColorStatus>,
    /// The pinned status is a refusal to replace the live color: retry when `active` moves.
    refused: bool,
}

impl Supervisor {
    pub fn new(
        color: Color,
        ctx: Arc<HostContext>,
        desired: watch::Receiver<DesiredRelease>,
        active: watch::Receiver<Option<Color>>,
        status: watch::Sender<Option<ColorStatus>>,
    ) -> Supervisor {
        Supervisor {
            color,
            ctx,
            desired,
            active,
            status,
            current: None,
            pinned: None,
            refused: false,
        }
    }

    fn port(&self) -> u16 {
        self.ctx.ports.of(self.color)
    }

    fn pid_path(&self) -> PathBuf {
        self.ctx.state_dir.join(format!("{}.pid.json", self.color))
    }

    /// Runs until `shutdown` fires. Processes are left running: the agent is control plane only.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        self.adopt();
        self.apply_desired().await;
        loop {
            let probe_at = self.next_probe();
            let restart_at = self.current.as_ref().and_then(|c| c.restart_at);
            tokio::select! {
                changed = self.desired.changed() => {
                    if changed.is_err() { return; }
                    self.apply_desired().await;
                }
                changed = self.active.changed() => {
                    if changed.is_err() { return; }
                    // A release refused because this color was live may apply now.
                    if self.refused { self.apply_desired().await; }
                }
                exit = wait_exit(&mut self.current) => self.on_exit(exit).await,
                _ = sleep_until(probe_at.unwrap_or_else(far_future)), if probe_at.is_some() => self.on_probe().await,
                _ = sleep_until(restart_at.unwrap_or_else(far_future)), if restart_at.is_some() => self.restart().await,
                _ = crate::status::shutdown_requested(&mut shutdown) => return,
            }
        }
    }

    /// Picks up a process a previous agent started, if its pid file still matches /proc.
    fn adopt(&mut self) {
        let Some(pid_file) = PidFile::read(&self.pid_path()) else {
            return;
        };
        match AppProcess::adopt(pid_file.pid, pid_file.start_ticks) {
            Some(process) => {
                tracing::info!(color = %self.color, pid = pid_file.pid, version = %pid_file.release.version, "adopted running app");
                let mut status =
                    ColorStatus::new(self.color, &pid_file.release.version, HealthState::Starting);
                status.pid = Some(process.pid());
                status.restarts = pid_file.restarts;
                self.current = Some(Current {
                    release: pid_file.release,
                    dir: pid_file.dir,
                    process: Some(process),
                    restart_at: None,
                    restarts: pid_file.restarts,
                    crashes_in_row: 0,
                    first_launch: false,
                    ever_healthy: false,
                    launched_at: Instant::now(),
                    healthy_since: None,
                    previous: None,
                });
                self.publish(status);
            }
            None => {
                tracing::info!(color = %self.color, pid = pid_file.pid, "pid file names a process that is gone");
                let _ = std::fs::remove_file(self.pid_path());
            }
        }
    }

    async fn apply_desired(&mut self) {
        let desired = self.desired.borrow().clone();
        self.pinned = None;
        self.refused = false;
        match desired {
            DesiredRelease::Unknown => {}
            DesiredRelease::Invalid(error) => {
                let version = self
                    .current
                    .as_ref()
                    .map(|c| c.release.version.clone())
                    .unwrap_or_default();
                self.pin(&version, HealthState::Failed, error);
            }
            DesiredRelease::Absent => self.stop_current("no release").await,
            DesiredRelease::Release(r) if r.desired == Desired::Stopped => {
                self.stop_current(&r.version).await
            }
            DesiredRelease::Release(r) => self.converge(r).await,
        }
        if self.pinned.is_none() {
            self.publish_current();
        }
    }

    async fn converge(&mut self, release: ReleaseRecord) {
        if let Some(current) = &mut self.current {
            let alive = current.process.is_some() || current.restart_at.is_some();
            if alive && same_process(&current.release, &release) {
                current.release = release; // health settings or deploy id may have changed
                return;
            }
        }
        if self.is_active() && self.current.as_ref().is_some_and(|c| c.process.is_some()) {
            let running = self
                .current
                .as_ref()
                .map(|c| c.release.version.clone())
                .unwrap_or_default();
            let error = format!(
                "refusing to replace {} {running} with {}: {} is the active color",
                self.color, release.version, self.color
            );
            tracing::warn!(color = %self.color, version = %release.version, "{error}");
            self.pin(&running, self.status_state(), error);
            self.refused = true;
            return;
        }
        self.install(release).await;
    }

    /// Fetches the new release, then swaps processes. Any failure before the swap leaves the old
    /// process untouched; a new process that dies at once is replaced by the old release again.
    async fn install(&mut self, release: ReleaseRecord) {
        tracing::info!(color = %self.color, version = %release.version, url = %release.artifact.url, "installing release");
        self.publish(ColorStatus::new(
            self.color,
            &release.version,
            HealthState::Starting,
        ));
        let dir =
            match artifact::fetch(&self.ctx.http, &self.ctx.state_dir, &release.artifact).await {
                Ok(dir) => dir,
                Err(e) => return self.fail_release(&release.version, e.to_string()),
            };
        if self.desired.has_changed().unwrap_or(false) {
            return; // superseded while downloading; the loop applies the newer one
        }
        let previous = self.take_and_stop().await;
        match self.launch(release.clone(), dir) {
            Ok(()) => self.current.as_mut().expect("launched").previous = previous,
            Err(e) => {
                self.fail_release(&release.version, e.to_string());
                self.restore(previous).await;
            }
        }
        self.publish_current();
    }

    fn launch(&mut self, release: ReleaseRecord, dir: PathBuf) -> Result<(), AgentError> {
        if port_in_use(&self.ctx.address, self.port()) {
            return Err(AgentError::PortInUse {
                address: self.ctx.address.clone(),
                port: self.port(),
            });
        }
        let log_path = logs::log_path(&self.ctx.state_dir, self.color);
        let launch = Launch {
            dir: dir.clone(),
            command: release.run.command.clone(),
            env: self.app_env(&release),
            log_path,
        };
        let process = AppProcess::spawn(&launch)?;
        tracing::info!(color = %self.color, version = %release.version, pid = process.pid(), "started app");
        let pid_file = PidFile {
            pid: process.pid(),
            start_ticks: process.start_ticks(),
            release: release.clone(),
            dir: dir.clone(),
            restarts: 0,
        };
        if let Err(e) = pid_file.write(&self.pid_path()) {
            tracing::warn!(color = %self.color, error = %e, "cannot write pid file; a restarted agent will not adopt this app");
        }
        self.current = Some(Current {
            release,
            dir,
            process: Some(process),
            restart_at: None,
            restarts: 0,
            crashes_in_row: 0,
            first_launch: true,
            ever_healthy: false,
            launched_at: Instant::now(),
            healthy_since: None,
            previous: None,
        });
        Ok(())
    }

    /// The contract's variables, after the release's own env so that they always win.
    fn app_env(&self, release: &ReleaseRecord) -> BTreeMap<String, String> {
        let mut env = release.run.env.clone();
        env.insert("ENVIRONMENT_COLOR".into(), self.color.to_string());
        env.insert("APPLICATION_PORT".into(), self.port().to_string());
        env.insert("APPLICATION_HOST".into(), self.ctx.address.clone());
        env.insert("APP_VERSION".into(), release.version.clone());
        env.insert("HEALTH_CHECK_PATH".into(), release.health.path.clone());
        env.insert("LOG_LEVEL".into(), self.ctx.app_log_level.clone());
        env
    }

    /// Stops and forgets the current process; returns its release so it can be restored.
    async fn take_and_stop(&mut self) -> Option<(ReleaseRecord, PathBuf)> {
        let mut current = self.current.take()?;
        if let Some(process) = &mut current.process {
            let exit = process.stop(current.release.run.stop_timeout).await;
            tracing::info!(color = %self.color, version = %current.release.version, exit = %exit.0, "stopped app");
        }
        let _ = std::fs::remove_file(self.pid_path());
        Some((current.release, current.dir))
    }

    async fn restore(&mut self, previous: Option<(ReleaseRecord, PathBuf)>) {
        let Some((release, dir)) = previous else {
            return;
        };
        let version = release.version.clone();
        match self.launch(release, dir) {
            Ok(()) => {
                if let Some(c) = &mut self.current {
                    c.first_launch = false;
                }
                if let Some(mut pinned) = self.pinned.take() {
                    pinned
                        .error
                        .get_or_insert_default()
                        .push_str(&format!("; restored {version}"));
                    pinned.pid = self
                        .current
                        .as_ref()
                        .and_then(|c| c.process.as_ref())
                        .map(AppProcess::pid);
                    self.pinned = Some(pinned.clone());
                    self.publish(pinned);
                }
                tracing::info!(color = %self.color, %version, "restored previous release");
            }
            Err(e) => {
                tracing::error!(color = %self.color, %version, error = %e, "cannot restore previous release")
            }
        }
    }

    async fn stop_current(&mut self, version: &str) {
        if self.is_active() && self.current.as_ref().is_some_and(|c| c.process.is_some()) {
            let running = self
                .current
                .as_ref()
                .map(|c| c.release.version.clone())
                .unwrap_or_default();
            let error = format!("refusing to stop {}: it is the active color", self.color);
            self.pin(&running, self.status_state(), error);
            self.refused = true;
            return;
        }
        let stopped = self.take_and_stop().await.map(|(r, _)| r.version);
        let version = stopped.as_deref().unwrap_or(version);
        self.publish(ColorStatus::new(self.color, version, HealthState::Stopped));
    }

    async fn on_exit(&mut self, exit: Exit) {
        let Some(current) = &mut self.current else {
            return;
        };
        current.process = None;
        let version = current.release.version.clone();
        let log_tail = logs::tail(&logs::log_path(&self.ctx.state_dir, self.color), 1)
            .unwrap_or_default()
            .join("");
        let what = if log_tail.is_empty() {
            exit.0.clone()
        } else {
            format!("{}; last log line: {log_tail}", exit.0)
        };
        tracing::warn!(color = %self.color, %version, exit = %exit.0, "app exited");
        if current.first_launch && !current.ever_healthy {
            let _ = std::fs::remove_file(self.pid_path());
            let previous = self.current.take().and_then(|c| c.previous);
            self.fail_release(&version, format!("process {what} before it became healthy"));
            self.restore(previous).await;
            return;
        }
        current.crashes_in_row += 1;
        if current.crashes_in_row > self.ctx.max_restarts {
            let error = format!(
                "crashed {} times in a row ({what}); not restarting",
                current.crashes_in_row
            );
            let _ = std::fs::remove_file(self.pid_path());
            self.fail_release(&version, error);
            return;
        }
        let delay = Duration::from_millis(250) * 2u32.pow(current.crashes_in_row.min(6) - 1);
        current.restart_at = Some(Instant::now() + delay);
        let mut status = self.current_status(HealthState::Unhealthy);
        status.error = Some(format!("{what}; restarting in {delay:?}"));
        self.publish(status);
    }

    async fn restart(&mut self) {
        let Some(current) = self.current.take() else {
            return;
        };
        let (release, dir, restarts, crashes) = (
            current.release,
            current.dir,
            current.restarts + 1,
            current.crashes_in_row,
        );
        let version = release.version.clone();
        match self.launch(release, dir) {
            Ok(()) => {
                let c = self.current.as_mut().expect("launched");
                c.first_launch = false;
                c.restarts = restarts;
                c.crashes_in_row = crashes;
                if let Some(p) = &c.process {
                    let pid_file = PidFile {
                        pid: p.pid(),
                        start_ticks: p.start_ticks(),
                        release: c.release.clone(),
                        dir: c.dir.clone(),
                        restarts,
                    };
                    let _ = pid_file.write(&self.pid_path());
                }
                self.publish_current();
            }
            Err(e) => self.fail_release(&version, format!("restart failed: {e}")),
        }
    }

    async fn on_probe(&mut self) {
        let color = self.color;
        let (url, timeout, version) = {
            let Some(c) = &self.current else { return };
            let url = format!(
                "http://{}:{}{}",
                self.ctx.address,
                self.port(),
                c.release.health.path
            );
            (url, c.release.health.timeout, c.release.version.clone())
        };
        let probe = health::probe(&self.ctx.http, &url, timeout, color, &version).await;
        let Some(c) = &mut self.current else { return };
        if c.process.is_none() {
            return; // it exited while we probed; on_exit reports that
        }
        let now = Instant::now();
        let state = if probe.healthy {
            c.ever_healthy = true;
            let since = *c.healthy_since.get_or_insert(now);
            if now.duration_since(since) >= STABLE_AFTER {
                c.crashes_in_row = 0;
            }
            HealthState::Healthy
        } else {
            c.healthy_since = None;
            if c.ever_healthy {
                HealthState::Unhealthy
            } else if now.duration_since(c.launched_at) >= c.release.health.startup_timeout {
                let error = format!(
                    "not healthy within startup_timeout {}: {}",
                    humantime::format_duration(c.release.health.startup_timeout),
                    probe.reason.clone().unwrap_or_default()
                );
                self.fail_release(&version, error);
                return;
            } else {
                HealthState::Starting
            }
        };
        let mut status = self.current_status(state);
        status.error = probe.reason;
        status.health = probe.body;
        if self.pinned.is_none() {
            self.publish(status);
        }
    }

    fn next_probe(&self) -> Option<Instant> {
        let c = self.current.as_ref()?;
        c.process.as_ref()?;
        let last = self.status.borrow().as_ref().map(|s| s.state);
        let period = if c.ever_healthy && last != Some(HealthState::Starting) {
            c.release.health.interval
        } else {
            STARTING_PROBE
        };
        // The loop recomputes this after every event, so a probe follows the last event by `period`.
        Some(Instant::now() + period)
    }

    fn is_active(&self) -> bool {
        *self.active.borrow() == Some(self.color)
    }

    fn status_state(&self) -> HealthState {
        self.status
            .borrow()
            .as_ref()
            .map_or(HealthState::Stopped, |s| s.state)
    }

    /// The status of the current process with `state`, keeping `since` when the state is unchanged.
    fn current_status(&self, state: HealthState) -> ColorStatus {
        let Some(c) = &self.current else {
            return ColorStatus::new(self.color, "", HealthState::Stopped);
        };
        let mut status = ColorStatus::new(self.color, &c.release.version, state);
        status.restarts = c.restarts;
        status.pid = c.process.as_ref().map(AppProcess::pid);
        status
    }

    fn publish_current(&mut self) {
        if self.pinned.is_some() {
            return;
        }
        let state = match &self.current {
            None => return,
            Some(c) if c.ever_healthy => self.status_state(),
            Some(_) => HealthState::Starting,
        };
        let status = self.current_status(state);
        self.publish(status);
    }

    fn fail_release(&mut self, version: &str, error: String) {
        tracing::error!(color = %self.color, %version, %error, "release failed");
        self.pin(version, HealthState::Failed, error);
    }

    fn pin(&mut self, version: &str, state: HealthState, error: String) {
        let mut status = ColorStatus::new(self.color, version, state);
        status.error = Some(error);
        status.pid = self
            .current
            .as_ref()
            .and_then(|c| c.process.as_ref())
            .map(AppProcess::pid);
        status.restarts = self.current.as_ref().map_or(0, |c| c.restarts);
        self.pinned = Some(status.clone());
        self.publish(status);
    }

    /// Sends the status if it changed in a way worth writing (keeping `since` otherwise).
    fn publish(&self, mut status: ColorStatus) {
        self.status.send_if_modified(|slot| match slot {
            Some(old) if !old.differs_from(&status) => {
                old.health = status.health.clone();
                false
            }
            _ => {
                if let Some(old) = slot.as_ref().filter(|o| o.state == status.state) {
                    status.since = old.since.clone();
                }
                *slot = Some(status);
                true
            }
        });
    }
}

/// Two processes are the same when what runs is the same; health settings may change in place.
fn same_process(a: &ReleaseRecord, b: &ReleaseRecord) -> bool {
    a.version == b.version
        && a.artifact.sha256.eq_ignore_ascii_case(&b.artifact.sha256)
        && a.run == b.run
}

async fn wait_exit(current: &mut Option<Current>) -> Exit {
    match current.as_mut().and_then(|c| c.process.as_mut()) {
        Some(process) => process.exited().await,
        None => std::future::pending().await,
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}
