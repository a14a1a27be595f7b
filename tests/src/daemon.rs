//! A bluegreen binary run as a test process: started with its output in a log file, killed with
//! SIGKILL (as a crash would), restartable, and its log's tail printed when a test fails.
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub struct Daemon {
    child: Option<Child>,
    label: String,
    program: PathBuf,
    args: Vec<OsString>,
    /// Extra environment for the next start.
    env: Vec<(String, String)>,
    pub log_path: PathBuf,
}

impl Daemon {
    pub fn start(label: &str, program: PathBuf, args: Vec<OsString>, log_path: PathBuf) -> Daemon {
        Daemon::start_with_env(label, program, args, log_path, Vec::new())
    }

    /// [`Daemon::start`] with `env` added to its environment (kept for restarts).
    pub fn start_with_env(
        label: &str,
        program: PathBuf,
        args: Vec<OsString>,
        log_path: PathBuf,
        env: Vec<(String, String)>,
    ) -> Daemon {
        let mut daemon = Daemon {
            child: None,
            label: label.to_string(),
            program,
            args,
            env,
            log_path,
        };
        daemon.spawn();
        daemon
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("daemon log");
        let child = Command::new(&self.program)
            .args(&self.args)
            .env("BLUEGREEN_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` ("STOP", "CONT", ...) to the process, as an operator's `kill -s` would.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {signal} {}", self.label);
    }

    /// How the process ended, if it has.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Restarts as `program` (another build of the same binary: an upgrade or a downgrade), with
    /// the same arguments and environment.
    pub fn restart_as(&mut self, program: PathBuf) {
        self.program = program;
        self.restart();
    }

    /// Restarts with `key=value` added to the environment (and kept for later restarts).
    pub fn restart_with_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
        self.restart();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            eprintln!("--- last lines of {} ---", self.label);
            for line in log.lines().rev().take(30).collect::<Vec<_>>().iter().rev() {
                eprintln!("{line}");
            }
        }
        self.kill9();
    }
}
