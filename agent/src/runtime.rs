//! The app-runtime seam: how a color's release is fetched, started, stopped, probed and re-adopted.
//! [`ProcessRuntime`] does it for real (artifacts on disk, processes in their own group, pid files,
//! HTTP/TCP probes); the supervisor only sees the trait, so hollow hosts and unit tests can run the
//! same supervisor over an in-memory runtime.
use crate::health::{self, Probe};
use crate::process::{port_in_use, AppProcess, Launch, PidFile};
use crate::{artifact, logs, workdir};
use proto::records::{Artifact, Ports, ReleaseRecord};
use proto::Color;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A started (or adopted) app process. The futures are `Send` so that an agent over any runtime
/// (processes, or the in-memory one of hollow hosts) runs its supervisors as spawned tasks.
pub trait RunningApp: Send + 'static {
    fn pid(&self) -> u32;
    /// Resolves when the process exits, saying how (cancel-safe).
    fn exited(&mut self) -> impl Future<Output = String> + Send;
    /// Stops it gracefully: SIGTERM, up to `timeout`, then SIGKILL. Says how it ended.
    fn stop(&mut self, timeout: Duration) -> impl Future<Output = String> + Send;
}

/// What a previous agent left running on a color.
pub struct Adopted<P> {
    pub process: P,
    pub release: ReleaseRecord,
    pub dir: PathBuf,
    pub restarts: u32,
}

pub trait AppRuntime: Send + Sync + 'static {
    type Process: RunningApp;
    /// Downloads, verifies and unpacks `artifact` and makes `color` a fresh working tree of it;
    /// returns the directory to run in.
    fn fetch(
        &self,
        color: Color,
        artifact: &Artifact,
    ) -> impl Future<Output = Result<PathBuf, String>> + Send;
    /// Starts `release` on `color` from `dir`, and records it for a later agent to adopt.
    fn launch(
        &self,
        color: Color,
        release: &ReleaseRecord,
        dir: &Path,
        restarts: u32,
    ) -> Result<Self::Process, String>;
    /// The process a previous agent left running on `color`, if it is still the same process.
    fn adopt(&self, color: Color) -> Option<Adopted<Self::Process>>;
    /// Forgets the adoption record of `color` (its process is stopped or gone).
    fn forget(&self, color: Color);
    /// Probes `color` running `release` once.
    fn probe(&self, color: Color, release: &ReleaseRecord) -> impl Future<Output = Probe> + Send;
    /// The last line the app of `color` logged, for exit reports.
    fn last_log_line(&self, color: Color) -> String;
}

/// Where a color's pid file (what a restarted agent adopts) lives in an app's state directory.
pub fn pid_path(state_dir: &Path, color: Color) -> PathBuf {
    state_dir.join(format!("{color}.pid.json"))
}

/// The real runtime: processes on this host.
pub struct ProcessRuntime {
    /// The app it runs (its metrics label).
    pub app: String,
    pub address: String,
    pub ports: Ports,
    pub state_dir: PathBuf,
    pub http: reqwest::Client,
    pub app_log_level: String,
    /// Where `secret:NAME` env values are read from (root-only files, never in etcd).
    pub secrets_dir: Option<PathBuf>,
    /// The user apps run as (`None`: the agent's own, only when configured as "root").
    pub run_as: Option<crate::process::RunAs>,
    pub download: artifact::DownloadLimits,
    /// Where probe latencies go.
    pub metrics: std::sync::Arc<crate::metrics::AgentMetrics>,
}

impl ProcessRuntime {
    fn pid_path(&self, color: Color) -> PathBuf {
        pid_path(&self.state_dir, color)
    }

    /// The contract's variables, after the release's own env so that they always win. Values
    /// `secret:NAME` are resolved here, on the host, from `secrets_dir/NAME`: etcd only ever holds
    /// the reference. Errors name the variable and the secret, never a value.
    fn app_env(
        &self,
        color: Color,
        release: &ReleaseRecord,
        dir: &Path,
    ) -> Result<BTreeMap<String, String>, String> {
        let mut env = BTreeMap::new();
        for (name, value) in &release.run.env {
            let value = match value.strip_prefix(proto::secrets::SECRET_PREFIX) {
                Some(secret) => self.secret(name, secret)?,
                None => value.clone(),
            };
            env.insert(name.clone(), value);
        }
        env.insert("ENVIRONMENT_COLOR".into(), color.to_string());
        env.insert("APPLICATION_PORT".into(), self.ports.of(color).to_string());
        env.insert("APPLICATION_HOST".into(), self.address.clone());
        env.insert("APP_VERSION".into(), release.version.clone());
        env.insert("HEALTH_CHECK_PATH".into(), release.health.path.clone());
        env.insert("LOG_LEVEL".into(), self.app_log_level.clone());
        // The color's own home and temporary directory: nothing an app (or a library it uses)
        // writes to "its" home or /tmp is shared with the other color.
        if let Some((home, tmp)) = workdir::home_and_tmp(dir) {
            env.insert("HOME".into(), home.display().to_string());
            env.insert("TMPDIR".into(), tmp.display().to_string());
        }
        Ok(env)
    }

