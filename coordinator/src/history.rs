//! The audit trail: one immutable `history/<revision>` record per deploy, switch, rollback,
//! reconciliation or lock break, readable with `etcdctl watch --prefix`.
use crate::error::{CoordinatorError, Subject};
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use proto::fence::Fence;
use proto::records::{decode, encode, HistoryRecord};
use proto::{Keys, Operation, Outcome, ProtoError};

/// How long a command keeps retrying etcd calls etcd did not answer: as long as the deploy lock
/// can outlive an unanswered keep-alive (two thirds of its TTL), after which it is lost anyway.
pub const TRANSIENT_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);

/// Appends `record` under the next free history key. With a fence, the write is guarded by it.
/// An append etcd did not answer is retried for [`TRANSIENT_BUDGET`]; a retry first looks for
/// the record under the keys tried before, so an append that did land is not written twice.
pub async fn append(
    client: &etcd_client::Client,
    keys: &Keys,
    fence: Option<&Fence>,
    record: &HistoryRecord,
) -> Result<i64, CoordinatorError> {
    // History is read by every auditor: a reason quoting logs or URLs is masked before it is kept.
    let mut record = record.clone();
    record.reason = record.reason.map(|r| proto::secrets::mask_text(&r));
    let value = encode(&record);
    let tried = std::sync::Mutex::new(Vec::<(String, i64)>::new());
    let until = tokio::time::Instant::now() + TRANSIENT_BUDGET;
    proto::retry::transient("append history", until, |attempt| {
        let (value, tried) = (&value, &tried);
        async move {
            if attempt > 0 {
                let earlier = tried.lock().expect("tried keys").clone();
                if let Some(revision) = landed(client, &earlier, value).await? {
                    return Ok(Ok(revision));
                }
            }
            try_append(client, keys, fence, value, tried).await
        }
    })
    .await?
}

/// The revision of an earlier attempt whose key holds exactly `value`, if one landed.
async fn landed(
    client: &etcd_client::Client,
    tried: &[(String, i64)],
    value: &str,
) -> Result<Option<i64>, ProtoError> {
    let mut client = client.clone();
    for (key, revision) in tried {
        let resp = client
            .get(key.as_str(), None)
            .await
            .map_err(|e| ProtoError::etcd(format!("read {key}"), e))?;
        if resp.kvs().first().map(|kv| kv.value()) == Some(value.as_bytes()) {
            return Ok(Some(*revision));
        }
    }
    Ok(None)
}

/// One append: the transport errors are the outer `Err` (retried), the verdicts the inner one.
async fn try_append(
    client: &etcd_client::Client,
    keys: &Keys,
    fence: Option<&Fence>,
    value: &str,
    tried: &std::sync::Mutex<Vec<(String, i64)>>,
) -> Result<Result<i64, CoordinatorError>, ProtoError> {
    let mut client = client.clone();
    for _ in 0..5 {
        // The key is the revision the append will most likely get; the create-revision guard makes a
        // collision retry rather than overwrite (history is immutable).
        // Any read returns the store's revision; read a key this app's role may read.
        let current = client
            .get(keys.lock(), Some(GetOptions::new().with_count_only()))
            .await
            .map_err(|e| ProtoError::etcd("read revision", e))?;
        let revision = current.header().map(|h| h.revision()).unwrap_or(0) + 1;
        let key = keys.history(revision);
        tried
            .lock()
            .expect("tried keys")
            .push((key.clone(), revision));
        let mut compares = vec![Compare::create_revision(key.as_str(), CompareOp::Equal, 0)];
        if let Some(fence) = fence {
            compares.push(fence.compare());
        }
        let txn = Txn::new()
            .when(compares)
            .and_then(vec![TxnOp::put(key.as_str(), value, None)]);
        let resp = client
            .txn(txn)
            .await
            .map_err(|e| ProtoError::etcd(format!("append {key}"), e))?;
        if resp.succeeded() {
            return Ok(Ok(revision));
        }
        if let Some(fence) = fence {
            let lock = client
                .get(fence.lock_key.as_str(), None)
                .await
                .map_err(|e| ProtoError::etcd("read lock", e))?;
            if lock.kvs().first().map(|kv| kv.create_revision()) != Some(fence.token) {
                return Ok(Err(ProtoError::FenceLost {
                    key,
                    lock_key: fence.lock_key.clone(),
                    token: fence.token,
                }
                .into()));
            }
        }
    }
    Ok(Err(Subject::Key(keys.history_prefix()).failed(
        "could not append a history record after 5 attempts",
    )))
}

