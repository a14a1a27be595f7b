//! The command layer: one module per command (its arguments and its handler), laid out like
//! cargo's. Commands use everything below them (the pipeline, the store, the traffic primitives,
//! [`crate::context`]); nothing below imports from here. `cli` parses the command line into a
//! [`Command`] and reports its outcome.
pub mod apps;
pub mod canary;
pub mod checks;
pub mod completions;
pub mod deploy;
pub mod history;
pub mod keygen;
pub mod lock;
pub mod logs;
pub mod man;
pub mod member;
pub mod migrate;
pub mod promote;
pub mod rollback;
pub mod status;
pub mod stop;
pub mod switch;
pub mod ui;
pub mod validate;

use crate::context::{load_spec, Global};
use crate::error::CoordinatorError;
use crate::membership::Member;
use clap::Subcommand;
use proto::Color;

#[derive(Subcommand)]
pub enum Command {
    /// Stage a version on the idle color of every host, check it, switch traffic to it.
    Deploy(deploy::Args),
    /// A running canary: its status, or an operator's decision about it (carried out by the
    /// coordinator running the canary, recorded in history).
    Canary {
        #[command(subcommand)]
        action: canary::Action,
    },
    /// Switch to the version `deploy --no-switch` staged, after its checks again (health on every
    /// host, the active color still serving, the smoke checks).
    Promote(promote::Args),
    /// Check a spec, its migrations (parsed and linted) and optionally the artifact, without
    /// etcd or the database: exit 0 when a deploy would accept them, 2 naming what is wrong.
    Validate(validate::Args),
    /// Make an ed25519 key pair for signing releases: NAME.key (keep it in CI's secrets) and
    /// NAME.pub (list it in every agent's trusted_keys).
    Keygen(keygen::Args),
    /// Switch back to the previous color (must be healthy); waits for every LB's ack.
    Rollback(rollback::Args),
    /// Manual switch to a color, with the same safety checks as rollback.
    Switch(switch::Args),
    /// Stop the idle color on every host (never the active one); gives up the instant rollback.
    Stop(stop::Args),
    /// Active color, releases, every host's health, every LB's ack, lock holder, last deploy.
    Status(status::Args),
    /// The apps under the prefix (no --app needed).
    Apps,
    /// The audit trail, newest last.
    History(history::Args),
    /// Database migrations: status, up (expand), contract (gated), down (newest applied).
    Migrate {
        #[command(subcommand)]
        action: migrate::Action,
    },
    /// The deploy lock.
    Lock {
        #[command(subcommand)]
        action: lock::Action,
    },
    /// LB membership: every registered LB, alive or not, and removing one that is gone for good.
    Lb {
        #[command(subcommand)]
        action: member::Action,
    },
    /// Host membership: every registered host, alive or not, and removing one that is gone for good.
    Host {
        #[command(subcommand)]
        action: member::Action,
    },
    /// Print a shell completion script: `coordinator completions bash > /etc/bash_completion.d/coordinator`.
    Completions(completions::Args),
    /// Print the man page (roff): `coordinator man > /usr/share/man/man1/coordinator.1`.
    Man,
    /// The last log lines of one color on one host (through its agent).
    Logs(logs::Args),
    /// Serve the web dashboard: the apps, hosts, LBs, deploys and canaries live, with promote,
    /// abort and rollback behind each person's etcd role.
    Ui(ui::Args),
}

impl Command {
    /// Runs the command: its output and exit code (0 unless the command reports a verdict, as
    /// `validate` and `deploy --plan` do). `cli` is the whole command line's definition, for
    /// `completions` and `man`.
    pub async fn run(
        self,
        global: &Global,
        cli: clap::Command,
    ) -> Result<(String, i32), CoordinatorError> {
        let text = match self {
            Command::Deploy(args) => return args.run(global).await,
            Command::Validate(args) => return Ok(args.run(global).await),
            Command::Canary { action } => action.run(global).await,
            Command::Promote(args) => args.run(global).await,
            Command::Keygen(args) => args.run(),
            Command::Rollback(args) => args.run(global).await,
            Command::Switch(args) => args.run(global).await,
            Command::Stop(args) => args.run(global).await,
            Command::Status(args) => args.run(global).await,
            Command::Apps => apps::run(global).await,
            Command::History(args) => args.run(global).await,
            Command::Migrate { action } => action.run(global).await,
            Command::Lock { action } => action.run(global).await,
            Command::Host { action } => action.run(global, Member::Host).await,
            Command::Lb { action } => action.run(global, Member::Lb).await,
            Command::Logs(args) => args.run(global).await,
            Command::Ui(args) => args.run(global).await,
            Command::Completions(args) => Ok(args.run(cli)),
            Command::Man => Ok(man::page(cli)),
        };
        text.map(|t| (t, 0))
    }

    /// The command as a user typed it, for the `result` event.
    pub fn name(&self) -> String {
        let name = match self {
            Command::Deploy(args) => args.name(),
            Command::Canary { action } => action.name(),
            Command::Promote(_) => "promote",
            Command::Validate(_) => "validate",
            Command::Keygen(_) => "keygen",
            Command::Rollback(args) => args.name(),
            Command::Switch(_) => "switch",
            Command::Stop(_) => "stop",
            Command::Status(_) => "status",
            Command::Apps => "apps",
            Command::History(_) => "history",
            Command::Migrate { action } => action.name(),
            Command::Lock { action } => action.name(),
            Command::Host { action } => return action.name(Member::Host),
            Command::Lb { action } => return action.name(Member::Lb),
            Command::Logs(_) => "logs",
            Command::Ui(_) => "ui",
            Command::Completions(_) => "completions",
            Command::Man => "man",
        };
        name.to_string()
    }

    /// A query reads and prints one document (JSON: one object or array); an action changes
    /// something and prints progress events, then its `result` event.
    pub fn is_query(&self) -> bool {
        match self {
            Command::Deploy(args) => args.is_query(),
            Command::Validate(_)
            | Command::Status(_)
            | Command::Apps
            | Command::History(_)
            | Command::Logs(_)
            | Command::Ui(_)
            | Command::Completions(_)
            | Command::Man => true,
            Command::Migrate { action } => action.is_query(),
            Command::Lock { action } => action.is_query(),
            Command::Canary { action } => action.is_query(),
            Command::Host { action } | Command::Lb { action } => action.is_query(),
            Command::Keygen(_)
            | Command::Promote(_)
            | Command::Rollback(_)
            | Command::Switch(_)
            | Command::Stop(_) => false,
        }
    }
}

/// Loads `--spec` of a command that takes it only for its hooks and webhooks.
fn remember_spec(global: &Global, spec: Option<&std::path::Path>) -> Result<(), CoordinatorError> {
    if let Some(path) = spec {
        global
            .recorder
            .spec(&load_spec(global.app.as_deref(), path)?);
    }
    Ok(())
}

/// A color argument (clap already limited it to blue or green).
fn color(value: &str) -> Result<Color, CoordinatorError> {
    value
        .parse()
        .map_err(|e: proto::ProtoError| CoordinatorError::usage("").because(e))
}
