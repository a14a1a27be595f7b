//! The `coordinator` command line: its flags (each with help and its default shown), which
//! command is a query (one JSON document) and which an action (NDJSON events ending in one
//! `result` event), and the exit code of each outcome (0 done, 1 failed, 2 bad usage or input,
//! 3 lock not acquired, 4 unsafe, 5 control plane unreachable).
use crate::commands::Command;
use crate::context::Global;
use crate::error::CoordinatorError;
use crate::progress::emit;
use crate::report::{self, Facts};
use clap::{CommandFactory, Parser, ValueEnum};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "coordinator",
    version,
    about = "Deploy, switch, roll back and inspect a bluegreen app"
)]
struct Cli {
    /// etcd endpoints, comma separated.
    #[arg(
        long,
        env = "BLUEGREEN_ETCD",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ',',
        global = true
    )]
    etcd: Vec<String>,
    /// The etcd key prefix every app lives under.
    #[arg(
        long,
        env = "BLUEGREEN_PREFIX",
        default_value = "/bluegreen",
        global = true
    )]
    prefix: String,
    /// The app to act on (a deploy takes it from its spec).
    #[arg(long, env = "BLUEGREEN_APP", global = true)]
    app: Option<String>,
    /// text for people; json for CI: queries print one document, actions print one event per
    /// line and end with a `result` event.
    #[arg(
        long,
        value_enum,
        env = "BLUEGREEN_OUTPUT",
        default_value = "text",
        global = true
    )]
    output: Output,
    /// CA that signed etcd's server certificate (https:// endpoints).
    #[arg(long, env = "BLUEGREEN_ETCD_CACERT", global = true)]
    etcd_cacert: Option<PathBuf>,
    /// Client certificate for etcd (with --etcd-key).
    #[arg(long, env = "BLUEGREEN_ETCD_CERT", global = true)]
    etcd_cert: Option<PathBuf>,
    /// The client certificate's private key.
    #[arg(long, env = "BLUEGREEN_ETCD_KEY", global = true)]
    etcd_key: Option<PathBuf>,
    /// etcd user; its password from --etcd-password-file or BLUEGREEN_ETCD_PASSWORD.
    #[arg(long, env = "BLUEGREEN_ETCD_USER", global = true)]
    etcd_user: Option<String>,
    /// A file holding the etcd user's password (first line).
    #[arg(long, env = "BLUEGREEN_ETCD_PASSWORD_FILE", global = true)]
    etcd_password_file: Option<PathBuf>,
    /// Send the etcd password to http:// endpoints in clear text anyway (an etcd on loopback).
    #[arg(long, env = "BLUEGREEN_ETCD_ALLOW_PLAINTEXT_PASSWORD", global = true)]
    etcd_allow_plaintext_password: bool,
    /// CA that signed the agents' gRPC server certificates (logs over mutual TLS).
    #[arg(long, env = "BLUEGREEN_GRPC_CACERT", global = true)]
    grpc_cacert: Option<PathBuf>,
    /// Client certificate and key presented to the agents' gRPC API.
    #[arg(long, env = "BLUEGREEN_GRPC_CERT", global = true)]
    grpc_cert: Option<PathBuf>,
    /// The private key of --grpc-cert.
    #[arg(long, env = "BLUEGREEN_GRPC_KEY", global = true)]
    grpc_key: Option<PathBuf>,
    /// TTL of the deploy lock's lease (at least 5s). A coordinator that cannot renew it stops on
    /// its own before it expires; a killed one holds the lock until it does.
    #[arg(long, env = "BLUEGREEN_LOCK_TTL", default_value = "15s", global = true)]
    lock_ttl: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// Whether the command line asks for JSON, read from the raw arguments: a line clap rejects
/// still gets its `result` event.
fn json_requested() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let flagged = args
        .windows(2)
        .any(|w| w[0] == "--output" && w[1] == "json")
        || args.iter().any(|a| a == "--output=json");
    flagged || std::env::var("BLUEGREEN_OUTPUT").is_ok_and(|v| v == "json")
}

/// Runs the command line and exits with its code.
pub async fn main() -> ! {
    let started = std::time::Instant::now();
    proto::daemon::init_logging("warn");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => usage_error(e, started),
    };
    let json = matches!(cli.output, Output::Json);
    let name = cli.command.name();
    let access = proto::EtcdAccess::resolve(proto::AccessSettings {
        endpoints: cli.etcd,
        cacert: cli.etcd_cacert,
        cert: cli.etcd_cert,
        key: cli.etcd_key,
        user: cli.etcd_user,
        password_file: cli.etcd_password_file,
        password_env: std::env::var("BLUEGREEN_ETCD_PASSWORD").ok(),
        allow_plaintext_password: cli.etcd_allow_plaintext_password,
    });
    let grpc_tls =
        crate::probes::GrpcClientTls::from_parts(cli.grpc_cacert, cli.grpc_cert, cli.grpc_key);
    let lock_ttl =
        crate::parse_duration("--lock-ttl", &cli.lock_ttl).and_then(crate::lock::check_ttl);
    let global = Global {
        etcd: proto::EtcdAccess::default(),
        grpc_tls: None,
        prefix: cli.prefix,
        app: cli.app,
        json,
        lock_ttl: crate::lock::LOCK_TTL,
        recorder: report::Recorder::default(),
    };
    global.recorder.command(&name);
    let lock_ttl = match lock_ttl {
        Ok(ttl) => ttl,
        Err(e) => fail(&global, &name, e, started).await,
    };
    let global = match (access, grpc_tls) {
        (Ok(etcd), Ok(grpc_tls)) => Global {
            etcd,
            grpc_tls,
            lock_ttl,
            ..global
        },
        (Err(e), _) | (_, Err(e)) => {
            fail(&global, &name, CoordinatorError::usage(e), started).await
        }
    };
    let done = perform(&global, cli.command, started).await;
    if done.failed {
        if let (true, Some(event)) = (json, &done.event) {
            emit(&format!("{event}\n"));
        }
        eprintln!("coordinator: {}", done.text);
        std::process::exit(done.exit);
    }
    if let (true, Some(event)) = (json, &done.event) {
        emit(&format!("{event}\n"));
        std::process::exit(done.exit);
    }
    let text = done.text;
    if text.ends_with('\n') || text.is_empty() {
        emit(&text);
    } else {
        emit(&format!("{text}\n"));
    }
    std::process::exit(done.exit);
}

