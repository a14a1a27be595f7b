//! `coordinator`: parses the command line and calls the library; exit codes per DESIGN.md §5.
#![forbid(unsafe_code)]
use clap::{Parser, Subcommand, ValueEnum};
use coordinator::{CoordinatorError, Global, Member};
use proto::Color;
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
    #[arg(
        long,
        env = "BLUEGREEN_PREFIX",
        default_value = "/bluegreen",
        global = true
    )]
    prefix: String,
    #[arg(long, env = "BLUEGREEN_APP", global = true)]
    app: Option<String>,
    #[arg(long, value_enum, default_value = "text", global = true)]
    output: Output,
    /// CA that signed etcd's server certificate (https:// endpoints).
    #[arg(long, env = "BLUEGREEN_ETCD_CACERT", global = true)]
    etcd_cacert: Option<PathBuf>,
    /// Client certificate for etcd (with --etcd-key).
    #[arg(long, env = "BLUEGREEN_ETCD_CERT", global = true)]
    etcd_cert: Option<PathBuf>,
    #[arg(long, env = "BLUEGREEN_ETCD_KEY", global = true)]
    etcd_key: Option<PathBuf>,
    /// etcd user; its password from --etcd-password-file or BLUEGREEN_ETCD_PASSWORD.
    #[arg(long, env = "BLUEGREEN_ETCD_USER", global = true)]
    etcd_user: Option<String>,
    #[arg(long, env = "BLUEGREEN_ETCD_PASSWORD_FILE", global = true)]
    etcd_password_file: Option<PathBuf>,
    /// CA that signed the agents' gRPC server certificates (logs over mutual TLS).
    #[arg(long, env = "BLUEGREEN_GRPC_CACERT", global = true)]
    grpc_cacert: Option<PathBuf>,
    /// Client certificate and key presented to the agents' gRPC API.
    #[arg(long, env = "BLUEGREEN_GRPC_CERT", global = true)]
    grpc_cert: Option<PathBuf>,
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
        #[arg(long)]
        spec: PathBuf,
        #[arg(long)]
        version: String,
        /// file://, http:// or https:// URL of a tar.gz or a single executable.
        #[arg(long)]
        artifact: String,
        /// Computed from the artifact when omitted.
        #[arg(long)]
        sha256: Option<String>,
        #[arg(long, default_value = "0s")]
        lock_wait: String,
        #[arg(long)]
        health_timeout: Option<String>,
        #[arg(long)]
        verify_for: Option<String>,
        /// Leave a failed color running for debugging instead of stopping it.
        #[arg(long)]
        keep_failed: bool,
        /// Switch even when no LB is registered (nothing can follow or verify the switch).
        #[arg(long)]
        allow_no_lb: bool,
        /// ed25519 private key (`coordinator keygen`) to sign the release with; agents with
        /// trusted_keys run only signed releases.
        #[arg(long, env = "BLUEGREEN_SIGNING_KEY_FILE")]
        signing_key: Option<PathBuf>,
        /// Show what the deploy would do now (target color, hosts, LBs that must ack, pending
        /// migrations, lock holder) and exit with the code it would have; writes nothing.
        #[arg(long)]
        plan: bool,
    },
    /// Check a spec, its migrations (parsed and linted) and optionally the artifact, without
    /// etcd or the database: exit 0 when a deploy would accept them, 2 naming what is wrong.
    Validate {
        #[arg(long)]
        spec: PathBuf,
        /// Check the version's format too.
        #[arg(long)]
        version: Option<String>,
        /// Fetch the artifact once and hash it (it is reachable, and is --sha256 when given).
        #[arg(long)]
        artifact: Option<String>,
        #[arg(long, requires = "artifact")]
        sha256: Option<String>,
    },
    /// Make an ed25519 key pair for signing releases: NAME.key (keep it in CI's secrets) and
    /// NAME.pub (list it in every agent's trusted_keys).
    Keygen {
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        #[arg(long, default_value = "bluegreen-release")]
        name: String,
    },
    /// Switch back to the previous color (must be healthy); waits for every LB's ack.
    Rollback {
        #[arg(long, default_value = "30s")]
        lock_wait: String,
        /// Write `active` even when no LB is registered.
        #[arg(long)]
        allow_no_lb: bool,
    },
    /// Manual switch to a color, with the same safety checks as rollback.
    Switch {
        /// The color to send traffic to.
        #[arg(value_parser = ["blue", "green"])]
        color: String,
        #[arg(long, default_value = "30s")]
        lock_wait: String,
        /// Write `active` even when no LB is registered.
        #[arg(long)]
        allow_no_lb: bool,
    },
    /// Stop the idle color on every host (never the active one); gives up the instant rollback.
    Stop {
        /// The idle color to stop.
        #[arg(value_parser = ["blue", "green"])]
        color: String,
        #[arg(long, default_value = "30s")]
        lock_wait: String,
    },
    /// Active color, releases, every host's health, every LB's ack, lock holder, last deploy.
    Status,
    /// The apps under the prefix (no --app needed).
    Apps,
    /// The audit trail, newest last.
    History {
        #[arg(long, default_value = "20")]
        limit: usize,
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
    /// The last log lines of one color on one host (through its agent).
    Logs {
        /// The host, as `host list` names it.
        #[arg(long)]
        host: String,
        #[arg(long, value_parser = ["blue", "green"])]
        color: String,
        /// How many of the last lines.
        #[arg(long, default_value = "50")]
        tail: u32,
    },
}

