//! The nginx stand-in of hollow LBs: it records what nginx would serve and answers as a reload
//! that always works would, so that dozens of LBs run the real follower and applier in one
//! process without an nginx each. Its public listener answers with the color and revision
//! headers of the loaded config, so the coordinator verifies it exactly as it verifies nginx.
//! Validation is free here; real LBs beside the hollow ones measure what `nginx -t` costs.
use lb_sidecar::error::SidecarError;
use lb_sidecar::nginx::NginxControl;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct NginxStandIn {
    /// The file "installed", and the one "loaded" by the last reload.
    installed: Mutex<Option<String>>,
    loaded: Arc<Mutex<Option<String>>>,
    public_url: String,
}

impl NginxStandIn {
    /// Starts the stand-in's public listener on a free loopback port.
    pub async fn start() -> std::io::Result<NginxStandIn> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let public_url = format!("http://{}", listener.local_addr()?);
        let loaded: Arc<Mutex<Option<String>>> = Arc::default();
        let serving = loaded.clone();
        let app = axum::Router::new().fallback(move || {
            let text = serving.lock().unwrap().clone().unwrap_or_default();
            async move { served_headers(&text) }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(NginxStandIn {
            installed: Mutex::new(None),
            loaded,
            public_url,
        })
    }

    /// The config the last reload loaded: what a real nginx would serve now.
    pub fn serving(&self) -> Option<String> {
        self.loaded.lock().unwrap().clone()
    }
}

/// The live server's color and revision headers of a rendered config, as nginx would send them.
fn served_headers(text: &str) -> impl axum::response::IntoResponse {
    let value = |name: &str| {
        let marker = format!("add_header {name} ");
        text.lines()
            .find_map(|l| l.trim().strip_prefix(marker.as_str()))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or("")
            .to_string()
    };
    [
        ("X-Bluegreen-Color", value("X-Bluegreen-Color")),
        ("X-Bluegreen-Revision", value("X-Bluegreen-Revision")),
    ]
}

impl NginxControl for NginxStandIn {
    fn status_listen(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    fn public_url(&self) -> String {
        self.public_url.clone()
    }

    async fn validate(&self, _text: &str) -> Result<(), String> {
        Ok(())
    }

    fn current(&self) -> Option<String> {
        self.installed.lock().unwrap().clone()
    }

    fn install(&self, text: &str) -> Result<(), SidecarError> {
        *self.installed.lock().unwrap() = Some(text.to_string());
        Ok(())
    }

    fn reload(&self) -> Result<Vec<i32>, SidecarError> {
        *self.loaded.lock().unwrap() = self.installed.lock().unwrap().clone();
        Ok(Vec::new())
    }

    async fn wait_old_workers(&self, _old: &[i32], _timeout: Duration) -> bool {
        true
    }

    /// The status location of the rendered config answers "<revision> <color>": the loaded text
    /// carries it, so a stand-in "serves" it once a reload loaded that text.
    async fn wait_serving(&self, expected: &str, _timeout: Duration) -> bool {
        self.serving().is_some_and(|text| text.contains(expected))
    }
}

/// A hollow LB for scale benchmarks: the sidecar's real follower and applier over the nginx
/// stand-in, on a shared etcd client, without a status server. It lives here, with the tests,
/// so the shipped sidecar carries none of it.
pub async fn run_hollow_lb(
    config: lb_sidecar::config::Config,
    client: etcd_client::Client,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), SidecarError> {
    let metrics = Arc::new(lb_sidecar::metrics::Metrics::default());
    let nginx = NginxStandIn::start()
        .await
        .map_err(|e| SidecarError::Setting(format!("hollow LB listener: {e}")))?;
    lb_sidecar::follow(config, client, nginx, metrics, None, shutdown).await
}
