//! Test harnesses that drive bluegreen's real binaries as processes against a real etcd (and, in
//! later suites, real nginx). Each harness cleans up after itself, including the apps the agents
//! started in their own process groups.
#![forbid(unsafe_code)]

pub mod artifacts;
pub mod browser;
pub mod chaos;
pub mod daemon;
pub mod db;
pub mod disk;
pub mod etcd;
pub mod fleet;
pub mod lb;
pub mod load;
pub mod netns;
pub mod nginx;
pub mod pki;
pub mod procs;
pub mod scale;
pub mod strict;
pub mod wait;

pub use artifacts::Artifacts;
pub use etcd::Etcd;
pub use procs::AgentProc;
pub use wait::{poll_until, wait_for};

use std::path::PathBuf;

/// Where cargo put the workspace's binaries (`target/debug` or `target/release`), found from the
/// running executable (`target/<profile>/deps/<test>` or `target/<profile>/<bench>`), so
/// `CARGO_TARGET_DIR` and the profile in use are respected.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("executable has a directory");
    if dir.ends_with("deps") {
        dir.parent().expect("target/<profile>").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// The unprivileged user apps run as by default, created (as the packages create it) when this
/// machine does not have it yet. Returns its uid.
pub fn app_user() -> u32 {
    const USER: &str = "bluegreen-app";
    static CREATED: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = CREATED.lock().unwrap_or_else(|p| p.into_inner());
    let lookup = || nix::unistd::User::from_name(USER).expect("look up users");
    if lookup().is_none() {
        let status = std::process::Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                USER,
            ])
            .status()
            .expect("run useradd");
        assert!(
            status.success() || lookup().is_some(),
            "useradd {USER}: {status}"
        );
    }
    lookup().expect("the user exists now").uid.as_raw()
}

/// The `p` quantile (0..=1) of `sorted` samples, nearest rank: what the benchmarks report.
pub fn percentile(sorted: &[std::time::Duration], p: f64) -> std::time::Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Resident set size of a process in KiB, from /proc/<pid>/status.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// Peak resident set size of a process so far in KiB (VmHWM).
pub fn hwm_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The path of a workspace binary; panics with the command to run when it was not built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// A TCP port that is free on `address` right now.
/// Never the same port twice in one test process: a port handed out is bound only later (by an
/// agent, an app, nginx), and until then the kernel may hand it out again, which once gave an
/// agent's gRPC port to its own app's green color.
pub fn free_port(address: &str) -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind((address, 0))
            .expect("bind for a free port")
            .local_addr()
            .unwrap()
            .port();
        if HANDED_OUT.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// The three binaries' command-line definitions, by name: for their man pages and the test that
/// every flag has help.
pub fn command_lines() -> Vec<(&'static str, clap::Command)> {
    vec![
        (
            "agent",
            <agent::config::Cli as proto::settings::Daemon>::cli(),
        ),
        (
            "lb-sidecar",
            <lb_sidecar::config::Cli as proto::settings::Daemon>::cli(),
        ),
        ("coordinator", coordinator::cli::command()),
    ]
}
