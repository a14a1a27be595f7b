//! Progress output: one human line per step and host in text mode, one JSON object per line with
//! `--output json` (step, host, state, elapsed_ms) for CI.
use crate::report::Recorder;
use tokio::time::Instant;

pub struct Progress {
    json: bool,
    /// Prints nothing (a check run for its verdict only).
    quiet: bool,
    start: Instant,
    /// The facts the command's `result` event reports.
    recorder: Recorder,
}

impl Progress {
    pub fn new(json: bool) -> Progress {
        Progress {
            json,
            quiet: false,
            start: Instant::now(),
            recorder: Recorder::default(),
        }
    }

    /// Progress that records its command's facts into `recorder` (the one `main` reports from).
    pub fn recording(json: bool, recorder: &Recorder) -> Progress {
        Progress {
            recorder: recorder.clone(),
            ..Progress::new(json)
        }
    }

    pub fn record(&self) -> &Recorder {
        &self.recorder
    }

    /// A progress that prints nothing.
    pub fn silent() -> Progress {
        Progress {
            quiet: true,
            ..Progress::new(false)
        }
    }

    /// Prints one step; `detail` is masked (it may carry app log lines or database URLs).
    pub fn event(&self, step: &str, host: Option<&str>, state: &str, detail: &str) {
        if self.quiet {
            return;
        }
        let elapsed_ms = self.start.elapsed().as_millis() as u64;
        let detail = &proto::secrets::mask_text(detail);
        if self.json {
            let line = serde_json::json!({"step": step, "host": host, "state": state, "detail": detail, "elapsed_ms": elapsed_ms});
            emit(&format!("{line}\n"));
        } else {
            let host = host.map(|h| format!(" {h}:")).unwrap_or_default();
            let detail = if detail.is_empty() {
                String::new()
            } else {
                format!(" ({detail})")
            };
            emit(&format!(
                "[{:>6.2}s] {step}:{host} {state}{detail}\n",
                elapsed_ms as f64 / 1000.0
            ));
        }
    }
}

/// Writes to stdout. A reader that went away (`coordinator status | head`) is not a reason to
/// panic or to stop the operation: what it would have read is dropped.
pub fn emit(text: &str) {
    use std::io::Write;
    // An operation run for someone in the dashboard: its lines go to their browser.
    if let Some(events) = crate::actor::Invoker::current().and_then(|i| i.events) {
        let _ = events.send(text.to_string());
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}
