//! Hollow hosts for scale benchmarks (kubemark's hollow nodes, here): the real agent control
//! plane ([`agent::ControlPlane`]: etcd session and lease, release watch, supervisors, reporter)
//! over an in-memory app runtime. An app "starts" when launched, answers probes as unhealthy
//! until `start_delay` has passed and then as its [`Script`] says. Thousands run in one process.
use agent::health::Probe;
use agent::runtime::{Adopted, AppRuntime, RunningApp};
use agent::{ControlPlane, ControlPlaneSettings};
use proto::records::{Artifact, HostRecord, Ports, ReleaseRecord};
use proto::{Color, Keys};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How a hollow app answers its probes once started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Script {
    Healthy,
    /// Healthy, but every probe takes this long to answer.
    Slow(Duration),
    /// Never healthy: its release fails at the startup timeout.
    Failing,
    /// Exits this long after every start.
    CrashLoop(Duration),
}

pub struct HollowRuntime {
    pub start_delay: Duration,
    pub script: Script,
    /// When each color's app last started.
    started: Mutex<[Option<Instant>; 2]>,
}

static NEXT_PID: AtomicU32 = AtomicU32::new(1_000_000);

impl HollowRuntime {
    pub fn new(start_delay: Duration, script: Script) -> HollowRuntime {
        HollowRuntime {
            start_delay,
            script,
            started: Mutex::new([None, None]),
        }
    }
}

/// A hollow app: runs until stopped, or until its crash-loop script ends it.
pub struct HollowApp {
    pid: u32,
    crash_at: Option<Instant>,
}

impl RunningApp for HollowApp {
    fn pid(&self) -> u32 {
        self.pid
    }

    async fn exited(&mut self) -> String {
        match self.crash_at {
            Some(at) => {
                // The scripted crash's deadline: a simulated app, not a synchronisation.
                tokio::time::sleep_until(at).await; // simulated crash deadline
                "exited with status 1 (hollow crash loop)".into()
            }
            None => std::future::pending().await,
        }
    }

    async fn stop(&mut self, _timeout: Duration) -> String {
        "stopped by SIGTERM".into()
    }
}

impl AppRuntime for HollowRuntime {
    type Process = HollowApp;

    async fn fetch(&self, _color: Color, artifact: &Artifact) -> Result<PathBuf, String> {
        Ok(PathBuf::from("/hollow").join(&artifact.sha256))
    }

    fn launch(
        &self,
        color: Color,
        _release: &ReleaseRecord,
        _dir: &Path,
        _restarts: u32,
    ) -> Result<HollowApp, String> {
        let now = Instant::now();
        self.started.lock().unwrap()[color as usize] = Some(now);
        let crash_at = match self.script {
            Script::CrashLoop(after) => Some(now + self.start_delay + after),
            _ => None,
        };
        Ok(HollowApp {
            pid: NEXT_PID.fetch_add(1, Ordering::Relaxed),
            crash_at,
        })
    }

    fn adopt(&self, _color: Color) -> Option<Adopted<HollowApp>> {
        None
    }

    fn forget(&self, color: Color) {
        self.started.lock().unwrap()[color as usize] = None;
    }

    async fn probe(&self, color: Color, release: &ReleaseRecord) -> Probe {
        let started = self.started.lock().unwrap()[color as usize];
        let up = started.is_some_and(|at| at.elapsed() >= self.start_delay);
        let verdict = |reason: Option<&str>| Probe {
            healthy: reason.is_none(),
            reason: reason.map(str::to_string),
            body: serde_json::json!({ "version": release.version, "color": color.to_string() }),
        };
        match (up, self.script) {
            (false, _) => verdict(Some("connection refused (hollow app starting)")),
            (true, Script::Failing) => verdict(Some("HTTP 500 (hollow app failing)")),
            (true, Script::Slow(delay)) => {
                tokio::time::sleep(delay).await; // the scripted slow answer (its deadline)
                verdict(None)
            }
            (true, _) => verdict(None),
        }
    }

    fn last_log_line(&self, _color: Color) -> String {
        String::new()
    }
}

/// One hollow host's identity: its name, and the address its LBs would route to.
pub struct HollowHost {
    pub name: String,
    pub address: String,
}

