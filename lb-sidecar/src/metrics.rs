//! The sidecar's own status listener: Prometheus `/metrics` (prometheus-client, the same
//! exposition as the agent's) and `/healthz` (JSON).
use axum::routing::get;
use axum::Router;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The `color` label of the per-color request series.
type ColorLabel = Vec<(&'static str, &'static str)>;

/// Upper bounds (seconds) of the upstream answer time histogram.
const ANSWER_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Upper bounds (seconds) of the switch latency histogram: etcd event seen → new color verified.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

pub struct Metrics {
    registry: Registry,
    applied_revision: Gauge,
    last_event_ms: AtomicU64,
    seconds_since_event: Gauge<f64, AtomicU64>,
    reloads: Counter,
    reload_failures: Counter,
    switch_seconds: Histogram,
    last_etcd_write: Gauge<f64, AtomicU64>,
    resident_bytes: Gauge,
    reload_signals: Gauge,
    upstream_requests: Family<ColorLabel, Counter>,
    upstream_errors: Family<ColorLabel, Counter>,
    upstream_seconds: Family<ColorLabel, Histogram>,
    request_log_dropped: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Color served and the last error, for /healthz.
    pub color: Mutex<Option<String>>,
    pub error: Mutex<Option<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::for_app(None)
    }
}

impl Metrics {
    /// The metrics of one app's follower; a sidecar serving several apps labels each one's.
    pub fn for_app(app: Option<&str>) -> Self {
        let labels = app.map(|a| {
            (
                std::borrow::Cow::Borrowed("app"),
                std::borrow::Cow::Owned(a.to_string()),
            )
        });
        let mut registry = Registry::with_prefix_and_labels("bluegreen_lb", labels.into_iter());
        let applied_revision = Gauge::default();
        registry.register(
            "applied_revision",
            "etcd revision nginx serves",
            applied_revision.clone(),
        );
        let seconds_since_event = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "seconds_since_etcd_event",
            "seconds since the last etcd event (-1: none yet)",
            seconds_since_event.clone(),
        );
        let reloads = Counter::default();
        registry.register("reloads", "nginx reloads that took effect", reloads.clone());
        let reload_failures = Counter::default();
        registry.register(
            "reload_failures",
            "renders, validations or reloads that failed",
            reload_failures.clone(),
        );
        let switch_seconds = Histogram::new(BUCKETS);
        registry.register(
            "switch_seconds",
            "etcd active change seen -> nginx serving it",
            switch_seconds.clone(),
        );
        let last_etcd_write = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "last_etcd_write_timestamp_seconds",
            "when etcd last confirmed this sidecar's keys (a write or a lease renewal); 0: never",
            last_etcd_write.clone(),
        );
        let resident_bytes = Gauge::default();
        registry.register(
            "resident_memory_bytes",
            "the sidecar process's resident memory",
            resident_bytes.clone(),
        );
        let reload_signals = Gauge::default();
        registry.register(
            "nginx_reload_signals",
            "reload signals this sidecar sent nginx, for every app it serves (a batch of several apps' changes is one)",
            reload_signals.clone(),
        );
        let upstream_requests = Family::<ColorLabel, Counter>::default();
        registry.register(
            "upstream_requests",
            "attempts answered by an upstream of this color (nginx's request log; retries count per upstream)",
            upstream_requests.clone(),
        );
        let upstream_errors = Family::<ColorLabel, Counter>::default();
        registry.register(
            "upstream_errors",
            "attempts of this color answered 5xx or not at all",
            upstream_errors.clone(),
        );
        let upstream_seconds = Family::<ColorLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(ANSWER_BUCKETS)
        });
        registry.register(
            "upstream_response_seconds",
            "upstream answer time per color",
            upstream_seconds.clone(),
        );
        let request_log_dropped = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
        registry.register(
            "request_log_dropped",
            "request log datagrams not counted: from a process that is not our nginx's worker (reason=sender), or not in nginx's format (reason=format)",
            request_log_dropped.clone(),
        );
        Metrics {
            request_log_dropped,
            registry,
            upstream_requests,
            upstream_errors,
            upstream_seconds,
            applied_revision,
            last_event_ms: AtomicU64::new(0),
            seconds_since_event,
            reloads,
            reload_failures,
            switch_seconds,
            last_etcd_write,
            resident_bytes,
            reload_signals,
            color: Mutex::new(None),
            error: Mutex::new(None),
        }
    }
}

