//! The scale benchmark's fleet: hollow hosts and hollow LBs (the real agent and sidecar code over
//! their in-memory seams, thousands in this process) next to a few real nginx LBs, on one etcd.
pub mod hollow_host;
pub mod metrics;
pub mod nginx_standin;
pub mod proxy;

use crate::nginx::{Nginx, SidecarProc};
use crate::procs::{APP, PREFIX};
use crate::{binary, Etcd};
use hollow_host::{HollowHost, HollowRuntime, Script};
use nginx_standin::StandInMaster;
use proto::Keys;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How many etcd connections the hollow hosts share: one HTTP/2 connection per thousand or so
/// hosts' streams, as real hosts would each have their own.
const CLIENTS: usize = 8;

/// Hollow hosts started at once (see [`HollowFleet::grow_hosts`]).
const HOSTS_PER_WAVE: usize = 250;

pub struct HollowFleet {
    pub etcd: Etcd,
    clients: Vec<etcd_client::Client>,
    shutdown: watch::Sender<bool>,
    /// Every hollow host's control planes, one per app.
    hosts: Vec<Vec<agent::ControlPlane>>,
    /// Real nginx LBs with their sidecar processes.
    pub real_lbs: Vec<(Nginx, SidecarProc)>,
    /// Each hollow LB's nginx stand-in master: what it was asked to reload.
    pub hollow_lbs: Vec<std::sync::Arc<StandInMaster>>,
    /// The apps every host and LB serves (the first is [`APP`]).
    pub apps: Vec<String>,
    dir: tempfile::TempDir,
    /// Hosts start their apps up to this much later than the start delay, in 20 steps, as a real
    /// fleet's hosts never all become healthy at the same instant (zero: all at once).
    pub start_spread: Duration,
}

impl HollowFleet {
    pub async fn start() -> HollowFleet {
        HollowFleet::start_with_apps(1).await
    }

