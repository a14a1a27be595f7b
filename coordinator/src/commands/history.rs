//! `coordinator history`: the audit trail, newest last, filtered by kind, version, actor and time.
use crate::context::{pretty_json, Global};
use crate::error::CoordinatorError;
use crate::history;
use proto::Operation;

#[derive(clap::Args)]
pub struct Args {
    /// How many of the newest records (that match the filters).
    #[arg(long, default_value = "20")]
    limit: usize,
    /// Only this kind of operation.
    #[arg(long, value_parser = operation_kinds())]
    kind: Option<String>,
    /// Only records of this version.
    #[arg(long)]
    version: Option<String>,
    /// Only records whose actor contains this (a user, a CI job URL).
    #[arg(long)]
    actor: Option<String>,
    /// Only records at or after this: an RFC 3339 time, or a duration ago (`2h`, `7days`).
    #[arg(long)]
    since: Option<String>,
    /// Only records at or before this (same forms as --since).
    #[arg(long)]
    until: Option<String>,
}

fn operation_kinds() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(Operation::ALL.map(Operation::as_str))
}

impl Args {
    pub async fn run(self, global: &Global) -> Result<String, CoordinatorError> {
        let filter = history::Filter {
            kind: self
                .kind
                .and_then(|k| Operation::ALL.into_iter().find(|o| o.as_str() == k)),
            version: self.version,
            actor: self.actor,
            since: self
                .since
                .map(|t| history::parse_time("--since", &t))
                .transpose()?,
            until: self
                .until
                .map(|t| history::parse_time("--until", &t))
                .transpose()?,
            placed_on: None,
        };
        history(global, self.limit, &filter).await
    }
}

/// `coordinator history --limit N`: one line per record (JSON: one array, oldest first).
async fn history(
    global: &Global,
    limit: usize,
    filter: &history::Filter,
) -> Result<String, CoordinatorError> {
    let (keys, client) = global.existing_app().await?;
    let records = history::list(&client, &keys, limit, filter).await?;
    if global.json {
        let list: Vec<serde_json::Value> = records
            .into_iter()
            .map(|(key, record)| {
                let redeployable = crate::redeploy::redeployable(&record).is_some();
                serde_json::json!({"key": key, "redeployable": redeployable, "record": record})
            })
            .collect();
        return Ok(pretty_json(&list));
    }
    let mut out = String::new();
    for (_, r) in records {
        // The versions `rollback --to` can deploy again.
        let again = if crate::redeploy::redeployable(&r).is_some() {
            " (redeployable)"
        } else {
            ""
        };
        let arrow = match (r.from, r.to) {
            (Some(f), Some(t)) => format!("{f} -> {t}"),
            (None, Some(t)) => format!("-> {t}"),
            _ => String::new(),
        };
        // Records are data: no newline or escape sequence in one forges a line.
        use proto::text::escaped;
        let reason = r
            .reason
            .map(|x| format!(": {}", escaped(x.lines().next().unwrap_or(""))))
            .unwrap_or_default();
        let actor = r
            .actor
            .map(|a| format!(" by {}", escaped(&a)))
            .unwrap_or_default();
        out.push_str(&format!(
            "{} {:<10} {:<12} {} {}{again} {arrow}{actor}{reason}\n",
            r.at,
            r.kind.as_str(),
            r.outcome.as_str(),
            escaped(&r.deploy_id),
            escaped(&r.version.unwrap_or_default())
        ));
    }
    Ok(out)
}
