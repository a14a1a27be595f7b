//! The `coordinator` command line: its flags (each with help and its default shown), which
//! command is a query (one JSON document) and which an action (NDJSON events ending in one
//! `result` event), and the exit code of each outcome (0 done, 1 failed, 2 bad usage or input,
//! 3 lock not acquired, 4 unsafe, 5 control plane unreachable).
use crate::progress::emit;
use crate::report::{self, Facts};
use crate::{CoordinatorError, Global, Member};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use proto::{Color, Operation};
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
    /// CA that signed the agents' gRPC server certificates (logs over mutual TLS).
    #[arg(long, env = "BLUEGREEN_GRPC_CACERT", global = true)]
    grpc_cacert: Option<PathBuf>,
    /// Client certificate and key presented to the agents' gRPC API.
    #[arg(long, env = "BLUEGREEN_GRPC_CERT", global = true)]
    grpc_cert: Option<PathBuf>,
    /// The private key of --grpc-cert.
    #[arg(long, env = "BLUEGREEN_GRPC_KEY", global = true)]
    grpc_key: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Stage a version on the idle color of every host, check it, switch traffic to it.
    Deploy {
        /// The app spec (bluegreen.toml in the app's repository).
        #[arg(long)]
        spec: PathBuf,
        /// The version being deployed (letters, digits, '.', '_', '-').
        #[arg(long)]
        version: String,
        /// file://, http:// or https:// URL of a tar.gz or a single executable.
        #[arg(long)]
        artifact: String,
        /// Computed from the artifact when omitted.
        #[arg(long)]
        sha256: Option<String>,
        #[command(flatten)]
        checks: CheckFlags,
        /// Show what the deploy would do now (target color, hosts, LBs that must ack, pending
        /// migrations, lock holder) and exit with the code it would have; writes nothing.
        #[arg(long)]
        plan: bool,
        /// Stop after staging and the checks: the new color runs on every host and the LBs'
        /// preview listener serves it, but traffic stays; `coordinator promote` switches.
        #[arg(long, conflicts_with = "plan")]
        no_switch: bool,
        /// After staging and the checks, send a growing share of requests to the new version
        /// (the spec's [canary] steps), judge it against the stable version from the LBs' request
        /// counts, then switch, or send everyone back and fail (exit 1).
        #[arg(long, conflicts_with = "no_switch")]
        canary: bool,
    },
    /// A running canary: its status, or an operator's decision about it (carried out by the
    /// coordinator running the canary, recorded in history).
    Canary {
        #[command(subcommand)]
        action: CanaryCommand,
    },
    /// Switch to the version `deploy --no-switch` staged, after its checks again (health on every
    /// host, the active color still serving, the smoke checks).
    Promote {
        /// The app spec (its smoke checks and verification settings).
        #[arg(long)]
        spec: PathBuf,
        #[command(flatten)]
        checks: CheckFlags,
    },
    /// Check a spec, its migrations (parsed and linted) and optionally the artifact, without
    /// etcd or the database: exit 0 when a deploy would accept them, 2 naming what is wrong.
    Validate {
        /// The app spec to check.
        #[arg(long)]
        spec: PathBuf,
        /// Check the version's format too.
        #[arg(long)]
        version: Option<String>,
        /// Fetch the artifact once and hash it (it is reachable, and is --sha256 when given).
        #[arg(long)]
        artifact: Option<String>,
        /// The sha256 the artifact must have.
        #[arg(long, requires = "artifact")]
        sha256: Option<String>,
    },
    /// Make an ed25519 key pair for signing releases: NAME.key (keep it in CI's secrets) and
    /// NAME.pub (list it in every agent's trusted_keys).
    Keygen {
        /// Where to write the two files (never overwritten).
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        /// The files' base name.
        #[arg(long, default_value = "bluegreen-release")]
        name: String,
    },
    /// Switch back to the previous color (must be healthy); waits for every LB's ack.
    Rollback {
        /// How long to wait for another operation's deploy lock before giving up (exit 3).
        #[arg(long, default_value = "30s")]
        lock_wait: String,
        /// Write `active` even when no LB is registered.
        #[arg(long)]
        allow_no_lb: bool,
        /// The app spec, for its hooks (post_switch, post_rollback, on_failure) and webhooks.
        #[arg(long)]
        spec: Option<PathBuf>,
    },
    /// Manual switch to a color, with the same safety checks as rollback.
    Switch {
        /// The color to send traffic to.
        #[arg(value_parser = ["blue", "green"])]
        color: String,
        /// How long to wait for another operation's deploy lock before giving up (exit 3).
        #[arg(long, default_value = "30s")]
        lock_wait: String,
        /// Write `active` even when no LB is registered.
        #[arg(long)]
        allow_no_lb: bool,
        /// The app spec, for its hooks (post_switch, post_rollback, on_failure) and webhooks.
        #[arg(long)]
        spec: Option<PathBuf>,
    },
    /// Stop the idle color on every host (never the active one); gives up the instant rollback.
    Stop {
        /// The idle color to stop.
        #[arg(value_parser = ["blue", "green"])]
        color: String,
        /// How long to wait for another operation's deploy lock before giving up (exit 3).
        #[arg(long, default_value = "30s")]
        lock_wait: String,
    },
    /// Active color, releases, every host's health, every LB's ack, lock holder, last deploy.
    Status {
        /// Keep watching: redraw on every change (from an etcd watch, no polling) until Ctrl-C.
        /// JSON: one status document per line.
        #[arg(long)]
        watch: bool,
    },
    /// The apps under the prefix (no --app needed).
    Apps,
    /// The audit trail, newest last.
    History {
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
    },
    /// Database migrations: status, up (expand), contract (gated), down (newest applied).
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
    /// The deploy lock.
    Lock {
        #[command(subcommand)]
        action: LockAction,
    },
    /// LB membership: every registered LB, alive or not, and removing one that is gone for good.
    Lb {
        #[command(subcommand)]
        action: MemberAction,
    },
    /// Host membership: every registered host, alive or not, and removing one that is gone for good.
    Host {
        #[command(subcommand)]
        action: MemberAction,
    },
    /// Print a shell completion script: `coordinator completions bash > /etc/bash_completion.d/coordinator`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `coordinator man > /usr/share/man/man1/coordinator.1`.
    Man,
    /// The last log lines of one color on one host (through its agent).
    Logs {
        /// The host, as `host list` names it.
        #[arg(long)]
        host: String,
        /// The color whose app's log to read.
        #[arg(long, value_parser = ["blue", "green"])]
        color: String,
        /// How many of the last lines.
        #[arg(long, default_value = "50")]
        tail: u32,
        /// Keep streaming new lines until Ctrl-C. JSON: one {"host","color","line"} per line.
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

/// What `deploy` and `promote` share: the lock wait, the checks before and after the switch, and
/// the release-signing key.
#[derive(clap::Args)]
struct CheckFlags {
    /// How long to wait for another operation's deploy lock (0s: give up at once, exit 3).
    #[arg(long, default_value = "0s")]
    lock_wait: String,
    /// How long the new color may take to be healthy on every host [default: the spec's
    /// health.startup_timeout + 30s].
    #[arg(long)]
    health_timeout: Option<String>,
    /// After the switch, watch the new color this long and switch back if it turns unhealthy or
    /// its answers through the LBs turn worse than the old color's before the switch (errors,
    /// p99 latency: the [canary] criteria) [default: the spec's switch.verify_for].
    #[arg(long)]
    verify_for: Option<String>,
    /// Leave a color that failed its checks running for debugging instead of stopping it.
    #[arg(long)]
    keep_failed: bool,
    /// Switch even when no LB is registered (nothing can follow or verify the switch).
    #[arg(long)]
    allow_no_lb: bool,
    /// ed25519 private key (`coordinator keygen`) to sign the releases written; agents with
    /// trusted_keys run only signed releases.
    #[arg(long, env = "BLUEGREEN_SIGNING_KEY_FILE")]
    signing_key: Option<PathBuf>,
}

impl CheckFlags {
    fn parse(self) -> Result<crate::Checks, CoordinatorError> {
        use crate::parse_duration as dur;
        Ok(crate::Checks {
            lock_wait: dur("--lock-wait", &self.lock_wait)?,
            health_timeout: self
                .health_timeout
                .map(|d| dur("--health-timeout", &d))
                .transpose()?,
            verify_for: self
                .verify_for
                .map(|d| dur("--verify-for", &d))
                .transpose()?,
            keep_failed: self.keep_failed,
            allow_no_lb: self.allow_no_lb,
            signing_key: self.signing_key,
        })
    }
}

#[derive(Subcommand)]
enum CanaryCommand {
    /// The split, the step, the canary's coordinator, and what the LBs counted per color.
    Status,
    /// Hold the current weight (the analysis still aborts on a failure).
    Pause(CanaryFlags),
    /// Go on from the current step.
    Resume(CanaryFlags),
    /// Skip the remaining steps and switch to the canary now.
    Promote(CanaryFlags),
    /// Send every user back to the stable color and fail the canary; for a canary whose
    /// coordinator died, take the lock and do it.
    Abort(CanaryFlags),
}

#[derive(clap::Args)]
struct CanaryFlags {
    /// abort of a canary whose coordinator died: how long to wait for its lock (exit 3).
    #[arg(long, default_value = "30s")]
    lock_wait: String,
}

#[derive(Subcommand)]
enum MigrateAction {
    /// Every migration's state, problems, and whether pending contract migrations may run.
    Status {
        /// The app spec naming the migrations and the database.
        #[arg(long)]
        spec: PathBuf,
    },
    /// Apply pending expand migrations (up to the first contract one).
    Up(MigrateFlags),
    /// Apply every pending migration; contract ones only if every running color is new enough.
    Contract(MigrateFlags),
    /// Revert the newest applied migration with its down script.
    Down {
        #[command(flatten)]
        flags: MigrateFlags,
        /// Revert an expand migration even while a color runs the version it came with.
        #[arg(long)]
        force: bool,
    },
}

#[derive(clap::Args)]
struct MigrateFlags {
    /// The app spec naming the migrations and the database.
    #[arg(long)]
    spec: PathBuf,
    /// How long to wait for another operation's deploy lock before giving up (exit 3).
    #[arg(long, default_value = "30s")]
    lock_wait: String,
    /// The app version these migrations come with, recorded in schema_migrations.
    #[arg(long)]
    version: Option<String>,
}

#[derive(Subcommand)]
enum LockAction {
    /// Who holds the deploy lock, for which operation, since when.
    Status,
    /// Revoke a stuck holder's lease (its fence makes any late write of it fail).
    Break {
        /// Confirm: without it nothing is broken.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum MemberAction {
    /// Every registered one, alive or not: for a host its address and each color's version and
    /// state, for an LB the color it last acked and its error.
    List,
    /// Forget one whose agent or sidecar is gone for good (refused while it runs); fenced by the
    /// deploy lock and recorded in history.
    Remove {
        /// The host or LB, as `list` names it.
        name: String,
        /// Confirm: without it nothing is removed.
        #[arg(long)]
        yes: bool,
        /// How long to wait for another operation's deploy lock before giving up (exit 3).
        #[arg(long, default_value = "30s")]
        lock_wait: String,
    },
}

/// Loads `--spec` of a command that takes it only for its hooks and webhooks.
fn remember_spec(global: &Global, spec: Option<&std::path::Path>) -> Result<(), CoordinatorError> {
    if let Some(path) = spec {
        global
            .recorder
            .spec(&crate::load_spec(global.app.as_deref(), path)?);
    }
    Ok(())
}

fn operation_kinds() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(Operation::ALL.map(Operation::as_str))
}

fn color(value: &str) -> Result<Color, CoordinatorError> {
    value
        .parse()
        .map_err(|e: proto::ProtoError| CoordinatorError::Usage(e.to_string()))
}

/// The command's output and exit code (0 unless the command reports a verdict, as `validate` and
/// `deploy --plan` do).
async fn dispatch(global: &Global, command: Command) -> Result<(String, i32), CoordinatorError> {
    use crate::parse_duration as dur;
    let text = match command {
        Command::Deploy {
            spec,
            version,
            artifact,
            sha256,
            checks,
            plan,
            no_switch,
            canary,
        } => {
            let req = crate::DeployRequest {
                spec,
                version,
                artifact,
                sha256,
                checks: checks.parse()?,
                no_switch,
                canary,
            };
            if plan {
                return crate::deploy_plan(global, req).await;
            }
            crate::deploy(global, req).await
        }
        Command::Promote { spec, checks } => {
            let req = crate::PromoteRequest {
                spec,
                checks: checks.parse()?,
            };
            crate::promote(global, req).await
        }
        Command::Validate {
            spec,
            version,
            artifact,
            sha256,
        } => {
            let req = crate::validate::ValidateRequest {
                spec,
                version,
                artifact,
                sha256,
            };
            let report = crate::validate::validate(global.app.as_deref(), &req).await;
            let text = if global.json {
                serde_json::to_string_pretty(&report).expect("report serializes") + "\n"
            } else {
                report.render_text()
            };
            return Ok((text, if report.valid { 0 } else { 2 }));
        }
        Command::Rollback {
            lock_wait,
            allow_no_lb,
            spec,
        } => {
            remember_spec(global, spec.as_deref())?;
            crate::switch(global, None, dur("--lock-wait", &lock_wait)?, allow_no_lb).await
        }
        Command::Switch {
            color: c,
            lock_wait,
            allow_no_lb,
            spec,
        } => {
            remember_spec(global, spec.as_deref())?;
            let target = Some(color(&c)?);
            crate::switch(global, target, dur("--lock-wait", &lock_wait)?, allow_no_lb).await
        }
        Command::Stop {
            color: c,
            lock_wait,
        } => crate::stop(global, color(&c)?, dur("--lock-wait", &lock_wait)?).await,
        Command::Keygen { out_dir, name } => crate::keygen(&out_dir, &name),
        Command::Status { watch: true } => crate::live::watch_status(global).await,
        Command::Status { watch: false } => crate::status(global).await,
        Command::Apps => crate::apps(global).await,
        Command::History {
            limit,
            kind,
            version,
            actor,
            since,
            until,
        } => {
            let filter = crate::history::Filter {
                kind: kind.and_then(|k| Operation::ALL.into_iter().find(|o| o.as_str() == k)),
                version,
                actor,
                since: since
                    .map(|t| crate::history::parse_time("--since", &t))
                    .transpose()?,
                until: until
                    .map(|t| crate::history::parse_time("--until", &t))
                    .transpose()?,
            };
            crate::history(global, limit, &filter).await
        }
        Command::Migrate { action } => migrate(global, action).await,
        Command::Canary { action } => canary(global, action).await,
        Command::Lock {
            action: LockAction::Status,
        } => crate::lock_status(global).await,
        Command::Lock {
            action: LockAction::Break { yes },
        } => crate::lock_break(global, yes).await,
        Command::Host { action } => member(global, Member::Host, action).await,
        Command::Lb { action } => member(global, Member::Lb, action).await,
        Command::Logs {
            host,
            color: c,
            tail,
            follow: true,
        } => crate::live::follow_logs(global, &host, color(&c)?, tail).await,
        Command::Logs {
            host,
            color: c,
            tail,
            follow: false,
        } => crate::logs(global, &host, color(&c)?, tail).await,
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "coordinator", &mut out);
            Ok(String::from_utf8(out).expect("completion scripts are UTF-8"))
        }
        Command::Man => Ok(man_page(Cli::command())),
    };
    text.map(|t| (t, 0))
}

