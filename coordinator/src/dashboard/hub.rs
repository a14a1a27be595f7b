//! One live view of one app: a single etcd watch (with the dashboard's own credentials), the
//! app's state kept current from it, and a broadcast of what changed to every browser tab showing
//! the app. The number of watches is the number of apps shown, whatever the number of browsers;
//! nothing polls etcd. A hub stops when its last viewer leaves.
use super::view;
use crate::status::{self, AppStatus};
use proto::requests::ColorCounts;
use proto::watch::{Change, WatchEvent};
use proto::{AppKey, Color, Keys};
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Messages a slow tab may fall behind by before it is told to start over from a snapshot.
const CHANNEL: usize = 2048;

/// One message to the tabs of an app: `kind` is `snapshot`, `summary`, `hosts`, `timeline`,
/// `history`, `series`, `action` or `resync`, serialized once for every tab. `revision` is the
/// app's etcd revision once the change was applied: a tab drops what its snapshot already had.
#[derive(Debug, Clone)]
pub struct Message {
    pub kind: Arc<str>,
    /// `{"app", "kind", "data"}`.
    pub json: Arc<str>,
}

/// What a hub keeps beside the app's state.
#[derive(Default)]
pub struct Kept {
    pub status: AppStatus,
    pub timeline: VecDeque<Value>,
    pub history: VecDeque<Value>,
    pub series: VecDeque<Value>,
    totals: BTreeMap<Color, ColorCounts>,
}

pub struct Hub {
    pub app: String,
    pub keys: Keys,
    pub kept: Mutex<Kept>,
    tx: broadcast::Sender<Message>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
    /// The watch ended for good (etcd cancelled it): the next tab gets a new hub.
    dead: std::sync::atomic::AtomicBool,
    /// Actions running for this app: their progress goes through this hub, which stays while
    /// any runs, watched or not.
    pub actions: std::sync::atomic::AtomicUsize,
}

/// The message of `kind` for `app`.
pub fn message(app: &str, kind: &str, revision: i64, data: Value) -> Message {
    Message {
        kind: kind.into(),
        json: json!({"app": app, "kind": kind, "revision": revision, "data": data})
            .to_string()
            .into(),
    }
}

