//! Who ran a command, for the audit trail (Kamal's audit names its performer). An explicit
//! `BLUEGREEN_ACTOR` wins; in CI the pipeline's user and the job's URL say more than the runner's
//! OS account; elsewhere the OS user and host. Every history record carries it, with the command
//! line that made it.

/// Reads one environment variable (`None` when unset or empty).
type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// How one CI system names the person and the job.
struct CiSystem {
    /// Set (to anything) when running under this system.
    marker: &'static str,
    user: &'static [&'static str],
    job_url: fn(Env) -> Option<String>,
}

const CI_SYSTEMS: &[CiSystem] = &[
    CiSystem {
        marker: "GITHUB_ACTIONS",
        user: &["GITHUB_TRIGGERING_ACTOR", "GITHUB_ACTOR"],
        job_url: |env| {
            Some(format!(
                "{}/{}/actions/runs/{}",
                env("GITHUB_SERVER_URL")?,
                env("GITHUB_REPOSITORY")?,
                env("GITHUB_RUN_ID")?
            ))
        },
    },
    CiSystem {
        marker: "GITLAB_CI",
        user: &["GITLAB_USER_LOGIN", "GITLAB_USER_NAME"],
        job_url: |env| env("CI_JOB_URL"),
    },
    CiSystem {
        marker: "JENKINS_URL",
        user: &["BUILD_USER_ID", "BUILD_USER"],
        job_url: |env| env("BUILD_URL"),
    },
    CiSystem {
        marker: "BUILDKITE",
        user: &["BUILDKITE_BUILD_CREATOR_EMAIL", "BUILDKITE_BUILD_CREATOR"],
        job_url: |env| env("BUILDKITE_BUILD_URL"),
    },
];

/// The actor as read from `env` (a variable's value, `None` when unset or empty).
pub fn resolve(env: Env) -> String {
    if let Some(actor) = env("BLUEGREEN_ACTOR") {
        return actor;
    }
    for ci in CI_SYSTEMS {
        if env(ci.marker).is_none() {
            continue;
        }
        let user = ci.user.iter().find_map(|name| env(name));
        let job = (ci.job_url)(env);
        match (user, job) {
            (Some(user), Some(job)) => return format!("{user} via {job}"),
            (Some(user), None) => return format!("{user} via {}", ci.marker),
            (None, Some(job)) => return job,
            (None, None) => {}
        }
    }
    let user = env("USER")
        .or_else(|| env("LOGNAME"))
        .unwrap_or_else(os_user);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{user}@{}", host.trim())
}

/// The name of the user this process runs as (a CI container often sets no `USER`).
fn os_user() -> String {
    let uid = nix::unistd::Uid::current();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => user.name,
        _ => format!("uid {uid}"),
    }
}

/// Who asked for an operation run inside a long-lived process (the dashboard), where the
/// process's own environment and argv name the server, not the person who clicked.
#[derive(Debug, Clone)]
pub struct Invoker {
    /// The person (their etcd user).
    pub actor: String,
    /// What they ran, as history shows it (`ui canary abort`).
    pub command: String,
    /// Where the operation's progress lines go instead of stdout (one JSON event per line).
    pub events: Option<tokio::sync::mpsc::UnboundedSender<String>>,
}

tokio::task_local! {
    /// Set by [`Invoker::scope`] for the operation's task; unset in the command line tool.
    static INVOKER: Invoker;
}

impl Invoker {
    /// Runs `operation` on behalf of this invoker: every history record, operator request and
    /// progress line it makes names the invoker instead of the process.
    pub async fn scope<F: std::future::Future>(self, operation: F) -> F::Output {
        INVOKER.scope(self, operation).await
    }

    /// The invoker of the running task, if an operation runs on someone's behalf.
    pub fn current() -> Option<Invoker> {
        INVOKER.try_with(Invoker::clone).ok()
    }
}

/// The actor of this process, or the person an operation runs for (see [`Invoker`]).
pub fn current() -> String {
    if let Some(invoker) = Invoker::current() {
        return invoker.actor;
    }
    resolve(&|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
}

/// This process's command line, masked (an artifact URL may carry a token) and capped; for an
/// operation run on someone's behalf, what they ran.
pub fn command_line() -> String {
    if let Some(invoker) = Invoker::current() {
        return invoker.command;
    }
    let line: Vec<String> = std::env::args()
        .enumerate()
        .map(|(i, a)| if i == 0 { "coordinator".into() } else { a })
        .collect();
    let masked = proto::secrets::mask_text(&line.join(" "));
    masked.chars().take(512).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn with(vars: &[(&str, &str)]) -> String {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        resolve(&|name| vars.get(name).cloned())
    }

    #[test]
    fn an_explicit_actor_wins() {
        assert_eq!(
            with(&[
                ("BLUEGREEN_ACTOR", "release-bot"),
                ("GITHUB_ACTIONS", "true")
            ]),
            "release-bot"
        );
    }

    #[test]
    fn ci_names_the_person_and_the_job() {
        let github = with(&[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_ACTOR", "alice"),
            ("GITHUB_SERVER_URL", "https://github.com"),
            ("GITHUB_REPOSITORY", "acme/shop"),
            ("GITHUB_RUN_ID", "42"),
        ]);
        assert_eq!(
            github,
            "alice via https://github.com/acme/shop/actions/runs/42"
        );
        let gitlab = with(&[
            ("GITLAB_CI", "true"),
            ("GITLAB_USER_LOGIN", "bob"),
            ("CI_JOB_URL", "https://gitlab.example/acme/shop/-/jobs/7"),
        ]);
        assert_eq!(gitlab, "bob via https://gitlab.example/acme/shop/-/jobs/7");
    }

    #[test]
    fn elsewhere_the_os_user_and_host() {
        let actor = with(&[("USER", "carol")]);
        assert!(actor.starts_with("carol@"), "{actor}");
    }
}