/// Starts a hollow host running every app of `apps` (their keys): claims its host name in each
/// like a real agent, then runs the real control plane of each over its own [`HollowRuntime`]
/// (made by `runtime`), every app's keys under the host's one lease, until `shutdown`.
pub async fn spawn(
    client: etcd_client::Client,
    apps: Vec<Keys>,
    host: HollowHost,
    lease_ttl: Duration,
    runtime: impl Fn() -> HollowRuntime,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<ControlPlane>, String> {
    let instance = format!("hollow-{}-{}", host.name, uuid_like());
    for keys in &apps {
        proto::leased::await_claim(
            &client,
            &keys.host(&host.name),
            &instance,
            lease_ttl + Duration::from_secs(2),
        )
        .await
        .map_err(|e| format!("host {} in {}: {e}", host.name, keys.app()))?;
    }
    let (held, held_rx) = agent::apps::HeldSet::new();
    let holder = tokio::spawn(proto::leased::hold_keys(
        client.clone(),
        lease_ttl,
        instance.clone(),
        held_rx,
        shutdown.clone(),
    ));
    let mut planes = Vec::new();
    for (i, keys) in apps.into_iter().enumerate() {
        // Each app on its own pair of ports, as `[[apps]]` requires.
        let base = 8080 + 2 * i as u16;
        let record = HostRecord {
            host: host.name.clone(),
            address: host.address.clone(),
            ports: Ports {
                blue: base,
                green: base + 1,
            },
            grpc: "127.0.0.1:0".into(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: proto::time::now_rfc3339(),
            instance: Some(instance.clone()),
        };
        let settings = ControlPlaneSettings {
            client: client.clone(),
            keys,
            host: record,
            lease_ttl,
            max_restarts: 3,
            // No trusted keys: the token floor is never consulted, nothing is written there.
            trusted: proto::signing::TrustedKeys::default(),
            state_dir: std::env::temp_dir(),
        };
        planes.push(ControlPlane::spawn_in(
            settings,
            Arc::new(runtime()),
            shutdown.clone(),
            held.clone(),
        ));
    }
    if let Some(first) = planes.first_mut() {
        first.tasks.push(holder);
    }
    Ok(planes)
}

/// A per-process unique suffix: hollow hosts of one run never share an instance id.
fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        NEXT_PID.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::records::{Desired, HealthSpec, RunSpec};
    use std::collections::BTreeMap;

    fn release() -> ReleaseRecord {
        ReleaseRecord {
            version: "v1".into(),
            artifact: Artifact {
                url: "file:///a".into(),
                sha256: "0".repeat(64),
            },
            run: RunSpec {
                command: vec!["./app".into()],
                env: BTreeMap::new(),
                stop_timeout: Duration::from_secs(1),
            },
            health: HealthSpec::default(),
            desired: Desired::Running,
            deploy_id: "d".into(),
            token: 1,
            signature: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hollow_app_is_unhealthy_until_its_start_delay_then_follows_its_script() {
        let runtime = HollowRuntime::new(Duration::from_secs(2), Script::Failing);
        let r = release();
        assert!(
            !runtime.probe(Color::Blue, &r).await.healthy,
            "not launched"
        );
        runtime.launch(Color::Blue, &r, Path::new("/x"), 0).unwrap();
        assert!(!runtime.probe(Color::Blue, &r).await.healthy, "starting");
        tokio::time::advance(Duration::from_secs(3)).await;
        let failing = runtime.probe(Color::Blue, &r).await;
        assert!(!failing.healthy && failing.reason.unwrap().contains("500"));

        let healthy = HollowRuntime::new(Duration::from_secs(2), Script::Healthy);
        healthy
            .launch(Color::Green, &r, Path::new("/x"), 0)
            .unwrap();
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(healthy.probe(Color::Green, &r).await.healthy);
        assert!(
            !healthy.probe(Color::Blue, &r).await.healthy,
            "blue never started"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_crash_looping_hollow_app_exits_after_its_start() {
        let runtime = HollowRuntime::new(
            Duration::from_secs(1),
            Script::CrashLoop(Duration::from_secs(4)),
        );
        let mut app = runtime
            .launch(Color::Blue, &release(), Path::new("/x"), 0)
            .unwrap();
        let started = Instant::now();
        let how = app.exited().await;
        assert!(how.contains("exited"), "{how}");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