async fn member(
    global: &Global,
    kind: Member,
    action: MemberAction,
) -> Result<String, CoordinatorError> {
    match action {
        MemberAction::List => crate::member_list(global, kind).await,
        MemberAction::Remove {
            name,
            yes,
            lock_wait,
        } => {
            let lock_wait = crate::parse_duration("--lock-wait", &lock_wait)?;
            crate::member_remove(global, kind, &name, yes, lock_wait).await
        }
    }
}

async fn canary(global: &Global, action: CanaryCommand) -> Result<String, CoordinatorError> {
    use crate::canary::control;
    use proto::records::CanaryAction;
    let (action, flags) = match action {
        CanaryCommand::Status => return control::status(global).await,
        CanaryCommand::Pause(f) => (CanaryAction::Pause, f),
        CanaryCommand::Resume(f) => (CanaryAction::Resume, f),
        CanaryCommand::Promote(f) => (CanaryAction::Promote, f),
        CanaryCommand::Abort(f) => (CanaryAction::Abort, f),
    };
    let lock_wait = crate::parse_duration("--lock-wait", &flags.lock_wait)?;
    control::request(global, action, lock_wait).await
}

async fn migrate(global: &Global, action: MigrateAction) -> Result<String, CoordinatorError> {
    use crate::migrate::commands::{self, Direction, MigrateRequest};
    let request = |flags: MigrateFlags, force: bool| -> Result<MigrateRequest, CoordinatorError> {
        Ok(MigrateRequest {
            spec: flags.spec,
            lock_wait: crate::parse_duration("--lock-wait", &flags.lock_wait)?,
            app_version: flags.version,
            force,
        })
    };
    match action {
        MigrateAction::Status { spec } => commands::show(global, &spec).await,
        MigrateAction::Up(flags) => {
            commands::change(global, request(flags, false)?, Direction::Up).await
        }
        MigrateAction::Contract(flags) => {
            commands::change(global, request(flags, false)?, Direction::Contract).await
        }
        MigrateAction::Down { flags, force } => {
            commands::change(global, request(flags, force)?, Direction::Down).await
        }
    }
}

