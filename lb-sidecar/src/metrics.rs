//! The sidecar's own status listener: Prometheus `/metrics` and `/healthz` (JSON).
use axum::routing::get;
use axum::Router;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Upper bounds (seconds) of the switch latency histogram: etcd event seen → new color verified.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

#[derive(Default)]
pub struct Metrics {
    pub applied_revision: AtomicI64,
    last_event_ms: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    switch_buckets: [AtomicU64; BUCKETS.len()],
    switch_count: AtomicU64,
    switch_sum_us: AtomicU64,
    /// Color served and the last error, for /healthz.
    pub color: Mutex<Option<String>>,
    pub error: Mutex<Option<String>>,
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
        let secs = took.as_secs_f64();
        for (bucket, bound) in self.switch_buckets.iter().zip(BUCKETS) {
            if secs <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.switch_count.fetch_add(1, Ordering::Relaxed);
        self.switch_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    fn seconds_since_event(&self) -> f64 {
        match self.last_event_ms.load(Ordering::Relaxed) {
            0 => -1.0,
            t => now_ms().saturating_sub(t) as f64 / 1000.0,
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, kind: &str, value: String| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        };
        gauge(
            "bluegreen_lb_applied_revision",
            "etcd revision nginx serves",
            "gauge",
            self.applied_revision.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            "bluegreen_lb_seconds_since_etcd_event",
            "seconds since the last etcd event (-1: none yet)",
            "gauge",
            format!("{:.3}", self.seconds_since_event()),
        );
        gauge(
            "bluegreen_lb_reloads_total",
            "nginx reloads that took effect",
            "counter",
            self.reloads.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            "bluegreen_lb_reload_failures_total",
            "renders, validations or reloads that failed",
            "counter",
            self.reload_failures.load(Ordering::Relaxed).to_string(),
        );
        out.push_str("# HELP bluegreen_lb_switch_seconds etcd active change seen -> nginx serving it\n# TYPE bluegreen_lb_switch_seconds histogram\n");
        for (bucket, bound) in self.switch_buckets.iter().zip(BUCKETS) {
            out.push_str(&format!(
                "bluegreen_lb_switch_seconds_bucket{{le=\"{bound}\"}} {}\n",
                bucket.load(Ordering::Relaxed)
            ));
        }
        let count = self.switch_count.load(Ordering::Relaxed);
        out.push_str(&format!(
            "bluegreen_lb_switch_seconds_bucket{{le=\"+Inf\"}} {count}\n"
        ));
        out.push_str(&format!(
            "bluegreen_lb_switch_seconds_sum {:.6}\n",
            self.switch_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        ));
        out.push_str(&format!("bluegreen_lb_switch_seconds_count {count}\n"));
        out
    }

    fn healthz(&self) -> String {
        serde_json::json!({
            "applied_revision": self.applied_revision.load(Ordering::Relaxed),
            "color": *self.color.lock().unwrap(),
            "error": *self.error.lock().unwrap(),
            "seconds_since_etcd_event": self.seconds_since_event(),
        })
        .to_string()
    }
}

pub fn router(metrics: Arc<Metrics>) -> Router {
    let m = metrics.clone();
    Router::new()
        .route("/metrics", get(move || async move { m.render() }))
        .route("/healthz", get(move || async move { metrics.healthz() }))
}

#[cfg(test)]
mod tests {
    use super::*;

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
