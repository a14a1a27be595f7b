//! Errors of the coordinator. The variant is the kind of outcome and fixes the exit code (README,
//! "Exit codes"); the [`Problem`] inside says what it concerns (a flag, file, key, host or load
//! balancer) and keeps the error that caused it, so a caller or test asks `subject()` and
//! `source()` instead of parsing a message. The message an operator reads is still one line:
//! subject, what went wrong, cause.
use std::fmt;
use std::path::PathBuf;
use thiserror::Error;

/// The cause of a problem, kept whole for `source()`.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, Error)]
pub enum CoordinatorError {
    /// Bad usage, config or input; nothing was changed.
    #[error("{0}")]
    Usage(Problem),
    /// The lock was not acquired in time.
    #[error("lock not acquired: {0}")]
    LockTimeout(Problem),
    /// The operation failed and traffic is on the old color.
    #[error("{0}")]
    Failed(Problem),
    /// Traffic may have moved and could not be made safe: a human must look.
    #[error("unsafe, needs a human: {0}")]
    Unsafe(Problem),
    /// etcd did not answer: nothing was decided (or, after a switch, see `Unsafe`).
    #[error("control plane unreachable: {0}")]
    Unreachable(Problem),
    /// etcd answered that this command's user may not read or write a key it needs: retrying
    /// changes nothing, the user's role must (exit 6, never the retryable 5).
    #[error("not permitted: {0}")]
    NotPermitted(Problem),
    #[error("{}", describe(.0))]
    Proto(#[from] proto::ProtoError),
}

/// What an error concerns: the one thing the operator has to look at or fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A command-line flag (or the environment variable standing for it), with the value given.
    Flag {
        flag: &'static str,
        value: Option<String>,
    },
    /// The app spec file.
    Spec(PathBuf),
    /// Any other file on this machine: a key, a migration, an artifact.
    File(PathBuf),
    /// A key (or key prefix) in etcd.
    Key(String),
    /// A registered host, by name.
    Host(String),
    /// A registered load balancer, by name.
    Lb(String),
    /// The etcd cluster, by the endpoints the command was given.
    Etcd(String),
}

impl Subject {
    pub fn flag(flag: &'static str) -> Subject {
        Subject::Flag { flag, value: None }
    }

    pub fn flag_value(flag: &'static str, value: impl fmt::Display) -> Subject {
        Subject::Flag {
            flag,
            value: Some(value.to_string()),
        }
    }

    /// Bad usage concerning this subject (exit 2).
    pub fn usage(self, detail: impl Into<String>) -> CoordinatorError {
        CoordinatorError::Usage(Problem::new(detail).about(self))
    }

    /// A failed operation concerning this subject (exit 1).
    pub fn failed(self, detail: impl Into<String>) -> CoordinatorError {
        CoordinatorError::Failed(Problem::new(detail).about(self))
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Flag { flag, value: None } => write!(f, "{flag}"),
            Subject::Flag {
                flag,
                value: Some(v),
            } => write!(f, "{flag} {v}"),
            Subject::Spec(path) => write!(f, "spec {}", path.display()),
            Subject::File(path) => write!(f, "{}", path.display()),
            Subject::Key(key) => write!(f, "{key}"),
            Subject::Host(host) => write!(f, "host {host}"),
            Subject::Lb(lb) => write!(f, "lb {lb}"),
            Subject::Etcd(endpoints) => write!(f, "etcd {endpoints}"),
        }
    }
}

/// One error's content: `subject: detail: cause`, each part optional but not all empty.
#[derive(Debug, Default)]
pub struct Problem {
    subject: Option<Subject>,
    detail: String,
    cause: Option<Cause>,
}

impl Problem {
    pub fn new(detail: impl Into<String>) -> Problem {
        Problem {
            detail: detail.into(),
            ..Problem::default()
        }
    }

    pub fn about(mut self, subject: Subject) -> Problem {
        self.subject = Some(subject);
        self
    }

    pub fn subject(&self) -> Option<&Subject> {
        self.subject.as_ref()
    }
}

impl From<String> for Problem {
    fn from(detail: String) -> Problem {
        Problem::new(detail)
    }
}

impl From<&str> for Problem {
    fn from(detail: &str) -> Problem {
        Problem::new(detail)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The cause is part of the line too: an operator reads one line, not a chain.
        let parts = [
            self.subject.as_ref().map(ToString::to_string),
            Some(self.detail.clone()).filter(|d| !d.is_empty()),
            self.cause.as_ref().map(ToString::to_string),
        ];
        let shown: Vec<String> = parts.into_iter().flatten().collect();
        write!(f, "{}", shown.join(": "))
    }
}

impl std::error::Error for Problem {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|c| c as &(dyn std::error::Error + 'static))
    }
}

impl CoordinatorError {
    /// Bad usage, config or input (exit 2).
    pub fn usage(problem: impl Into<Problem>) -> Self {
        CoordinatorError::Usage(problem.into())
    }

