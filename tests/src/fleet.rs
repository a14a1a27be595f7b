//! A whole fleet for coordinator tests: etcd, agents on 127.0.0.11…, LBs (nginx + lb-sidecar), the
//! demo app artifact, and the real `coordinator` binary run as a process.
use crate::artifacts::Artifacts;
use crate::nginx::{Nginx, SidecarProc};
use crate::procs::{AgentProc, APP};
use crate::{binary, Etcd};
use proto::records::Artifact;
use std::path::PathBuf;
use std::process::Output;

pub struct Fleet {
    pub etcd: Etcd,
    pub client: etcd_client::Client,
    pub artifacts: Artifacts,
    pub app: Artifact,
    pub hosts: Vec<AgentProc>,
    pub lbs: Vec<Nginx>,
    pub sidecars: Vec<SidecarProc>,
    /// Extra environment for every `coordinator` run (TLS and user settings).
    pub coordinator_env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    /// With [`Fleet::start_netns`]: the bridge and namespaces, deleted after the processes.
    pub net: Option<crate::netns::Net>,
}

/// How a fleet's components are set up beyond the defaults.
pub struct Setup<'a> {
    pub etcd: Etcd,
    /// Extra agent.toml lines for host number `n`.
    pub agent_extra: &'a dyn Fn(u8) -> String,
    /// Extra sidecar.toml lines for the LB named `name`.
    pub sidecar_extra: &'a dyn Fn(&str, &Nginx) -> String,
    pub coordinator_env: Vec<(String, String)>,
}

impl Fleet {
    pub async fn start(hosts: u8, lbs: usize) -> Fleet {
        Fleet::start_with(hosts, lbs, &|_| String::new()).await
    }

    /// [`Fleet::start`] with extra sidecar.toml lines per LB (e.g. its `public_url`).
    pub async fn start_with(
        hosts: u8,
        lbs: usize,
        sidecar_extra: &dyn Fn(&Nginx) -> String,
    ) -> Fleet {
        let setup = Setup {
            etcd: Etcd::start().await,
            agent_extra: &|_| String::new(),
            sidecar_extra: &|_, n| sidecar_extra(n),
            coordinator_env: Vec::new(),
        };
        Fleet::start_setup(hosts, lbs, setup).await
    }

    /// A fleet on a given etcd (a 3-member cluster, say) with default components.
    pub async fn start_on(etcd: Etcd, hosts: u8, lbs: usize) -> Fleet {
        let setup = Setup {
            etcd,
            agent_extra: &|_| String::new(),
            sidecar_extra: &|_, _| String::new(),
            coordinator_env: Vec::new(),
        };
        Fleet::start_setup(hosts, lbs, setup).await
    }

    /// A fleet whose every host (agent and apps) and every LB (nginx and sidecar) runs in a
    /// network namespace of its own on one bridge; etcd, the coordinator and the test stay here.
    pub async fn start_netns(hosts: u8, lbs: usize) -> Fleet {
        Fleet::start_netns_members(hosts, lbs, 1, false).await
    }

    /// [`Fleet::start_netns`] on an etcd of `members` members; with `small_disks`, every agent's
    /// state dir and every LB's include-file directory is a small tmpfs a test can fill.
    pub async fn start_netns_members(
        hosts: u8,
        lbs: usize,
        members: usize,
        small_disks: bool,
    ) -> Fleet {
        // The debug demo-app artifact is ~100 MB; a state dir holds it packed and unpacked.
        let (state_mib, include_mib) = if small_disks {
            (Some(400), Some(2))
        } else {
            (None, None)
        };
        let net = crate::netns::Net::new();
        let etcd = Etcd::start_at(&net.etcd_address(), members).await;
        let hosts = (1..=hosts)
            .map(|n| AgentProc::start_in(&etcd, n, 5, "", Some(&net.ns(n)), state_mib))
            .collect();
        let lbs: Vec<Nginx> = (0..lbs)
            .map(|i| Nginx::start_in(&net.ns(100 + i as u8), include_mib))
            .collect();
        let sidecars: Vec<SidecarProc> = lbs
            .iter()
            .enumerate()
            .map(|(i, n)| SidecarProc::start(&etcd, &format!("lb-{i}"), n, ""))
            .collect();
        let mut fleet = Fleet::assemble(etcd, hosts, lbs, sidecars, Vec::new()).await;
        fleet.net = Some(net);
        fleet
    }