/// Which records `history` shows; every field set must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub kind: Option<Operation>,
    pub version: Option<String>,
    /// A part of the actor (`alice` matches `alice via https://…`).
    pub actor: Option<String>,
    /// RFC 3339 times (UTC, as records are written), inclusive.
    pub since: Option<String>,
    pub until: Option<String>,
    /// Only records that placed a release on this color ([`placed_release`]).
    pub placed_on: Option<proto::Color>,
}

impl Filter {
    fn matches(&self, r: &HistoryRecord) -> bool {
        self.kind.is_none_or(|k| r.kind == k)
            && self
                .version
                .as_ref()
                .is_none_or(|v| r.version.as_ref() == Some(v))
            && self
                .actor
                .as_ref()
                .is_none_or(|a| r.actor.as_deref().is_some_and(|x| x.contains(a.as_str())))
            && self
                .since
                .as_ref()
                .is_none_or(|t| r.at.as_str() >= t.as_str())
            && self
                .until
                .as_ref()
                .is_none_or(|t| r.at.as_str() <= t.as_str())
            && self.placed_on.is_none_or(|c| placed_release(r, c))
    }
}

/// A `--since`/`--until` value: an RFC 3339 time, or a duration meaning that long ago (`2h`),
/// as the RFC 3339 UTC text records carry, so that times compare as strings.
pub fn parse_time(flag: &'static str, value: &str) -> Result<String, CoordinatorError> {
    let at = match humantime::parse_rfc3339_weak(value) {
        Ok(at) => at,
        Err(_) => {
            let ago = humantime::parse_duration(value).map_err(|_| {
                Subject::flag_value(flag, format!("{value:?}")).usage(
                    "neither an RFC 3339 time (2026-12-04T10:00:00Z) nor a duration ago (2h)",
                )
            })?;
            std::time::SystemTime::now() - ago
        }
    };
    Ok(humantime::format_rfc3339_millis(at).to_string())
}

/// Whether `record` says a release was placed on `color`: a deploy (every deploy record comes
/// after its stage write), or the reconciliation of a deploy whose coordinator died (which
/// staged but never recorded).
pub fn placed_release(record: &HistoryRecord, color: proto::Color) -> bool {
    let reconciled_deploy = record.kind == Operation::Reconcile
        && record.details.get("operation").and_then(|o| o.as_str())
            == Some(Operation::Deploy.as_str());
    record.to == Some(color) && (record.kind == Operation::Deploy || reconciled_deploy)
}

/// How many history keys one read asks for while looking for matches.
const PAGE: i64 = 500;

/// The newest `limit` records that match `filter`, oldest first. Reads newest first, page by
/// page, and stops as soon as it has `limit`: an unfiltered listing reads one page.
pub async fn list(
    client: &etcd_client::Client,
    keys: &Keys,
    limit: usize,
    filter: &Filter,
) -> Result<Vec<(String, HistoryRecord)>, CoordinatorError> {
    let prefix = keys.history_prefix();
    let mut end = proto::watch::prefix_end(&prefix);
    let mut out: Vec<(String, HistoryRecord)> = Vec::new();
    while out.len() < limit {
        let options = GetOptions::new()
            .with_range(end.clone())
            .with_sort(
                etcd_client::SortTarget::Key,
                etcd_client::SortOrder::Descend,
            )
            .with_limit(PAGE);
        let resp = client
            .clone()
            .get(prefix.as_str(), Some(options))
            .await
            .map_err(|e| ProtoError::etcd(format!("read {prefix}"), e))?;
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            if let Ok(record) = decode::<HistoryRecord>(&key, kv.value()) {
                if filter.matches(&record) && out.len() < limit {
                    out.push((key, record));
                }
            }
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => end = last.key().to_vec(),
            _ => break,
        }
    }
    out.reverse();
    Ok(out)
}

pub fn record(kind: Operation, op_id: &str, outcome: Outcome) -> HistoryRecord {
    HistoryRecord {
        kind,
        deploy_id: op_id.into(),
        outcome,
        at: proto::time::now_rfc3339(),
        from: None,
        to: None,
        version: None,
        reason: None,
        details: serde_json::Value::Null,
        actor: Some(crate::actor::current()),
        command: Some(crate::actor::command_line()),
        release: None,
    }
}
