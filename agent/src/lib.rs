//! The per-host agent: runs the blue and green copies of an app side by side, converges them to
//! `releases/<color>` in etcd, and reports host and health under its own lease.
//! It is control plane only: stopping it never stops the apps, and a restarted agent adopts them.
#![forbid(unsafe_code)]

pub mod apps;
pub mod artifact;
pub mod config;
pub mod desired;
pub mod error;
pub mod grpc;
pub mod health;
pub mod lifecycle;
pub mod logs;
pub mod metrics;
pub mod process;
pub mod reporter;
pub mod runtime;
pub mod status;
pub mod supervisor;
pub mod workdir;

use config::Config;
use error::AgentError;
use proto::agent_api::agent_server::AgentServer;
use proto::records::HostRecord;
use proto::{Color, Keys};
use status::DesiredRelease;
use std::sync::Arc;
use std::time::Duration;
use supervisor::Supervisor;
use tokio::sync::watch;

/// Runs the agent until `shutdown` becomes true. Apps keep running afterwards. Each config
/// `reloads` delivers (a `SIGHUP`) starts the apps it adds and retires the ones it drops.
pub async fn run(
    config: Config,
    shutdown: watch::Receiver<bool>,
    mut reloads: tokio::sync::mpsc::Receiver<Config>,
) -> Result<(), AgentError> {
    {
        use std::os::unix::fs::PermissionsExt;
        let dir = &config.state_dir;
        std::fs::create_dir_all(dir).map_err(|e| AgentError::io(dir, e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| AgentError::io(dir, e))?;
    }
    apps::check_unclaimed_layout(&config)?;
    let trusted =
        proto::signing::TrustedKeys::load(&config.trusted_keys).map_err(AgentError::Setting)?;
    if trusted.required() {
        tracing::info!(
            keys = config.trusted_keys.len(),
            "only signed releases will run"
        );
    }
    let grpc_listener = grpc::Listener::bind(&config.grpc).await?;
    let metrics = Arc::new(metrics::AgentMetrics::default());
    let metrics_listener = match config.metrics_listen {
        // A port taken (two agents on one address) costs the metrics, not the control plane.
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => Some(listener),
            Err(e) => {
                tracing::warn!(%addr, error = %e, "metrics_listen: cannot listen; serving no /metrics");
                None
            }
        },
        None => None,
    };
    let client = proto::connect(&config.etcd).await?;
    // Its role must allow its own keys in every app, and each app's host name must be free:
    // checked before anything starts (the error names the key or the other agent).
    apps::check_access(&client, &config, &config.apps).await?;
    let instance = proto::leased::instance_id(&config.state_dir);
    for app in &config.apps {
        apps::claim(&client, &config, &instance, &app.name).await?;
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(2)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| AgentError::Setting(format!("http client: {e}")))?;
    // One lease for every app this agent runs.
    let (held, held_rx) = apps::HeldSet::new();
    let holder = tokio::spawn(proto::leased::hold_keys(
        client.clone(),
        config.lease_ttl,
        instance.clone(),
        held_rx,
        shutdown.clone(),
    ));
    let views = apps::AppViews::default();
    let mut apps = apps::Apps::new(apps::Shared {
        client,
        config: config.clone(),
        held,
        metrics: metrics.clone(),
        http,
        trusted,
        instance,
        views: views.clone(),
        shutdown: shutdown.clone(),
    });
    for app in config.apps.clone() {
        apps.start(app)?;
    }
    let mut reload_shutdown = shutdown.clone();
    let reloader = tokio::spawn(async move {
        loop {
            tokio::select! {
                next = reloads.recv() => match next {
                    Some(new) => apps.reload(new).await,
                    None => std::future::pending::<()>().await,
                },
                _ = status::shutdown_requested(&mut reload_shutdown) => {
                    apps.join().await;
                    return;
                }
            }
        }
    });
    let mut tasks = vec![holder, reloader];
    if let Some(listener) = metrics_listener {
        tasks.push(tokio::spawn(metrics::serve(
            listener,
            metrics.clone(),
            shutdown.clone(),
        )));
    }

    let service = grpc::AgentService {
        host: config.host.clone(),
        address: config.address.clone(),
        apps: views,
    };
    let mut grpc_shutdown = shutdown.clone();
    let mut server = tonic::transport::Server::builder();
    match &config.grpc {
        config::GrpcServe::Tls { tls, .. } => {
            server = server
                .tls_config(grpc_tls(tls)?)
                .map_err(|e| AgentError::Setting(format!("tls_cert/tls_key/tls_client_ca: {e}")))?
        }
        config::GrpcServe::Socket {
            unserved_listen: Some(asked),
            path,
        } => tracing::warn!(%asked, socket = %path.display(),
            "grpc_listen is served only with mutual TLS (tls_cert, tls_key, tls_client_ca); \
             without it the gRPC API is the root-only socket"),
        config::GrpcServe::Socket { .. } => {}
    }
    let router = server.add_service(AgentServer::new(service));
    let stop = async move {
        status::shutdown_requested(&mut grpc_shutdown).await;
    };
    let names: Vec<&str> = config.apps.iter().map(|a| a.name.as_str()).collect();
    tracing::info!(host = %config.host, apps = %names.join(","), grpc = %config.grpc.endpoint(), "agent running");
    let served = match grpc_listener {
        grpc::Listener::Tcp(listener) => {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            router.serve_with_incoming_shutdown(incoming, stop).await
        }
        grpc::Listener::Socket(listener, ref path) => {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            let served = router.serve_with_incoming_shutdown(incoming, stop).await;
            let _ = std::fs::remove_file(path);
            served
        }
    };
    if let Err(e) = served {
        tracing::error!(error = %e, "gRPC server failed");
    }
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}

