//! One color on this host: the thin loop around [`Lifecycle`]. It turns what happens (a new
//! desired release, `active` moving, a process exit, a probe due, a restart due) into events,
//! and carries out the actions the lifecycle returns through the [`AppRuntime`] seam.
use crate::lifecycle::{Action, Event, Lifecycle};
use crate::runtime::{AppRuntime, RunningApp};
use crate::status::{ColorStatus, DesiredRelease};
use proto::Color;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

pub struct Supervisor<R: AppRuntime> {
    color: Color,
    runtime: Arc<R>,
    lifecycle: Lifecycle,
    process: Option<R::Process>,
    desired: watch::Receiver<DesiredRelease>,
    active: watch::Receiver<Option<Color>>,
    status: watch::Sender<Option<ColorStatus>>,
    /// Holds back identical error lines of a crash loop (logged once per window, with a count).
    repeats: proto::repeats::Repeats,
}

impl<R: AppRuntime> Supervisor<R> {
    pub fn new(
        color: Color,
        runtime: Arc<R>,
        max_restarts: u32,
        desired: watch::Receiver<DesiredRelease>,
        active: watch::Receiver<Option<Color>>,
        status: watch::Sender<Option<ColorStatus>>,
    ) -> Supervisor<R> {
        Supervisor {
            color,
            runtime,
            lifecycle: Lifecycle::new(color, max_restarts),
            process: None,
            desired,
            active,
            status,
            repeats: proto::repeats::Repeats::new(Duration::from_secs(30)),
        }
    }

    /// Runs until `shutdown` fires. Processes are left running: the agent is control plane only.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        if let Some(adopted) = self.runtime.adopt(self.color) {
            let event = Event::Adopted {
                pid: adopted.process.pid(),
                release: adopted.release,
                dir: adopted.dir,
                restarts: adopted.restarts,
            };
            self.process = Some(adopted.process);
            self.handle(event).await;
        }
        let is_active = *self.active.borrow_and_update() == Some(self.color);
        self.handle(Event::Active(is_active)).await;
        let desired = self.desired.borrow_and_update().clone();
        self.handle(Event::Desired(desired)).await;
        loop {
            let now = Instant::now();
            let probe_at = self.lifecycle.next_probe(now);
            let restart_at = self.lifecycle.restart_at();
            let event = tokio::select! {
                changed = self.desired.changed() => {
                    if changed.is_err() { return; }
                    Event::Desired(self.desired.borrow_and_update().clone())
                }
                changed = self.active.changed() => {
                    if changed.is_err() { return; }
                    Event::Active(*self.active.borrow_and_update() == Some(self.color))
                }
                what = wait_exit(&mut self.process) => {
                    self.process = None;
                    let tail = self.runtime.last_log_line(self.color);
                    if let Some(held_back) = self.repeats.admit(&what, Instant::now()) {
                        let exit = proto::text::escaped(&what);
                        tracing::warn!(color = %self.color, %exit, held_back, "app exited");
                    }
                    Event::Exited(if tail.is_empty() { what } else { format!("{what}; last log line: {tail}") })
                }
                _ = sleep_until(probe_at.unwrap_or_else(far_future)), if probe_at.is_some() => {
                    let Some(release) = self.lifecycle.running_release().cloned() else { continue };
                    Event::Probed(self.runtime.probe(self.color, &release).await)
                }
                _ = sleep_until(restart_at.unwrap_or_else(far_future)), if restart_at.is_some() => Event::RestartDue,
                _ = crate::status::shutdown_requested(&mut shutdown) => return,
            };
            self.handle(event).await;
        }
    }

    /// Feeds `event` to the lifecycle and carries out its actions; an action's answer (a fetch
    /// or launch result) is fed back before the remaining actions run.
    async fn handle(&mut self, event: Event) {
        let mut queue: VecDeque<Action> = self.lifecycle.handle(event, Instant::now()).into();
        while let Some(action) = queue.pop_front() {
            if let Some(answer) = self.execute(action).await {
                let follow = self.lifecycle.handle(answer, Instant::now());
                for a in follow.into_iter().rev() {
                    queue.push_front(a);
                }
            }
        }
    }

    async fn execute(&mut self, action: Action) -> Option<Event> {
        match action {
            Action::Publish(status) => {
                if status.state == proto::records::HealthState::Failed {
                    let line = format!("{} {:?}", status.version, status.error);
                    if let Some(held_back) = self.repeats.admit(&line, Instant::now()) {
                        tracing::error!(color = %self.color, version = %status.version, error = ?status.error, held_back, "release failed");
                    }
                }
                self.publish(status);
                None
            }
            Action::Fetch(release) => {
                // The URL may carry a token, and comes from etcd: masked and escaped.
                let url = proto::secrets::mask_text(&release.artifact.url);
                let url = proto::text::escaped(&url);
                tracing::info!(color = %self.color, version = %release.version, %url, "installing release");
                // A newer release for this color cancels a fetch still under way (a stalled
                // server must not hold the color). The watch is cloned so that the newer release
                // stays unseen for the main loop, which delivers it next.
                let mut newer = self.desired.clone();
                let result = tokio::select! {
                    result = self.runtime.fetch(self.color, &release.artifact) => result,
                    _ = newer.changed() => Err("superseded by a newer release".into()),
                };
                let superseded = self.desired.has_changed().unwrap_or(false);
                Some(Event::Fetched { result, superseded })
            }
            Action::StopProcess { timeout } => {
                if let Some(mut process) = self.process.take() {
                    let exit = process.stop(timeout).await;
                    tracing::info!(color = %self.color, exit = %exit, "stopped app");
                }
                None
            }
            Action::ForgetPidFile => {
                self.runtime.forget(self.color);
                None
            }
            Action::Launch {
                release,
                dir,
                purpose,
            } => {
                let result = self
                    .runtime
                    .launch(self.color, &release, &dir, purpose.restarts())
                    .map(|process| {
                        let pid = process.pid();
                        self.process = Some(process);
                        pid
                    });
                if let Err(e) = &result {
                    if let Some(held_back) = self.repeats.admit(e, Instant::now()) {
                        let error = proto::text::escaped(e);
                        tracing::error!(color = %self.color, version = %release.version, %error, held_back, "cannot start app");
                    }
                }
                Some(Event::Launched {
                    purpose,
                    release,
                    dir,
                    result,
                })
            }
        }
    }

    /// Sends the status if it changed in a way worth writing (keeping `since` otherwise).
    fn publish(&self, mut status: ColorStatus) {
        self.status.send_if_modified(|slot| match slot {
            Some(old) if !old.differs_from(&status) => {
                old.health = status.health.clone();
                false
            }
            _ => {
                if let Some(old) = slot.as_ref().filter(|o| o.state == status.state) {
                    status.since = old.since.clone();
                }
                *slot = Some(status);
                true
            }
        });
    }
}

async fn wait_exit<P: RunningApp>(process: &mut Option<P>) -> String {
    match process.as_mut() {
        Some(p) => p.exited().await,
        None => std::future::pending().await,
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}
