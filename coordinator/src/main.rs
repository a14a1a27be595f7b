//! `coordinator`: parses the command line and calls the library; exit codes per DESIGN.md §5.
#![forbid(unsafe_code)]
use clap::{Parser, Subcommand, ValueEnum};
use coordinator::Global;

#[derive(Parser)]
#[command(name = "coordinator", version, about = "Deploy, switch, roll back and inspect a bluegreen app")]
struct Cli {
    /// etcd endpoints, comma separated.
    #[arg(long, env = "BLUEGREEN_ETCD", default_value = "http://127.0.0.1:2379", value_delimiter = ',', global = true)]
    etcd: Vec<String>,
    #[arg(long, env = "BLUEGREEN_PREFIX", default_value = "/bluegreen", global = true)]
    prefix: String,
    #[arg(long, env = "BLUEGREEN_APP", global = true)]
    app: Option<String>,
    #[arg(long, value_enum, default_value = "text", global = true)]
    output: Output,
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
    /// Active color, both colors' releases, every host's health, every LB's ack, lock holder.
    Status,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let Some(app) = cli.app else {
        eprintln!("coordinator: --app (or BLUEGREEN_APP) is required");
        std::process::exit(2);
    };
    let global = Global { etcd: cli.etcd, prefix: cli.prefix, app, json: matches!(cli.output, Output::Json) };
    let result = match cli.command {
        Command::Status => coordinator::status(&global).await,
    };
    match result {
        Ok(text) => print!("{text}"),
        Err(e) => {
            eprintln!("coordinator: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