/// What the control plane of one host needs besides its app runtime.
pub struct ControlPlaneSettings {
    pub client: etcd_client::Client,
    pub keys: Keys,
    /// This host's registration (its claim on the host name, and its membership).
    pub host: HostRecord,
    pub lease_ttl: Duration,
    pub max_restarts: u32,
    pub trusted: proto::signing::TrustedKeys,
    /// Where the agent keeps what must survive a restart (the newest accepted tokens).
    pub state_dir: std::path::PathBuf,
}

/// An agent's control plane, running: a supervisor per color, the feed of what etcd wants, and
/// the reporter holding this host's keys under its lease. The real agent runs it over processes,
/// a hollow host (the scale benchmarks' test support) over an in-memory runtime; it is the same
/// code either way.
pub struct ControlPlane {
    /// Supervisors and reporter: they end at shutdown.
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The desired feed: it follows etcd until aborted.
    pub feed: tokio::task::JoinHandle<()>,
    /// Each color's status, as the reporter writes it.
    pub statuses: Vec<watch::Receiver<Option<status::ColorStatus>>>,
}

impl ControlPlane {
    /// One app's control plane holding its keys under its own lease (a hollow host).
    pub fn spawn<R: runtime::AppRuntime>(
        settings: ControlPlaneSettings,
        runtime: Arc<R>,
        shutdown: watch::Receiver<bool>,
    ) -> ControlPlane {
        let (held, held_rx) = apps::HeldSet::new();
        let holder = tokio::spawn(proto::leased::hold_keys(
            settings.client.clone(),
            settings.lease_ttl,
            settings.host.instance.clone().unwrap_or_default(),
            held_rx,
            shutdown.clone(),
        ));
        let mut plane = ControlPlane::spawn_in(settings, runtime, shutdown, held);
        plane.tasks.push(holder);
        plane
    }

    /// One app's control plane whose keys go into `held`, which the agent holds under its one
    /// lease together with its other apps' keys.
    pub fn spawn_in<R: runtime::AppRuntime>(
        settings: ControlPlaneSettings,
        runtime: Arc<R>,
        shutdown: watch::Receiver<bool>,
        held: apps::HeldSet,
    ) -> ControlPlane {
        let (active_tx, active_rx) = watch::channel(None);
        let mut desired_txs = Vec::new();
        let mut statuses = Vec::new();
        let mut tasks = Vec::new();
        for color in Color::ALL {
            let (desired_tx, desired_rx) = watch::channel(DesiredRelease::Unknown);
            let (status_tx, status_rx) = watch::channel(None);
            let supervisor = Supervisor::new(
                color,
                runtime.clone(),
                settings.max_restarts,
                desired_rx,
                active_rx.clone(),
                status_tx,
            );
            tasks.push(tokio::spawn(supervisor.run(shutdown.clone())));
            desired_txs.push(desired_tx);
            statuses.push(status_rx);
        }
        let green = desired_txs.pop().expect("two colors");
        let blue = desired_txs.pop().expect("two colors");
        let feed = desired::DesiredFeed {
            client: settings.client.clone(),
            keys: settings.keys.clone(),
            blue,
            green,
            active: active_tx,
            trusted: settings.trusted,
            floor: desired::TokenFloor::load(&settings.state_dir),
        };
        let feed = tokio::spawn(feed.run());
        let reporter = reporter::Reporter {
            keys: settings.keys,
            host: settings.host,
            statuses: statuses.clone(),
            held,
        };
        tasks.push(tokio::spawn(reporter.run(shutdown)));
        ControlPlane {
            tasks,
            feed,
            statuses,
        }
    }
}

/// Mutual TLS for the gRPC API: our certificate, and only clients whose certificate the
/// configured CA signed.
fn grpc_tls(tls: &config::GrpcTls) -> Result<tonic::transport::ServerTlsConfig, AgentError> {
    let read = |path: &std::path::Path| std::fs::read(path).map_err(|e| AgentError::io(path, e));
    Ok(tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            read(&tls.cert)?,
            read(&tls.key)?,
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(read(
            &tls.client_ca,
        )?)))
}
