//! `coordinator canary status|pause|resume|promote|abort`. A running canary belongs to the
//! coordinator that holds the lock; an operator's command never writes traffic itself while that
//! coordinator lives. It writes a request to `operator/canary` and waits, on a watch, for the
//! canary's coordinator to record that it acted (every act is a fenced write of that coordinator
//! and a history record). When the canary's coordinator is gone, `abort` takes the lock and
//! reconciles: every LB back to the stable color.
use crate::context::{parse_duration, pretty_json, Global};
use crate::error::CoordinatorError;
use crate::lock;
use crate::locked::{with_lock, LockFor};
use crate::status::{self, AppStatus};
use proto::records::{decode, CanaryAction, CanaryRequest, DeployRecord, HistoryRecord};
use proto::watch::WatchEvent;
use proto::{AppKey, Keys, Operation, Outcome, Phase};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum Action {
    /// The split, the step, the canary's coordinator, and what the LBs counted per color.
    Status,
    /// Hold the current weight (the analysis still aborts on a failure).
    Pause(Flags),
    /// Go on from the current step.
    Resume(Flags),
    /// Skip the remaining steps and switch to the canary now.
    Promote(Flags),
    /// Send every user back to the stable color and fail the canary; for a canary whose
    /// coordinator died, take the lock and do it.
    Abort(Flags),
}

#[derive(clap::Args)]
pub struct Flags {
    /// abort of a canary whose coordinator died: how long to wait for its lock (exit 3).
    #[arg(long, default_value = "30s")]
    lock_wait: String,
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Status => "canary status",
            Action::Pause(_) => "canary pause",
            Action::Resume(_) => "canary resume",
            Action::Promote(_) => "canary promote",
            Action::Abort(_) => "canary abort",
        }
    }

    pub fn is_query(&self) -> bool {
        matches!(self, Action::Status)
    }

    pub async fn run(self, global: &Global) -> Result<String, CoordinatorError> {
        let (action, flags) = match self {
            Action::Status => return status(global).await,
            Action::Pause(f) => (CanaryAction::Pause, f),
            Action::Resume(f) => (CanaryAction::Resume, f),
            Action::Promote(f) => (CanaryAction::Promote, f),
            Action::Abort(f) => (CanaryAction::Abort, f),
        };
        let lock_wait = parse_duration("--lock-wait", &flags.lock_wait)?;
        request(global, action, lock_wait).await
    }
}

/// How long an operator's request waits for the canary's coordinator to act on it: a few of its
/// looks, then the weight change and every LB's ack (or, for promote, the whole switch).
const ACT_TIMEOUT: Duration = Duration::from_secs(120);

/// `canary status`: the split, the canary's phase and coordinator, and what the LBs counted.
#[derive(Debug, Serialize)]
pub struct CanaryStatus {
    pub running: bool,
    pub deploy: Option<DeployRecord>,
    pub traffic: Option<proto::records::TrafficRecord>,
    pub holder: Option<String>,
    pub request: Option<CanaryRequest>,
    /// Per color, summed over the LBs: totals since each sidecar started.
    pub totals: BTreeMap<proto::Color, proto::requests::ColorCounts>,
}

pub async fn status(global: &Global) -> Result<String, CoordinatorError> {
    let (keys, client) = global.existing_app().await?;
    let state = status::read(&client, &keys).await?;
    let held = lock::status(&client, &keys).await?;
    let canary = running_canary(&state);
    let holder = held.as_ref().map(|h| h.holder());
    let running = canary.is_some_and(|c| holds(held.as_ref(), &c.deploy_id));
    let mut totals: BTreeMap<proto::Color, proto::requests::ColorCounts> = BTreeMap::new();
    for stats in state.lb_stats.values() {
        for (color, counts) in &stats.colors {
            totals.entry(*color).or_default().merge(counts);
        }
    }
    let doc = CanaryStatus {
        running,
        deploy: state.deploy.clone(),
        traffic: state.traffic.clone(),
        holder,
        request: state.canary_request.clone(),
        totals,
    };
    if global.json {
        return Ok(pretty_json(&doc));
    }
    Ok(render_text(&doc))
}

