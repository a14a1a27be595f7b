//! A throwaway etcd on free loopback ports: one member, or a 3-member cluster (one process per
//! member, each with its own data dir) whose members a test can kill, pause and replace.
use crate::{free_port, wait_for};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Etcd {
    members: Vec<Member>,
    /// The first member's client URL (the only one of a single-node etcd).
    pub endpoint: String,
    /// With TLS: the server certificate, the CA clients must be signed by, and the admin
    /// (root) client certificate the harness talks with.
    tls: Option<EtcdTls>,
}

#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: std::path::PathBuf,
    pub server: crate::pki::CertPair,
    pub admin: crate::pki::CertPair,
}

impl Etcd {
    pub async fn start() -> Etcd {
        Etcd::start_members(1).await
    }

    /// A cluster of `n` members on loopback; clients of the fleet get every endpoint.
    pub async fn start_members(n: usize) -> Etcd {
        Etcd::start_at("127.0.0.1", n).await
    }

    /// `n` members whose clients reach them at `address` (a bridge for network namespaces).
    pub async fn start_at(address: &str, n: usize) -> Etcd {
        let members: Vec<Member> = (0..n).map(|i| Member::new(i, "http", address)).collect();
        let mut etcd = Etcd {
            endpoint: members[0].client_url.clone(),
            members,
            tls: None,
        };
        etcd.spawn_all().await;
        etcd
    }

    /// An etcd that speaks only TLS and requires client certificates (`--client-cert-auth`),
    /// as a production cluster would. Auth is not enabled yet: `deploy/etcd-auth.sh` does that.
    pub async fn start_tls(pki: &crate::pki::Pki) -> Etcd {
        let members = vec![Member::new(0, "https", "127.0.0.1")];
        let mut etcd = Etcd {
            endpoint: members[0].client_url.clone(),
            members,
            tls: Some(EtcdTls {
                ca: pki.ca(),
                server: pki.server("etcd"),
                admin: pki.client("root"),
            }),
        };
        etcd.spawn_all().await;
        etcd
    }

