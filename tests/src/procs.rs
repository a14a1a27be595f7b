//! Agents as real processes, one per simulated host on its own loopback address (127.0.0.11, …).
use crate::daemon::Daemon;
use crate::{binary, free_port, Etcd};
use proto::records::{decode, HealthRecord, HealthState, Ports, ReleaseRecord};
use proto::{Color, Keys};
use std::path::PathBuf;
use std::time::Duration;

pub const APP: &str = "shop";
pub const PREFIX: &str = "/bluegreen";

pub fn keys() -> Keys {
    Keys::new(PREFIX, APP).unwrap()
}

pub struct AgentProc {
    daemon: Daemon,
    pub host: String,
    pub address: String,
    pub ports: Ports,
    /// Its gRPC API, as its host record says (`unix:<path>`).
    pub grpc: String,
    /// Its `/metrics` listener: a port of its own, since parallel tests put agents of different
    /// fleets on the same address.
    pub metrics: String,
    pub state_dir: PathBuf,
    /// The network namespace it runs in, if any.
    pub ns: Option<crate::netns::Ns>,
    /// A small disk under `state_dir`, if asked for (to be filled by a fault).
    pub disk: Option<crate::disk::SmallDisk>,
    /// Its agent.toml (rewritten by [`AgentProc::use_apps`]).
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// One `[[apps]]` entry of an agent's config.
pub struct AppEntry {
    pub name: String,
    pub ports: Ports,
    /// Its own state_dir (to claim a single-app layout), else the agent's default.
    pub state_dir: Option<PathBuf>,
}

impl AgentProc {
    /// Starts the agent of host number `n` (address 127.0.0.{10+n}) with lease TTL `ttl_secs`.
    pub fn start(etcd: &Etcd, n: u8, ttl_secs: u64, extra: &str) -> AgentProc {
        AgentProc::start_in(etcd, n, ttl_secs, extra, None, None)
    }

    /// [`AgentProc::start`] inside network namespace `ns` (its apps too), at the namespace's
    /// address; etcd must listen where the namespace reaches it. With `state_disk_mib`, the
    /// state dir is a tmpfs of that size.
    pub fn start_in(
        etcd: &Etcd,
        n: u8,
        ttl_secs: u64,
        extra: &str,
        ns: Option<&crate::netns::Ns>,
        state_disk_mib: Option<u64>,
    ) -> AgentProc {
        let dir = tempfile::tempdir().expect("agent dir");
        let address = match ns {
            Some(ns) => ns.address.clone(),
            None => format!("127.0.0.{}", 10 + n),
        };
        // A namespace has ports of its own: any port free here is free there.
        let port_on = if ns.is_some() {
            "127.0.0.1"
        } else {
            address.as_str()
        };
        let ports = Ports {
            blue: free_port(port_on),
            green: free_port(port_on),
        };
        // The previous release's agent (the upgrade test) serves gRPC on TCP, this one on its
        // own socket: the file keeps the address both read, the socket comes as a variable
        // that release ignores.
        let grpc_tcp = format!("{address}:{}", free_port(port_on));
        let socket = dir.path().join("agent.sock");
        let grpc = format!("unix:{}", socket.display());
        // metrics_listen must be loopback: inside a namespace, the namespace's own.
        let metrics = format!("{port_on}:{}", free_port(port_on));
        let state_dir = dir.path().join("state");
        let disk = state_disk_mib.map(|mib| crate::disk::SmallDisk::mount(&state_dir, mib));
        let config_path = dir.path().join("agent.toml");
        let host = format!("host-{n}");
        // The demo app writes its SQLite file in root-owned test directories: root, explicitly,
        // unless a test chooses the user.
        let run_as = if extra.contains("run_as") {
            ""
        } else {
            "run_as = \"root\"\n"
        };
        let config = format!(
            "etcd = [{}]\nprefix = \"{PREFIX}\"\napp = \"{APP}\"\nhost = \"{host}\"\naddress = \"{address}\"\n\
             state_dir = \"{}\"\ngrpc_listen = \"{grpc_tcp}\"\nmetrics_listen = \"{metrics}\"\nlease_ttl = \"{ttl_secs}s\"\n{run_as}{extra}\n[ports]\nblue = {}\ngreen = {}\n",
            etcd.endpoints_toml(),
            state_dir.display(),
            ports.blue,
            ports.green
        );
        std::fs::write(&config_path, config).expect("write agent config");
        let args = vec!["--config".into(), config_path.clone().into_os_string()];
        let (program, args) = match ns {
            Some(ns) => ns.wrap(binary("agent"), args),
            None => (binary("agent"), args),
        };
        let daemon = Daemon::start_with_env(
            &format!("{host}'s agent"),
            program,
            args,
            dir.path().join("agent.log"),
            vec![(
                "BLUEGREEN_AGENT_GRPC_SOCKET".to_string(),
                socket.display().to_string(),
            )],
        );
        AgentProc {
            daemon,
            host,
            address,
            ports,
            grpc,
            metrics,
            state_dir,
            ns: ns.cloned(),
            disk,
            config_path,
            _dir: dir,
        }
    }