impl Command {
    /// The command as a user typed it, for the `result` event.
    fn name(&self) -> String {
        let name = match self {
            Command::Deploy { plan: true, .. } => "deploy --plan",
            Command::Deploy {
                no_switch: true, ..
            } => "deploy --no-switch",
            Command::Deploy { canary: true, .. } => "deploy --canary",
            Command::Canary { action } => match action {
                CanaryCommand::Status => "canary status",
                CanaryCommand::Pause(_) => "canary pause",
                CanaryCommand::Resume(_) => "canary resume",
                CanaryCommand::Promote(_) => "canary promote",
                CanaryCommand::Abort(_) => "canary abort",
            },
            Command::Deploy { .. } => "deploy",
            Command::Promote { .. } => "promote",
            Command::Validate { .. } => "validate",
            Command::Keygen { .. } => "keygen",
            Command::Rollback { .. } => "rollback",
            Command::Switch { .. } => "switch",
            Command::Stop { .. } => "stop",
            Command::Status { .. } => "status",
            Command::Apps => "apps",
            Command::History { .. } => "history",
            Command::Migrate { action } => match action {
                MigrateAction::Status { .. } => "migrate status",
                MigrateAction::Up(_) => "migrate up",
                MigrateAction::Contract(_) => "migrate contract",
                MigrateAction::Down { .. } => "migrate down",
            },
            Command::Lock { action } => match action {
                LockAction::Status => "lock status",
                LockAction::Break { .. } => "lock break",
            },
            Command::Host { action } | Command::Lb { action } => {
                let noun = if matches!(self, Command::Host { .. }) {
                    "host"
                } else {
                    "lb"
                };
                let verb = match action {
                    MemberAction::List => "list",
                    MemberAction::Remove { .. } => "remove",
                };
                return format!("{noun} {verb}");
            }
            Command::Logs { .. } => "logs",
            Command::Completions { .. } => "completions",
            Command::Man => "man",
        };
        name.to_string()
    }