    /// Every member's client URL, as an `etcd = [...]` TOML array's items.
    pub fn endpoints_toml(&self) -> String {
        self.endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    /// agent.toml / sidecar.toml lines that connect as `user` (a client certificate of that
    /// name), with a password file when etcd auth is on. Empty for a plain etcd.
    pub fn config_lines(
        &self,
        pki: &crate::pki::Pki,
        user: &str,
        password_file: Option<&std::path::Path>,
    ) -> String {
        let Some(tls) = &self.tls else {
            return String::new();
        };
        let cert = pki.client(user);
        let mut lines = format!(
            "etcd_cacert = \"{}\"\netcd_cert = \"{}\"\netcd_key = \"{}\"\n",
            tls.ca.display(),
            cert.cert.display(),
            cert.key.display()
        );
        if let Some(file) = password_file {
            lines.push_str(&format!(
                "etcd_user = \"{user}\"\netcd_password_file = \"{}\"\n",
                file.display()
            ));
        }
        lines
    }

    /// The coordinator's environment for the same (BLUEGREEN_ETCD_*).
    pub fn coordinator_env(
        &self,
        pki: &crate::pki::Pki,
        user: &str,
        password: Option<&str>,
    ) -> Vec<(String, String)> {
        let Some(tls) = &self.tls else {
            return Vec::new();
        };
        let cert = pki.client(user);
        let mut env = vec![
            (
                "BLUEGREEN_ETCD_CACERT".to_string(),
                tls.ca.display().to_string(),
            ),
            (
                "BLUEGREEN_ETCD_CERT".to_string(),
                cert.cert.display().to_string(),
            ),
            (
                "BLUEGREEN_ETCD_KEY".to_string(),
                cert.key.display().to_string(),
            ),
        ];
        if let Some(p) = password {
            env.push(("BLUEGREEN_ETCD_USER".to_string(), user.to_string()));
            env.push(("BLUEGREEN_ETCD_PASSWORD".to_string(), p.to_string()));
        }
        env
    }

    /// etcdctl aimed at this etcd (with the admin certificate when TLS is on).
    pub fn etcdctl(&self) -> std::process::Command {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .env("ETCDCTL_ENDPOINTS", self.endpoints().join(","));
        if let Some(tls) = &self.tls {
            cmd.env("ETCDCTL_CACERT", &tls.ca)
                .env("ETCDCTL_CERT", &tls.admin.cert)
                .env("ETCDCTL_KEY", &tls.admin.key);
        }
        cmd
    }

    /// Access as `user` with a client certificate of that name (and `password`, if any).
    pub fn access_as(
        &self,
        pki: &crate::pki::Pki,
        user: &str,
        password: Option<&str>,
    ) -> proto::EtcdAccess {
        let tls = self.tls.as_ref().expect("a TLS etcd");
        let cert = pki.client(user);
        let password_file = password.map(|p| {
            let path = pki.dir().join(format!("{user}.password"));
            std::fs::write(&path, p).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            path
        });
        proto::EtcdAccess::resolve(proto::AccessSettings {
            endpoints: vec![self.endpoint.clone()],
            cacert: Some(tls.ca.clone()),
            cert: Some(cert.cert),
            key: Some(cert.key),
            user: password.map(|_| user.to_string()),
            password_file,
            password_env: None,
            allow_plaintext_password: false,
        })
        .expect("test access settings")
    }

    async fn spawn_all(&mut self) {
        let cluster = self.initial_cluster();
        for i in 0..self.members.len() {
            self.spawn_member(i, &cluster, "new");
        }
        self.wait_answering().await;
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn_member(&mut self, i: usize, cluster: &str, state: &str) {
        let tls = self.tls.clone();
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.dir.path().join("etcd.log"))
            .expect("etcd log");
        let child = Command::new("etcd")
            .args(["--name", &m.name, "--data-dir"])
            .arg(m.dir.path().join("data"))
            .arg(format!("--listen-client-urls={}", m.client_url))
            .arg(format!("--advertise-client-urls={}", m.client_url))
            .args(tls.iter().flat_map(|t| {
                [
                    format!("--cert-file={}", t.server.cert.display()),
                    format!("--key-file={}", t.server.key.display()),
                    format!("--trusted-ca-file={}", t.ca.display()),
                    "--client-cert-auth".to_string(),
                ]
            }))
            .arg(format!("--listen-peer-urls={}", m.peer_url))
            .arg(format!("--initial-advertise-peer-urls={}", m.peer_url))
            .arg(format!("--initial-cluster={cluster}"))
            .arg(format!("--initial-cluster-state={state}"))
            .arg("--initial-cluster-token=bluegreen-test")
            // Loopback latency: elections in well under a second, as the tests expect.
            .args(["--heartbeat-interval=50", "--election-timeout=500"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd (is etcd-server installed? run deploy/install-deps.sh)");
        m.child = Some(child);
    }

    async fn wait_answering(&self) {
        let access = self.admin_access();
        wait_for("etcd to answer", Duration::from_secs(20), || {
            let access = access.clone();
            async move {
                let mut client = proto::connect(&access).await.ok()?;
                client.get("probe", None).await.ok().map(|_| ())
            }
        })
        .await;
    }

    /// How the harness itself connects: plain, or with the admin (`root`) certificate.
    pub fn admin_access(&self) -> proto::EtcdAccess {
        match &self.tls {
            None => proto::EtcdAccess::plain(self.endpoints()),
            Some(t) => proto::EtcdAccess::resolve(proto::AccessSettings {
                endpoints: self.endpoints(),
                cacert: Some(t.ca.clone()),
                cert: Some(t.admin.cert.clone()),
                key: Some(t.admin.key.clone()),
                ..Default::default()
            })
            .expect("admin access"),
        }
    }

    pub async fn client(&self) -> etcd_client::Client {
        proto::connect(&self.admin_access())
            .await
            .expect("connect to test etcd")
    }

    /// The local addresses of this machine's established TCP connections to the first member's
    /// client port (from `ss`), to see whether a connection survived or was replaced.
    pub fn client_connections(&self) -> std::collections::BTreeSet<String> {
        let port = self.endpoints()[0]
            .rsplit(':')
            .next()
            .expect("endpoint with a port")
            .to_string();
        let filter = format!("( dport = :{port} )");
        let out = Command::new("ss")
            .args(["-Htn", "state", "established", &filter])
            .output()
            .expect("run ss");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| line.split_whitespace().nth(2).map(str::to_string))
            .collect()
    }

    /// A client of the members that answer now (after a member was killed).
    pub async fn live_client(&self) -> etcd_client::Client {
        proto::connect_live(&self.admin_access())
            .await
            .expect("connect to the live members")
    }

    /// Kills every member (SIGKILL), keeping their data for [`Etcd::restart`].
    pub fn kill(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }

    pub async fn restart(&mut self) {
        self.kill();
        let cluster = self.initial_cluster();
        for i in 0..self.members.len() {
            self.spawn_member(i, &cluster, "new");
        }
        self.wait_answering().await;
    }

    /// SIGKILL of member `i`, data kept.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data (after [`Etcd::kill_member`]).
    pub fn start_member(&mut self, i: usize) {
        self.kill_member(i);
        let cluster = self.initial_cluster();
        self.spawn_member(i, &cluster, "existing");
    }

    /// The first member's process id, while it runs (benchmarks read its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.members[0].child.as_ref().map(|c| c.id())
    }

    /// How many members the cluster has.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// The member that leads, by index, as the members themselves report it.
    pub async fn leader(&self) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            let access = proto::EtcdAccess::plain(vec![m.client_url.clone()]);
            let Ok(mut client) = proto::connect(&access).await else {
                continue;
            };
            let Ok(status) = client.status().await else {
                continue;
            };
            if status.leader() != 0
                && status.leader() == status.header().map(|h| h.member_id()).unwrap_or(0)
            {
                return Some(i);
            }
        }
        None
    }

    /// Replaces member `i` by a new one with an empty data dir, as an operator replaces a dead
    /// machine: remove it from the cluster, wipe it, add it back and start it as `existing`.
    pub async fn replace_member(&mut self, i: usize) {
        self.kill_member(i);
        let mut client = self.live_client().await;
        let name = self.members[i].name.clone();
        let members = client.member_list().await.expect("member list");
        let id = members
            .members()
            .iter()
            .find(|m| m.name() == name || m.peer_urls().contains(&self.members[i].peer_url))
            .map(|m| m.id())
            .expect("the member to replace is listed");
        client.member_remove(id).await.expect("member remove");
        let peer = self.members[i].peer_url.clone();
        // etcd refuses a reconfiguration until every member has been connected for a few seconds
        // (its strict reconfiguration check answers "unhealthy cluster"): ask until it accepts.
        crate::wait_for(
            "etcd to accept the new member",
            std::time::Duration::from_secs(30),
            || {
                let (mut client, peer) = (client.clone(), peer.clone());
                async move {
                    match client.member_add(vec![peer], None).await {
                        Ok(_) => Some(()),
                        Err(e) if e.to_string().contains("unhealthy cluster") => None,
                        Err(e) => panic!("member add: {e:?}"),
                    }
                }
            },
        )
        .await;
        let _ = std::fs::remove_dir_all(self.members[i].dir.path().join("data"));
        let cluster = self.initial_cluster();
        self.spawn_member(i, &cluster, "existing");
    }
}

/// One etcd process: its name, URLs and data dir.
struct Member {
    name: String,
    client_url: String,
    peer_url: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Member {
    fn new(i: usize, scheme: &str, address: &str) -> Member {
        Member {
            name: format!("m{i}"),
            client_url: format!("{scheme}://{address}:{}", free_port(address)),
            peer_url: format!("http://127.0.0.1:{}", free_port("127.0.0.1")),
            dir: tempfile::tempdir().expect("etcd data dir"),
            child: None,
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
