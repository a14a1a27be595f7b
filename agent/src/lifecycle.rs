//! One color's lifecycle on this host as a pure state machine: fed an [`Event`] (a new desired
//! release, a finished fetch or launch, a process exit, a probe result, a due restart) and the
//! time, it updates itself and returns the [`Action`]s to carry out. The safety rules live here
//! and are unit-tested without processes or sleeps: a bad release never touches the running
//! process, the active color is never replaced or stopped, a release that dies before it was
//! ever healthy puts the previous one back, and crashes restart with a doubling backoff until
//! `max_restarts`. [`crate::supervisor`] is the thin loop that executes the actions.
use crate::health::Probe;
use crate::status::{ColorStatus, DesiredRelease};
use proto::records::{Desired, HealthState, ReleaseRecord};
use proto::Color;
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;

/// Probe period while a process is starting: fast, so a healthy start is seen within ~100 ms.
pub const STARTING_PROBE: Duration = Duration::from_millis(100);
/// A process healthy this long has proven itself: its crash counter starts over.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);
/// The first restart after a crash waits this long; each further crash in a row doubles it.
pub const FIRST_RESTART_DELAY: Duration = Duration::from_millis(250);

/// Why a process is being launched: decides what a success or failure means.
#[derive(Debug, Clone, PartialEq)]
pub enum Purpose {
    /// A new release; `previous` is put back if it fails.
    Install {
        previous: Option<(ReleaseRecord, PathBuf)>,
    },
    /// The previous release, after a new one failed.
    Restore,
    /// The same release after a crash.
    Restart { restarts: u32, crashes_in_row: u32 },
}

