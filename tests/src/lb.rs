//! Helpers for load-balancer tests: switching `active` and waiting for acks and traffic.
use crate::procs::{get_json, get_raw, keys};
use crate::{poll_until, wait_for};
use proto::records::{decode, encode, ActiveRecord, LbRecord, Sticky, TrafficRecord};
use proto::Color;
use std::time::Duration;

/// Writes `active` and returns the revision of the write.
pub async fn set_active(client: &etcd_client::Client, color: Color, version: &str) -> i64 {
    let record = ActiveRecord {
        color,
        version: version.to_string(),
        deploy_id: format!("test-switch-{color}"),
        token: 0,
        switched_at: proto::time::now_rfc3339(),
    };
    let resp = client
        .clone()
        .put(keys().active(), encode(&record), None)
        .await
        .expect("put active");
    resp.header().expect("header").revision()
}

/// Writes the canary's `traffic` record (green the canary of blue at `weight`, hundredths of a
/// percent, sticky by cookie) and returns the revision of the write.
pub async fn set_weight(client: &etcd_client::Client, weight: u32) -> i64 {
    let record = TrafficRecord {
        stable: Color::Blue,
        canary: Color::Green,
        weight,
        step: 1,
        sticky: Sticky::Cookie,
        deploy_id: "test-canary".into(),
        token: 0,
        set_at: proto::time::now_rfc3339(),
    };
    let resp = client
        .clone()
        .put(keys().traffic(), encode(&record), None)
        .await
        .expect("put traffic");
    resp.header().expect("header").revision()
}

pub async fn ack(client: &etcd_client::Client, name: &str) -> Option<LbRecord> {
    let key = keys().lb(name);
    let bytes = get_raw(client, &key).await?;
    Some(decode(&key, &bytes).expect("sidecars write valid acks"))
}

/// Polls every `period` (up to 60 s) until the canary split (`active/traffic`) is at `weight`;
/// returns the revision of that write. Tests poll like [`wait_for`]; benchmarks timing the
/// change poll every millisecond.
pub async fn wait_weight(client: &etcd_client::Client, weight: u32, period: Duration) -> i64 {
    poll_until(
        &format!("the split at weight {weight}"),
        Duration::from_secs(60),
        period,
        || async {
            crate::procs::traffic(client)
                .await
                .filter(|(t, _)| t.weight == weight)
                .map(|(_, revision)| revision)
        },
    )
    .await
}

/// Polls every `period` (up to 30 s each) until every LB in `names` has acked `revision` or later.
pub async fn wait_all_acked(
    client: &etcd_client::Client,
    names: &[String],
    revision: i64,
    period: Duration,
) {
    for name in names {
        poll_until(
            &format!("{name} ack revision {revision}"),
            Duration::from_secs(30),
            period,
            || async {
                ack(client, name)
                    .await
                    .filter(|a| a.applied_revision >= revision)
            },
        )
        .await;
    }
}

/// Waits until `lbs/<name>` satisfies `accept`.
pub async fn wait_ack(
    client: &etcd_client::Client,
    name: &str,
    what: &str,
    accept: impl Fn(&LbRecord) -> bool,
) -> LbRecord {
    let accept = &accept;
    wait_for(
        &format!("{name} ack {what}"),
        Duration::from_secs(30),
        || async move { ack(client, name).await.filter(|a| accept(a)) },
    )
    .await
}

/// The upstreams LB `name` serves for `color`, sorted (its `Keys::lb_upstreams` record; the ack
/// only counts them).
pub async fn upstreams(client: &etcd_client::Client, name: &str, color: Color) -> Vec<String> {
    let key = keys().lb_upstreams(name);
    let Some(bytes) = get_raw(client, &key).await else {
        return Vec::new();
    };
    let record: proto::records::LbUpstreamsRecord =
        decode(&key, &bytes).expect("sidecars write valid upstream lists");
    let mut list = record.upstreams.get(&color).cloned().unwrap_or_default();
    list.sort();
    list
}

/// Waits until LB `name` serves exactly `want` (in any order) for `color`.
pub async fn wait_upstreams(
    client: &etcd_client::Client,
    name: &str,
    color: Color,
    want: &[String],
) {
    let mut want = want.to_vec();
    want.sort();
    let want = &want;
    wait_for(
        &format!("{name} to route {color} to {want:?}"),
        Duration::from_secs(30),
        || async move { (&upstreams(client, name, color).await == want).then_some(()) },
    )
    .await;
}

/// Waits until `url` answers JSON with `environment == color`.
pub async fn wait_color(url: &str, color: Color) {
    wait_for(
        &format!("{url} to serve {color}"),
        Duration::from_secs(30),
        || async move {
            get_json(url)
                .await
                .filter(|b| b["environment"] == color.as_str())
                .map(|_| ())
        },
    )
    .await;
}
