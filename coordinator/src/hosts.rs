//! `coordinator host list|remove`: host membership. An agent registers its host durably
//! (`host-members/<host>`) beside its leased `hosts/<host>`. A host whose agent falls silent (cut
//! off from etcd, stopped, dead) therefore stays a member, and deploys refuse to go on without it
//! (they could neither stage it nor tell what it serves) until it comes back or an operator
//! removes it here.
use crate::error::{CoordinatorError, Subject};
use crate::history;
use crate::status::AppStatus;
use crate::store::EtcdStore;
use proto::{Color, Operation, Outcome};
use serde::Serialize;

/// One registered host as `host list` shows it.
#[derive(Debug, Serialize)]
pub struct HostView {
    pub host: String,
    pub alive: bool,
    pub address: String,
    pub agent_version: String,
    /// Each color's health state as its agent last reported it (none while silent).
    pub blue: Option<String>,
    pub green: Option<String>,
}

pub fn views(state: &AppStatus) -> Vec<HostView> {
    let health = |host: &str, color: Color| {
        state
            .health
            .get(host)
            .and_then(|m| m.get(&color))
            .map(|h| format!("{} {}", h.version, h.state.as_str()))
    };
    let mut names: Vec<&String> = state
        .host_members
        .keys()
        .chain(state.hosts.keys())
        .collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|host| {
            let record = state.hosts.get(host).or(state.host_members.get(host));
            HostView {
                host: host.clone(),
                alive: state.hosts.contains_key(host),
                address: record.map_or(String::new(), |r| r.address.clone()),
                agent_version: record.map_or(String::new(), |r| r.agent_version.clone()),
                blue: health(host, Color::Blue),
                green: health(host, Color::Green),
            }
        })
        .collect()
}

pub fn render_text(views: &[HostView]) -> String {
    if views.is_empty() {
        return "no host is registered\n".into();
    }
    let mut out = format!(
        "{:<20} {:<6} {:<22} {:<20} {}\n",
        "HOST", "ALIVE", "ADDRESS", "BLUE", "GREEN"
    );
    for v in views {
        out.push_str(&format!(
            "{:<20} {:<6} {:<22} {:<20} {}\n",
            v.host,
            if v.alive { "yes" } else { "NO" },
            v.address,
            v.blue.as_deref().unwrap_or("-"),
            v.green.as_deref().unwrap_or("-"),
        ));
    }
    out
}

/// Removes `host`'s membership under the deploy lock. A live host is refused: its agent would
/// write the record straight back, and removing a serving host is never what was meant.
pub async fn remove(
    store: &EtcdStore<'_>,
    state: AppStatus,
    host: &str,
    op_id: &str,
) -> Result<String, CoordinatorError> {
    let (client, keys, lock) = (store.client, store.keys, store.lock);
    let Some(member) = state.host_members.get(host) else {
        let prefix = keys.host_member("");
        return Err(Subject::Host(host.to_string()).usage(format!(
            "not registered under {prefix} (see `coordinator host list`)"
        )));
    };
    if state.hosts.contains_key(host) {
        let alive = keys.host(host);
        return Err(Subject::Host(host.to_string()).usage(format!(
            "alive (its agent holds {alive}): stop its agent first, or it registers again"
        )));
    }
    crate::membership::forget(
        client,
        lock,
        Subject::Host(host.to_string()),
        &keys.host_member(host),
        &keys.host(host),
        &[],
    )
    .await?;
    let mut record = history::record(Operation::HostRemove, op_id, Outcome::Removed);
    record.reason = Some(format!(
        "host {host} ({}) removed by {}",
        member.address,
        crate::context::holder()
    ));
    history::append(client, keys, Some(&lock.fence), &record).await?;
    Ok(format!(
        "host {host}: removed; deploys no longer wait for it (if its agent starts again, it registers again)\n"
    ))
}