fn render_text(doc: &CanaryStatus) -> String {
    let mut out = String::new();
    match (&doc.traffic, &doc.deploy) {
        (Some(t), Some(d)) if t.weight > 0 => out.push_str(&format!(
            "canary {} of {}: step {} sends {} of requests to {} (stable {}), phase {}{}\n",
            d.deploy_id,
            d.version,
            t.step,
            crate::canary::percent(t.weight),
            t.canary,
            t.stable,
            d.phase,
            if doc.running {
                ""
            } else {
                "; its coordinator is gone: `coordinator canary abort` sends everyone back"
            }
        )),
        _ => out.push_str("no canary: every LB sends all requests to the active color\n"),
    }
    if let Some(holder) = &doc.holder {
        out.push_str(&format!("lock: {holder}\n"));
    }
    if let Some(r) = &doc.request {
        out.push_str(&format!(
            "last request: {} by {} at {}\n",
            r.action.as_str(),
            r.actor,
            r.at
        ));
    }
    for (color, c) in &doc.totals {
        out.push_str(&format!(
            "{color}: {} requests, {} errors, p99 {} ms (since each sidecar started)\n",
            c.requests,
            c.errors,
            c.quantile_ms(0.99)
                .map_or("-".into(), |p| format!("{p:.1}"))
        ));
    }
    out
}

/// The deploy record of a canary in progress, if one is.
fn running_canary(state: &AppStatus) -> Option<&DeployRecord> {
    state.deploy.as_ref().filter(|d| d.phase == Phase::Canary)
}

/// Whether the lock is held by operation `deploy_id` (its coordinator lives).
fn holds(held: Option<&lock::HeldLock>, deploy_id: &str) -> bool {
    held.and_then(|h| h.record.as_ref().ok())
        .is_some_and(|l| l.deploy_id == deploy_id)
}

/// `canary pause|resume|promote|abort`.
pub async fn request(
    global: &Global,
    action: CanaryAction,
    lock_wait: Duration,
) -> Result<String, CoordinatorError> {
    let (keys, client) = global.existing_app().await?;
    let progress = global.progress();
    let state = status::read(&client, &keys).await?;
    let Some(canary) = running_canary(&state).cloned() else {
        let last = state.deploy.as_ref().map_or("no deploy yet".into(), |d| {
            format!("the last operation, {}, is {}", d.deploy_id, d.phase)
        });
        return Err(CoordinatorError::failed(format!(
            "no canary is running ({last})"
        )));
    };
    progress.record().operation(&canary.deploy_id, keys.app());
    let held = lock::status(&client, &keys).await?;
    if !holds(held.as_ref(), &canary.deploy_id) {
        return orphaned(global, &keys, &client, &canary, action, lock_wait).await;
    }
    let request = CanaryRequest {
        deploy_id: canary.deploy_id.clone(),
        action,
        actor: crate::actor::current(),
        at: proto::time::now_rfc3339(),
    };
    let written = client
        .clone()
        .put(
            keys.canary_request(),
            proto::records::encode(&request),
            None,
        )
        .await
        .map_err(|e| proto::ProtoError::etcd(format!("write {}", keys.canary_request()), e))?;
    let revision = written.header().map_or(0, |h| h.revision());
    progress.event(
        "canary",
        None,
        "requested",
        &format!("{} of canary {}", action.as_str(), canary.deploy_id),
    );
    match await_act(&client, &keys, &canary.deploy_id, action, revision).await? {
        Acted::Done(text) => Ok(text),
        Acted::CoordinatorGone => {
            orphaned(global, &keys, &client, &canary, action, lock_wait).await
        }
    }
}

/// A canary whose coordinator is gone: abort takes over, anything else is refused.
async fn orphaned(
    global: &Global,
    keys: &Keys,
    client: &etcd_client::Client,
    canary: &DeployRecord,
    action: CanaryAction,
    lock_wait: Duration,
) -> Result<String, CoordinatorError> {
    match action {
        CanaryAction::Abort => abort_orphan(global, keys, client, canary, lock_wait).await,
        _ => Err(CoordinatorError::failed(format!(
            "no coordinator runs canary {} any more (its lock is gone): `coordinator canary \
             abort` sends every user back to the stable color; then deploy again",
            canary.deploy_id
        ))),
    }
}

