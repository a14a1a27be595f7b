//! `coordinator ui --listen ADDR`: serves the web dashboard until SIGTERM or Ctrl-C. The
//! dashboard watches etcd with this process's own etcd user (read-only is enough) and runs each
//! action a person clicks as this tool's own command line, with that person's etcd user, through
//! [`crate::cli::perform`]: a click does exactly what typing the command does.
use crate::context::Global;
use crate::dashboard::{self, Call, Config, Done, Runner};
use crate::error::{CoordinatorError, Subject};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    /// Where to serve the dashboard. An address other than loopback needs --tls-cert and
    /// --tls-key; with etcd auth off, only loopback is allowed.
    #[arg(long, env = "BLUEGREEN_UI_LISTEN", default_value = "127.0.0.1:8480")]
    listen: SocketAddr,
    /// The dashboard's TLS certificate chain (PEM).
    #[arg(long, env = "BLUEGREEN_UI_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "BLUEGREEN_UI_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// With etcd auth off (development), let anyone who reaches the loopback port act
    /// (rollback, abort...). Ignored with etcd auth on: etcd's roles decide.
    #[arg(long)]
    allow_actions: bool,
}

impl Args {
    pub async fn run(self, global: &Global) -> Result<String, CoordinatorError> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(
                dashboard::tls_acceptor(cert, key)
                    // The message names the flag (--tls-cert or --tls-key) and the file.
                    .map_err(CoordinatorError::usage)?,
            ),
            _ => None,
        };
        let client = global.connect().await?;
        let etcd_auth = etcd_auth_on(global).await;
        dashboard::auth::check_listen(self.listen, tls.is_some(), etcd_auth)
            .map_err(|e| Subject::flag("--listen").usage(e))?;
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .map_err(|e| {
                Subject::flag_value("--listen", self.listen.to_string())
                    .usage(format!("cannot listen: {e}"))
            })?;
        let config = Config {
            prefix: global.prefix.clone(),
            access: global.etcd.clone(),
            tls: tls.is_some(),
            etcd_auth,
            allow_actions: self.allow_actions,
            anonymous_actor: format!("{} via ui", crate::actor::current()),
            allowed_hosts: Config::loopback_hosts(listener.local_addr().unwrap_or(self.listen)),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mode = match (etcd_auth, self.allow_actions) {
            (true, _) => "people log in with their etcd user".to_string(),
            (false, true) => "etcd auth is off: no login, actions allowed".to_string(),
            (false, false) => "etcd auth is off: no login, read only".to_string(),
        };
        eprintln!(
            "coordinator ui: serving {scheme}://{} ({mode})",
            listener.local_addr().map_or(self.listen, |a| a)
        );
        let dashboard = dashboard::Dashboard::new(config, client, runner(global.clone()));
        let mut shutdown = proto::daemon::shutdown_on_signal();
        let stop = async move { proto::daemon::shutdown_requested(&mut shutdown).await };
        dashboard::serve(dashboard.clone(), listener, tls, stop)
            .await
            .map_err(|e| CoordinatorError::failed(format!("dashboard server: {e}")))?;
        dashboard.stop(ACTIONS_PATIENCE).await;
        Ok(String::new())
    }
}

/// Whether etcd asks who is calling: a read by nobody in particular (no user, no client
/// certificate) is refused. Anything but a plain success counts as on, the safe side.
async fn etcd_auth_on(global: &Global) -> bool {
    let anonymous = global.etcd.anonymous();
    let Ok(client) = proto::access::connect(&anonymous).await else {
        return true;
    };
    let options = etcd_client::GetOptions::new().with_count_only();
    client
        .clone()
        .get(global.prefix.as_str(), Some(options))
        .await
        .is_err()
}

/// How long a stopping dashboard waits for the actions still running (a promote with
/// `--verify-for` takes minutes); the packaged unit's stop timeout is longer.
const ACTIONS_PATIENCE: std::time::Duration = std::time::Duration::from_secs(9 * 60);

/// The stack of an action's thread: what Linux gives a process's main thread (8 MiB).
const ACTION_STACK: usize = 8 << 20;

/// Runs a person's command line as this tool does, with their etcd access. Each runs on a
/// thread of its own with a single-threaded runtime, as the command line tool runs it (its
/// operations are not all `Send`); actions are rare, so a thread each costs nothing that counts.
fn runner(base: Global) -> Runner {
    Arc::new(move |call: Call| {
        let base = base.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        // The main thread's stack, as the command line tool has: an operation's future is
        // large (a debug build's deploy pipeline overflows a spawned thread's default 2 MiB).
        let thread = std::thread::Builder::new()
            .name("ui action".into())
            .stack_size(ACTION_STACK);
        let spawned = thread.spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let done = match runtime {
                Ok(runtime) => runtime.block_on(run(base, call)),
                Err(e) => Done {
                    exit: 1,
                    text: format!("starting the action's runtime: {e}"),
                    event: None,
                },
            };
            let _ = tx.send(done);
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start a thread for an action");
        }
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| Done {
                exit: 1,
                text: "the action's thread ended without a result".into(),
                event: None,
            })
        })
    })
}

async fn run(base: Global, call: Call) -> Done {
    let started = std::time::Instant::now();
    let command = match crate::cli::parse_line(&call.args) {
        Ok(command) => command,
        Err(e) => {
            return Done {
                exit: 2,
                text: e,
                event: None,
            }
        }
    };
    let global = Global {
        etcd: call.access,
        app: Some(call.app),
        json: call.json,
        recorder: Default::default(),
        ..base
    };
    let done = call
        .invoker
        .scope(crate::cli::perform(&global, command, started))
        .await;
    Done {
        exit: done.exit,
        text: done.text,
        event: done.event,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_dashboard_action_is_a_command_line_this_tool_parses() {
        for (name, argv) in crate::dashboard::routes::ACTIONS {
            let args: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
            let command = crate::cli::parse_line(&args)
                .unwrap_or_else(|e| panic!("action {name}: {argv:?} does not parse: {e}"));
            assert!(!command.is_query(), "action {name} runs a query");
        }
    }
}
