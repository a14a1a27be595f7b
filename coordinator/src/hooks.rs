//! Spec `[hooks]`: the app's own commands at the points of an operation (Kamal's hooks), run by
//! the coordinator on the machine it runs on (the CI runner), in the spec's directory, with the
//! operation's facts as `BLUEGREEN_*` variables. The two before the switch are gates: a failing
//! `pre_deploy` aborts with nothing changed, a failing `post_stage` fails the deploy before the
//! switch like a smoke check. The ones after the outcome (`post_switch`, `post_rollback`,
//! `on_failure`) report; they cannot undo what happened, so their failure is only shown.
use serde::Deserialize;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// A hook: one string run by `sh -c`, or an argv run as is.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum HookCommand {
    Shell(String),
    Argv(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksSection {
    /// After preflight decided, before anything is written: failing aborts with nothing changed.
    pub pre_deploy: Option<HookCommand>,
    /// After the new color is healthy everywhere and its smoke checks passed, before the switch
    /// (the LBs' preview listener serves it): failing fails the deploy, traffic never moves.
    pub post_stage: Option<HookCommand>,
    /// After traffic moved and every LB acked and served it (deploy, promote, switch).
    pub post_switch: Option<HookCommand>,
    /// After `rollback` moved traffic back.
    pub post_rollback: Option<HookCommand>,
    /// After any of those operations failed (any exit code but 0).
    pub on_failure: Option<HookCommand>,
    /// Each hook's limit; one that runs longer is killed and counts as failed.
    #[serde(with = "humantime_serde", default = "default_hook_timeout")]
    pub timeout: Duration,
}

fn default_hook_timeout() -> Duration {
    Duration::from_secs(120)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    PreDeploy,
    PostStage,
    PostSwitch,
    PostRollback,
    OnFailure,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::PreDeploy => "pre_deploy",
            Hook::PostStage => "post_stage",
            Hook::PostSwitch => "post_switch",
            Hook::PostRollback => "post_rollback",
            Hook::OnFailure => "on_failure",
        }
    }
}

