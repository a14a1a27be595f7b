//! One app process: spawned in its own process group with stdout/stderr appended straight to a log
//! file (not a pipe, so the app survives the agent's death), stopped gracefully (SIGTERM, wait,
//! SIGKILL), and re-adopted after an agent restart from a pid file checked against /proc.
use crate::error::AgentError;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use proto::records::ReleaseRecord;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::time::Instant;

/// Everything needed to start an app process.
#[derive(Debug, Clone)]
pub struct Launch {
    pub dir: PathBuf,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub log_path: PathBuf,
    /// The unprivileged user the app runs as; `None` keeps the agent's own (root only when an
    /// operator configured `run_as = "root"`).
    pub user: Option<RunAs>,
}

/// A user the app runs as, resolved once from its name at start.
#[derive(Debug, Clone, PartialEq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// Looks the user up; the error says how to create it.
    pub fn lookup(name: &str) -> Result<RunAs, String> {
        match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => Ok(RunAs {
                name: name.to_string(),
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            }),
            Ok(None) => Err(format!(
                "run_as: user {name:?} does not exist: create it (useradd --system --no-create-home {name}) \
                 or set run_as to an existing user (\"root\" only if the apps truly need it)"
            )),
            Err(e) => Err(format!("run_as: cannot look up user {name:?}: {e}")),
        }
    }
}

/// How a process ended, for errors and the restart policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit(pub String);

/// What the agent writes next to a running app so that a restarted agent can adopt it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PidFile {
    pub pid: u32,
    /// Field 22 of /proc/<pid>/stat: tells a reused pid from ours.
    pub start_ticks: u64,
    pub release: ReleaseRecord,
    pub dir: PathBuf,
    pub restarts: u32,
}

impl PidFile {
    pub fn read(path: &Path) -> Option<PidFile> {
        let text = std::fs::read(path).ok()?;
        serde_json::from_slice(&text).ok()
    }

    pub fn write(&self, path: &Path) -> Result<(), AgentError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        // Owner only: the release in it names the app's environment.
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&serde_json::to_vec(self).expect("pid file serializes")))
            .map_err(|e| AgentError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| AgentError::io(path, e))
    }
}

pub struct AppProcess {
    pid: u32,
    start_ticks: u64,
    /// Present when this agent spawned the process; adopted processes are watched through /proc.
    child: Option<tokio::process::Child>,
    exit: Option<Exit>,
}

impl AppProcess {
    pub fn spawn(launch: &Launch) -> Result<AppProcess, AgentError> {
        let shown = launch.command.join(" ");
        let program = resolve_program(&launch.dir, &launch.command[0]);
        use std::os::unix::fs::OpenOptionsExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&launch.log_path)
            .map_err(|e| AgentError::io(&launch.log_path, e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| AgentError::io(&launch.log_path, e))?;
        let mut command = tokio::process::Command::new(&program);
        if let Some(user) = &launch.user {
            // std drops root's supplementary groups when it changes the uid.
            command.uid(user.uid).gid(user.gid);
        }
        let child = command
            .args(&launch.command[1..])
            .current_dir(&launch.dir)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .envs(&launch.env)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| AgentError::Spawn {
                command: shown.clone(),
                reason: format!("{}: {e}", program.display()),
            })?;
        let pid = child.id().ok_or_else(|| AgentError::Spawn {
            command: shown,
            reason: "exited before it had a pid".into(),
        })?;
        let start_ticks = proc_start_ticks(pid).unwrap_or(0);
        Ok(AppProcess {
            pid,
            start_ticks,
            child: Some(child),
            exit: None,
        })
    }

    /// Adopts a process a previous agent started, if it still runs and is the same process.
    pub fn adopt(pid: u32, start_ticks: u64) -> Option<AppProcess> {
        (proc_start_ticks(pid)? == start_ticks).then_some(AppProcess {
            pid,
            start_ticks,
            child: None,
            exit: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn start_ticks(&self) -> u64 {
        self.start_ticks
    }

    /// Waits until the process exits (cancel-safe: may be polled again after a `select!`).
    pub async fn exited(&mut self) -> Exit {
        if let Some(exit) = &self.exit {
            return exit.clone();
        }
        let exit = match &mut self.child {
            Some(child) => match child.wait().await {
                Ok(status) => Exit(describe(status)),
                Err(e) => Exit(format!("wait failed: {e}")),
            },
            None => {
                while proc_start_ticks(self.pid) == Some(self.start_ticks) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Exit("exited (adopted process; status unknown)".into())
            }
        };
        self.exit = Some(exit.clone());
        exit
    }

    /// SIGKILL to the process group at once, for a process that must not run at all (tokio reaps
    /// the dropped child).
    pub fn kill_now(self) {
        let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
    }

    /// SIGTERM to the process group, up to `timeout` for it to exit, then SIGKILL.
    pub async fn stop(&mut self, timeout: Duration) -> Exit {
        if self.exit.is_some() {
            return self.exited().await;
        }
        let group = Pid::from_raw(self.pid as i32);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        if let Ok(exit) = tokio::time::timeout_at(deadline, self.exited()).await {
            return exit;
        }
        tracing::warn!(
            pid = self.pid,
            ?timeout,
            "app ignored SIGTERM, sending SIGKILL"
        );
        let _ = killpg(group, Signal::SIGKILL);
        let exit = self.exited().await;
        Exit(format!("{} (killed after {timeout:?})", exit.0))
    }
}

/// The command's program: relative to the unpacked artifact when it names a file there.
fn resolve_program(dir: &Path, program: &str) -> PathBuf {
    let candidate = dir.join(program);
    if program.contains('/') || candidate.is_file() {
        candidate
    } else {
        PathBuf::from(program)
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => "exited".into(),
    }
}

/// The process's start time in clock ticks, or None when it is gone or a zombie.
pub fn proc_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Is something already listening on `address:port`? Checked before a start so that "port in use"
/// is reported as such rather than as a mysterious crash.
pub fn port_in_use(address: &str, port: u16) -> bool {
    std::net::TcpListener::bind((address, port)).is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_start_ticks() {
        let me = std::process::id();
        assert!(proc_start_ticks(me).is_some());
        assert!(proc_start_ticks(u32::MAX - 1).is_none());
    }

    #[tokio::test]
    async fn spawn_logs_and_stops_gracefully() {
        let dir = tempfile::tempdir().unwrap();
        let launch = Launch {
            dir: dir.path().into(),
            command: vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo started $X; trap 'echo bye; exit 0' TERM; while :; do sleep 0.05; done"
                    .into(),
            ],
            env: BTreeMap::from([("X".into(), "42".into())]),
            log_path: dir.path().join("app.log"),
            user: None,
        };
        let mut p = AppProcess::spawn(&launch).unwrap();
        let adopted = AppProcess::adopt(p.pid(), p.start_ticks());
        assert!(adopted.is_some());
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(&launch.log_path)
            .unwrap()
            .contains("started 42")
        {
            assert!(Instant::now() < deadline, "no log line");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let exit = p.stop(Duration::from_secs(5)).await;
        assert_eq!(exit.0, "exited with status 0");
        assert!(std::fs::read_to_string(&launch.log_path)
            .unwrap()
            .contains("bye"));
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let dir = tempfile::tempdir().unwrap();
        let launch = Launch {
            dir: dir.path().into(),
            command: vec!["./nope".into()],
            env: BTreeMap::new(),
            log_path: dir.path().join("l"),
            user: None,
        };
        let err = AppProcess::spawn(&launch).err().unwrap().to_string();
        assert!(err.contains("./nope"), "{err}");
    }
}