    /// A fleet whose hosts and LBs each serve `apps` apps: [`APP`], `app-02`, …
    pub async fn start_with_apps(apps: usize) -> HollowFleet {
        let etcd = Etcd::start().await;
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            clients.push(etcd.client().await);
        }
        HollowFleet {
            etcd,
            clients,
            shutdown: watch::channel(false).0,
            hosts: Vec::new(),
            real_lbs: Vec::new(),
            hollow_lbs: Vec::new(),
            apps: (1..=apps)
                .map(|i| match i {
                    1 => APP.to_string(),
                    i => format!("app-{i:02}"),
                })
                .collect(),
            dir: tempfile::tempdir().expect("scale dir"),
            start_spread: Duration::ZERO,
        }
    }

    /// The keys of [`APP`], the first app.
    pub fn keys(&self) -> Keys {
        Keys::new(PREFIX, APP).expect("keys")
    }

    fn all_keys(&self) -> Vec<Keys> {
        self.apps
            .iter()
            .map(|app| Keys::new(PREFIX, app).expect("keys"))
            .collect()
    }

    pub fn lb_count(&self) -> usize {
        self.real_lbs.len() + self.hollow_lbs.len()
    }

    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// Adds hollow hosts until there are `total`, each at its own loopback address, and waits
    /// until every one is registered in etcd.
    pub async fn grow_hosts(&mut self, total: usize, start_delay: Duration) {
        // In waves, as a real fleet's hosts come up: 5,000 agents registering in the same second
        // is a storm no fleet sees, and it measures etcd's overload, not the control plane.
        // Hosts register in each app in turn, so the last app's count covers the others.
        let keys = self.all_keys().pop().expect("an app");
        let client = self.clients[0].clone();
        while self.hosts.len() < total {
            let first = self.hosts.len();
            let wave_end = (first + HOSTS_PER_WAVE).min(total);
            let starting: Vec<_> = (first..wave_end)
                .map(|i| {
                    self.spawn_host(i, self.clients[i % self.clients.len()].clone(), start_delay)
                })
                .collect();
            for started in starting {
                let plane = started
                    .await
                    .expect("hollow host task")
                    .expect("hollow host");
                self.hosts.push(plane);
            }
            crate::wait_for(
                &format!("{wave_end} hollow hosts to register"),
                Duration::from_secs(300),
                || at_least(&client, keys.hosts_prefix(), wave_end),
            )
            .await;
        }
    }

    /// Adds one hollow host whose etcd traffic goes through `client` (one a test counts), and
    /// waits until it is registered. Returns its name.
    pub async fn add_host_on(&mut self, client: etcd_client::Client) -> String {
        let i = self.hosts.len();
        let plane = self
            .spawn_host(i, client, Duration::ZERO)
            .await
            .expect("hollow host task")
            .expect("hollow host");
        self.hosts.push(plane);
        let name = host_name(i);
        for keys in self.all_keys() {
            self.await_key(&name, keys.host(&name)).await;
        }
        name
    }

    /// Waits until `key` exists: `name` has registered.
    async fn await_key(&self, name: &str, key: String) {
        let client = self.clients[0].clone();
        crate::wait_for(
            &format!("{name} to register"),
            Duration::from_secs(30),
            || {
                let (key, client) = (key.clone(), client.clone());
                async move {
                    client
                        .clone()
                        .get(key, None)
                        .await
                        .ok()?
                        .kvs()
                        .first()
                        .map(|_| ())
                }
            },
        )
        .await;
    }

    /// A proxy in front of this fleet's etcd: its endpoint URL, and what goes through it.
    pub async fn counted_endpoint(&self) -> (String, std::sync::Arc<proxy::Counters>) {
        let upstream = self.etcd.endpoint.trim_start_matches("http://").to_string();
        let (address, counters) = proxy::start(upstream).await;
        (format!("http://{address}"), counters)
    }

    /// An etcd client whose traffic a proxy counts.
    pub async fn counted_client(&self) -> (etcd_client::Client, std::sync::Arc<proxy::Counters>) {
        let (endpoint, counters) = self.counted_endpoint().await;
        let client = etcd_client::Client::connect([endpoint], None)
            .await
            .expect("etcd through the proxy");
        (client, counters)
    }

    fn spawn_host(
        &self,
        i: usize,
        client: etcd_client::Client,
        start_delay: Duration,
    ) -> tokio::task::JoinHandle<Result<Vec<agent::ControlPlane>, String>> {
        let host = HollowHost {
            name: host_name(i),
            address: format!("127.1.{}.{}", i / 250, i % 250 + 1),
        };
        let delay = start_delay + self.start_spread * (i % 20) as u32 / 20;
        tokio::spawn(hollow_host::spawn(
            client,
            self.all_keys(),
            host,
            Duration::from_secs(10),
            move || HollowRuntime::new(delay, Script::Healthy),
            self.shutdown.subscribe(),
        ))
    }

    /// Crashes the last `n` hollow hosts as a power cut would: their agents stop, and their one
    /// lease ends, taking every app's keys of those hosts away in one revision, which this returns.
    pub async fn crash_hosts(&mut self, n: usize) -> i64 {
        let mut client = self.clients[0].clone();
        let mut revision = 0;
        for _ in 0..n {
            let i = self.hosts.len() - 1;
            for plane in self.hosts.pop().expect("a host to crash") {
                plane.feed.abort();
                for task in &plane.tasks {
                    task.abort();
                }
            }
            let key = self.keys().host(&host_name(i));
            let resp = client.get(key.as_str(), None).await.expect("read host key");
            let lease = resp.kvs().first().expect("host registered").lease();
            let revoked = client.lease_revoke(lease).await.expect("revoke lease");
            revision = revoked.header().map_or(revision, |h| h.revision());
        }
        revision
    }

    /// Waits until every LB of every app acked `revision` or later.
    pub async fn await_lbs_applied(&self, revision: i64) {
        let client = self.clients[0].clone();
        for keys in self.all_keys() {
            let lbs = self.lb_count();
            crate::wait_for(
                &format!("{lbs} LBs of {} to apply revision {revision}", keys.app()),
                Duration::from_secs(60),
                || {
                    let (client, prefix) = (client.clone(), keys.lbs_prefix());
                    async move {
                        let options = etcd_client::GetOptions::new().with_prefix();
                        let resp = client.clone().get(prefix, Some(options)).await.ok()?;
                        let applied = resp
                            .kvs()
                            .iter()
                            .filter_map(|kv| {
                                serde_json::from_slice::<proto::records::LbRecord>(kv.value()).ok()
                            })
                            .filter(|ack| ack.applied_revision >= revision)
                            .count();
                        (applied >= lbs).then_some(())
                    }
                },
            )
            .await;
        }
    }

    /// Adds LBs until there are `total`: real nginx ones first (up to `real`), hollow ones after.
    /// Waits until every one has registered.
    pub async fn grow_lbs(&mut self, total: usize, real: usize) {
        while self.lb_count() < total {
            let n = self.lb_count();
            let name = format!("lb-{n:02}");
            if self.real_lbs.len() < real {
                let nginx = Nginx::start();
                if self.apps.len() > 1 {
                    nginx.include_every_app();
                }
                let sidecar = if self.apps.len() == 1 {
                    SidecarProc::start(&self.etcd, &name, &nginx, "")
                } else {
                    let names: Vec<[String; 1]> =
                        self.apps.iter().map(|a| [format!("{a}.test")]).collect();
                    let names: Vec<[&str; 1]> = names.iter().map(|[n]| [n.as_str()]).collect();
                    let entries: Vec<(&str, &[&str])> = self
                        .apps
                        .iter()
                        .zip(&names)
                        .map(|(a, n)| (a.as_str(), &n[..]))
                        .collect();
                    SidecarProc::start_apps(&self.etcd, &name, &nginx, &entries)
                };
                self.real_lbs.push((nginx, sidecar));
            } else {
                let client = self.clients[n % self.clients.len()].clone();
                self.spawn_hollow_lb(&name, client);
            }
        }
        let client = self.clients[0].clone();
        for keys in self.all_keys() {
            crate::wait_for(
                &format!("{total} LBs to register in {}", keys.app()),
                Duration::from_secs(120),
                || at_least(&client, keys.lbs_prefix(), total),
            )
            .await;
        }
    }

    /// Adds one hollow LB whose etcd traffic goes through `client` (one a test counts), and
    /// waits until it has registered. Returns its name.
    pub async fn add_lb_on(&mut self, client: etcd_client::Client) -> String {
        let name = format!("lb-{:02}", self.lb_count());
        self.spawn_hollow_lb(&name, client);
        self.await_key(&name, self.keys().lb(&name)).await;
        name
    }

    fn spawn_hollow_lb(&mut self, name: &str, client: etcd_client::Client) {
        let config = self.hollow_lb_config(name);
        let shutdown = self.shutdown.subscribe();
        let master = std::sync::Arc::new(StandInMaster::default());
        let standin = master.clone();
        tokio::spawn(async move {
            if let Err(e) = nginx_standin::run_hollow_lb(config, client, standin, shutdown).await {
                eprintln!("hollow LB failed: {e}");
            }
        });
        self.hollow_lbs.push(master);
    }

    fn hollow_lb_config(&self, name: &str) -> lb_sidecar::config::Config {
        let one = self.hollow_lb_app_config(name);
        if self.apps.len() == 1 {
            return one;
        }
        // As `[[apps]]` would: each app its own host name and state directory.
        let apps = self
            .apps
            .iter()
            .map(|app| lb_sidecar::config::Config {
                app: app.clone(),
                server_names: vec![format!("{app}.test")],
                state_dir: one.state_dir.join("apps").join(app),
                ..one.clone()
            })
            .collect();
        lb_sidecar::config::Config { apps, ..one }
    }

    fn hollow_lb_app_config(&self, name: &str) -> lb_sidecar::config::Config {
        let loopback = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
        lb_sidecar::config::Config {
            etcd: Default::default(),
            prefix: PREFIX.into(),
            app: APP.into(),
            name: name.into(),
            listen: loopback(1),
            preview_listen: loopback(2),
            status_listen: loopback(3),
            public_url: None,
            server_names: Vec::new(),
            tls: None,
            apps: Vec::new(),
            status_host: None,
            default_server: None,
            lease_ttl: Duration::from_secs(5),
            debounce: Duration::from_millis(200),
            min_reload_interval: Duration::from_secs(1),
            template: None,
            // Hollow hosts live on 127.1.x.y.
            upstreams_allow: vec![lb_sidecar::upstreams::Cidr::parse("127.0.0.0/8").unwrap()],
            nginx: lb_sidecar::config::NginxConfig {
                binary: "nginx".into(),
                main_config: "/nonexistent".into(),
                include_file: "/nonexistent".into(),
                pid_file: "/nonexistent".into(),
                status_listen: loopback(4),
                // The stand-in answers as a reloading nginx does.
                mode: Some(lb_sidecar::config::Mode::Reload),
            },
            state_dir: self.dir.path().join(name),
        }
    }
}

