//! The agent's settings: a TOML file, overridden by flags and `BLUEGREEN_AGENT_*` environment
//! variables, validated once into [`Config`]. Nothing else in the agent reads the environment.
use crate::error::AgentError;
use clap::Parser;
use proto::records::Ports;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The dedicated system user apps run as unless configured otherwise (the packages create it).
pub const DEFAULT_RUN_AS: &str = "bluegreen-app";

/// Where every agent setting's variable name starts: `state_dir` is `BLUEGREEN_AGENT_STATE_DIR`.
pub const ENV_PREFIX: &str = "BLUEGREEN_AGENT_";

/// Every default, in one place (the file's own format). Settings not here have a default that
/// depends on another (`host`, `grpc_listen`, `metrics_listen`) or none.
pub const DEFAULTS: &str = r#"
etcd = ["http://127.0.0.1:2379"]
prefix = "/bluegreen"
address = "127.0.0.1"
state_dir = "/var/lib/bluegreen/agent"
lease_ttl = "10s"
max_restarts = 3
log_max_bytes = 4194304
app_log_level = "info"
run_as = "bluegreen-app"
download_timeout = "30s"
download_max_bytes = 2147483648
grpc_socket = "/run/bluegreen/agent.sock"
[ports]
blue = 8080
green = 8081
"#;

/// Command line of `agent`: the config file, then every setting (also a file key and a variable).
#[derive(Debug, Parser, Default)]
#[command(
    name = "agent",
    version,
    about = "Runs the blue and green copies of an app on this host and reports their health into etcd"
)]
pub struct Cli {
    /// TOML config file (see deploy/examples/agent.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Settings,
}

impl proto::settings::Daemon for Cli {
    const ENV_PREFIX: &'static str = ENV_PREFIX;
    const DEFAULTS: &'static str = DEFAULTS;
}

/// Every agent setting, declared once: the field is the file's key, `--flag` and
/// `BLUEGREEN_AGENT_<KEY>` (see `proto::settings`); its default is in [`DEFAULTS`].
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    #[command(flatten)]
    #[serde(flatten)]
    pub etcd: proto::access::EtcdSettings,
    /// The etcd key prefix every app lives under.
    #[arg(long)]
    pub prefix: Option<String>,
    /// The app this agent runs (required).
    #[arg(long)]
    pub app: Option<String>,
    /// This host's name in etcd [default: the machine's hostname].
    #[arg(long)]
    pub host: Option<String>,
    /// The address load balancers use to reach this host's apps; the apps listen on it.
    #[arg(long)]
    pub address: Option<String>,
    /// Artifacts, pid files and app logs.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The gRPC API over TCP, served only with mutual TLS (tls_cert, tls_key, tls_client_ca)
    /// [default: ADDRESS:7070].
    #[arg(long)]
    pub grpc_listen: Option<String>,
    /// The gRPC API without mutual TLS: a unix socket only root opens (`coordinator logs` run
    /// as root on this host).
    #[arg(long)]
    pub grpc_socket: Option<PathBuf>,
    /// Prometheus /metrics, on a loopback address; "off" serves none [default: ADDRESS:7071
    /// when ADDRESS is loopback, else 127.0.0.1:7071].
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// How fast a dead agent's keys disappear (at least 2s).
    #[arg(long)]
    pub lease_ttl: Option<String>,
    #[command(flatten)]
    pub ports: PortSettings,
    /// Crashes in a row (without staying healthy) before a color is declared failed.
    #[arg(long)]
    pub max_restarts: Option<u32>,
    /// Per-color log file size before it is rotated, in bytes.
    #[arg(long)]
    pub log_max_bytes: Option<u64>,
    /// LOG_LEVEL handed to the apps.
    #[arg(long)]
    pub app_log_level: Option<String>,
    /// Server certificate of the gRPC API (with --tls-key and --tls-client-ca: mutual TLS).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// CA whose client certificates the gRPC API accepts (required with --tls-cert).
    #[arg(long)]
    pub tls_client_ca: Option<PathBuf>,
    /// Public keys (ed25519, `coordinator keygen`) whose signature a release must carry.
    #[arg(long, value_delimiter = ',')]
    pub trusted_keys: Option<Vec<PathBuf>>,
    /// Directory of host-local secrets: a release env value `secret:NAME` is the file NAME there.
    #[arg(long)]
    pub secrets_dir: Option<PathBuf>,
    /// The user apps run as ("root" only if the apps truly need it).
    #[arg(long)]
    pub run_as: Option<String>,
    /// Longest wait for an artifact server's next bytes before the attempt fails.
    #[arg(long)]
    pub download_timeout: Option<String>,
    /// Largest artifact accepted, in bytes.
    #[arg(long)]
    pub download_max_bytes: Option<u64>,
}

