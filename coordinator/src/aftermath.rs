//! What runs once an action's outcome is decided and before its `result` event is printed: the
//! spec's post hook for that outcome, then its webhooks. Neither can change the outcome or the
//! exit code (traffic is where it is); each reports as a progress event, so the `result` event
//! stays the last line.
use crate::hooks::{self, Hook, HookContext};
use crate::notify;
use crate::progress::Progress;
use crate::report::Facts;

/// The post hook an outcome calls for: after traffic moved, the switch or rollback hook; after
/// any failure, `on_failure`. Queries and `deploy --no-switch` (nothing moved) call none.
pub fn post_hook(command: &str, facts: &Facts, exit: i32) -> Option<Hook> {
    let operation = matches!(
        command,
        "deploy" | "deploy --no-switch" | "promote" | "switch" | "rollback"
    );
    match (operation, exit, facts.revision.is_some(), command) {
        (false, ..) => None,
        (true, 0, true, "rollback") => Some(Hook::PostRollback),
        (true, 0, true, _) => Some(Hook::PostSwitch),
        (true, 0, false, _) => None,
        (true, ..) => Some(Hook::OnFailure),
    }
}

pub async fn run(facts: &Facts, exit: i32, event: &serde_json::Value, progress: &Progress) {
    let Some(spec) = &facts.spec else {
        return;
    };
    let command = facts.command.as_deref().unwrap_or_default();
    if let Some(hook) = post_hook(command, facts, exit) {
        let context = HookContext {
            app: spec.app.clone(),
            operation: command.to_string(),
            op_id: facts.op_id.clone(),
            version: facts.to.as_ref().and_then(|s| s.version.clone()),
            color: facts.to.as_ref().map(|s| s.color.to_string()),
            from_color: facts.from.as_ref().map(|s| s.color.to_string()),
            from_version: facts.from.as_ref().and_then(|s| s.version.clone()),
            outcome: Some(crate::report::outcome_of(exit).to_string()),
            exit: Some(exit),
        };
        match hooks::run(spec.hooks.as_ref(), hook, &spec.base_dir, &context).await {
            Ok(Some(took)) => progress.event(
                "hook",
                None,
                "ok",
                &format!("{} in {} ms", hook.as_str(), took.as_millis()),
            ),
            Ok(None) => {}
            Err(why) => progress.event("hook", None, "failed", &why),
        }
    }
    for delivery in notify::send(&spec.notify, event).await {
        match delivery.result {
            Ok(status) => progress.event(
                "notify",
                None,
                "sent",
                &format!("{} answered {status}", delivery.url),
            ),
            Err(why) => progress.event(
                "notify",
                None,
                "failed",
                &format!("{}: {why}", delivery.url),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_calls_its_hook() {
        let moved = Facts {
            revision: Some(7),
            ..Default::default()
        };
        let still = Facts::default();
        assert_eq!(post_hook("deploy", &moved, 0), Some(Hook::PostSwitch));
        assert_eq!(post_hook("promote", &moved, 0), Some(Hook::PostSwitch));
        assert_eq!(post_hook("rollback", &moved, 0), Some(Hook::PostRollback));
        assert_eq!(post_hook("deploy --no-switch", &still, 0), None);
        assert_eq!(post_hook("deploy", &still, 0), None, "already live");
        assert_eq!(post_hook("deploy", &moved, 1), Some(Hook::OnFailure));
        assert_eq!(post_hook("deploy", &still, 3), Some(Hook::OnFailure));
        assert_eq!(post_hook("stop", &still, 1), None);
    }
}