impl Drop for HollowFleet {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        for plane in self.hosts.iter().flatten() {
            plane.feed.abort();
        }
    }
}

fn host_name(i: usize) -> String {
    format!("hollow-{i:05}")
}

/// Some once at least `n` keys are under `prefix` (a count-only read).
async fn at_least(client: &etcd_client::Client, prefix: String, n: usize) -> Option<()> {
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_count_only();
    let resp = client.clone().get(prefix, Some(options)).await.ok()?;
    (resp.count() as usize >= n).then_some(())
}

/// A spec for hollow apps (no smoke checks: nothing listens) and an artifact URL the coordinator
/// can hash (hollow hosts never fetch it).
pub fn hollow_spec(dir: &Path) -> (PathBuf, String) {
    hollow_spec_for(dir, APP, "1s")
}

/// [`hollow_spec`] for `app`, whose hosts probe it every `interval`.
pub fn hollow_spec_for(dir: &Path, app: &str, interval: &str) -> (PathBuf, String) {
    let path = dir.join(format!("{app}.toml"));
    let text = format!(
        "app = \"{app}\"\n[run]\ncommand = [\"./hollow\"]\n[health]\ninterval = \"{interval}\"\nstartup_timeout = \"60s\"\n"
    );
    std::fs::write(&path, text).unwrap();
    let artifact = dir.join("hollow.tar.gz");
    std::fs::write(&artifact, b"hollow").unwrap();
    (path, format!("file://{}", artifact.display()))
}

