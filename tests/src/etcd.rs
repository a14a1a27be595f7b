//! A throwaway single-node etcd on free loopback ports, with its own data dir.
use crate::{free_port, wait_for};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Etcd {
    child: Option<Child>,
    pub endpoint: String,
    client_port: u16,
    peer_port: u16,
    data_dir: tempfile::TempDir,
}

impl Etcd {
    pub async fn start() -> Etcd {
        let client_port = free_port("127.0.0.1");
        let peer_port = free_port("127.0.0.1");
        let mut etcd = Etcd {
            child: None,
            endpoint: format!("http://127.0.0.1:{client_port}"),
            client_port,
            peer_port,
            data_dir: tempfile::tempdir().expect("etcd data dir"),
        };
        etcd.spawn().await;
        etcd
    }

    async fn spawn(&mut self) {
        let (c, p) = (self.client_port, self.peer_port);
        let log = std::fs::File::create(self.data_dir.path().join("etcd.log")).expect("etcd log");
        let child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(self.data_dir.path().join("data"))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{c}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{c}"))
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
        let endpoint = self.endpoint.clone();
        wait_for("etcd to answer", Duration::from_secs(20), || {
            let endpoint = endpoint.clone();
            async move {
                let mut client = etcd_client::Client::connect([endpoint], None).await.ok()?;
                client.get("probe", None).await.ok().map(|_| ())
            }
        })
        .await;
    }

    pub async fn client(&self) -> etcd_client::Client {
        proto::connect(&proto::EtcdAccess::plain(vec![self.endpoint.clone()]))
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