impl Purpose {
    /// The restart count recorded with the process (pid file, status).
    pub fn restarts(&self) -> u32 {
        match self {
            Purpose::Restart { restarts, .. } => *restarts,
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// At start: a process a previous agent started still runs.
    Adopted {
        pid: u32,
        release: ReleaseRecord,
        dir: PathBuf,
        restarts: u32,
    },
    Desired(DesiredRelease),
    /// Whether this color is the one `active` names.
    Active(bool),
    /// The artifact of the release being installed; `superseded` when a newer release arrived
    /// meanwhile (it is applied next, this one is dropped).
    Fetched {
        result: Result<PathBuf, String>,
        superseded: bool,
    },
    Launched {
        purpose: Purpose,
        release: ReleaseRecord,
        dir: PathBuf,
        result: Result<u32, String>,
    },
    /// The process exited; the text says how (and its last log line).
    Exited(String),
    Probed(Probe),
    RestartDue,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Report this status (to etcd, through the reporter).
    Publish(ColorStatus),
    /// Download and unpack; answer with [`Event::Fetched`].
    Fetch(ReleaseRecord),
    /// Stop the running process gracefully (SIGTERM, `timeout`, SIGKILL) and forget it.
    StopProcess { timeout: Duration },
    /// The pid file no longer describes a process to adopt.
    ForgetPidFile,
    /// Start a process; answer with [`Event::Launched`].
    Launch {
        release: ReleaseRecord,
        dir: PathBuf,
        purpose: Purpose,
    },
}

/// The release installed on this color and its process.
#[derive(Debug, Clone, PartialEq)]
struct Installed {
    release: ReleaseRecord,
    dir: PathBuf,
    /// `None` while no process runs (crashed, waiting for its restart).
    pid: Option<u32>,
    restart_at: Option<Instant>,
    restarts: u32,
    crashes_in_row: u32,
    /// The first process of a freshly installed release: if it dies before it was ever
    /// healthy, the release is broken and the previous one is put back.
    first_launch: bool,
    ever_healthy: bool,
    launched_at: Instant,
    healthy_since: Option<Instant>,
    previous: Option<(ReleaseRecord, PathBuf)>,
    /// This release runs although this agent would refuse to start it (see
    /// [`DesiredRelease::Unsigned`]): why.
    unsigned: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Lifecycle {
    color: Color,
    max_restarts: u32,
    current: Option<Installed>,
    /// The release being fetched.
    installing: Option<ReleaseRecord>,
    /// A failed or refused release: reported until etcd asks for something else, while
    /// whatever ran before keeps running.
    pinned: Option<ColorStatus>,
    /// The pin is a refusal to replace or stop the live color: retried when `active` moves.
    refused: bool,
    active: bool,
    desired: DesiredRelease,
    /// The state last published (what the reporter shows).
    shown: Option<HealthState>,
}

impl Lifecycle {
    pub fn new(color: Color, max_restarts: u32) -> Lifecycle {
        Lifecycle {
            color,
            max_restarts,
            current: None,
            installing: None,
            pinned: None,
            refused: false,
            active: false,
            desired: DesiredRelease::Unknown,
            shown: None,
        }
    }

    /// The release whose process is (or should be) running, for probes.
    pub fn running_release(&self) -> Option<&ReleaseRecord> {
        self.current
            .as_ref()
            .filter(|c| c.pid.is_some())
            .map(|c| &c.release)
    }

    /// When to probe next: fast while starting, every `interval` once healthy.
    pub fn next_probe(&self, now: Instant) -> Option<Instant> {
        let c = self.current.as_ref().filter(|c| c.pid.is_some())?;
        let period = if c.ever_healthy && self.shown != Some(HealthState::Starting) {
            c.release.health.interval
        } else {
            STARTING_PROBE
        };
        Some(now + period)
    }

    pub fn restart_at(&self) -> Option<Instant> {
        self.current.as_ref().and_then(|c| c.restart_at)
    }

    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Adopted {
                pid,
                release,
                dir,
                restarts,
            } => {
                let mut c = Installed::launched(release, dir, pid, now, false);
                c.restarts = restarts;
                self.current = Some(c);
                self.publish(&mut out, self.status(HealthState::Starting));
            }
            Event::Desired(desired) => {
                self.desired = desired;
                self.apply_desired(&mut out);
            }
            Event::Active(active) => {
                self.active = active;
                // A release refused because this color was live may apply now.
                if self.refused {
                    self.apply_desired(&mut out);
                }
            }
            Event::Fetched { result, superseded } => self.fetched(&mut out, result, superseded),
            Event::Launched {
                purpose,
                release,
                dir,
                result,
            } => self.launched(&mut out, purpose, release, dir, result, now),
            Event::Exited(what) => self.exited(&mut out, what, now),
            Event::RestartDue => {
                if let Some(c) = self.current.take() {
                    let purpose = Purpose::Restart {
                        restarts: c.restarts + 1,
                        crashes_in_row: c.crashes_in_row,
                    };
                    out.push(Action::Launch {
                        release: c.release,
                        dir: c.dir,
                        purpose,
                    });
                }
            }
            Event::Probed(probe) => self.probed(&mut out, probe, now),
        }
        out
    }

    fn apply_desired(&mut self, out: &mut Vec<Action>) {
        self.pinned = None;
        self.refused = false;
        match self.desired.clone() {
            DesiredRelease::Unknown => {}
            DesiredRelease::Invalid { version, error } => {
                let version = version
                    .or_else(|| self.current_version())
                    .unwrap_or_default();
                self.pin(out, &version, HealthState::Failed, error);
            }
            DesiredRelease::Unsigned { release, error } => {
                let runs_it = self.current.as_mut().filter(|c| {
                    (c.pid.is_some() || c.restart_at.is_some())
                        && same_process(&c.release, &release)
                });
                match runs_it {
                    // Started before this agent required signatures: an agent never stops or
                    // disowns what it runs because its own configuration changed. Flagged.
                    Some(c) => {
                        c.release = release;
                        c.unsigned = Some(error);
                    }
                    None => {
                        let refused = format!("{}: {error}", proto::signing::REFUSED);
                        self.fail_release(out, &release.version, refused)
                    }
                }
            }
            DesiredRelease::Absent => self.stop_current(out, ""),
            DesiredRelease::Release(r) if r.desired == Desired::Stopped => {
                self.stop_current(out, &r.version)
            }
            DesiredRelease::Release(r) => self.converge(out, r),
        }
        if self.pinned.is_none() && self.installing.is_none() {
            self.publish_current(out);
        }
    }

    fn converge(&mut self, out: &mut Vec<Action>, release: ReleaseRecord) {
        if let Some(c) = &mut self.current {
            let alive = c.pid.is_some() || c.restart_at.is_some();
            if alive && same_process(&c.release, &release) {
                c.release = release; // health settings or deploy id may have changed
                return;
            }
        }
        if self.active && self.has_process() {
            let running = self.current_version().unwrap_or_default();
            let error = format!(
                "refusing to replace {} {running} with {}: {} is the active color",
                self.color, release.version, self.color
            );
            let state = self.shown.unwrap_or(HealthState::Stopped);
            self.pin(out, &running, state, error);
            self.refused = true;
            return;
        }
        self.publish(
            out,
            ColorStatus::new(self.color, &release.version, HealthState::Starting),
        );
        self.installing = Some(release.clone());
        out.push(Action::Fetch(release));
    }

    fn fetched(
        &mut self,
        out: &mut Vec<Action>,
        result: Result<PathBuf, String>,
        superseded: bool,
    ) {
        let Some(release) = self.installing.take() else {
            return;
        };
        if superseded {
            return; // the newer release is delivered next
        }
        let dir = match result {
            Ok(dir) => dir,
            Err(e) => return self.fail_release(out, &release.version, e),
        };
        let previous = self.take_and_stop(out);
        out.push(Action::Launch {
            release,
            dir,
            purpose: Purpose::Install { previous },
        });
    }

    fn launched(
        &mut self,
        out: &mut Vec<Action>,
        purpose: Purpose,
        release: ReleaseRecord,
        dir: PathBuf,
        result: Result<u32, String>,
        now: Instant,
    ) {
        let version = release.version.clone();
        match (purpose, result) {
            (Purpose::Install { previous }, Ok(pid)) => {
                let mut c = Installed::launched(release, dir, pid, now, true);
                c.previous = previous;
                self.current = Some(c);
                self.publish_current(out);
            }
            (Purpose::Install { previous }, Err(e)) => {
                self.fail_release(out, &version, e);
                self.restore(out, previous);
            }
            (Purpose::Restore, Ok(pid)) => {
                self.current = Some(Installed::launched(release, dir, pid, now, false));
                if let Some(mut pinned) = self.pinned.take() {
                    pinned
                        .error
                        .get_or_insert_default()
                        .push_str(&format!("; restored {version}"));
                    pinned.pid = Some(pid);
                    self.pinned = Some(pinned.clone());
                    self.publish(out, pinned);
                }
            }
            // The previous release could not be started again either: the failure stays pinned.
            (Purpose::Restore, Err(_)) => {}
            (
                Purpose::Restart {
                    restarts,
                    crashes_in_row,
                },
                Ok(pid),
            ) => {
                let mut c = Installed::launched(release, dir, pid, now, false);
                c.restarts = restarts;
                c.crashes_in_row = crashes_in_row;
                self.current = Some(c);
                self.publish_current(out);
            }
            (Purpose::Restart { .. }, Err(e)) => {
                self.fail_release(out, &version, format!("restart failed: {e}"))
            }
        }
    }

    fn exited(&mut self, out: &mut Vec<Action>, what: String, now: Instant) {
        let Some(c) = &mut self.current else {
            return;
        };
        c.pid = None;
        let version = c.release.version.clone();
        if c.first_launch && !c.ever_healthy {
            let previous = self.current.take().and_then(|c| c.previous);
            out.push(Action::ForgetPidFile);
            self.fail_release(
                out,
                &version,
                format!("process {what} before it became healthy"),
            );
            self.restore(out, previous);
            return;
        }
        c.crashes_in_row += 1;
        if c.crashes_in_row > self.max_restarts {
            let error = format!(
                "crashed {} times in a row ({what}); not restarting",
                c.crashes_in_row
            );
            out.push(Action::ForgetPidFile);
            return self.fail_release(out, &version, error);
        }
        let delay = restart_delay(c.crashes_in_row);
        c.restart_at = Some(now + delay);
        let mut status = self.status(HealthState::Unhealthy);
        status.error = Some(format!("{what}; restarting in {delay:?}"));
        self.publish(out, status);
    }

    fn probed(&mut self, out: &mut Vec<Action>, probe: Probe, now: Instant) {
        let Some(c) = &mut self.current else { return };
        if c.pid.is_none() {
            return; // it exited while we probed; the exit reports that
        }
        let state = if probe.healthy {
            c.ever_healthy = true;
            let since = *c.healthy_since.get_or_insert(now);
            if now.duration_since(since) >= STABLE_AFTER {
                c.crashes_in_row = 0;
            }
            HealthState::Healthy
        } else {
            c.healthy_since = None;
            if c.ever_healthy {
                HealthState::Unhealthy
            } else if now.duration_since(c.launched_at) >= c.release.health.startup_timeout {
                let error = format!(
                    "not healthy within startup_timeout {}: {}",
                    humantime::format_duration(c.release.health.startup_timeout),
                    probe.reason.clone().unwrap_or_default()
                );
                let version = c.release.version.clone();
                return self.fail_release(out, &version, error);
            } else {
                HealthState::Starting
            }
        };
        let mut status = self.status(state);
        status.error = probe.reason;
        status.health = probe.body;
        if self.pinned.is_none() {
            self.publish(out, status);
        }
    }

    fn stop_current(&mut self, out: &mut Vec<Action>, version: &str) {
        if self.active && self.has_process() {
            let running = self.current_version().unwrap_or_default();
            let error = format!("refusing to stop {}: it is the active color", self.color);
            let state = self.shown.unwrap_or(HealthState::Stopped);
            self.pin(out, &running, state, error);
            self.refused = true;
            return;
        }
        let stopped = self.take_and_stop(out).map(|(r, _)| r.version);
        let version = stopped.as_deref().unwrap_or(version);
        self.publish(
            out,
            ColorStatus::new(self.color, version, HealthState::Stopped),
        );
    }

    /// Stops and forgets the current process; returns its release so it can be restored.
    fn take_and_stop(&mut self, out: &mut Vec<Action>) -> Option<(ReleaseRecord, PathBuf)> {
        let c = self.current.take()?;
        if c.pid.is_some() {
            out.push(Action::StopProcess {
                timeout: c.release.run.stop_timeout,
            });
        }
        out.push(Action::ForgetPidFile);
        Some((c.release, c.dir))
    }

    fn restore(&mut self, out: &mut Vec<Action>, previous: Option<(ReleaseRecord, PathBuf)>) {
        if let Some((release, dir)) = previous {
            out.push(Action::Launch {
                release,
                dir,
                purpose: Purpose::Restore,
            });
        }
    }

    fn has_process(&self) -> bool {
        self.current.as_ref().is_some_and(|c| c.pid.is_some())
    }

    fn current_version(&self) -> Option<String> {
        self.current.as_ref().map(|c| c.release.version.clone())
    }

    /// The status of the current process with `state`.
    fn status(&self, state: HealthState) -> ColorStatus {
        let Some(c) = &self.current else {
            return ColorStatus::new(self.color, "", HealthState::Stopped);
        };
        let mut status = ColorStatus::new(self.color, &c.release.version, state);
        status.restarts = c.restarts;
        status.pid = c.pid;
        status.unsigned = c.unsigned.clone();
        status
    }

    fn publish_current(&mut self, out: &mut Vec<Action>) {
        if self.pinned.is_some() {
            return;
        }
        let state = match &self.current {
            None => return,
            Some(c) if c.ever_healthy => self.shown.unwrap_or(HealthState::Starting),
            Some(_) => HealthState::Starting,
        };
        self.publish(out, self.status(state));
    }

    fn fail_release(&mut self, out: &mut Vec<Action>, version: &str, error: String) {
        self.pin(out, version, HealthState::Failed, error);
    }

    fn pin(&mut self, out: &mut Vec<Action>, version: &str, state: HealthState, error: String) {
        let mut status = ColorStatus::new(self.color, version, state);
        status.error = Some(error);
        status.pid = self.current.as_ref().and_then(|c| c.pid);
        status.restarts = self.current.as_ref().map_or(0, |c| c.restarts);
        self.pinned = Some(status.clone());
        self.publish(out, status);
    }

    fn publish(&mut self, out: &mut Vec<Action>, status: ColorStatus) {
        self.shown = Some(status.state);
        out.push(Action::Publish(status));
    }
}

impl Installed {
    fn launched(
        release: ReleaseRecord,
        dir: PathBuf,
        pid: u32,
        now: Instant,
        first_launch: bool,
    ) -> Installed {
        Installed {
            release,
            dir,
            pid: Some(pid),
            restart_at: None,
            restarts: 0,
            crashes_in_row: 0,
            first_launch,
            ever_healthy: false,
            launched_at: now,
            healthy_since: None,
            previous: None,
            unsigned: None,
        }
    }
}

/// The wait before restart number `crashes_in_row` (1-based): 250 ms doubling, capped at 8 s.
pub fn restart_delay(crashes_in_row: u32) -> Duration {
    FIRST_RESTART_DELAY * 2u32.pow(crashes_in_row.clamp(1, 6) - 1)
}

/// Two processes are the same when what runs is the same; health settings may change in place.
pub fn same_process(a: &ReleaseRecord, b: &ReleaseRecord) -> bool {
    a.version == b.version
        && a.artifact.sha256.eq_ignore_ascii_case(&b.artifact.sha256)
        && a.run == b.run
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