/// What one coordinator run took.
pub struct Run {
    /// Process start to exit.
    pub took: Duration,
    /// Its peak resident set (VmHWM, sampled every 10 ms while it runs), in KiB.
    pub peak_rss_kib: u64,
    /// CPU seconds it used, as of its last sample.
    pub cpu_seconds: f64,
}

/// Runs the coordinator for [`APP`] with `args` against `etcd` (an endpoint URL); panics with its
/// output on failure. With `BENCH_SHOW` set, its progress lines go to stderr.
pub async fn coordinator(etcd: &str, args: &[&str]) -> Run {
    coordinator_for(etcd, APP, args).await
}

/// [`coordinator`] for `app`.
pub async fn coordinator_for(etcd: &str, app: &str, args: &[&str]) -> Run {
    let started = Instant::now();
    // With BENCH_PERF=<file>, every deploy runs under `perf record` (the last one is kept).
    let perf = std::env::var("BENCH_PERF")
        .ok()
        .filter(|_| args.first() == Some(&"deploy"));
    let mut command = match &perf {
        Some(file) => {
            let mut c = tokio::process::Command::new("perf");
            c.args(["record", "-F", "999", "-g", "-o", file, "--"])
                .arg(binary("coordinator"));
            c
        }
        None => tokio::process::Command::new(binary("coordinator")),
    };
    let mut child = command
        .env("BLUEGREEN_ETCD", etcd)
        .env("BLUEGREEN_APP", app)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run coordinator");
    let pid = child.id().expect("coordinator pid");
    let (mut peak_rss_kib, mut cpu_seconds) = (0, 0.0);
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let read_out = tokio::io::AsyncReadExt::read_to_end(&mut stdout, &mut out);
    let read_err = tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut err);
    let exited = async {
        loop {
            peak_rss_kib = peak_rss_kib.max(crate::hwm_kib(pid).unwrap_or(0));
            cpu_seconds = f64::max(cpu_seconds, metrics::cpu_seconds(pid));
            tokio::select! {
                status = child.wait() => return status.expect("coordinator exit"),
                _ = tokio::time::sleep(Duration::from_millis(10)) => {} // poll period of the sampling
            }
        }
    };
    let (status, _, _) = tokio::join!(exited, read_out, read_err);
    let took = started.elapsed();
    let (out, err) = (String::from_utf8_lossy(&out), String::from_utf8_lossy(&err));
    if std::env::var_os("BENCH_SHOW").is_some() {
        eprintln!("{out}{err}");
    }
    assert!(status.success(), "coordinator {args:?}: {out}{err}");
    Run {
        took,
        peak_rss_kib,
        cpu_seconds,
    }
}
