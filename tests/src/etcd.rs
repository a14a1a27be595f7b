//! A throwaway single-node etcd on free loopback ports, with its own data dir.
use crate::{free_port, wait_for};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Etcd {
    child: Option<Child>,
    pub endpoint: String,
    peer_port: u16,
    data_dir: tempfile::TempDir,
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
        let client_port = free_port("127.0.0.1");
        let peer_port = free_port("127.0.0.1");
        let mut etcd = Etcd {
            child: None,
            endpoint: format!("http://127.0.0.1:{client_port}"),
            peer_port,
            data_dir: tempfile::tempdir().expect("etcd data dir"),
            tls: None,
        };
        etcd.spawn().await;
        etcd
    }

    /// An etcd that speaks only TLS and requires client certificates (`--client-cert-auth`),
    /// as a production cluster would. Auth is not enabled yet: `deploy/etcd-auth.sh` does that.
    pub async fn start_tls(pki: &crate::pki::Pki) -> Etcd {
        let client_port = free_port("127.0.0.1");
        let peer_port = free_port("127.0.0.1");
        let mut etcd = Etcd {
            child: None,
            endpoint: format!("https://127.0.0.1:{client_port}"),
            peer_port,
            data_dir: tempfile::tempdir().expect("etcd data dir"),
            tls: Some(EtcdTls {
                ca: pki.ca(),
                server: pki.server("etcd"),
                admin: pki.client("root"),
            }),
        };
        etcd.spawn().await;
        etcd
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
            .env("ETCDCTL_ENDPOINTS", &self.endpoint);
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
        })
        .expect("test access settings")
    }

    async fn spawn(&mut self) {
        let p = self.peer_port;
        let log = std::fs::File::create(self.data_dir.path().join("etcd.log")).expect("etcd log");
        let child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(self.data_dir.path().join("data"))
            .arg(format!("--listen-client-urls={}", self.endpoint))
            .arg(format!("--advertise-client-urls={}", self.endpoint))
            .args(self.tls.iter().flat_map(|t| {
                [
                    format!("--cert-file={}", t.server.cert.display()),
                    format!("--key-file={}", t.server.key.display()),
                    format!("--trusted-ca-file={}", t.ca.display()),
                    "--client-cert-auth".to_string(),
                ]
            }))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{p}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{p}"
            ))
            .arg(format!("--initial-cluster=test=http://127.0.0.1:{p}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd (is etcd-server installed? run deploy/install-deps.sh)");
        self.child = Some(child);
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
            None => proto::EtcdAccess::plain(vec![self.endpoint.clone()]),
            Some(t) => proto::EtcdAccess::resolve(proto::AccessSettings {
                endpoints: vec![self.endpoint.clone()],
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

    /// Kills etcd (SIGKILL), keeping its data for [`Etcd::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
