//! The agent's Prometheus `/metrics` (on `metrics_listen`, loopback by default): per color its
//! state, version, restarts and probe latency, when etcd last confirmed the agent's keys, and
//! the agent's own memory. The states are read from the supervisors' status channels when
//! scraped, so nothing has to remember to update them.
use crate::status::ColorStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use proto::records::HealthState;
use proto::Color;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ColorLabel {
    app: String,
    color: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    app: String,
    color: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    app: String,
    color: String,
    version: String,
}

/// Upper bounds (seconds) of the probe latency histogram.
const PROBE_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

type ProbeHistograms = Family<ColorLabel, Histogram, fn() -> Histogram>;

pub struct AgentMetrics {
    registry: Registry,
    state: Family<StateLabel, Gauge>,
    version: Family<VersionLabel, Gauge>,
    restarts: Family<ColorLabel, Gauge>,
    probe_seconds: ProbeHistograms,
    last_etcd_write: Gauge<f64, AtomicU64>,
    resident_bytes: Gauge,
    /// Each app's status channels, by app.
    statuses: Mutex<BTreeMap<String, Vec<watch::Receiver<Option<ColorStatus>>>>>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("bluegreen_agent");
        let state = Family::<StateLabel, Gauge>::default();
        registry.register(
            "color_state",
            "1 for each color's current state (starting, healthy, unhealthy, failed, stopped)",
            state.clone(),
        );
        let version = Family::<VersionLabel, Gauge>::default();
        registry.register(
            "color_version",
            "1 for the version each color runs",
            version.clone(),
        );
        let restarts = Family::<ColorLabel, Gauge>::default();
        registry.register(
            "color_restarts",
            "restarts of the color's current release after crashes",
            restarts.clone(),
        );
        let probe_seconds: ProbeHistograms =
            Family::new_with_constructor(|| Histogram::new(PROBE_BUCKETS));
        registry.register(
            "probe_seconds",
            "health probe latency per color",
            probe_seconds.clone(),
        );
        let last_etcd_write = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "last_etcd_write_timestamp_seconds",
            "when etcd last confirmed this agent's keys (a write or a lease renewal); 0: never",
            last_etcd_write.clone(),
        );
        let resident_bytes = Gauge::default();
        registry.register(
            "resident_memory_bytes",
            "the agent process's resident memory",
            resident_bytes.clone(),
        );
        AgentMetrics {
            registry,
            state,
            version,
            restarts,
            probe_seconds,
            last_etcd_write,
            resident_bytes,
            statuses: Mutex::new(BTreeMap::new()),
        }
    }
}

impl AgentMetrics {
    /// One app's supervisors' status channels, read at each scrape.
    pub fn watch_statuses(&self, app: &str, statuses: Vec<watch::Receiver<Option<ColorStatus>>>) {
        self.statuses
            .lock()
            .expect("metrics lock")
            .insert(app.to_string(), statuses);
    }

    /// Stops reporting an app this agent no longer runs (its series go at the next scrape).
    pub fn forget_statuses(&self, app: &str) {
        self.statuses.lock().expect("metrics lock").remove(app);
        for color in Color::ALL {
            let label = ColorLabel {
                app: app.to_string(),
                color: color.to_string(),
            };
            self.probe_seconds.remove(&label);
        }
    }

    pub fn observe_probe(&self, app: &str, color: Color, took: Duration) {
        self.probe_seconds
            .get_or_create(&ColorLabel {
                app: app.to_string(),
                color: color.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// The exposition text, with every gauge read fresh.
    pub fn render(&self) -> String {
        self.refresh();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding into a String cannot fail");
        out
    }

    fn refresh(&self) {
        self.version.clear();
        self.state.clear();
        self.restarts.clear();
        let statuses = self.statuses.lock().expect("metrics lock");
        for (app, rx) in statuses
            .iter()
            .flat_map(|(app, rxs)| rxs.iter().map(move |rx| (app, rx)))
        {
            let Some(status) = rx.borrow().clone() else {
                continue;
            };
            let color = status.color.to_string();
            for state in HealthState::ALL {
                let label = StateLabel {
                    app: app.clone(),
                    color: color.clone(),
                    state: state.as_str().to_string(),
                };
                self.state
                    .get_or_create(&label)
                    .set(i64::from(state == status.state));
            }
            self.version
                .get_or_create(&VersionLabel {
                    app: app.clone(),
                    color: color.clone(),
                    version: status.version.clone(),
                })
                .set(1);
            self.restarts
                .get_or_create(&ColorLabel {
                    app: app.clone(),
                    color,
                })
                .set(i64::from(status.restarts));
        }
        self.last_etcd_write
            .set(proto::leased::last_confirmed_seconds().unwrap_or(0.0));
        if let Some(bytes) = proto::daemon::resident_bytes() {
            self.resident_bytes.set(bytes as i64);
        }
    }
}

/// Serves `/metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: std::sync::Arc<AgentMetrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move {
            let content_type = [(
                axum::http::header::CONTENT_TYPE,
                proto::daemon::OPENMETRICS_CONTENT_TYPE,
            )];
            (content_type, metrics.render())
        }),
    );
    let stopped = async move { proto::daemon::shutdown_requested(&mut shutdown).await };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::error!(error = %e, "metrics listener failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_each_colors_state_version_and_probe_latency() {
        let metrics = AgentMetrics::default();
        let mut healthy = ColorStatus::new(Color::Blue, "v7", HealthState::Healthy);
        healthy.restarts = 2;
        let (_tx, rx) = watch::channel(Some(healthy));
        metrics.watch_statuses("shop", vec![rx]);
        let (_tx2, rx2) = watch::channel(Some(ColorStatus::new(
            Color::Blue,
            "v1",
            HealthState::Failed,
        )));
        metrics.watch_statuses("api", vec![rx2]);
        metrics.observe_probe("shop", Color::Blue, Duration::from_millis(3));
        let text = metrics.render();
        for line in [
            "bluegreen_agent_color_state{app=\"shop\",color=\"blue\",state=\"healthy\"} 1",
            "bluegreen_agent_color_state{app=\"shop\",color=\"blue\",state=\"failed\"} 0",
            "bluegreen_agent_color_state{app=\"api\",color=\"blue\",state=\"failed\"} 1",
            "bluegreen_agent_color_version{app=\"shop\",color=\"blue\",version=\"v7\"} 1",
            "bluegreen_agent_color_restarts{app=\"shop\",color=\"blue\"} 2",
            "bluegreen_agent_probe_seconds_count{app=\"shop\",color=\"blue\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        // An app retired from the host leaves no series behind.
        metrics.forget_statuses("api");
        let text = metrics.render();
        assert!(!text.contains("app=\"api\""), "{text}");
        assert!(
            text.contains("bluegreen_agent_resident_memory_bytes "),
            "{text}"
        );
    }
}
