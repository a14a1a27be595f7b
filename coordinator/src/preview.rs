//! `coordinator deploy --plan`: what a deploy would do now (Nomad's `job plan`), decided by the
//! same preflight the deploy runs, from one read of etcd and, with `[migrations]`, one read-only
//! look at the database. It writes nothing and takes no lock; its exit code is the one the deploy
//! would have had if it had started at this moment.
use crate::error::CoordinatorError;
use crate::hosts::{self, HostView};
use crate::lbs::{self, LbView};
use crate::migrate::runner::Migrations;
use crate::pipeline::{self, Intent, Preflight};
use crate::status::AppStatus;
use proto::Color;
use serde::Serialize;

/// What `deploy --plan --output json` prints.
#[derive(Debug, Serialize)]
pub struct DeployPreview {
    pub app: String,
    pub version: String,
    /// `go`, `already-active`, `refused` or `lock-held`.
    pub verdict: &'static str,
    /// The exit code the deploy would have: 0 (go, or nothing to do), 1 (refused), 2 (its input
    /// or the database's migration state), 3 (the lock is held: unless it frees within
    /// `--lock-wait`).
    pub exit: i32,
    pub reason: Option<String>,
    /// The etcd revision the preview read.
    pub revision: i64,
    pub active: Option<ActiveView>,
    /// The color the deploy would stage and switch to.
    pub to: Option<Color>,
    pub hosts: Vec<HostView>,
    /// The LBs that must ack the switch.
    pub lbs: Vec<LbView>,
    /// Who holds the deploy lock now.
    pub lock_holder: Option<String>,
    /// An operation whose coordinator died mid-way, which the deploy would close first.
    pub reconciles: Option<String>,
    pub migrations: Option<MigrationsView>,
}

#[derive(Debug, Serialize)]
pub struct ActiveView {
    pub color: Color,
    pub version: String,
}

#[derive(Debug, Serialize)]
pub struct MigrationsView {
    /// The expand migrations the deploy would apply, in order.
    pub expand: Vec<String>,
    /// The first pending contract migration (only `migrate contract` runs it, after the switch).
    pub contract_pending: Option<String>,
}

/// Judges a deploy of `intent.version` against `state`, as its preflight would.
pub fn judge(
    app: &str,
    state: &AppStatus,
    intent: &Intent,
    lock_holder: Option<String>,
    migrations: Result<Option<MigrationsView>, CoordinatorError>,
) -> DeployPreview {
    let mut preview = DeployPreview {
        app: app.to_string(),
        version: intent.version.clone(),
        verdict: "go",
        exit: 0,
        reason: None,
        revision: state.revision,
        active: state.active.as_ref().map(|a| ActiveView {
            color: a.color,
            version: a.version.clone(),
        }),
        to: None,
        hosts: hosts::views(state),
        lbs: lbs::views(state),
        reconciles: None,
        lock_holder,
        migrations: None,
    };
    match migrations {
        Ok(view) => preview.migrations = view,
        Err(e) => return preview.stop("refused", e.exit_code(), e.to_string()),
    }
    if let Some(holder) = &preview.lock_holder {
        let why =
            format!("the deploy lock is held by {holder}; the deploy waits --lock-wait for it");
        return preview.stop("lock-held", 3, why);
    }
    if let Some(previous) = &state.deploy {
        if let Some(decision) = pipeline::reconcile(Some(previous), state.active.as_ref()) {
            preview.reconciles = Some(format!(
                "{} {} (left in phase {}) would be closed as {}",
                decision.operation,
                previous.deploy_id,
                previous.phase,
                decision.outcome.as_str()
            ));
        }
    }
    match pipeline::preflight(state, intent) {
        Preflight::Go(plan) => {
            preview.to = Some(plan.to);
            preview
        }
        Preflight::AlreadyActive(why) => preview.stop("already-active", 0, why),
        Preflight::Refuse(why) => preview.stop("refused", 1, why),
    }
}

impl DeployPreview {
    fn stop(mut self, verdict: &'static str, exit: i32, reason: String) -> DeployPreview {
        self.verdict = verdict;
        self.exit = exit;
        self.reason = Some(proto::secrets::mask_text(&reason));
        self
    }

    pub fn render_text(&self) -> String {
        let active = self
            .active
            .as_ref()
            .map_or("none".into(), |a| format!("{} ({})", a.color, a.version));
        let mut out = format!(
            "deploy {} of {} at revision {}\n  active: {active}\n",
            self.version, self.app, self.revision
        );
        match self.to {
            Some(to) => out.push_str(&format!(
                "  would stage {} on {to} on {} host(s), then switch {} LB(s) to it\n",
                self.version,
                self.hosts.len(),
                self.lbs.len()
            )),
            None => out.push_str(&format!(
                "  would not deploy ({}): {}\n",
                self.verdict,
                self.reason.as_deref().unwrap_or_default()
            )),
        }
        if let Some(r) = &self.reconciles {
            out.push_str(&format!("  first: {r}\n"));
        }
        if let Some(m) = &self.migrations {
            let expand = if m.expand.is_empty() {
                "none".into()
            } else {
                m.expand.join(", ")
            };
            out.push_str(&format!("  expand migrations: {expand}\n"));
            if let Some(c) = &m.contract_pending {
                out.push_str(&format!(
                    "  contract pending (run by `migrate contract`): {c}\n"
                ));
            }
        }
        out.push_str(&format!(
            "  lock: {}\n",
            self.lock_holder.as_deref().unwrap_or("free")
        ));
        out.push_str("\nhosts:\n");
        out.push_str(&hosts::render_text(&self.hosts));
        out.push_str("\nLBs that must ack:\n");
        out.push_str(&lbs::render_text(&self.lbs));
        out.push_str(&format!(
            "\nexit code the deploy would have: {}\n",
            self.exit
        ));
        out
    }
}

/// The migrations a deploy would apply, read without any lock or write.
pub async fn pending_migrations(
    migrations: Option<&Migrations>,
) -> Result<Option<MigrationsView>, CoordinatorError> {
    let Some(m) = migrations else {
        return Ok(None);
    };
    let plan = m.precheck().await?;
    let (expand, contract) = plan.expand_run();
    let name = |m: &crate::migrate::files::Migration| m.file.display().to_string();
    Ok(Some(MigrationsView {
        expand: expand.into_iter().map(name).collect(),
        contract_pending: contract.map(name),
    }))
}