/// Several apps' expositions as one: each metric family's HELP and TYPE once, then every app's
/// samples (a family repeated would be refused by Prometheus), and one `# EOF`.
pub fn merge_expositions(texts: &[String]) -> String {
    let mut families: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
    for text in texts {
        let mut current: Option<usize> = None;
        for line in text.lines() {
            if line == "# EOF" || line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# ") {
                let name = rest
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                let index = match families.iter().position(|(n, _, _)| *n == name) {
                    Some(i) => i,
                    None => {
                        families.push((name, Vec::new(), Vec::new()));
                        families.len() - 1
                    }
                };
                let meta = &mut families[index].1;
                if !meta.iter().any(|m| m == line) {
                    meta.push(line.to_string());
                }
                current = Some(index);
            } else if let Some(i) = current {
                families[i].2.push(line.to_string());
            }
        }
    }
    let mut out = String::new();
    for (_, meta, samples) in families {
        for line in meta.iter().chain(samples.iter()) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str("# EOF\n");
    out
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Metrics {
    pub fn saw_event(&self) {
        self.last_event_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn observe_switch(&self, took: Duration) {
        self.switch_seconds.observe(took.as_secs_f64());
    }

    /// nginx now serves `revision`.
    pub fn reloaded(&self, revision: i64) {
        self.reloads.inc();
        self.applied_revision.set(revision);
    }

    /// A request log datagram not counted, and why (`sender` or `format`).
    pub fn dropped(&self, reason: &'static str) {
        self.request_log_dropped
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    /// One upstream attempt from nginx's request log.
    pub fn observe_upstream(&self, color: proto::Color, ms: f64, error: bool) {
        let label = vec![("color", color.as_str())];
        self.upstream_requests.get_or_create(&label).inc();
        if error {
            self.upstream_errors.get_or_create(&label).inc();
        }
        self.upstream_seconds
            .get_or_create(&label)
            .observe(ms / 1000.0);
    }

    pub fn reload_failed(&self) {
        self.reload_failures.inc();
    }

    fn seconds_since_event(&self) -> f64 {
        match self.last_event_ms.load(Ordering::Relaxed) {
            0 => -1.0,
            t => now_ms().saturating_sub(t) as f64 / 1000.0,
        }
    }

    pub fn render(&self) -> String {
        self.seconds_since_event.set(self.seconds_since_event());
        self.last_etcd_write
            .set(proto::leased::last_confirmed_seconds().unwrap_or(0.0));
        if let Some(bytes) = proto::daemon::resident_bytes() {
            self.resident_bytes.set(bytes as i64);
        }
        self.reload_signals
            .set(crate::nginx::ReloadHub::signals() as i64);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding into a String cannot fail");
        out
    }

    fn healthz(&self) -> String {
        serde_json::json!({
            "applied_revision": self.applied_revision.get(),
            "color": *self.color.lock().unwrap(),
            "error": *self.error.lock().unwrap(),
            "seconds_since_etcd_event": self.seconds_since_event(),
        })
        .to_string()
    }
}

/// `/metrics` and `/healthz` of every app this sidecar serves: one app's as they always were,
/// several apps' merged (`/healthz`: an object per app).
pub fn router(apps: Vec<(String, Arc<Metrics>)>) -> Router {
    let apps = Arc::new(apps);
    let m = apps.clone();
    Router::new()
        .route(
            "/metrics",
            get(move || async move {
                let content_type = [(
                    axum::http::header::CONTENT_TYPE,
                    proto::daemon::OPENMETRICS_CONTENT_TYPE,
                )];
                let text = match m.as_slice() {
                    [(_, one)] => one.render(),
                    many => {
                        merge_expositions(&many.iter().map(|(_, m)| m.render()).collect::<Vec<_>>())
                    }
                };
                (content_type, text)
            }),
        )
        .route(
            "/healthz",
            get(move || async move {
                match apps.as_slice() {
                    [(_, one)] => one.healthz(),
                    many => {
                        let each: serde_json::Map<String, serde_json::Value> = many
                            .iter()
                            .map(|(name, m)| {
                                (
                                    name.clone(),
                                    serde_json::from_str(&m.healthz()).unwrap_or_default(),
                                )
                            })
                            .collect();
                        serde_json::json!({ "apps": each }).to_string()
                    }
                }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_apps_merge_into_one_valid_exposition() {
        let shop = Metrics::for_app(Some("shop"));
        let api = Metrics::for_app(Some("api"));
        shop.reloaded(7);
        api.reloaded(9);
        api.reloaded(10);
        let text = merge_expositions(&[shop.render(), api.render()]);
        assert_eq!(
            text.matches("# TYPE bluegreen_lb_reloads counter").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains("bluegreen_lb_reloads_total{app=\"shop\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("bluegreen_lb_reloads_total{app=\"api\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("bluegreen_lb_applied_revision{app=\"api\"} 10"),
            "{text}"
        );
        assert_eq!(text.matches("# EOF").count(), 1);
        assert!(text.ends_with("# EOF\n"));
        // Every sample follows its own family's TYPE line.
        let mut family = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split_whitespace().next().unwrap().to_string();
            } else if !line.starts_with('#') {
                assert!(line.starts_with(&family), "{line} outside {family}");
            }
        }
    }

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::default();
        m.observe_switch(Duration::from_millis(20));
        m.observe_switch(Duration::from_millis(200));
        let text = m.render();
        assert!(text.contains("bluegreen_lb_switch_seconds_bucket{le=\"0.01\"} 0"));
        assert!(text.contains("bluegreen_lb_switch_seconds_bucket{le=\"0.025\"} 1"));
        assert!(text.contains("bluegreen_lb_switch_seconds_bucket{le=\"0.25\"} 2"));
        assert!(text.contains("bluegreen_lb_switch_seconds_count 2"));
    }
}