    fn secret(&self, variable: &str, name: &str) -> Result<String, String> {
        let what = format!("env {variable}: secret {name:?}");
        proto::check_name("secret name", name).map_err(|e| format!("{what}: {e}"))?;
        let dir = self
            .secrets_dir
            .as_ref()
            .ok_or_else(|| format!("{what}: this agent has no secrets_dir configured"))?;
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("{what}: {}: {e}", path.display()))?;
        Ok(text.strip_suffix('\n').unwrap_or(&text).to_string())
    }
}

impl RunningApp for AppProcess {
    fn pid(&self) -> u32 {
        AppProcess::pid(self)
    }

    async fn exited(&mut self) -> String {
        AppProcess::exited(self).await.0
    }

    async fn stop(&mut self, timeout: Duration) -> String {
        AppProcess::stop(self, timeout).await.0
    }
}

impl AppRuntime for ProcessRuntime {
    type Process = AppProcess;

    async fn fetch(&self, color: Color, artifact: &Artifact) -> Result<PathBuf, String> {
        let cached = artifact::fetch(&self.http, &self.state_dir, artifact, self.download)
            .await
            .map_err(|e| e.to_string())?;
        let running = PidFile::read(&self.pid_path(color)).map(|p| p.dir);
        let owner = self.run_as.as_ref().map(|u| (u.uid, u.gid));
        let state_dir = self.state_dir.clone();
        let in_use: Vec<String> = Color::ALL
            .iter()
            .filter_map(|c| PidFile::read(&self.pid_path(*c)))
            .map(|p| p.release.artifact.sha256)
            .chain([artifact.sha256.clone()])
            .collect();
        tokio::task::spawn_blocking(move || {
            // One copy or collection at a time: a collection must not remove an artifact the
            // other color is copying.
            static CACHE: std::sync::Mutex<()> = std::sync::Mutex::new(());
            let _one = CACHE.lock().unwrap_or_else(|p| p.into_inner());
            let tree = workdir::prepare(&state_dir, color, &cached, owner, running.as_deref());
            artifact::collect(&state_dir, &in_use, artifact::CACHE_KEEP);
            tree
        })
        .await
        .map_err(|e| format!("preparing the {color} tree: {e}"))?
    }

    fn launch(
        &self,
        color: Color,
        release: &ReleaseRecord,
        dir: &Path,
        restarts: u32,
    ) -> Result<AppProcess, String> {
        let port = self.ports.of(color);
        if port_in_use(&self.address, port) {
            return Err(crate::error::AgentError::PortInUse {
                address: self.address.clone(),
                port,
            }
            .to_string());
        }
        let launch = Launch {
            dir: dir.to_path_buf(),
            command: release.run.command.clone(),
            env: self.app_env(color, release, dir)?,
            log_path: logs::log_path(&self.state_dir, color),
            user: self.run_as.clone(),
        };
        let process = AppProcess::spawn(&launch).map_err(|e| e.to_string())?;
        tracing::info!(%color, version = %release.version, pid = process.pid(), "started app");
        let pid_file = PidFile {
            pid: process.pid(),
            start_ticks: process.start_ticks(),
            release: release.clone(),
            dir: dir.to_path_buf(),
            restarts,
        };
        if let Err(e) = pid_file.write(&self.pid_path(color)) {
            // An app no pid file names is one a restarted agent cannot adopt or stop: it would hold
            // the color's port for good. The fault runner found one on a full state disk.
            process.kill_now();
            return Err(format!(
                "cannot record the app's pid ({e}); not leaving running an app the agent could lose track of"
            ));
        }
        Ok(process)
    }

    fn adopt(&self, color: Color) -> Option<Adopted<AppProcess>> {
        let pid_file = PidFile::read(&self.pid_path(color))?;
        match AppProcess::adopt(pid_file.pid, pid_file.start_ticks) {
            Some(process) => {
                tracing::info!(%color, pid = pid_file.pid, version = %pid_file.release.version, "adopted running app");
                Some(Adopted {
                    process,
                    release: pid_file.release,
                    dir: pid_file.dir,
                    restarts: pid_file.restarts,
                })
            }
            None => {
                tracing::info!(%color, pid = pid_file.pid, "pid file names a process that is gone");
                self.forget(color);
                None
            }
        }
    }

    fn forget(&self, color: Color) {
        let _ = std::fs::remove_file(self.pid_path(color));
    }

    async fn probe(&self, color: Color, release: &ReleaseRecord) -> Probe {
        let port = self.ports.of(color);
        let started = std::time::Instant::now();
        let probe = health::probe(
            &self.http,
            &release.health,
            &self.address,
            port,
            color,
            &release.version,
        )
        .await;
        self.metrics
            .observe_probe(&self.app, color, started.elapsed());
        probe
    }

    fn last_log_line(&self, color: Color) -> String {
        logs::tail(&logs::log_path(&self.state_dir, color), 1)
            .unwrap_or_default()
            .join("")
    }
}