/// What became of a request.
enum Acted {
    /// The canary's coordinator acted on it: the message for the operator.
    Done(String),
    /// The lock went away (its holder died) before it acted.
    CoordinatorGone,
}

/// Waits for the canary's coordinator to record that it acted on `action` (and, for abort and
/// promote, to finish: every LB at weight 0, or the switch done).
async fn await_act(
    client: &etcd_client::Client,
    keys: &Keys,
    deploy_id: &str,
    action: CanaryAction,
    revision: i64,
) -> Result<Acted, CoordinatorError> {
    let expected = match action {
        CanaryAction::Pause => Outcome::Paused,
        CanaryAction::Resume => Outcome::Resumed,
        CanaryAction::Promote => Outcome::Promoted,
        CanaryAction::Abort => Outcome::Aborted,
    };
    let finishes = matches!(action, CanaryAction::Abort | CanaryAction::Promote);
    let mut watch = crate::status::watch_from(client, keys, revision + 1);
    let mut acted = false;
    let deadline = tokio::time::Instant::now() + ACT_TIMEOUT;
    loop {
        let event = match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Ok(event)) => event,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                return Err(CoordinatorError::failed(format!(
                    "canary {deploy_id} did not {} within {}s{}",
                    action.as_str(),
                    ACT_TIMEOUT.as_secs(),
                    if acted {
                        " (it recorded the request)"
                    } else {
                        ""
                    }
                )))
            }
        };
        let WatchEvent::Changes { changes, .. } = event else {
            continue;
        };
        for change in changes {
            let Some(value) = change.value.as_deref() else {
                if keys.parse(&change.key) == Some(AppKey::Lock) {
                    return Ok(Acted::CoordinatorGone);
                }
                continue;
            };
            match keys.parse(&change.key) {
                Some(AppKey::History(_)) => {
                    if let Ok(r) = decode::<HistoryRecord>(&change.key, value) {
                        if r.deploy_id == deploy_id
                            && r.kind == Operation::CanaryStep
                            && r.outcome == expected
                        {
                            acted = true;
                            if !finishes {
                                return Ok(Acted::Done(format!(
                                    "canary {deploy_id}: {}\n",
                                    r.reason.unwrap_or_default()
                                )));
                            }
                        }
                    }
                }
                Some(AppKey::Deploy) if finishes => {
                    if let Ok(d) = decode::<DeployRecord>(&change.key, value) {
                        if d.deploy_id == deploy_id && d.phase.is_terminal() {
                            return match (action, d.phase) {
                                (CanaryAction::Promote, Phase::Done) => Ok(Acted::Done(format!(
                                    "canary {deploy_id} promoted: traffic on {} ({})\n",
                                    d.to, d.version
                                ))),
                                (CanaryAction::Abort, Phase::Failed) => Ok(Acted::Done(format!(
                                    "canary {deploy_id} aborted: every LB sends all requests to {}\n",
                                    d.from.map_or("the stable color".into(), |c| c.to_string())
                                ))),
                                _ => Err(CoordinatorError::failed(format!(
                                    "canary {deploy_id} ended {}: {}",
                                    d.phase,
                                    d.error.unwrap_or_default()
                                ))),
                            };
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// `abort` of a canary whose coordinator died: take the lock; reconciling the dead operation
/// puts every LB back on the stable color.
async fn abort_orphan(
    global: &Global,
    keys: &Keys,
    client: &etcd_client::Client,
    canary: &DeployRecord,
    lock_wait: Duration,
) -> Result<String, CoordinatorError> {
    let progress = global.progress();
    let op_id = format!("canary-abort-{}", uuid::Uuid::new_v4());
    let op = LockFor::new(&op_id, Operation::CanaryStep, lock_wait);
    // Taking the lock reconciles the dead canary, which sends every LB back to the stable color.
    with_lock(global, client, keys, op, &progress, async |_, _| Ok(())).await?;
    Ok(format!(
        "canary {} had no coordinator; reconciled: every LB sends all requests to {}\n",
        canary.deploy_id,
        canary
            .from
            .map_or("the stable color".into(), |c| c.to_string())
    ))
}