/// What running one command came to.
pub struct Performed {
    pub exit: i32,
    /// Its output; for a failure, the error as shown to the user (passwords masked).
    pub text: String,
    /// The `result` event of an action, or of any command that failed.
    pub event: Option<serde_json::Value>,
    pub failed: bool,
}

/// Runs a parsed command to its end: the command, then for an action its `result` event and
/// what follows one (hooks' reports, webhooks). The command line and the dashboard both run
/// commands through here, so an action clicked in a browser does exactly what it does typed.
pub async fn perform(global: &Global, command: Command, started: std::time::Instant) -> Performed {
    let name = command.name();
    let query = command.is_query();
    match command.run(global, Cli::command()).await {
        Ok((text, exit)) => {
            if query {
                return Performed {
                    exit,
                    text,
                    event: None,
                    failed: false,
                };
            }
            let facts = global.recorder.facts();
            let app = global.app.as_deref();
            let event = report::result_event(
                Some(&name),
                &facts,
                app,
                exit,
                text.trim(),
                started.elapsed(),
            );
            crate::aftermath::run(&facts, exit, &event, &global.progress()).await;
            Performed {
                exit,
                text,
                event: Some(event),
                failed: false,
            }
        }
        Err(e) => {
            let (exit, shown, event) = failure(global, &name, e, started).await;
            Performed {
                exit,
                text: shown,
                event: Some(event),
                failed: true,
            }
        }
    }
}

/// A command line as the dashboard hands it over (the same commands and flags as typed), parsed
/// without exiting the process on a mistake.
#[derive(Parser)]
#[command(name = "coordinator")]
struct Line {
    #[command(subcommand)]
    command: Command,
}

/// Parses `args` (without the program name) as a command of this tool, as typed: no flag takes
/// its value from this process's environment (the dashboard's `BLUEGREEN_SIGNING_KEY_FILE` must
/// not become every person's signing key).
pub fn parse_line(args: &[String]) -> Result<Command, String> {
    use clap::FromArgMatches;
    fn without_env(command: clap::Command) -> clap::Command {
        command
            .mut_args(|arg| arg.env(None))
            .mut_subcommands(without_env)
    }
    let argv = std::iter::once("coordinator".to_string()).chain(args.iter().cloned());
    let matches = without_env(Line::command())
        .try_get_matches_from(argv)
        .map_err(|e| e.to_string())?;
    Line::from_arg_matches(&matches)
        .map(|line| line.command)
        .map_err(|e| e.to_string())
}

/// clap's own verdict on the command line: help and version print and exit 0; anything else is
/// bad usage (exit 2), reported as a `result` event too when JSON was asked for.
fn usage_error(e: clap::Error, started: std::time::Instant) -> ! {
    use clap::error::ErrorKind;
    if !matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) && json_requested() {
        // clap's message up to its usage block, on one line.
        let rendered = e.render().to_string();
        let message: Vec<&str> = rendered
            .lines()
            .take_while(|l| !l.trim().is_empty())
            .map(str::trim)
            .collect();
        let detail = message.join(" ");
        let event =
            report::result_event(None, &Facts::default(), None, 2, &detail, started.elapsed());
        emit(&format!("{event}\n"));
    }
    e.exit()
}

async fn fail(
    global: &Global,
    command: &str,
    e: CoordinatorError,
    started: std::time::Instant,
) -> ! {
    let (exit, shown, event) = failure(global, command, e, started).await;
    if global.json {
        emit(&format!("{event}\n"));
    }
    eprintln!("coordinator: {shown}");
    std::process::exit(exit);
}

/// A failed command's exit code, its error as shown (passwords masked) and its `result` event,
/// after what follows a result (hooks' reports, webhooks).
async fn failure(
    global: &Global,
    command: &str,
    e: CoordinatorError,
    started: std::time::Instant,
) -> (i32, String, serde_json::Value) {
    let e = e.for_user(global.etcd.user.as_deref());
    // Errors may quote app log lines or URLs: never print a password.
    let shown = proto::secrets::mask_text(&e.to_string());
    let facts = global.recorder.facts();
    let event = report::result_event(
        Some(command),
        &facts,
        global.app.as_deref(),
        e.exit_code(),
        &shown,
        started.elapsed(),
    );
    crate::aftermath::run(&facts, e.exit_code(), &event, &global.progress()).await;
    (e.exit_code(), shown, event)
}

/// The command line's definition (for man pages and the help test).
pub fn command() -> clap::Command {
    Cli::command()
}

/// The roff man page of `command`.
pub fn man_page(command: clap::Command) -> String {
    crate::commands::man::page(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
