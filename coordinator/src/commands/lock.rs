//! `coordinator lock status|break`: who holds the deploy lock, and revoking a stuck holder's
//! lease (its fence makes any late write of it fail).
use crate::context::{holder, pretty_json, Global};
use crate::error::CoordinatorError;
use crate::{history, lock};
use proto::{Operation, Outcome};

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

/// `coordinator lock status`.
async fn lock_status(global: &Global) -> Result<String, CoordinatorError> {
    let (keys, client) = global.existing_app().await?;
    let held = lock::status(&client, &keys).await?;
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
            }),
        };
        return Ok(pretty_json(&doc));
    }
    Ok(match held {
        None => "lock: free\n".into(),
        Some(held) => format!(
            "lock: held by {}; token {}, lease {:x}\n",
            held.holder(),
            held.token,
            held.lease
        ),
    })
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