#[derive(Subcommand)]
enum MigrateAction {
    /// Every migration's state, problems, and whether pending contract migrations may run.
    Status {
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
    #[arg(long)]
    spec: PathBuf,
    #[arg(long, default_value = "30s")]
    lock_wait: String,
    /// The app version these migrations come with, recorded in schema_migrations.
    #[arg(long)]
    version: Option<String>,
}

#[derive(Subcommand)]
enum LockAction {
    Status,
    /// Revoke a stuck holder's lease (its fence makes any late write of it fail).
    Break {
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
        name: String,
        #[arg(long)]
        yes: bool,
        #[arg(long, default_value = "30s")]
        lock_wait: String,
    },
}

fn color(value: &str) -> Result<Color, CoordinatorError> {
    value
        .parse()
        .map_err(|e: proto::ProtoError| CoordinatorError::Usage(e.to_string()))
}

/// The command's output and exit code (0 unless the command reports a verdict, as `validate` and
/// `deploy --plan` do).
async fn dispatch(global: &Global, command: Command) -> Result<(String, i32), CoordinatorError> {
    use coordinator::parse_duration as dur;
    let text = match command {
        Command::Deploy {
            spec,
            version,
            artifact,
            sha256,
            lock_wait,
            health_timeout,
            verify_for,
            keep_failed,
            allow_no_lb,
            signing_key,
            plan,
        } => {
            let req = coordinator::DeployRequest {
                spec,
                version,
                artifact,
                sha256,
                lock_wait: dur("--lock-wait", &lock_wait)?,
                health_timeout: health_timeout
                    .map(|d| dur("--health-timeout", &d))
                    .transpose()?,
                verify_for: verify_for.map(|d| dur("--verify-for", &d)).transpose()?,
                keep_failed,
                allow_no_lb,
                signing_key,
            };
            if plan {
                return coordinator::deploy_plan(global, req).await;
            }
            coordinator::deploy(global, req).await
        }
        Command::Validate {
            spec,
            version,
            artifact,
            sha256,
        } => {
            let req = coordinator::validate::ValidateRequest {
                spec,
                version,
                artifact,
                sha256,
            };
            let report = coordinator::validate::validate(global.app.as_deref(), &req).await;
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
        } => coordinator::switch(global, None, dur("--lock-wait", &lock_wait)?, allow_no_lb).await,
        Command::Switch {
            color: c,
            lock_wait,
            allow_no_lb,
        } => {
            let target = Some(color(&c)?);
            coordinator::switch(global, target, dur("--lock-wait", &lock_wait)?, allow_no_lb).await
        }
        Command::Stop {
            color: c,
            lock_wait,
        } => coordinator::stop(global, color(&c)?, dur("--lock-wait", &lock_wait)?).await,
        Command::Keygen { out_dir, name } => coordinator::keygen(&out_dir, &name),
        Command::Status => coordinator::status(global).await,
        Command::Apps => coordinator::apps(global).await,
        Command::History { limit } => coordinator::history(global, limit).await,
        Command::Migrate { action } => migrate(global, action).await,
        Command::Lock {
            action: LockAction::Status,
        } => coordinator::lock_status(global).await,
        Command::Lock {
            action: LockAction::Break { yes },
        } => coordinator::lock_break(global, yes).await,
        Command::Host { action } => member(global, Member::Host, action).await,
        Command::Lb { action } => member(global, Member::Lb, action).await,
        Command::Logs {
            host,
            color: c,
            tail,
        } => coordinator::logs(global, &host, color(&c)?, tail).await,
    };
    text.map(|t| (t, 0))
}

async fn member(
    global: &Global,
    kind: Member,
    action: MemberAction,
) -> Result<String, CoordinatorError> {
    match action {
        MemberAction::List => coordinator::member_list(global, kind).await,
        MemberAction::Remove {
            name,
            yes,
            lock_wait,
        } => {
            let lock_wait = coordinator::parse_duration("--lock-wait", &lock_wait)?;
            coordinator::member_remove(global, kind, &name, yes, lock_wait).await
        }
    }
}

async fn migrate(global: &Global, action: MigrateAction) -> Result<String, CoordinatorError> {
    use coordinator::migrate::commands::{self, Direction, MigrateRequest};
    let request = |flags: MigrateFlags, force: bool| -> Result<MigrateRequest, CoordinatorError> {
        Ok(MigrateRequest {
            spec: flags.spec,
            lock_wait: coordinator::parse_duration("--lock-wait", &flags.lock_wait)?,
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

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BLUEGREEN_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let cli = Cli::parse();
    let json = matches!(cli.output, Output::Json);
    let access = proto::EtcdAccess::resolve(proto::AccessSettings {
        endpoints: cli.etcd,
        cacert: cli.etcd_cacert,
        cert: cli.etcd_cert,
        key: cli.etcd_key,
        user: cli.etcd_user,
        password_file: cli.etcd_password_file,
        password_env: std::env::var("BLUEGREEN_ETCD_PASSWORD").ok(),
    });
    let grpc_tls = coordinator::probes::GrpcClientTls::from_parts(
        cli.grpc_cacert,
        cli.grpc_cert,
        cli.grpc_key,
    );
    let (etcd, grpc_tls) = match (access, grpc_tls) {
        (Ok(a), Ok(g)) => (a, g),
        (Err(e), _) | (_, Err(e)) => fail(json, CoordinatorError::Usage(e)),
    };
    let global = Global {
        etcd,
        grpc_tls,
        prefix: cli.prefix,
        app: cli.app,
        json,
    };
    match dispatch(&global, cli.command).await {
        Ok((text, exit)) => {
            if global.json && !text.trim_start().starts_with(['{', '[']) && !text.is_empty() {
                println!(
                    "{}",
                    serde_json::json!({"step": "result", "state": "ok", "detail": text.trim()})
                );
            } else {
                print!("{text}");
                if !text.ends_with('\n') && !text.is_empty() {
                    println!();
                }
            }
            std::process::exit(exit);
        }
        Err(e) => fail(global.json, e),
    }
}

fn fail(json: bool, e: CoordinatorError) -> ! {
    // Errors may quote app log lines or URLs: never print a password.
    let shown = proto::secrets::mask_text(&e.to_string());
    if json {
        println!(
            "{}",
            serde_json::json!({"step": "result", "state": "error", "exit": e.exit_code(), "detail": shown})
        );
    }
    eprintln!("coordinator: {shown}");
    std::process::exit(e.exit_code());
}