    /// A query reads and prints one document (JSON: one object or array); an action changes
    /// something and prints progress events, then its `result` event.
    fn is_query(&self) -> bool {
        match self {
            Command::Deploy { plan, .. } => *plan,
            Command::Validate { .. }
            | Command::Status { .. }
            | Command::Apps
            | Command::History { .. }
            | Command::Logs { .. }
            | Command::Completions { .. }
            | Command::Man => true,
            Command::Migrate { action } => matches!(action, MigrateAction::Status { .. }),
            Command::Lock { action } => matches!(action, LockAction::Status),
            Command::Canary { action } => matches!(action, CanaryCommand::Status),
            Command::Host { action } | Command::Lb { action } => {
                matches!(action, MemberAction::List)
            }
            Command::Keygen { .. }
            | Command::Promote { .. }
            | Command::Rollback { .. }
            | Command::Switch { .. }
            | Command::Stop { .. } => false,
        }
    }
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
    let query = cli.command.is_query();
    let access = proto::EtcdAccess::resolve(proto::AccessSettings {
        endpoints: cli.etcd,
        cacert: cli.etcd_cacert,
        cert: cli.etcd_cert,
        key: cli.etcd_key,
        user: cli.etcd_user,
        password_file: cli.etcd_password_file,
        password_env: std::env::var("BLUEGREEN_ETCD_PASSWORD").ok(),
    });
    let grpc_tls =
        crate::probes::GrpcClientTls::from_parts(cli.grpc_cacert, cli.grpc_cert, cli.grpc_key);
    let global = Global {
        etcd: proto::EtcdAccess::default(),
        grpc_tls: None,
        prefix: cli.prefix,
        app: cli.app,
        json,
        recorder: report::Recorder::default(),
    };
    global.recorder.command(&name);
    let global = match (access, grpc_tls) {
        (Ok(etcd), Ok(grpc_tls)) => Global {
            etcd,
            grpc_tls,
            ..global
        },
        (Err(e), _) | (_, Err(e)) => {
            fail(&global, &name, CoordinatorError::Usage(e), started).await
        }
    };
    match dispatch(&global, cli.command).await {
        Ok((text, exit)) => {
            if !query {
                let facts = global.recorder.facts();
                let app = global.app.as_deref();
                let elapsed = started.elapsed();
                let event =
                    report::result_event(Some(&name), &facts, app, exit, text.trim(), elapsed);
                crate::aftermath::run(&facts, exit, &event, &global.progress()).await;
                if json {
                    emit(&format!("{event}\n"));
                    std::process::exit(exit);
                }
            }
            if text.ends_with('\n') || text.is_empty() {
                emit(&text);
            } else {
                emit(&format!("{text}\n"));
            }
            std::process::exit(exit);
        }
        Err(e) => fail(&global, &name, e, started).await,
    }
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
    if global.json {
        emit(&format!("{event}\n"));
    }
    eprintln!("coordinator: {shown}");
    std::process::exit(e.exit_code());
}

/// The command line's definition (for man pages and the help test).
pub fn command() -> clap::Command {
    Cli::command()
}

/// The roff man page of `command`.
pub fn man_page(command: clap::Command) -> String {
    let mut out = Vec::new();
    clap_mangen::Man::new(command)
        .render(&mut out)
        .expect("rendering into memory cannot fail");
    String::from_utf8(out).expect("man pages are UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