impl Hub {
    /// Reads the app and its recent history, then follows it with one watch.
    pub async fn start(
        client: &etcd_client::Client,
        keys: Keys,
    ) -> Result<Arc<Hub>, crate::CoordinatorError> {
        let status = status::read(client, &keys).await?;
        let history =
            crate::history::list(client, &keys, view::HISTORY_LEN, &Default::default()).await?;
        let totals = view::totals(&status);
        let kept = Kept {
            history: history
                .iter()
                .map(|(k, r)| view::history_row(k, r))
                .collect(),
            totals,
            status,
            ..Kept::default()
        };
        let revision = kept.status.revision;
        let (tx, _) = broadcast::channel(CHANNEL);
        let hub = Arc::new(Hub {
            app: keys.app().to_string(),
            keys,
            kept: Mutex::new(kept),
            tx,
            task: Mutex::new(None),
            dead: Default::default(),
            actions: Default::default(),
        });
        let mut watch = status::watch_from(client, &hub.keys, revision + 1);
        let follower = Arc::downgrade(&hub);
        let task = tokio::spawn(async move {
            loop {
                let event = watch.next().await;
                let Some(hub) = follower.upgrade() else {
                    return;
                };
                match event {
                    Ok(WatchEvent::Changes { changes, .. }) => hub.apply(&changes),
                    Ok(WatchEvent::Resync(_)) => {
                        hub.retire();
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(app = %hub.app, error = %e, "dashboard watch ended");
                        hub.retire();
                        return;
                    }
                }
            }
        });
        *hub.task.lock().unwrap() = Some(task.abort_handle());
        Ok(hub)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Message> {
        self.tx.subscribe()
    }

    pub fn viewers(&self) -> usize {
        self.tx.receiver_count()
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether anything still needs this hub: a tab watching it or an action reporting through
    /// it.
    pub fn in_use(&self) -> bool {
        self.viewers() > 0 || self.actions.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    pub fn revision(&self) -> i64 {
        self.kept.lock().unwrap().status.revision
    }

    /// Sends `message` to every tab of this app (an action's progress, for instance).
    pub fn send(&self, message: Message) {
        let _ = self.tx.send(message);
    }

    /// Ends the watch.
    pub fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Everything a tab needs to draw the app from scratch.
    pub fn snapshot(&self, hosts: bool) -> Value {
        let kept = self.kept.lock().unwrap();
        let s = &kept.status;
        let mut out = json!({
            "summary": view::summary(&self.app, s),
            "timeline": kept.timeline,
            "history": kept.history,
            "series": kept.series,
        });
        if hosts {
            out["hosts"] = view::host_names(s)
                .iter()
                .map(|h| view::host_row(s, h))
                .collect();
        }
        out
    }

    /// The app's summary alone (the apps page).
    pub fn summary(&self) -> Value {
        view::summary(&self.app, &self.kept.lock().unwrap().status)
    }

    fn apply(&self, changes: &[Change]) {
        let now = view::now_ms();
        let mut kept = self.kept.lock().unwrap();
        let mut timeline = Vec::new();
        let mut history = Vec::new();
        let mut hosts = std::collections::BTreeSet::new();
        let mut stats = false;
        for change in changes {
            if let Some(ev) = view::timeline_event(&self.keys, &kept.status, change, now) {
                timeline.push(ev);
            }
            match self.keys.parse(&change.key) {
                Some(AppKey::History(_)) => {
                    if let Some(record) = change
                        .value
                        .as_deref()
                        .and_then(|v| proto::records::decode(&change.key, v).ok())
                    {
                        history.push(view::history_row(&change.key, &record));
                    }
                }
                Some(
                    AppKey::Health { host, .. }
                    | AppKey::Host(host)
                    | AppKey::HostMember(host)
                    | AppKey::HostLeaving(host),
                ) => {
                    hosts.insert(host);
                }
                Some(AppKey::LbStats(_)) => stats = true,
                _ => {}
            }
            kept.status.apply(&self.keys, change);
        }
        let point = stats.then(|| {
            let totals = view::totals(&kept.status);
            let point = view::series_point(now, &kept.totals, &totals);
            kept.totals = totals;
            point
        });
        let s = &kept.status;
        let rows: Vec<Value> = hosts.iter().map(|h| view::host_row(s, h)).collect();
        let summary = view::summary(&self.app, s);
        push_capped(
            &mut kept.timeline,
            timeline.iter().cloned(),
            view::TIMELINE_LEN,
        );
        push_capped(
            &mut kept.history,
            history.iter().cloned(),
            view::HISTORY_LEN,
        );
        if let Some(point) = &point {
            push_capped(&mut kept.series, [point.clone()], view::SERIES_LEN);
        }
        let rev = kept.status.revision;
        drop(kept);
        let app = &self.app;
        self.send(message(app, "summary", rev, summary));
        if !rows.is_empty() {
            self.send(message(app, "hosts", rev, Value::Array(rows)));
        }
        if !timeline.is_empty() {
            self.send(message(app, "timeline", rev, Value::Array(timeline)));
        }
        if !history.is_empty() {
            self.send(message(app, "history", rev, Value::Array(history)));
        }
        if let Some(point) = point {
            self.send(message(app, "series", rev, point));
        }
    }

    /// The watch ended or fell behind a compaction: this hub is done. Every tab is told to
    /// reconnect, and gets a new hub with a fresh read of the app and its history.
    fn retire(&self) {
        self.dead.store(true, std::sync::atomic::Ordering::Relaxed);
        self.send(message(&self.app, "resync", 0, Value::Null));
    }
}

fn push_capped(into: &mut VecDeque<Value>, items: impl IntoIterator<Item = Value>, cap: usize) {
    for item in items {
        into.push_back(item);
        if into.len() > cap {
            into.pop_front();
        }
    }
}