    /// Rewrites its config to the `[[apps]]` form listing `apps` (everything else kept); takes
    /// effect at the next restart or [`AgentProc::sighup`].
    pub fn use_apps(&self, apps: &[AppEntry]) {
        let text = std::fs::read_to_string(&self.config_path).expect("agent config");
        let mut kept: String = text
            .split("\n[ports]")
            .next()
            .expect("a head")
            .split("\n[[apps]]")
            .next()
            .expect("a head")
            .lines()
            .filter(|l| !l.starts_with("app = "))
            .map(|l| format!("{l}\n"))
            .collect();
        for app in apps {
            kept.push_str(&format!(
                "[[apps]]\nname = \"{}\"\nports = {{ blue = {}, green = {} }}\n",
                app.name, app.ports.blue, app.ports.green
            ));
            if let Some(dir) = &app.state_dir {
                kept.push_str(&format!("state_dir = \"{}\"\n", dir.display()));
            }
        }
        std::fs::write(&self.config_path, kept).expect("write agent config");
    }

    /// SIGHUP: the agent re-reads its config.
    pub fn sighup(&self) {
        self.daemon.signal("HUP");
    }

    /// Where `[[apps]]` entry `app` keeps its pid files and logs by default.
    pub fn app_dir(&self, app: &str) -> PathBuf {
        self.state_dir.join("apps").join(app)
    }

    /// A client of its gRPC API (its root-only socket; the tests run as root).
    pub async fn api(
        &self,
    ) -> proto::agent_api::agent_client::AgentClient<tonic::transport::Channel> {
        let path = self
            .grpc
            .strip_prefix("unix:")
            .expect("the agent serves a unix socket");
        let channel = proto::agent_api::socket_channel(std::path::Path::new(path))
            .await
            .unwrap_or_else(|e| panic!("{}'s agent API at {path}: {e}", self.host));
        proto::agent_api::agent_client::AgentClient::new(channel)
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// SIGKILL, as a crash or an OOM kill would: the apps must keep running.
    /// How the agent process ended, if it has.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.daemon.exit_status()
    }

    pub fn kill9(&mut self) {
        self.daemon.kill9();
    }

    /// SIGSTOP: the agent is frozen (a stuck VM, a debugger); its apps keep running.
    pub fn pause(&self) {
        self.daemon.signal("STOP");
    }

    pub fn resume(&self) {
        self.daemon.signal("CONT");
    }

    pub fn restart(&mut self) {
        self.daemon.restart();
    }

    /// Restarts it as `program` (another release's agent), with the same config.
    pub fn restart_as(&mut self, program: PathBuf) {
        self.daemon.restart_as(program);
    }

    /// Restarts with `key=value` added to the agent's environment.
    pub fn restart_with_env(&mut self, key: &str, value: &str) {
        self.daemon.restart_with_env(key, value);
    }

