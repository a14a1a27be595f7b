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
    /// When `host remove` marked it leaving this app (its agent still runs it until its config
    /// drops it); deploys and LBs already leave it out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leaving: Option<String>,
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
                leaving: None,
            }
        })
        .chain(state.leaving.iter().map(|(host, mark)| HostView {
            host: host.clone(),
            alive: false,
            address: String::new(),
            agent_version: String::new(),
            blue: None,
            green: None,
            leaving: Some(mark.at.clone()),
        }))
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
        if let Some(since) = &v.leaving {
            out.push_str(&format!(
                "{:<20} leaving this app since {since} (retired by its agent once its config drops the app)\n",
                v.host
            ));
            continue;
        }
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

/// Removes `host`'s membership under the deploy lock. A host whose agent is live is marked
/// leaving instead ([`mark_leaving`]): its agent retires the app once its config drops it.
pub async fn remove(
    store: &EtcdStore<'_>,
    state: AppStatus,
    host: &str,
    op_id: &str,
) -> Result<String, CoordinatorError> {
    let (client, keys, lock) = (store.client, store.keys, store.lock);
    if let Some(mark) = state.leaving.get(host) {
        if state.leaving_alive(host) {
            return Ok(format!(
                "host {host}: already leaving {} (marked by {} at {}); its agent retires the app \
                 once its config no longer lists it\n",
                keys.app(),
                mark.operation,
                mark.at
            ));
        }
        // Its agent is gone before it retired the app (stopped for good, or its role could not
        // delete the mark): forget the host and the mark, as for any host whose agent is gone.
        let mark_key = keys.host_leaving(host);
        let mut leftovers: Vec<String> = Color::ALL.iter().map(|c| keys.health(host, *c)).collect();
        leftovers.push(keys.host_member(host));
        crate::membership::forget(
            client,
            lock,
            Subject::Host(host.to_string()),
            &mark_key,
            &keys.host(host),
            &leftovers,
        )
        .await?;
        let mut record = history::record(Operation::HostRemove, op_id, Outcome::Removed);
        record.reason = Some(format!(
            "host {host} (leaving, its agent gone) removed by {}",
            crate::context::holder()
        ));
        history::append(client, keys, Some(&lock.fence), &record).await?;
        return Ok(format!(
            "host {host}: was leaving {} and its agent is gone: forgotten\n",
            keys.app()
        ));
    }
    let Some(member) = state.host_members.get(host) else {
        let prefix = keys.host_member("");
        return Err(Subject::Host(host.to_string()).usage(format!(
            "not registered under {prefix} (see `coordinator host list`)"
        )));
    };
    if state.hosts.contains_key(host) {
        return mark_leaving(store, &state, host, op_id).await;
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

/// Why `host` may not leave now, if it may not: it is the last live host serving the live
/// color's version, so every LB would be left without a server. Pure.
pub fn leaving_refused(state: &AppStatus, host: &str) -> Option<String> {
    let active = state.active.as_ref()?;
    let serves =
        |h: &str| proto::records::serves(state.health_of(h, active.color), &active.version);
    let others = state
        .hosts
        .keys()
        .filter(|h| *h != host && serves(h))
        .count();
    (serves(host) && others == 0).then(|| {
        format!(
            "the only host serving {} {}: removing it would leave every LB without a server; \
             deploy to another host first",
            active.color, active.version
        )
    })
}

/// Marks a live host as leaving this app (`host-leaving/<host>`), fenced by the deploy lock:
/// from that revision LBs stop routing to it and deploys leave it out. Then waits (briefly) for
/// the live LBs to apply it, so that the agent's retirement stops processes nobody routes to.
async fn mark_leaving(
    store: &EtcdStore<'_>,
    state: &AppStatus,
    host: &str,
    op_id: &str,
) -> Result<String, CoordinatorError> {
    let (client, keys, lock) = (store.client, store.keys, store.lock);
    if let Some(why) = leaving_refused(state, host) {
        return Err(Subject::Host(host.to_string()).usage(why));
    }
    let mark = keys.host_leaving(host);
    let record = proto::records::HostLeavingRecord {
        operation: op_id.to_string(),
        at: proto::time::now_rfc3339(),
    };
    let member = keys.host_member(host);
    let txn = etcd_client::Txn::new()
        .when(vec![
            lock.fence.compare(),
            etcd_client::Compare::create_revision(
                member.as_str(),
                etcd_client::CompareOp::Greater,
                0,
            ),
        ])
        .and_then(vec![etcd_client::TxnOp::put(
            mark.as_str(),
            proto::records::encode(&record),
            None,
        )]);
    let resp = client
        .clone()
        .txn(txn)
        .await
        .map_err(|e| proto::ProtoError::etcd(format!("put {mark}"), e))?;
    if !resp.succeeded() {
        return Err(CoordinatorError::failed(
            "not marked leaving: it was removed or the lock was lost meanwhile",
        )
        .about(Subject::Host(host.to_string())));
    }
    let revision = resp.header().map_or(0, |h| h.revision());
    let mut history_record = history::record(Operation::HostRemove, op_id, Outcome::Leaving);
    history_record.reason = Some(format!(
        "host {host} leaving {} (its agent runs it), marked by {}",
        keys.app(),
        crate::context::holder()
    ));
    history::append(client, keys, Some(&lock.fence), &history_record).await?;
    let lbs: Vec<String> = state.lbs_alive.iter().cloned().collect();
    let applied = crate::fleet::wait_acks(store, &lbs, revision, LEAVING_ACK_TIMEOUT).await?;
    let lbs_line = match applied {
        Ok(_) if lbs.is_empty() => "no LB is running".to_string(),
        Ok(_) => format!("every live LB ({}) stopped routing to it", lbs.len()),
        Err(missing) => {
            format!("not yet applied by {missing} (they stop routing to it when they catch up)")
        }
    };
    Ok(format!(
        "host {host}: leaving {app}: {lbs_line}, and deploys leave it out. Now remove {app} from \
         {host}'s agent config and send the agent SIGHUP (systemctl reload): it stops {app}'s \
         processes there and deletes its keys.\n",
        app = keys.app()
    ))
}

/// How long `host remove` waits for the live LBs to stop routing to a leaving host.
const LEAVING_ACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
