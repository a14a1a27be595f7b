//! Requests through every LB for the whole run, counted per LB and per step. A step may excuse
//! an LB whose failures are the fault itself: every failure while its nginx is stopped, and
//! timeouts while a host it routes to is cut off (a request already sent to that host, or sent
//! on a pooled connection to it, waits for nginx's `proxy_read_timeout`: the LB cannot reach
//! every host of the color it serves). A request is excused when the excuse held at its start
//! or at its end. Likewise a truncated answer while an app process was killed with -9 (the
//! requests it was answering die with it). Excused failures are counted apart and never
//! reported as violations. A failure of the client itself before anything was sent (no local
//! port left) is no request at all: it stops the traffic and ends the run as a harness error.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    failed: AtomicU64,
    excused_failed: AtomicU64,
    excused: AtomicBool,
    timeouts_excused: AtomicBool,
    in_flight_excused: AtomicBool,
    errors: Mutex<Vec<String>>,
}

/// One LB's requests in one step.
#[derive(Debug, Default, Clone)]
pub struct StepCount {
    pub ok: u64,
    pub failed: u64,
    pub excused_failed: u64,
    pub errors: Vec<String>,
}

pub struct Traffic {
    lbs: Vec<Arc<Counters>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    harness_error: Arc<Mutex<Option<String>>>,
}

impl Traffic {
    /// One request loop per URL, a fresh connection per request (as many clients would), at
    /// `per_second` requests per second per URL (at most [`crate::load::FRESH_PER_SECOND`]).
    pub fn start(urls: Vec<String>, per_second: u32) -> Traffic {
        let http = crate::load::fresh_connections(Duration::from_secs(5));
        Traffic::start_with(urls, per_second, http)
    }

    /// [`Traffic::start`] with the client given.
    pub fn start_with(urls: Vec<String>, per_second: u32, http: reqwest::Client) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let harness_error: Arc<Mutex<Option<String>>> = Arc::default();
        let lbs: Vec<Arc<Counters>> = urls.iter().map(|_| Arc::default()).collect();
        let tasks = urls
            .into_iter()
            .zip(lbs.clone())
            .map(|(url, counters)| {
                let (stop, http, harness_error) =
                    (stop.clone(), http.clone(), harness_error.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        crate::load::pace_fresh(&url, per_second).await;
                        let all_at_start = counters.excused.load(Ordering::Relaxed);
                        let in_flight_at_start = counters.in_flight_excused.load(Ordering::Relaxed);
                        let timeouts_at_start = counters.timeouts_excused.load(Ordering::Relaxed);
                        let outcome = crate::load::once(&http, &url).await;
                        let all = all_at_start || counters.excused.load(Ordering::Relaxed);
                        let timeouts =
                            timeouts_at_start || counters.timeouts_excused.load(Ordering::Relaxed);
                        let in_flight = in_flight_at_start
                            || counters.in_flight_excused.load(Ordering::Relaxed);
                        match outcome {
                            Err(e) if e.starts_with(crate::load::CLIENT_SIDE) => {
                                let mut first = harness_error.lock().unwrap();
                                first.get_or_insert(format!(
                                    "the runner's client toward {url}: {e}"
                                ));
                                stop.store(true, Ordering::Relaxed);
                            }
                            Ok(_) => {
                                counters.ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e)
                                if all
                                    || (timeouts && e.contains("TimedOut"))
                                    || (in_flight && e.starts_with("body:")) =>
                            {
                                counters.excused_failed.fetch_add(1, Ordering::Relaxed);
                                // A stopped LB refuses at once: do not spin on it.
                                let backoff = Duration::from_millis(20);
                                tokio::time::sleep(backoff).await;
                            }
                            Err(e) => {
                                counters.failed.fetch_add(1, Ordering::Relaxed);
                                let mut errors = counters.errors.lock().unwrap();
                                if errors.len() < 3 {
                                    errors.push(e);
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        Traffic {
            lbs,
            stop,
            tasks,
            harness_error,
        }
    }

    /// The client's own failure that stopped the traffic, if one did: the run cannot judge the
    /// product any more and must end as a harness error.
    pub fn harness_error(&self) -> Option<String> {
        self.harness_error.lock().unwrap().clone()
    }

    /// From now on, failures through LB `i` are the fault's, not the product's.
    pub fn excuse(&self, i: usize, excused: bool) {
        self.lbs[i].excused.store(excused, Ordering::Relaxed);
    }

    /// From now on, timeouts through every LB are the fault's (a host is cut off).
    pub fn excuse_timeouts(&self) {
        for c in &self.lbs {
            c.timeouts_excused.store(true, Ordering::Relaxed);
        }
    }

    /// From now on, truncated answers through every LB are the fault's (an app was killed).
    pub fn excuse_in_flight(&self) {
        for c in &self.lbs {
            c.in_flight_excused.store(true, Ordering::Relaxed);
        }
    }

    /// The counts since the last call, per LB; clears every excuse.
    pub fn take_step(&self) -> Vec<StepCount> {
        self.lbs
            .iter()
            .map(|c| {
                c.excused.store(false, Ordering::Relaxed);
                c.timeouts_excused.store(false, Ordering::Relaxed);
                c.in_flight_excused.store(false, Ordering::Relaxed);
                StepCount {
                    ok: c.ok.swap(0, Ordering::Relaxed),
                    failed: c.failed.swap(0, Ordering::Relaxed),
                    excused_failed: c.excused_failed.swap(0, Ordering::Relaxed),
                    errors: std::mem::take(&mut *c.errors.lock().unwrap()),
                }
            })
            .collect()
    }

    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