    /// The agent's `/metrics`.
    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics)
    }

    pub fn url(&self, color: Color, path: &str) -> String {
        format!("http://{}:{}{path}", self.address, self.ports.of(color))
    }

    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// The pid of the app running `color`, from the agent's pid file.
    pub fn app_pid(&self, color: Color) -> Option<u32> {
        app_pid_in(&self.state_dir, color)
    }

    /// Kills the apps this agent started (they live in their own process groups), in the
    /// single-app layout and every `[[apps]]` directory.
    fn kill_apps(&self) {
        let apps = std::fs::read_dir(self.state_dir.join("apps"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path());
        for dir in std::iter::once(self.state_dir.clone()).chain(apps) {
            for color in Color::ALL {
                if let Some(pid) = app_pid_in(&dir, color) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill9();
        self.kill_apps();
    }
}

/// The pid of the app running `color` from the pid file in an app's state directory.
pub fn app_pid_in(dir: &std::path::Path, color: Color) -> Option<u32> {
    let text = std::fs::read(dir.join(format!("{color}.pid.json"))).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    v["pid"].as_u64().map(|p| p as u32)
}

pub async fn put_release(client: &etcd_client::Client, color: Color, release: &ReleaseRecord) {
    put_raw(
        client,
        &keys().release(color),
        &proto::records::encode(release),
    )
    .await;
}

pub async fn put_raw(client: &etcd_client::Client, key: &str, value: &str) {
    client
        .clone()
        .put(key, value, None)
        .await
        .expect("etcd put");
}

/// The value at `key`, `None` when the key does not exist. A failed read is not "absent": it is
/// retried (a loaded 2-core machine can drop an idle client connection), then a panic naming it.
/// The current `active`, when it is set and reads.
pub async fn active(client: &etcd_client::Client) -> Option<proto::records::ActiveRecord> {
    let key = keys().active();
    decode(&key, &get_raw(client, &key).await?).ok()
}

/// Every key under `prefix` with its value, in key order; `None` when etcd did not answer.
pub async fn read_prefix(
    client: &etcd_client::Client,
    prefix: &str,
) -> Option<Vec<(String, Vec<u8>)>> {
    let options = etcd_client::GetOptions::new().with_prefix();
    let resp = client.clone().get(prefix, Some(options)).await.ok()?;
    Some(
        resp.kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value().to_vec(),
                )
            })
            .collect(),
    )
}

/// Every history record of the app, oldest first.
pub async fn history(client: &etcd_client::Client) -> Vec<proto::records::HistoryRecord> {
    let prefix = keys().history_prefix();
    read_prefix(client, &prefix)
        .await
        .expect("read the history")
        .iter()
        .map(|(key, value)| decode(key, value).expect("history records parse"))
        .collect()
}

/// `active/traffic` and its mod revision, when it is set and reads.
pub async fn traffic(client: &etcd_client::Client) -> Option<(proto::records::TrafficRecord, i64)> {
    let key = keys().traffic();
    let resp = client.clone().get(key.as_str(), None).await.ok()?;
    let kv = resp.kvs().first()?;
    Some((decode(&key, kv.value()).ok()?, kv.mod_revision()))
}

/// `releases/<color>`, when it is set and reads.
pub async fn release(client: &etcd_client::Client, color: Color) -> Option<ReleaseRecord> {
    let key = keys().release(color);
    decode(&key, &get_raw(client, &key).await?).ok()
}

/// `Some` once `color`'s release is `version` (a deploy has staged it).
pub async fn staged(client: &etcd_client::Client, color: Color, version: &str) -> Option<()> {
    release(client, color)
        .await
        .filter(|r| r.version == version)
        .map(|_| ())
}

pub async fn get_raw(client: &etcd_client::Client, key: &str) -> Option<Vec<u8>> {
    let mut last_error = None;
    for attempt in 1..=4u64 {
        match client.clone().get(key, None).await {
            Ok(resp) => return resp.kvs().first().map(|kv| kv.value().to_vec()),
            Err(e) => {
                last_error = Some(e);
                let backoff = std::time::Duration::from_millis(250 * attempt);
                tokio::time::sleep(backoff).await;
            }
        }
    }
    panic!(
        "etcd get {key} failed 4 times: {}",
        last_error.expect("an error")
    );
}

pub async fn health(
    client: &etcd_client::Client,
    host: &str,
    color: Color,
) -> Option<HealthRecord> {
    let key = keys().health(host, color);
    let bytes = get_raw(client, &key).await?;
    Some(decode(&key, &bytes).expect("agent writes valid health records"))
}

/// Waits until `health/<host>/<color>` satisfies `accept`; on timeout the panic shows the last record.
pub async fn wait_health(
    client: &etcd_client::Client,
    host: &str,
    color: Color,
    what: &str,
    accept: impl Fn(&HealthRecord) -> bool,
) -> HealthRecord {
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut last = None;
    loop {
        if let Some(record) = health(client, host, color).await {
            if accept(&record) {
                return record;
            }
            last = Some(record);
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {host}/{color} {what}; last record: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // poll again; the deadline is asserted above
    }
}

pub async fn wait_healthy(
    client: &etcd_client::Client,
    host: &str,
    color: Color,
    version: &str,
) -> HealthRecord {
    let record = wait_health(client, host, color, &format!("healthy at {version}"), |h| {
        h.version == version && matches!(h.state, HealthState::Healthy | HealthState::Failed)
    })
    .await;
    assert_eq!(
        record.state,
        HealthState::Healthy,
        "{host}/{color} failed instead: {record:?}"
    );
    record
}

/// GET `url` and parse the JSON body (None on any failure).
pub async fn get_json(url: &str) -> Option<serde_json::Value> {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}
