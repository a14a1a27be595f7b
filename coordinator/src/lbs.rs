//! `coordinator lb list|remove`: LB membership. An LB registers itself durably (`lbs/<name>`, its
//! last ack) when its sidecar first starts; whether it is alive is a separate leased key. A silent
//! LB therefore stays a member, the color it last acked stays protected, and a switch cannot be
//! verified without it, until an operator removes it here.
use crate::error::{CoordinatorError, Subject};
use crate::history;
use crate::status::AppStatus;
use crate::store::EtcdStore;
use proto::{Operation, Outcome};
use serde::Serialize;

/// One registered LB as `lb list` shows it.
#[derive(Debug, Serialize)]
pub struct LbView {
    pub name: String,
    pub alive: bool,
    pub color: Option<proto::Color>,
    pub applied_revision: i64,
    pub reloaded_at: String,
    pub url: Option<String>,
    pub error: Option<String>,
    /// With `--verbose`: the upstreams it serves per color.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstreams: Option<std::collections::BTreeMap<proto::Color, Vec<String>>>,
}

pub fn views(state: &AppStatus) -> Vec<LbView> {
    state
        .lbs
        .iter()
        .map(|(name, ack)| LbView {
            name: name.clone(),
            alive: state.lbs_alive.contains(name),
            color: ack.color,
            applied_revision: ack.applied_revision,
            reloaded_at: ack.reloaded_at.clone(),
            url: ack.url.clone(),
            error: ack.error.clone(),
            upstreams: None,
        })
        .collect()
}

/// `lb list --verbose`: each LB's upstream lists (`Keys::lb_upstreams`), read only here, since
/// no deploy needs them; a sidecar from before the lists had their own key gave the live list in
/// its ack.
pub async fn add_upstreams(
    client: &etcd_client::Client,
    keys: &proto::Keys,
    state: &AppStatus,
    views: &mut [LbView],
) -> Result<(), CoordinatorError> {
    use proto::records::{decode, LbUpstreamsRecord};
    let prefix = keys.lb_upstreams_prefix();
    let resp = client
        .clone()
        .get(
            prefix.as_str(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .map_err(|e| proto::ProtoError::etcd(format!("read {prefix}"), e))?;
    let mut lists = std::collections::BTreeMap::new();
    for kv in resp.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let name = key[prefix.len()..].to_string();
        if let Ok(record) = decode::<LbUpstreamsRecord>(&key, kv.value()) {
            lists.insert(name, record.upstreams);
        }
    }
    for view in views {
        let own = lists.remove(&view.name);
        let from_ack = || {
            let ack = state.lbs.get(&view.name)?;
            let color = ack.color?;
            (!ack.upstreams.is_empty()).then(|| [(color, ack.upstreams.clone())].into())
        };
        view.upstreams = Some(own.or_else(from_ack).unwrap_or_default());
    }
    Ok(())
}

pub fn render_text(views: &[LbView]) -> String {
    if views.is_empty() {
        return "no LB is registered\n".into();
    }
    let mut out = format!(
        "{:<20} {:<6} {:<7} {:>9} {}\n",
        "LB", "ALIVE", "SERVES", "REVISION", "ERROR"
    );
    for v in views {
        out.push_str(&format!(
            "{:<20} {:<6} {:<7} {:>9} {}\n",
            v.name,
            if v.alive { "yes" } else { "NO" },
            v.color.map_or("none".into(), |c| c.to_string()),
            v.applied_revision,
            proto::text::escaped(v.error.as_deref().unwrap_or(""))
        ));
        for (color, list) in v.upstreams.iter().flatten() {
            let list = list.join(" ");
            out.push_str(&format!("    {color}: {}\n", proto::text::escaped(&list)));
        }
    }
    out
}

/// Removes `name`'s membership under the deploy lock. A live LB is refused: its sidecar would
/// write its record straight back, and removing a serving LB is never what was meant.
pub async fn remove(
    store: &EtcdStore<'_>,
    state: AppStatus,
    name: &str,
    op_id: &str,
) -> Result<String, CoordinatorError> {
    let (client, keys, lock) = (store.client, store.keys, store.lock);
    let Some(ack) = state.lbs.get(name) else {
        let prefix = keys.lbs_prefix();
        return Err(Subject::Lb(name.to_string()).usage(format!(
            "not registered under {prefix} (see `coordinator lb list`)"
        )));
    };
    if state.lbs_alive.contains(name) {
        let alive = keys.lb_alive(name);
        return Err(Subject::Lb(name.to_string()).usage(format!(
            "alive (its sidecar holds {alive}): stop its sidecar first, or it registers again"
        )));
    }
    crate::membership::forget(
        client,
        lock,
        Subject::Lb(name.to_string()),
        &keys.lb(name),
        &keys.lb_alive(name),
        &[keys.lb_upstreams(name)],
    )
    .await?;
    let mut record = history::record(Operation::LbRemove, op_id, Outcome::Removed);
    record.from = ack.color;
    record.reason = Some(format!(
        "lb {name} removed (last acked {} at revision {}) by {}",
        ack.color.map_or("none".into(), |c| c.to_string()),
        ack.applied_revision,
        crate::context::holder()
    ));
    history::append(client, keys, Some(&lock.fence), &record).await?;
    Ok(format!(
        "lb {name}: removed; it no longer protects {} or blocks switches\n",
        ack.color.map_or("any color".into(), |c| c.to_string())
    ))
}

#[cfg(test)]
mod tests {
    use super::{render_text, LbView};
    use proto::Color;

    /// An ack's error and an upstream list come from records any sidecar's role writes: they
    /// never add a line or a terminal escape to `lb list`.
    #[test]
    fn lb_list_escapes_what_sidecars_wrote() {
        let view = LbView {
            name: "lb-1".into(),
            alive: true,
            color: Some(Color::Blue),
            applied_revision: 7,
            reloaded_at: "t".into(),
            url: None,
            error: Some("bad\nlb-2 yes blue 9".into()),
            upstreams: Some([(Color::Blue, vec!["10.0.0.1:80\n\u{1b}[2J".to_string()])].into()),
        };
        let text = render_text(&[view]);
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(!text.contains('\u{1b}'), "{text:?}");
        assert!(text.contains("    blue: 10.0.0.1:80\\n"), "{text}");
    }
}
