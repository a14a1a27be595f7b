//! `coordinator apps`: the apps under the prefix (no --app needed), each with what an operator of
//! a fleet of services looks for first: its active color and version, who holds its lock, and
//! the operation in progress.
use crate::context::{pretty_json, Global};
use crate::error::CoordinatorError;
use proto::records::{decode, ActiveRecord, DeployRecord, LockRecord};
use proto::Keys;
use serde::Serialize;

/// One app as `apps` shows it. An app the user's etcd role may not read (it is named by the app
/// index) has `readable` false and nothing else.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppRow {
    pub name: String,
    pub readable: bool,
    pub active: Option<Served>,
    pub lock: Option<Held>,
    /// The last operation, when it has not finished (its coordinator runs, or died mid-way).
    pub operation: Option<Running>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Served {
    pub color: proto::Color,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Held {
    pub holder: String,
    pub operation: proto::Operation,
    pub deploy_id: String,
    pub since: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Running {
    pub deploy_id: String,
    pub operation: proto::Operation,
    pub phase: proto::Phase,
    pub version: String,
    pub to: proto::Color,
}

impl AppRow {
    /// The row from an app's three records (each `None` when absent or unreadable as a record).
    pub fn new(
        name: &str,
        active: Option<ActiveRecord>,
        lock: Option<LockRecord>,
        deploy: Option<DeployRecord>,
    ) -> AppRow {
        AppRow {
            name: name.to_string(),
            readable: true,
            active: active.map(|a| Served {
                color: a.color,
                version: a.version,
            }),
            lock: lock.map(|l| Held {
                holder: l.holder,
                operation: l.operation,
                deploy_id: l.deploy_id,
                since: l.acquired_at,
            }),
            operation: deploy.filter(|d| !d.phase.is_terminal()).map(|d| Running {
                deploy_id: d.deploy_id,
                operation: d.operation,
                phase: d.phase,
                version: d.version,
                to: d.to,
            }),
        }
    }

    fn unreadable(name: &str) -> AppRow {
        AppRow {
            name: name.to_string(),
            readable: false,
            active: None,
            lock: None,
            operation: None,
        }
    }
}

/// The text table: one line per app, its name first. Values from etcd are escaped.
pub fn render_text(rows: &[AppRow]) -> String {
    use proto::text::escaped;
    if rows.is_empty() {
        return "no app yet\n".into();
    }
    let mut out = format!(
        "{:<20} {:<18} {:<40} {}\n",
        "APP", "ACTIVE", "LOCK", "OPERATION"
    );
    for row in rows {
        if !row.readable {
            out.push_str(&format!(
                "{:<20} (not readable by this etcd user)\n",
                row.name
            ));
            continue;
        }
        let active = row.active.as_ref().map_or("-".to_string(), |a| {
            format!("{} {}", a.color, escaped(&a.version))
        });
        let lock = row.lock.as_ref().map_or("-".to_string(), |l| {
            format!(
                "{} ({} {})",
                escaped(&l.holder),
                l.operation,
                escaped(&l.deploy_id)
            )
        });
        let operation = row.operation.as_ref().map_or("-".to_string(), |o| {
            format!(
                "{} {}: {} {} to {}",
                o.operation,
                escaped(&o.deploy_id),
                o.phase,
                escaped(&o.version),
                o.to
            )
        });
        out.push_str(&format!(
            "{:<20} {active:<18} {lock:<40} {operation}\n",
            row.name
        ));
    }
    out
}

/// `coordinator apps`: every app under the prefix, in name order.
pub async fn run(global: &Global) -> Result<String, CoordinatorError> {
    let client = global.connect().await?;
    let names = proto::watch::list_apps(&client, &global.prefix).await?;
    let mut rows = Vec::new();
    for name in &names {
        // A key under the prefix that no app could be named like (another tool's) is no app.
        if let Ok(keys) = Keys::new(&global.prefix, name) {
            rows.push(row(&client, &keys).await?);
        }
    }
    Ok(if global.json {
        pretty_json(&rows)
    } else {
        render_text(&rows)
    })
}

/// One app's row from one read of its `active`, `lock` and `deploy`. A record that does not
/// decode shows as absent here (`status --app` names the problem).
async fn row(client: &etcd_client::Client, keys: &Keys) -> Result<AppRow, CoordinatorError> {
    use etcd_client::{Txn, TxnOp, TxnOpResponse};
    let wanted = [keys.active(), keys.lock(), keys.deploy()];
    let txn = Txn::new().and_then(
        wanted
            .iter()
            .map(|k| TxnOp::get(k.as_str(), None))
            .collect::<Vec<_>>(),
    );
    let resp = match client.clone().txn(txn).await {
        Ok(resp) => resp,
        Err(e) => {
            let e = proto::ProtoError::etcd(format!("read {}", keys.app_prefix()), e);
            if e.is_permission_denied() {
                return Ok(AppRow::unreadable(keys.app()));
            }
            return Err(e.into());
        }
    };
    let mut values = resp.op_responses().into_iter().map(|r| match r {
        TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
        _ => None,
    });
    let mut next = |key: &str| {
        values
            .next()
            .flatten()
            .map(|bytes| (key.to_string(), bytes))
    };
    let active = next(&wanted[0]).and_then(|(k, v)| decode::<ActiveRecord>(&k, &v).ok());
    let lock = next(&wanted[1]).and_then(|(k, v)| decode::<LockRecord>(&k, &v).ok());
    let deploy = next(&wanted[2]).and_then(|(k, v)| decode::<DeployRecord>(&k, &v).ok());
    Ok(AppRow::new(keys.app(), active, lock, deploy))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{Color, Operation, Phase};

    fn deploy(phase: Phase) -> DeployRecord {
        DeployRecord {
            deploy_id: "deploy-7".into(),
            operation: Operation::Deploy,
            phase,
            from: Some(Color::Blue),
            to: Color::Green,
            version: "v8".into(),
            token: 3,
            started_at: "t".into(),
            updated_at: "t".into(),
            error: None,
        }
    }

    #[test]
    fn a_row_shows_the_active_version_the_lock_and_only_an_unfinished_operation() {
        let active = ActiveRecord {
            color: Color::Blue,
            version: "v7".into(),
            deploy_id: "deploy-6".into(),
            token: 2,
            switched_at: "t".into(),
        };
        let lock = LockRecord {
            deploy_id: "deploy-7".into(),
            holder: "ci@runner-1".into(),
            operation: Operation::Deploy,
            version: Some("v8".into()),
            acquired_at: "2026-12-07T10:00:00Z".into(),
        };
        let busy = AppRow::new(
            "api",
            Some(active.clone()),
            Some(lock),
            Some(deploy(Phase::Staging)),
        );
        let idle = AppRow::new("shop", Some(active), None, Some(deploy(Phase::Done)));
        let fresh = AppRow::new("new", None, None, None);
        assert_eq!(
            idle.operation, None,
            "a finished deploy is no operation in progress"
        );
        let text = render_text(&[busy, idle, fresh, AppRow::unreadable("other")]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(
            lines[1].starts_with("api ") && lines[1].contains("blue v7"),
            "{text}"
        );
        assert!(lines[1].contains("ci@runner-1 (deploy deploy-7)"), "{text}");
        assert!(
            lines[1].contains("deploy deploy-7: staging v8 to green"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("shop ") && lines[2].trim_end().ends_with('-'),
            "{text}"
        );
        assert!(
            lines[3].starts_with("new ") && lines[3].contains(" - "),
            "{text}"
        );
        assert!(lines[4].contains("not readable"), "{text}");
    }

    #[test]
    fn values_from_etcd_cannot_forge_a_line() {
        let lock = LockRecord {
            deploy_id: "d\nshop blue v1".into(),
            holder: "evil\u{1b}[2J".into(),
            operation: Operation::Deploy,
            version: None,
            acquired_at: "t".into(),
        };
        let text = render_text(&[AppRow::new("api", None, Some(lock), None)]);
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(!text.contains('\u{1b}'), "{text:?}");
    }
}