    /// The operation failed; traffic is where it was (exit 1).
    pub fn failed(problem: impl Into<Problem>) -> Self {
        CoordinatorError::Failed(problem.into())
    }

    /// Traffic may have moved and could not be made safe (exit 4).
    pub fn unsafe_state(problem: impl Into<Problem>) -> Self {
        CoordinatorError::Unsafe(problem.into())
    }

    /// etcd did not answer (exit 5).
    pub fn unreachable(problem: impl Into<Problem>) -> Self {
        CoordinatorError::Unreachable(problem.into())
    }

    /// The same error, caused by `cause` (kept for `source()` and shown at the end of the line).
    /// A `Proto` error already carries its own cause and is returned unchanged.
    pub fn because(mut self, cause: impl Into<Cause>) -> Self {
        if let Some(problem) = self.problem_mut() {
            problem.cause = Some(cause.into());
        }
        self
    }

    /// The same error, concerning `subject`. A `Proto` error names its own key and is unchanged.
    pub fn about(mut self, subject: Subject) -> Self {
        if let Some(problem) = self.problem_mut() {
            problem.subject = Some(subject);
        }
        self
    }

    /// What the error concerns, when it names one thing.
    pub fn subject(&self) -> Option<Subject> {
        match self {
            CoordinatorError::Proto(e) => proto_subject(e),
            other => other.problem().and_then(|p| p.subject.clone()),
        }
    }

    fn problem(&self) -> Option<&Problem> {
        match self {
            CoordinatorError::Usage(p)
            | CoordinatorError::LockTimeout(p)
            | CoordinatorError::Failed(p)
            | CoordinatorError::Unsafe(p)
            | CoordinatorError::Unreachable(p)
            | CoordinatorError::NotPermitted(p) => Some(p),
            CoordinatorError::Proto(_) => None,
        }
    }

    fn problem_mut(&mut self) -> Option<&mut Problem> {
        match self {
            CoordinatorError::Usage(p)
            | CoordinatorError::LockTimeout(p)
            | CoordinatorError::Failed(p)
            | CoordinatorError::Unsafe(p)
            | CoordinatorError::Unreachable(p)
            | CoordinatorError::NotPermitted(p) => Some(p),
            CoordinatorError::Proto(_) => None,
        }
    }

    /// The same error told as "not permitted" when etcd refused this command's user (`user`: the
    /// etcd user it authenticated as, if any), so that the message names who may not do what.
    pub fn for_user(self, user: Option<&str>) -> Self {
        match self {
            CoordinatorError::Proto(proto::ProtoError::Etcd { what, source })
                if is_denied(&source) =>
            {
                let who = user.map_or(
                    "this command's etcd user (none: auth is off?)".to_string(),
                    |u| format!("etcd user {u}"),
                );
                let answer = match &source {
                    etcd_client::Error::GRpcStatus(s) => s.message().to_string(),
                    other => other.to_string(),
                };
                CoordinatorError::NotPermitted(Problem::new(format!(
                    "{who} may not {what}: its role (deploy/etcd-auth.sh makes them) does not \
                     grant that key"
                )))
                .because(format!("etcd answered {answer:?}"))
            }
            other => other,
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            CoordinatorError::Usage(_) => 2,
            CoordinatorError::LockTimeout(_) => 3,
            CoordinatorError::Failed(_) => 1,
            CoordinatorError::Unsafe(_) => 4,
            CoordinatorError::Unreachable(_) => 5,
            CoordinatorError::NotPermitted(_) => 6,
            CoordinatorError::Proto(e) if e.is_permission_denied() => 6,
            // A lost fence means another coordinator owns the app now: ours changed nothing more.
            CoordinatorError::Proto(
                proto::ProtoError::FenceLost { .. } | proto::ProtoError::LeaseLost { .. },
            ) => 1,
            CoordinatorError::Proto(
                proto::ProtoError::Etcd { .. } | proto::ProtoError::WatchCanceled { .. },
            ) => 5,
            // A bad key layout or record: input the command cannot use.
            CoordinatorError::Proto(_) => 2,
        }
    }
}

/// The key a protocol error names, when it names one.
fn proto_subject(e: &proto::ProtoError) -> Option<Subject> {
    use proto::ProtoError as P;
    match e {
        P::InvalidRecord { key, .. } | P::FenceLost { key, .. } => Some(Subject::Key(key.clone())),
        P::WatchCanceled { prefix, .. } => Some(Subject::Key(prefix.clone())),
        _ => None,
    }
}

fn is_denied(source: &etcd_client::Error) -> bool {
    matches!(source, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::PermissionDenied)
}

fn describe(e: &proto::ProtoError) -> String {
    if e.is_permission_denied() {
        format!("not permitted: {}", e.brief())
    } else if e.is_unreachable() {
        format!("control plane unreachable: {}", e.brief())
    } else {
        e.to_string()
    }
}

#[cfg(test)]
#[path = "error_tests.rs"]
mod tests;
