//! `coordinator lock status|break`: who holds the deploy lock, and revoking a stuck holder's
//! lease (its fence makes any late write of it fail).
use crate::context::{holder, pretty_json, Global};
use crate::error::CoordinatorError;
use crate::{history, lock};
use proto::{Operation, Outcome};
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum Action {
    /// Who holds the deploy lock, for which operation, since when.
    Status,
    /// Revoke a stuck holder's lease (its fence makes any late write of it fail).
    Break {
        /// Confirm: without it nothing is broken.
        #[arg(long)]
        yes: bool,
    },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Status => "lock status",
            Action::Break { .. } => "lock break",
        }
    }

    pub fn is_query(&self) -> bool {
        matches!(self, Action::Status)
    }

    pub async fn run(self, global: &Global) -> Result<String, CoordinatorError> {
        match self {
            Action::Status => lock_status(global).await,
            Action::Break { yes } => lock_break(global, yes).await,
        }
    }
}

/// `coordinator lock status`. Any etcd user may keep any lease alive (etcd does not restrict
/// keep-alives), so a live lease does not prove a live holder: the status also says how long ago
/// the holder's operation last wrote its fenced `deploy` record.
async fn lock_status(global: &Global) -> Result<String, CoordinatorError> {
    let (keys, client) = global.existing_app().await?;
    let held = lock::status(&client, &keys).await?;
    let last_write = match &held {
        Some(h) => last_write_age(&client, &keys, h).await?,
        None => None,
    };
    if global.json {
        let doc = match &held {
            None => serde_json::json!({"held": false}),
            Some(h) => serde_json::json!({
                "held": true,
                "holder": h.holder(),
                "token": h.token,
                "lease": format!("{:x}", h.lease),
                "record": h.record.as_ref().ok(),
                "problem": h.record.as_ref().err(),
                "last_write_seconds_ago": last_write.map(|d| d.as_secs()),
            }),
        };
        return Ok(pretty_json(&doc));
    }
    Ok(match held {
        None => "lock: free\n".into(),
        Some(held) => {
            let written = match last_write {
                Some(age) => format!(
                    "its operation last wrote {} ago",
                    humantime::format_duration(Duration::from_secs(age.as_secs()))
                ),
                None => "its operation has written no record yet".into(),
            };
            format!(
                "lock: held by {}; token {}, lease {:x}; {written}\n\
                 (a lease kept alive by someone else outlives its holder: if the holder's process \
                 is gone, `coordinator lock break --yes`)\n",
                proto::text::escaped(&held.holder()),
                held.token,
                held.lease
            )
        }
    })
}

/// How long ago the lock holder's operation last wrote its `deploy` record (None: it has not
/// written one, or the record is another operation's).
async fn last_write_age(
    client: &etcd_client::Client,
    keys: &proto::Keys,
    held: &lock::HeldLock,
) -> Result<Option<Duration>, CoordinatorError> {
    let Some(op) = held.record.as_ref().ok().map(|r| r.deploy_id.clone()) else {
        return Ok(None);
    };
    let key = keys.deploy();
    let resp = client
        .clone()
        .get(key.as_str(), None)
        .await
        .map_err(|e| proto::ProtoError::etcd(format!("read {key}"), e))?;
    let record = resp
        .kvs()
        .first()
        .and_then(|kv| {
            proto::records::decode::<proto::records::DeployRecord>(&key, kv.value()).ok()
        })
        .filter(|d| d.deploy_id == op);
    Ok(record
        .and_then(|d| humantime::parse_rfc3339_weak(&d.updated_at).ok())
        .and_then(|at| std::time::SystemTime::now().duration_since(at).ok()))
}

/// `coordinator lock break --yes`: for a stuck holder. The holder's fence makes it harmless.
async fn lock_break(global: &Global, confirmed: bool) -> Result<String, CoordinatorError> {
    if !confirmed {
        return Err(CoordinatorError::usage(
            "lock break revokes the holder's lease; repeat with --yes to confirm",
        ));
    }
    let keys = global.keys()?;
    let client = global.connect().await?;
    let Some(broken) = lock::break_lock(&client, &keys).await? else {
        return Ok("lock: already free\n".into());
    };
    let op_id = broken
        .record
        .as_ref()
        .map(|l| l.deploy_id.clone())
        .unwrap_or_else(|_| format!("unreadable-lock-{}", broken.token));
    let mut record = history::record(Operation::LockBreak, &op_id, Outcome::Broken);
    record.reason = Some(format!(
        "lock held by {} broken by {}",
        broken.holder(),
        holder()
    ));
    history::append(&client, &keys, None, &record).await?;
    Ok(format!("lock: broken (was held by {})\n", broken.holder()))
}
