//! A request loop through a load balancer, counting what a client would see. Keep-alive mode
//! applies the single retry RFC 9112 §9.3.1 allows for an idempotent request whose reused
//! connection was closed under it, and counts those raw resets separately.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct LoadReport {
    pub ok: u64,
    pub failed: Vec<String>,
    /// Keep-alive requests that failed at the connection level and succeeded on the retry.
    pub resets_retried: u64,
    /// Responses per `environment` seen, to show traffic moved.
    pub colors: BTreeMap<String, u64>,
    /// The slowest successful request (reads and writes through the database show lock waits).
    pub slowest: Duration,
}

/// A client that opens a new connection per request (as many separate clients would), with a
/// whole-request `timeout`.
pub fn fresh_connections(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// GETs `url` in a loop until `stop` is set.
pub fn spawn(
    url: String,
    keep_alive: bool,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<LoadReport> {
    tokio::spawn(async move {
        let http = if keep_alive {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap()
        } else {
            fresh_connections(Duration::from_secs(5))
        };
        let mut report = LoadReport::default();
        while !stop.load(Ordering::Relaxed) {
            let mut outcome = once(&http, &url).await;
            if keep_alive && matches!(outcome, Err(ref e) if e.starts_with("connection:")) {
                report.resets_retried += 1;
                outcome = once(&http, &url).await;
            }
            match outcome {
                Ok(color) => {
                    report.ok += 1;
                    *report.colors.entry(color).or_default() += 1;
                }
                Err(e) => report.failed.push(e),
            }
        }
        report
    })
}

/// An app's read-write loop until `stop` is set: POST a new item, then GET the list, both through
/// `base` (an LB's URL), each counted; `colors` counts the environment that answered.
pub fn spawn_items(base: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<LoadReport> {
    tokio::spawn(async move {
        let http = fresh_connections(Duration::from_secs(10));
        let url = format!("{base}/api/v1/items");
        let mut report = LoadReport::default();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            for write in [true, false] {
                let started = std::time::Instant::now();
                let request = if write {
                    http.post(&url)
                        .json(&serde_json::json!({"name": format!("load-{n}")}))
                } else {
                    http.get(&url)
                };
                match answer(request).await {
                    Ok(color) => {
                        report.ok += 1;
                        report.slowest = report.slowest.max(started.elapsed());
                        *report.colors.entry(color).or_default() += 1;
                    }
                    Err(e) => report
                        .failed
                        .push(format!("{} {url}: {e}", if write { "POST" } else { "GET" })),
                }
            }
        }
        report
    })
}

pub async fn once(http: &reqwest::Client, url: &str) -> Result<String, String> {
    answer(http.get(url)).await
}

/// The `environment` of a successful JSON answer; Err describes anything else.
async fn answer(request: reqwest::RequestBuilder) -> Result<String, String> {
    let resp = request
        .send()
        .await
        .map_err(|e| format!("connection: {e:?}"))?;
    let status = resp.status();
    // The status first: an nginx error page is not JSON, and "body: …" is kept for answers cut
    // short (the fault runner excuses those on an app killed with -9, never an error status).
    let bytes = resp.bytes().await.map_err(|e| format!("body: {e}"))?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&bytes);
        let shown: String = text.chars().take(120).collect();
        return Err(format!("HTTP {status}: {}", shown.replace('\n', " ")));
    }
    let body: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("body: not JSON: {e}"))?;
    Ok(body["environment"].as_str().unwrap_or("?").to_string())
}

/// Sends `count` requests over fresh connections, one after another.
pub async fn requests(url: &str, count: u64) -> LoadReport {
    let http = fresh_connections(Duration::from_secs(5));
    let mut report = LoadReport::default();
    for _ in 0..count {
        match once(&http, url).await {
            Ok(color) => {
                report.ok += 1;
                *report.colors.entry(color).or_default() += 1;
            }
            Err(e) => report.failed.push(e),
        }
    }
    report
}

/// One fresh-connection request loop per URL, all stopped by the returned flag.
pub fn spawn_each(
    urls: Vec<String>,
) -> (Arc<AtomicBool>, Vec<tokio::task::JoinHandle<LoadReport>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let loops = urls
        .into_iter()
        .map(|url| spawn(url, false, stop.clone()))
        .collect();
    (stop, loops)
}

impl LoadReport {
    /// Panics naming the first failures unless requests went through and none failed.
    pub fn assert_none_failed(&self) {
        assert!(self.ok > 0, "no request went through");
        assert!(
            self.failed.is_empty(),
            "{} of {} requests failed: {:?}",
            self.failed.len(),
            self.ok + self.failed.len() as u64,
            &self.failed[..self.failed.len().min(5)]
        );
    }
}

/// Stops the loops started with `stop` and adds up their reports.
pub async fn finish(
    stop: Arc<AtomicBool>,
    loops: Vec<tokio::task::JoinHandle<LoadReport>>,
) -> LoadReport {
    stop.store(true, Ordering::Relaxed);
    let mut total = LoadReport::default();
    for l in loops {
        let r = l.await.unwrap();
        total.ok += r.ok;
        total.failed.extend(r.failed);
        for (c, n) in r.colors {
            *total.colors.entry(c).or_default() += n;
        }
    }
    total
}
