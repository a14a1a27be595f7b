//! The nginx stand-in of hollow LBs: it records what nginx would serve and answers as a reload
//! that always works would, so that dozens of LBs run the real follower and applier in one
//! process without an nginx each. Its public listener answers with the color and revision
//! headers of the loaded config, so the coordinator verifies it exactly as it verifies nginx.
//! Validation is free here; real LBs beside the hollow ones measure what `nginx -t` costs.
use lb_sidecar::error::SidecarError;
use lb_sidecar::nginx::{NginxControl, ReloadHub};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One app's config file: the text "installed", and the text "loaded" by the last reload.
type Files = (Arc<Mutex<Option<String>>>, Arc<Mutex<Option<String>>>);

/// The stand-in's master process, shared by every app of one hollow LB as one nginx master is:
/// a reload signal loads every app's installed file. It counts what a benchmark asks of it.
#[derive(Default)]
pub struct StandInMaster {
    files: Mutex<Vec<Files>>,
    /// Reload signals so far (a batch's one signal covers the debounced changes of every app).
    pub signals: AtomicU64,
}

impl StandInMaster {
    fn signal(&self) {
        for (installed, loaded) in self.files.lock().unwrap().iter() {
            *loaded.lock().unwrap() = installed.lock().unwrap().clone();
        }
        self.signals.fetch_add(1, Ordering::Relaxed);
    }
}

pub struct NginxStandIn {
    installed: Arc<Mutex<Option<String>>>,
    loaded: Arc<Mutex<Option<String>>>,
    public_url: String,
    master: Arc<StandInMaster>,
    /// With several apps: the batch this app's debounced changes join (as the real sidecar's).
    hub: Option<(Arc<ReloadHub>, String)>,
}

impl NginxStandIn {
    /// Starts one app's stand-in under `master`, with its public listener on a free loopback
    /// port.
    pub async fn start(master: Arc<StandInMaster>) -> std::io::Result<NginxStandIn> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let public_url = format!("http://{}", listener.local_addr()?);
        let (installed, loaded): Files = Default::default();
        master
            .files
            .lock()
            .unwrap()
            .push((installed.clone(), loaded.clone()));
        let serving = loaded.clone();
        let app = axum::Router::new().fallback(move || {
            let text = serving.lock().unwrap().clone().unwrap_or_default();
            async move { served_headers(&text) }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(NginxStandIn {
            installed,
            loaded,
            public_url,
            master,
            hub: None,
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
        self.master.signal();
        Ok(Vec::new())
    }

    fn batch(&self) -> Option<(&ReloadHub, &str)> {
        self.hub
            .as_ref()
            .map(|(hub, app)| (hub.as_ref(), app.as_str()))
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

/// A hollow LB for scale benchmarks: the sidecar's real followers and appliers (one per app of
/// `config.apps`, or the one app of `config`) over the nginx stand-in, under one lease on a
/// shared etcd client, without a status server. It lives here, with the tests, so the shipped
/// sidecar carries none of it.
pub async fn run_hollow_lb(
    config: lb_sidecar::config::Config,
    client: etcd_client::Client,
    master: Arc<StandInMaster>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), SidecarError> {
    let multi = !config.apps.is_empty();
    let apps = if multi {
        config.apps.clone()
    } else {
        vec![config.clone()]
    };
    let signaller = master.clone();
    let hub = Arc::new(ReloadHub::new(move || {
        signaller.signal();
        Ok(Vec::new())
    }));
    let mut seams = Vec::new();
    for app in apps {
        let mut nginx = NginxStandIn::start(master.clone())
            .await
            .map_err(|e| SidecarError::Setting(format!("hollow LB listener: {e}")))?;
        if multi {
            nginx.hub = Some((hub.clone(), app.app.clone()));
        }
        seams.push(lb_sidecar::AppSeams {
            config: app,
            nginx,
            metrics: Arc::new(lb_sidecar::metrics::Metrics::default()),
            request_log: None,
            lua: None,
        });
    }
    lb_sidecar::follow_apps(&config, client, seams, shutdown).await
}