impl HooksSection {
    pub fn command(&self, hook: Hook) -> Option<&HookCommand> {
        match hook {
            Hook::PreDeploy => self.pre_deploy.as_ref(),
            Hook::PostStage => self.post_stage.as_ref(),
            Hook::PostSwitch => self.post_switch.as_ref(),
            Hook::PostRollback => self.post_rollback.as_ref(),
            Hook::OnFailure => self.on_failure.as_ref(),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        for hook in [
            Hook::PreDeploy,
            Hook::PostStage,
            Hook::PostSwitch,
            Hook::PostRollback,
            Hook::OnFailure,
        ] {
            let empty = match self.command(hook) {
                Some(HookCommand::Shell(s)) => s.trim().is_empty(),
                Some(HookCommand::Argv(v)) => v.first().is_none_or(|p| p.is_empty()),
                None => false,
            };
            if empty {
                return Err(format!("hooks.{}: must name a command", hook.as_str()));
            }
        }
        Ok(())
    }
}

/// What a hook is told, as `BLUEGREEN_<NAME>` variables (unset ones are left out).
#[derive(Debug, Clone, Default)]
pub struct HookContext {
    pub app: String,
    pub operation: String,
    pub op_id: Option<String>,
    pub version: Option<String>,
    pub color: Option<String>,
    pub from_color: Option<String>,
    pub from_version: Option<String>,
    /// After the outcome: the result event's outcome word and exit code.
    pub outcome: Option<String>,
    pub exit: Option<i32>,
}

impl HookContext {
    fn vars(&self, hook: Hook) -> Vec<(String, String)> {
        let mut vars = vec![
            ("HOOK", Some(hook.as_str().to_string())),
            ("APP", Some(self.app.clone())),
            ("OPERATION", Some(self.operation.clone())),
            ("OP_ID", self.op_id.clone()),
            ("VERSION", self.version.clone()),
            ("COLOR", self.color.clone()),
            ("FROM_COLOR", self.from_color.clone()),
            ("FROM_VERSION", self.from_version.clone()),
            ("OUTCOME", self.outcome.clone()),
            ("EXIT", self.exit.map(|e| e.to_string())),
        ];
        vars.retain(|(_, v)| v.is_some());
        vars.into_iter()
            .map(|(k, v)| (format!("BLUEGREEN_{k}"), v.expect("kept only set ones")))
            .collect()
    }
}

/// How many of a failed hook's last output lines its error quotes.
const QUOTED_LINES: usize = 10;

/// The coordinator's variables that hold a credential or name its file: a hook never gets them.
const CREDENTIAL_VARIABLES: [&str; 5] = [
    "BLUEGREEN_ETCD_PASSWORD",
    "BLUEGREEN_ETCD_PASSWORD_FILE",
    "BLUEGREEN_ETCD_KEY",
    "BLUEGREEN_GRPC_KEY",
    "BLUEGREEN_SIGNING_KEY_FILE",
];

/// Runs `hook` if the spec has it: Ok(None) when there is none, Ok(Some(elapsed)) when it
/// passed, Err naming the hook, its exit status or timeout, and its last output lines.
pub async fn run(
    hooks: Option<&HooksSection>,
    hook: Hook,
    dir: &Path,
    context: &HookContext,
) -> Result<Option<Duration>, String> {
    let Some(section) = hooks else {
        return Ok(None);
    };
    let Some(command) = section.command(hook) else {
        return Ok(None);
    };
    let mut cmd = match command {
        HookCommand::Shell(line) => {
            let mut c = tokio::process::Command::new("sh");
            c.arg("-c").arg(line);
            c
        }
        HookCommand::Argv(argv) => {
            let mut c = tokio::process::Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    // A hook gets the coordinator's environment without its credentials, plus the facts.
    for credential in CREDENTIAL_VARIABLES {
        cmd.env_remove(credential);
    }
    cmd.current_dir(dir)
        .envs(context.vars(hook))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let name = format!("hooks.{}", hook.as_str());
    let started = std::time::Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| format!("{name}: cannot start {}: {e}", shown(command)))?;
    let output = match tokio::time::timeout(section.timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(format!("{name}: {e}")),
        // Dropping the child kills it (kill_on_drop).
        Err(_) => {
            return Err(format!(
                "{name}: still running after {} and killed",
                humantime::format_duration(section.timeout)
            ))
        }
    };
    if output.status.success() {
        return Ok(Some(started.elapsed()));
    }
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    let lines: Vec<&str> = text.lines().collect();
    let last = &lines[lines.len().saturating_sub(QUOTED_LINES)..];
    let quoted: String = last
        .iter()
        .map(|l| format!("\n    | {}", proto::secrets::shown_line(l)))
        .collect();
    Err(proto::secrets::mask_text(&format!(
        "{name} ({}) failed: {}{quoted}",
        shown(command),
        output.status
    )))
}

fn shown(command: &HookCommand) -> String {
    match command {
        HookCommand::Shell(line) => line.clone(),
        HookCommand::Argv(argv) => argv.join(" "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(toml_text: &str) -> HooksSection {
        toml::from_str(toml_text).unwrap()
    }

    #[tokio::test]
    async fn a_hook_sees_the_operation_and_its_failure_is_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let hooks = section(
            "pre_deploy = 'echo \"$BLUEGREEN_APP $BLUEGREEN_VERSION $BLUEGREEN_HOOK\" > seen'\n\
             post_stage = ['sh', '-c', 'echo checking; echo broken >&2; exit 3']\n",
        );
        let context = HookContext {
            app: "shop".into(),
            operation: "deploy".into(),
            version: Some("v2".into()),
            ..Default::default()
        };
        let ran = run(Some(&hooks), Hook::PreDeploy, dir.path(), &context).await;
        assert!(matches!(ran, Ok(Some(_))), "{ran:?}");
        let seen = std::fs::read_to_string(dir.path().join("seen")).unwrap();
        assert_eq!(seen.trim(), "shop v2 pre_deploy");
        let failed = run(Some(&hooks), Hook::PostStage, dir.path(), &context)
            .await
            .unwrap_err();
        assert!(failed.contains("hooks.post_stage"), "{failed}");
        assert!(failed.contains("| broken"), "{failed}");
        assert!(run(Some(&hooks), Hook::PostSwitch, dir.path(), &context)
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn a_hook_past_its_timeout_is_killed_and_fails() {
        let dir = tempfile::tempdir().unwrap();
        let hooks = section("on_failure = 'sleep 30'\ntimeout = '200ms'\n");
        let failed = run(
            Some(&hooks),
            Hook::OnFailure,
            dir.path(),
            &HookContext::default(),
        )
        .await
        .unwrap_err();
        assert!(failed.contains("killed"), "{failed}");
    }

    #[test]
    fn an_empty_hook_is_refused() {
        assert!(section("post_switch = ''\n").validate().is_err());
        assert!(section("post_switch = []\n").validate().is_err());
        assert!(section("post_switch = 'true'\n").validate().is_ok());
    }
}
