//! A request loop through a load balancer, counting what a client would see. Keep-alive mode
//! applies the single retry RFC 9112 §9.3.1 allows for an idempotent request whose reused
//! connection was closed under it, and counts those raw resets separately.
//!
//! Fresh-connection loops are paced ([`pace_fresh`]): every connection the client closes holds
//! its local port in TIME_WAIT for a minute, and a loop that opened connections as fast as a
//! release build can (about 700 a second to one LB) used up the ephemeral ports toward that LB
//! within a minute; `connect` then failed in the client before any packet left. A failure of
//! that kind is the harness's own ([`client_side`]): it is never counted as a failed request.
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The most new connections per second the load loops of one process open to one address
/// (host and port), all loops together. Linux keeps a closed connection's port in TIME_WAIT for
/// 60 s and hands out ports 32768–60999 by default, so about 470 a second can be sustained per
/// destination; this leaves room for the rest of the process.
pub const FRESH_PER_SECOND: u32 = 250;

/// Waits for the next slot to open a fresh connection to `url`'s address at `per_second` (at most
/// [`FRESH_PER_SECOND`]). The slots of one address are shared by every loop in the process.
pub async fn pace_fresh(url: &str, per_second: u32) {
    static NEXT: Mutex<Option<HashMap<String, Instant>>> = Mutex::new(None);
    let per_second = per_second.clamp(1, FRESH_PER_SECOND);
    let gap = Duration::from_secs_f64(1.0 / f64::from(per_second));
    let authority = url
        .split("://")
        .nth(1)
        .unwrap_or(url)
        .split('/')
        .next()
        .unwrap_or(url)
        .to_string();
    // The slot's start is a pacing deadline, not a synchronisation: when this request may go.
    let deadline = {
        let mut next = NEXT.lock().unwrap();
        let now = Instant::now();
        let next = next
            .get_or_insert_with(HashMap::new)
            .entry(authority)
            .or_insert(now);
        let slot = (*next).max(now);
        *next = slot + gap;
        slot
    };
    tokio::time::sleep_until(deadline).await;
}

/// The client's own failure before any packet was sent (no local port left, no file descriptor
/// left): the harness's problem, never the product's. Names the cause.
pub fn client_side(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    // errno values of Linux: EADDRNOTAVAIL, EADDRINUSE, EMFILE, ENFILE, ENOBUFS.
    const LOCAL: [(i32, &str); 5] = [
        (
            99,
            "no local address/port left to connect from (EADDRNOTAVAIL)",
        ),
        (98, "local address in use (EADDRINUSE)"),
        (24, "the test process is out of file descriptors (EMFILE)"),
        (23, "the machine is out of file descriptors (ENFILE)"),
        (105, "no buffer space (ENOBUFS)"),
    ];
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(code) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
        {
            if let Some((_, what)) = LOCAL.iter().find(|(c, _)| *c == code) {
                return Some(format!("{what}: {e}"));
            }
        }
        cause = e.source();
    }
    None
}

/// The prefix of an error [`once`] returns for a [`client_side`] failure.
pub const CLIENT_SIDE: &str = "client:";

/// Panics for a client-side failure: a test's load loop that cannot connect says so as the
/// harness's fault instead of reporting failed requests the product never saw.
fn harness_check(url: &str, outcome: &Result<String, String>) {
    if let Err(e) = outcome {
        if e.starts_with(CLIENT_SIDE) {
            panic!("the test's own client failed before sending to {url}: {e}");
        }
    }
}

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

/// GETs `url` in a loop until `stop` is set (fresh connections paced by [`pace_fresh`]).
pub fn spawn(
    url: String,
    keep_alive: bool,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<LoadReport> {
    spawn_as(url, None, keep_alive, stop)
}

/// [`spawn`] sending `host` as the `Host` header (a listener that routes apps by host name).
pub fn spawn_as(
    url: String,
    host: Option<String>,
    keep_alive: bool,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<LoadReport> {
    tokio::spawn(async move {
        let once = |http: &reqwest::Client, url: &str| {
            let mut request = http.get(url);
            if let Some(host) = &host {
                request = request.header(reqwest::header::HOST, host.as_str());
            }
            answer(request)
        };
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
            if !keep_alive {
                pace_fresh(&url, FRESH_PER_SECOND).await;
            }
            let mut outcome = once(&http, &url).await;
            harness_check(&url, &outcome);
            if keep_alive && matches!(outcome, Err(ref e) if e.starts_with("connection:")) {
                report.resets_retried += 1;
                outcome = once(&http, &url).await;
                harness_check(&url, &outcome);
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
                pace_fresh(&url, FRESH_PER_SECOND).await;
                let started = std::time::Instant::now();
                let request = if write {
                    http.post(&url)
                        .json(&serde_json::json!({"name": format!("load-{n}")}))
                } else {
                    http.get(&url)
                };
                let outcome = answer(request).await;
                harness_check(&url, &outcome);
                match outcome {
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
    let resp = request.send().await.map_err(|e| match client_side(&e) {
        Some(cause) => format!("{CLIENT_SIDE} {cause}"),
        None => format!("connection: {e:?}"),
    })?;
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
        pace_fresh(url, FRESH_PER_SECOND).await;
        let outcome = once(&http, url).await;
        harness_check(url, &outcome);
        match outcome {
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