/// `[ports]`: the two colors' ports (`--blue-port`, `--green-port`).
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize)]
#[serde(default)]
pub struct PortSettings {
    /// The blue copy's port.
    #[arg(
        id = "ports_blue",
        long = "blue-port",
        env = "BLUEGREEN_AGENT_BLUE_PORT"
    )]
    pub blue: Option<u16>,
    /// The green copy's port.
    #[arg(
        id = "ports_green",
        long = "green-port",
        env = "BLUEGREEN_AGENT_GREEN_PORT"
    )]
    pub green: Option<u16>,
}

/// Mutual TLS for the gRPC API: the server's certificate and the CA its clients must present.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

/// The validated settings the agent runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub etcd: proto::EtcdAccess,
    pub prefix: String,
    pub app: String,
    pub host: String,
    pub address: String,
    pub state_dir: PathBuf,
    /// Where the gRPC API (`coordinator logs`) answers.
    pub grpc: GrpcServe,
    /// `None`: no /metrics.
    pub metrics_listen: Option<SocketAddr>,
    pub lease_ttl: Duration,
    pub ports: Ports,
    pub max_restarts: u32,
    pub log_max_bytes: u64,
    pub app_log_level: String,
    /// Paths of trusted release-signing public keys; empty: releases need no signature.
    pub trusted_keys: Vec<PathBuf>,
    pub secrets_dir: Option<PathBuf>,
    /// The user apps run as; `None` means root, and only when configured so.
    pub run_as: Option<crate::process::RunAs>,
    pub download: crate::artifact::DownloadLimits,
}

/// How the gRPC API is served. It hands out every app's logs, so plain TCP (which any local user
/// can open, even on loopback) is never an option: mutual TLS on TCP, or a root-only unix socket.
#[derive(Debug, Clone, PartialEq)]
pub enum GrpcServe {
    Tls {
        listen: SocketAddr,
        tls: GrpcTls,
    },
    Socket {
        path: PathBuf,
        /// `grpc_listen` as set without TLS: not served, and the agent says so at start.
        unserved_listen: Option<String>,
    },
}

impl GrpcServe {
    /// What the host record says, for the coordinator to connect to.
    pub fn endpoint(&self) -> proto::records::GrpcEndpoint {
        match self {
            GrpcServe::Tls { listen, .. } => proto::records::GrpcEndpoint::Tcp(listen.to_string()),
            GrpcServe::Socket { path, .. } => proto::records::GrpcEndpoint::Socket(path.clone()),
        }
    }
}

/// Decides [`GrpcServe`] from the three TLS settings, `grpc_listen` (as set, if set) and
/// `grpc_socket`. Errors name the setting.
fn grpc_serve(
    tls: (Option<PathBuf>, Option<PathBuf>, Option<PathBuf>),
    listen: Option<String>,
    socket: PathBuf,
    address: &str,
) -> Result<GrpcServe, AgentError> {
    let tls =
        match tls {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(client_ca)) => Some(GrpcTls {
                cert,
                key,
                client_ca,
            }),
            _ => return Err(AgentError::Setting(
                "tls_cert, tls_key and tls_client_ca: set all three (mutual TLS over TCP) or none \
                 (a root-only unix socket)"
                    .into(),
            )),
        };
    match tls {
        Some(tls) => {
            let listen = listen.unwrap_or_else(|| format!("{address}:7070"));
            let listen = listen.parse().map_err(|_| {
                AgentError::Setting(format!("grpc_listen: {listen:?} is not an address:port"))
            })?;
            Ok(GrpcServe::Tls { listen, tls })
        }
        None if !socket.is_absolute() => Err(AgentError::Setting(format!(
            "grpc_socket: {} is not an absolute path",
            socket.display()
        ))),
        None => Ok(GrpcServe::Socket {
            path: socket,
            unserved_listen: listen,
        }),
    }
}

/// `metrics_listen`: "off", or a loopback address:port (metrics say which versions run where,
/// which is nobody's business off the host); the default follows the agent's own address.
fn metrics_address(asked: Option<String>, address: &str) -> Result<Option<SocketAddr>, AgentError> {
    let asked = match asked.as_deref() {
        Some("off") => return Ok(None),
        Some(a) => a.to_string(),
        None => {
            let loopback = address
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
            let ip = if loopback { address } else { "127.0.0.1" };
            format!("{ip}:7071")
        }
    };
    let parsed: SocketAddr = asked.parse().map_err(|_| {
        AgentError::Setting(format!(
            "metrics_listen: {asked:?} is not an address:port or \"off\""
        ))
    })?;
    if !parsed.ip().is_loopback() {
        return Err(AgentError::Setting(format!(
            "metrics_listen: {asked} is not a loopback address; scrape it through a local \
             Prometheus agent or a proxy"
        )));
    }
    Ok(Some(parsed))
}