    /// A fleet on `setup.etcd` with per-component settings (TLS, users, run_as, keys).
    pub async fn start_setup(hosts: u8, lbs: usize, setup: Setup<'_>) -> Fleet {
        let etcd = setup.etcd;
        let hosts = (1..=hosts)
            .map(|n| AgentProc::start(&etcd, n, 5, &(setup.agent_extra)(n)))
            .collect();
        let lbs: Vec<Nginx> = (0..lbs).map(|_| Nginx::start()).collect();
        let sidecars: Vec<SidecarProc> = lbs
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let name = format!("lb-{i}");
                let extra = (setup.sidecar_extra)(&name, n);
                SidecarProc::start(&etcd, &name, n, &extra)
            })
            .collect();
        Fleet::assemble(etcd, hosts, lbs, sidecars, setup.coordinator_env).await
    }

    /// The fleet of started components, once every LB has registered: before any traffic
    /// decision, so the first deploy waits for all of them.
    async fn assemble(
        etcd: Etcd,
        hosts: Vec<AgentProc>,
        lbs: Vec<Nginx>,
        sidecars: Vec<SidecarProc>,
        coordinator_env: Vec<(String, String)>,
    ) -> Fleet {
        let client = etcd.client().await;
        for s in &sidecars {
            crate::lb::wait_ack(&client, &s.name, "registration", |_| true).await;
        }
        // Every agent registered before the first command: on a loaded machine a deploy started
        // at once could find no host yet ("no host is registered", seen in CI).
        for h in &hosts {
            let key = crate::procs::keys().host(&h.host);
            let what = format!("{}'s registration", h.host);
            crate::wait_for(&what, std::time::Duration::from_secs(60), || {
                let (client, key) = (&client, key.clone());
                async move { crate::procs::get_raw(client, &key).await.map(|_| ()) }
            })
            .await;
        }
        let artifacts = Artifacts::default();
        let app = artifacts.demo_app();
        Fleet {
            etcd,
            client,
            artifacts,
            app,
            hosts,
            lbs,
            sidecars,
            coordinator_env,
            dir: tempfile::tempdir().unwrap(),
            net: None,
        }
    }

    /// Runs `restart` (which restarts agents), then waits until every host whose agent it
    /// restarted has published the active color healthy again in a record written after it. A restarted agent reports the
    /// apps it adopts `starting` until their first probe, and a deploy started before that is
    /// refused (the active color must be healthy on every host).
    pub async fn restarting_agents(&mut self, restart: impl FnOnce(&mut Fleet)) {
        use proto::records::{decode, ActiveRecord, HealthState};
        let key = crate::procs::keys().active();
        let bytes = crate::procs::get_raw(&self.client, &key)
            .await
            .expect("active is set");
        let active: ActiveRecord = decode(&key, &bytes).unwrap();
        let mut before = Vec::new();
        for host in &self.hosts {
            let record = crate::procs::health(&self.client, &host.host, active.color).await;
            before.push((host.host.clone(), host.pid(), record.map(|h| h.since)));
        }
        restart(self);
        let restarted: Vec<_> = before
            .into_iter()
            .zip(&self.hosts)
            .filter(|((_, pid, _), host)| host.pid() != *pid)
            .map(|((name, _, since), _)| (name, since))
            .collect();
        for (host, since) in restarted {
            crate::procs::wait_health(&self.client, &host, active.color, "adopted again", |h| {
                h.version == active.version
                    && h.state == HealthState::Healthy
                    && Some(&h.since) != since.as_ref()
            })
            .await;
        }
    }

    /// One fresh-connection load loop through each LB, until `stop`.
    pub fn load_every_lb(
        &self,
        stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Vec<tokio::task::JoinHandle<crate::load::LoadReport>> {
        self.lb_urls()
            .into_iter()
            .map(|u| crate::load::spawn(u, false, stop.clone()))
            .collect()
    }

    /// Writes an app spec whose run env adds `env` (the DEMO_* knobs), and returns its path.
    pub fn spec(&self, name: &str, env: &[(&str, &str)]) -> PathBuf {
        self.spec_with(name, env, "")
    }

    /// [`Fleet::spec`] with more spec text after the smoke check (a `[canary]` section, hooks).
    pub fn spec_with(&self, name: &str, env: &[(&str, &str)], extra: &str) -> PathBuf {
        let db = self.dir.path().join("shop.db");
        let url = format!("sqlite://{}?mode=rwc", db.display());
        self.write_spec(name, &url, env, extra)
    }

    /// An app spec with `[migrations]`: the app and the migrator share `database_url`, the schema
    /// comes only from the migrations in `dir` (DEMO_AUTO_SCHEMA=0), and the smoke checks read the
    /// items table, so they prove the code works on the schema.
    pub fn migration_spec(
        &self,
        name: &str,
        database_url: &str,
        dir: &std::path::Path,
        env: &[(&str, &str)],
    ) -> PathBuf {
        let mut env = env.to_vec();
        env.push(("DEMO_AUTO_SCHEMA", "0"));
        let extra = format!(
            "[[smoke]]\npath = \"/api/v1/items\"\nstatus = 200\nretries = 2\ntimeout = \"5s\"\n\
             [migrations]\ndir = \"{}\"\ndatabase_url = \"{database_url}\"\nlock_wait = \"2s\"\n",
            dir.display()
        );
        self.write_spec(name, database_url, &env, &extra)
    }

    fn write_spec(
        &self,
        name: &str,
        database_url: &str,
        env: &[(&str, &str)],
        extra: &str,
    ) -> PathBuf {
        let mut env_line = format!("DATABASE_URL = \"{database_url}\"");
        for (k, v) in env {
            env_line.push_str(&format!(", {k} = \"{v}\""));
        }
        let text = format!(
            "app = \"{APP}\"\n[run]\ncommand = [\"./demo-app\"]\nenv = {{ {env_line} }}\nstop_timeout = \"5s\"\n\
             [health]\npath = \"/health\"\ninterval = \"500ms\"\ntimeout = \"1s\"\nstartup_timeout = \"20s\"\n\
             [[smoke]]\npath = \"/api/v1/status\"\nstatus = 200\njson = {{ environment = \"{{color}}\", version = \"{{version}}\" }}\nretries = 2\ntimeout = \"5s\"\n{extra}"
        );
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The demo app's spec deployed as another app, `name`, with its own database file (the
    /// demo app's SQLite file is named after the app). For `[[apps]]` fleets.
    pub fn demo_spec_as(&self, name: &str) -> PathBuf {
        let text = std::fs::read_to_string(self.spec(APP, &[]))
            .expect("the demo app's spec")
            .replace(&format!("app = \"{APP}\""), &format!("app = \"{name}\""))
            .replace(&format!("{APP}.db"), &format!("{name}.db"));
        self.raw_spec(name, &text)
    }

    /// Writes `text` as an app spec named `name` and returns its path.
    pub fn raw_spec(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs `coordinator deploy` of `artifact` (not the demo app) with `spec` and extra flags.
    pub async fn deploy_artifact(
        &self,
        spec: &PathBuf,
        version: &str,
        artifact: &Artifact,
        extra: &[&str],
    ) -> Output {
        let mut cmd = self.coordinator();
        cmd.arg("deploy").arg("--spec").arg(spec).args([
            "--version",
            version,
            "--artifact",
            &artifact.url,
            "--sha256",
            &artifact.sha256,
        ]);
        cmd.args(extra).output().await.expect("run coordinator")
    }

    /// This fleet's coordinators take the deploy lock under a short lease, for a test that kills
    /// or cuts off a lock holder and waits for the lease to expire. 6 s: the coordinator allows
    /// 5 s, and one more keeps a renewal delayed by a busy two-core machine from looking like a
    /// partition. Tests of etcd outages and elections keep the default (15 s), which is what
    /// outlives them.
    pub fn short_lock_lease(&mut self) {
        self.coordinator_env
            .push(("BLUEGREEN_LOCK_TTL".into(), "6s".into()));
    }

    /// The environment `coordinator ui` runs with for this fleet: its etcd and credentials.
    pub fn ui_env(&self) -> Vec<(String, String)> {
        let mut env = vec![("BLUEGREEN_ETCD".into(), self.etcd.endpoints().join(","))];
        env.extend(self.coordinator_env.iter().cloned());
        env
    }

    /// `coordinator` with this fleet's etcd and app, ready to take arguments.
    pub fn coordinator(&self) -> tokio::process::Command {
        self.coordinator_in(None)
    }

    /// [`Fleet::coordinator`] run inside network namespace `ns` (a CI runner that can be cut off).
    pub fn coordinator_in(&self, ns: Option<&crate::netns::Ns>) -> tokio::process::Command {
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = tokio::process::Command::new("ip");
                c.args(["netns", "exec", &ns.name])
                    .arg(binary("coordinator"));
                c
            }
            None => tokio::process::Command::new(binary("coordinator")),
        };
        cmd.env("BLUEGREEN_ETCD", self.etcd.endpoints().join(","))
            .env("BLUEGREEN_APP", APP)
            .envs(self.coordinator_env.iter().map(|(k, v)| (k, v)))
            .kill_on_drop(true);
        cmd
    }

    /// Runs `coordinator deploy` of `version` with `spec` and extra flags; returns its output.
    pub async fn deploy(&self, spec: &PathBuf, version: &str, extra: &[&str]) -> Output {
        self.deploy_command(spec, version, extra)
            .output()
            .await
            .expect("run coordinator")
    }

    pub fn deploy_command(
        &self,
        spec: &PathBuf,
        version: &str,
        extra: &[&str],
    ) -> tokio::process::Command {
        self.deploy_command_in(None, spec, version, extra)
    }

    /// [`Fleet::deploy_command`] run inside network namespace `ns`.
    pub fn deploy_command_in(
        &self,
        ns: Option<&crate::netns::Ns>,
        spec: &PathBuf,
        version: &str,
        extra: &[&str],
    ) -> tokio::process::Command {
        let mut cmd = self.coordinator_in(ns);
        cmd.arg("deploy").arg("--spec").arg(spec).args([
            "--version",
            version,
            "--artifact",
            &self.app.url,
            "--sha256",
            &self.app.sha256,
        ]);
        cmd.args(extra);
        cmd
    }

    pub async fn run(&self, args: &[&str]) -> Output {
        self.coordinator()
            .args(args)
            .output()
            .await
            .expect("run coordinator")
    }

    pub fn lb_urls(&self) -> Vec<String> {
        self.lbs.iter().map(|l| l.url("/api/v1/status")).collect()
    }

    /// Writes a canary split by hand (blue stable, green canary, sticky cookie; `weight` in
    /// hundredths of a percent) and waits until every LB has applied it without error.
    pub async fn set_split(&self, weight: u32, step: u32) {
        let record = proto::records::TrafficRecord {
            stable: proto::Color::Blue,
            canary: proto::Color::Green,
            weight,
            step,
            sticky: proto::records::Sticky::Cookie,
            deploy_id: "canary-by-hand".into(),
            token: 0,
            set_at: proto::time::now_rfc3339(),
        };
        let put = self
            .client
            .clone()
            .put(
                crate::procs::keys().traffic(),
                proto::records::encode(&record),
                None,
            )
            .await
            .expect("write active/traffic");
        let revision = put.header().expect("header").revision();
        for sidecar in &self.sidecars {
            crate::lb::wait_ack(
                &self.client,
                &sidecar.name,
                &format!("traffic at {revision}"),
                |a| a.applied_revision >= revision && a.error.is_none(),
            )
            .await;
        }
    }
}

/// Starts `cmd` with its output captured, for [`finished_within`] to collect.
pub fn spawn_piped(mut cmd: tokio::process::Command) -> tokio::process::Child {
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start coordinator")
}

/// Waits for a running coordinator to exit, panicking if it still runs after `deadline`.
pub async fn finished_within(
    child: tokio::process::Child,
    deadline: std::time::Duration,
) -> Output {
    tokio::time::timeout(deadline, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the command still ran after {deadline:?}"))
        .expect("coordinator output")
}

/// stdout and stderr of a finished coordinator, for assertions and failure messages.
/// Fails the test, with the command's output, unless it exited 0.
pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} exited {:?}: {}",
        out.status.code(),
        text(out)
    );
}

pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