impl Config {
    /// Merges defaults < file < environment < flags once ([`proto::settings::load`]) and
    /// validates. Errors name the file and the field.
    pub fn load(cli: Cli) -> Result<Config, AgentError> {
        let s =
            proto::settings::load(DEFAULTS, cli.config.as_deref(), &cli.settings).map_err(|e| {
                match e.file {
                    Some(path) => AgentError::Config {
                        path,
                        reason: e.reason,
                    },
                    None => AgentError::Setting(e.reason),
                }
            })?;
        let defaulted =
            |what: &str| AgentError::Setting(format!("{what}: no value and no default"));
        let host = match s.host {
            Some(h) => h,
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .map_err(|e| {
                    AgentError::Setting(format!(
                        "host: not set and the hostname is unreadable: {e}"
                    ))
                })?,
        };
        let address = s.address.ok_or_else(|| defaulted("address"))?;
        let grpc = grpc_serve(
            (s.tls_cert, s.tls_key, s.tls_client_ca),
            s.grpc_listen,
            s.grpc_socket.ok_or_else(|| defaulted("grpc_socket"))?,
            &address,
        )?;
        let metrics_listen = metrics_address(s.metrics_listen, &address)?;
        let lease_ttl = s.lease_ttl.ok_or_else(|| defaulted("lease_ttl"))?;
        let etcd = s
            .etcd
            .resolve(&format!("{ENV_PREFIX}ETCD_PASSWORD"))
            .map_err(AgentError::Setting)?;
        let download_timeout = s
            .download_timeout
            .ok_or_else(|| defaulted("download_timeout"))?;
        let download = crate::artifact::DownloadLimits {
            idle_timeout: humantime::parse_duration(&download_timeout).map_err(|e| {
                AgentError::Setting(format!("download_timeout: {download_timeout:?}: {e}"))
            })?,
            max_bytes: s
                .download_max_bytes
                .ok_or_else(|| defaulted("download_max_bytes"))?,
            ..Default::default()
        };
        let run_as = s.run_as.ok_or_else(|| defaulted("run_as"))?;
        let config = Config {
            download,
            etcd,
            prefix: s.prefix.ok_or_else(|| defaulted("prefix"))?,
            app: s.app.ok_or_else(|| {
                AgentError::Setting("app: required (which app this agent runs)".into())
            })?,
            host,
            address,
            state_dir: s.state_dir.ok_or_else(|| defaulted("state_dir"))?,
            grpc,
            metrics_listen,
            lease_ttl: humantime::parse_duration(&lease_ttl)
                .map_err(|e| AgentError::Setting(format!("lease_ttl: {lease_ttl:?}: {e}")))?,
            ports: Ports {
                blue: s.ports.blue.ok_or_else(|| defaulted("ports.blue"))?,
                green: s.ports.green.ok_or_else(|| defaulted("ports.green"))?,
            },
            max_restarts: s.max_restarts.ok_or_else(|| defaulted("max_restarts"))?,
            log_max_bytes: s.log_max_bytes.ok_or_else(|| defaulted("log_max_bytes"))?,
            app_log_level: s.app_log_level.ok_or_else(|| defaulted("app_log_level"))?,
            trusted_keys: s.trusted_keys.unwrap_or_default(),
            secrets_dir: s.secrets_dir,
            run_as: match run_as.as_str() {
                "root" => None,
                name => Some(crate::process::RunAs::lookup(name).map_err(AgentError::Setting)?),
            },
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), AgentError> {
        proto::Keys::new(&self.prefix, &self.app)?;
        proto::keys::validate_segment("host", &self.host)?;
        proto::records::check_address(&self.address)
            .map_err(|e| AgentError::Setting(format!("address: {e}")))?;
        if self.ports.blue == self.ports.green {
            return Err(AgentError::Setting(format!(
                "ports: blue and green are both {}",
                self.ports.blue
            )));
        }
        if self.lease_ttl < Duration::from_secs(2) {
            return Err(AgentError::Setting(format!(
                "lease_ttl: {:?} is shorter than 2s",
                self.lease_ttl
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn cli(settings: Settings) -> Cli {
        Cli {
            config: None,
            settings,
        }
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn flags_override_file() {
        let f = file("app = \"shop\"\nhost = \"host-a\"\naddress = \"127.0.0.11\"\nrun_as = \"nobody\"\n[ports]\nblue = 9000\ngreen = 9001\n");
        let cli = Cli {
            config: Some(f.path().into()),
            settings: Settings {
                ports: PortSettings {
                    green: Some(9100),
                    ..Default::default()
                },
                ..Default::default()
            },
        };
        let c = Config::load(cli).unwrap();
        assert_eq!((c.ports.blue, c.ports.green), (9000, 9100));
        assert_eq!(
            c.grpc.endpoint().to_string(),
            "unix:/run/bluegreen/agent.sock"
        );
        assert_eq!(c.lease_ttl, Duration::from_secs(10));
        assert_eq!(c.run_as.map(|u| u.name), Some("nobody".into()));
    }

    #[test]
    fn apps_never_run_as_root_unless_configured() {
        let load = |run_as: Option<&str>| {
            Config::load(cli(Settings {
                app: Some("shop".into()),
                host: Some("h".into()),
                run_as: run_as.map(str::to_string),
                ..Default::default()
            }))
        };
        assert_eq!(load(Some("root")).unwrap().run_as, None);
        let err = load(Some("no-such-user-here")).unwrap_err().to_string();
        assert!(err.contains("run_as") && err.contains("useradd"), "{err}");
        // The default is the dedicated user, not root: on a machine without it, start fails.
        if nix::unistd::User::from_name(DEFAULT_RUN_AS)
            .unwrap()
            .is_none()
        {
            assert!(load(None).unwrap_err().to_string().contains(DEFAULT_RUN_AS));
        }
    }

    #[test]
    fn grpc_without_tls_is_a_socket_never_tcp() {
        let socket = || PathBuf::from("/run/bluegreen/agent.sock");
        let none = (None, None, None);
        // Even loopback TCP is open to every local user: without TLS, only the socket.
        for listen in [None, Some("127.0.0.1:7070"), Some("0.0.0.0:7070")] {
            let listen = listen.map(str::to_string);
            assert_eq!(
                grpc_serve(none.clone(), listen.clone(), socket(), "10.0.0.5").unwrap(),
                GrpcServe::Socket {
                    path: socket(),
                    unserved_listen: listen
                }
            );
        }
        let tls = || {
            (
                Some("c.pem".into()),
                Some("k.pem".into()),
                Some("ca.pem".into()),
            )
        };
        let served = grpc_serve(tls(), None, socket(), "10.0.0.5").unwrap();
        assert_eq!(served.endpoint().to_string(), "10.0.0.5:7070");
        let err = grpc_serve(tls(), Some("nowhere".into()), socket(), "h").unwrap_err();
        assert!(err.to_string().contains("grpc_listen"), "{err}");
        let err = grpc_serve(none, None, "agent.sock".into(), "h").unwrap_err();
        assert!(err.to_string().contains("grpc_socket"), "{err}");
        let err = Config::load(cli(Settings {
            app: Some("shop".into()),
            host: Some("h".into()),
            run_as: Some("root".into()),
            tls_cert: Some("/x.pem".into()),
            ..Default::default()
        }))
        .unwrap_err()
        .to_string();
        assert!(err.contains("tls_client_ca"), "{err}");
    }

    #[test]
    fn a_wrong_type_in_the_shared_etcd_settings_names_the_key() {
        let f = file("app = \"shop\"\netcd = \"http://127.0.0.1:2379\"\n");
        let err = Config::load(Cli {
            config: Some(f.path().into()),
            settings: Settings::default(),
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(&f.path().display().to_string()) && err.contains("`etcd`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_field_names_file_and_field() {
        let f = file("app = \"shop\"\nlease_tll = \"5s\"\n");
        let err = Config::load(Cli {
            config: Some(f.path().into()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(&f.path().display().to_string()) && err.contains("lease_tll"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_name_the_field() {
        let soon = cli(Settings {
            app: Some("shop".into()),
            host: Some("h".into()),
            run_as: Some("root".into()),
            lease_ttl: Some("soon".into()),
            ..Default::default()
        });
        assert!(Config::load(soon)
            .unwrap_err()
            .to_string()
            .contains("lease_ttl"));
        let same = cli(Settings {
            app: Some("shop".into()),
            host: Some("h".into()),
            run_as: Some("root".into()),
            ports: PortSettings {
                blue: Some(1),
                green: Some(1),
            },
            ..Default::default()
        });
        assert!(Config::load(same)
            .unwrap_err()
            .to_string()
            .contains("ports"));
        let no_app = cli(Settings {
            host: Some("h".into()),
            ..Default::default()
        });
        assert!(Config::load(no_app)
            .unwrap_err()
            .to_string()
            .contains("app"));
    }
}
