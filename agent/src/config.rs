//! The agent's settings: a TOML file, overridden by flags and `BLUEGREEN_AGENT_*` environment
//! variables, validated once into [`Config`]. Nothing else in the agent reads the environment.
use crate::error::AgentError;
use clap::Parser;
use proto::records::Ports;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The dedicated system user apps run as unless configured otherwise (the packages create it).
pub const DEFAULT_RUN_AS: &str = "bluegreen-app";

/// Command line of `agent`. Every setting of the file is also a flag and an env variable.
#[derive(Debug, Parser, Default)]
#[command(
    name = "agent",
    version,
    about = "Runs the blue and green copies of an app on this host and reports their health into etcd"
)]
pub struct Cli {
    /// TOML config file (see deploy/examples/agent.toml).
    #[arg(long, env = "BLUEGREEN_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// etcd endpoints, comma separated [default: http://127.0.0.1:2379].
    #[arg(long, env = "BLUEGREEN_AGENT_ETCD", value_delimiter = ',')]
    pub etcd: Option<Vec<String>>,
    /// The etcd key prefix every app lives under [default: /bluegreen].
    #[arg(long, env = "BLUEGREEN_AGENT_PREFIX")]
    pub prefix: Option<String>,
    /// The app this agent runs (required).
    #[arg(long, env = "BLUEGREEN_AGENT_APP")]
    pub app: Option<String>,
    /// This host's name in etcd (default: the machine's hostname).
    #[arg(long, env = "BLUEGREEN_AGENT_HOST")]
    pub host: Option<String>,
    /// The address load balancers use to reach this host's apps; the apps listen on it
    /// [default: 127.0.0.1].
    #[arg(long, env = "BLUEGREEN_AGENT_ADDRESS")]
    pub address: Option<String>,
    /// Artifacts, pid files and app logs [default: /var/lib/bluegreen/agent].
    #[arg(long, env = "BLUEGREEN_AGENT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The gRPC API (app logs for `coordinator logs`) [default: ADDRESS:7070].
    #[arg(long, env = "BLUEGREEN_AGENT_GRPC_LISTEN")]
    pub grpc_listen: Option<String>,
    /// Prometheus /metrics, on a loopback address [default: ADDRESS:7071 when ADDRESS is
    /// loopback, else 127.0.0.1:7071]; "off" serves none.
    #[arg(long, env = "BLUEGREEN_AGENT_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// How fast a dead agent's keys disappear [default: 10s].
    #[arg(long, env = "BLUEGREEN_AGENT_LEASE_TTL")]
    pub lease_ttl: Option<String>,
    /// The blue copy's port [default: 8080].
    #[arg(long, env = "BLUEGREEN_AGENT_BLUE_PORT")]
    pub blue_port: Option<u16>,
    /// The green copy's port [default: 8081].
    #[arg(long, env = "BLUEGREEN_AGENT_GREEN_PORT")]
    pub green_port: Option<u16>,
    /// Crashes in a row (without staying healthy) before a color is declared failed [default: 3].
    #[arg(long, env = "BLUEGREEN_AGENT_MAX_RESTARTS")]
    pub max_restarts: Option<u32>,
    /// Per-color log file size before it is rotated, in bytes [default: 4194304].
    #[arg(long, env = "BLUEGREEN_AGENT_LOG_MAX_BYTES")]
    pub log_max_bytes: Option<u64>,
    /// LOG_LEVEL handed to the apps [default: info].
    #[arg(long, env = "BLUEGREEN_AGENT_APP_LOG_LEVEL")]
    pub app_log_level: Option<String>,
    /// CA that signed etcd's server certificate (https:// endpoints).
    #[arg(long, env = "BLUEGREEN_AGENT_ETCD_CACERT")]
    pub etcd_cacert: Option<PathBuf>,
    /// Client certificate for etcd (with --etcd-key).
    #[arg(long, env = "BLUEGREEN_AGENT_ETCD_CERT")]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's private key.
    #[arg(long, env = "BLUEGREEN_AGENT_ETCD_KEY")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user; its password from --etcd-password-file or BLUEGREEN_AGENT_ETCD_PASSWORD.
    #[arg(long, env = "BLUEGREEN_AGENT_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// A file holding the etcd user's password.
    #[arg(long, env = "BLUEGREEN_AGENT_ETCD_PASSWORD_FILE")]
    pub etcd_password_file: Option<PathBuf>,
    /// Server certificate and key of the gRPC API (with --tls-client-ca: mutual TLS).
    #[arg(long, env = "BLUEGREEN_AGENT_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert.
    #[arg(long, env = "BLUEGREEN_AGENT_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA whose client certificates the gRPC API accepts (required with --tls-cert).
    #[arg(long, env = "BLUEGREEN_AGENT_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Public keys (ed25519, `coordinator keygen`) whose signature a release must carry.
    #[arg(long, env = "BLUEGREEN_AGENT_TRUSTED_KEYS", value_delimiter = ',')]
    pub trusted_keys: Option<Vec<PathBuf>>,
    /// Directory of host-local secrets: a release env value `secret:NAME` is the file NAME there.
    #[arg(long, env = "BLUEGREEN_AGENT_SECRETS_DIR")]
    pub secrets_dir: Option<PathBuf>,
    /// The user apps run as (default "bluegreen-app"; "root" only if the apps truly need it).
    #[arg(long, env = "BLUEGREEN_AGENT_RUN_AS")]
    pub run_as: Option<String>,
    /// Longest wait for an artifact server's next bytes before the attempt fails (default "30s").
    #[arg(long, env = "BLUEGREEN_AGENT_DOWNLOAD_TIMEOUT")]
    pub download_timeout: Option<String>,
    /// Largest artifact accepted, in bytes (default 2 GiB).
    #[arg(long, env = "BLUEGREEN_AGENT_DOWNLOAD_MAX_BYTES")]
    pub download_max_bytes: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FilePorts {
    blue: Option<u16>,
    green: Option<u16>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    etcd: Option<Vec<String>>,
    prefix: Option<String>,
    app: Option<String>,
    host: Option<String>,
    address: Option<String>,
    state_dir: Option<PathBuf>,
    grpc_listen: Option<String>,
    metrics_listen: Option<String>,
    lease_ttl: Option<String>,
    ports: Option<FilePorts>,
    max_restarts: Option<u32>,
    log_max_bytes: Option<u64>,
    app_log_level: Option<String>,
    etcd_cacert: Option<PathBuf>,
    etcd_cert: Option<PathBuf>,
    etcd_key: Option<PathBuf>,
    etcd_user: Option<String>,
    etcd_password_file: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    trusted_keys: Option<Vec<PathBuf>>,
    secrets_dir: Option<PathBuf>,
    run_as: Option<String>,
    download_timeout: Option<String>,
    download_max_bytes: Option<u64>,
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
    pub grpc_listen: SocketAddr,
    /// `None`: no /metrics.
    pub metrics_listen: Option<SocketAddr>,
    pub lease_ttl: Duration,
    pub ports: Ports,
    pub max_restarts: u32,
    pub log_max_bytes: u64,
    pub app_log_level: String,
    /// `None`: plain gRPC, bound to loopback only.
    pub grpc_tls: Option<GrpcTls>,
    /// Paths of trusted release-signing public keys; empty: releases need no signature.
    pub trusted_keys: Vec<PathBuf>,
    pub secrets_dir: Option<PathBuf>,
    /// The user apps run as; `None` means root, and only when configured so.
    pub run_as: Option<crate::process::RunAs>,
    /// Set when `grpc_listen` asked for a non-loopback address without TLS: the address asked
    /// for (the agent listens on loopback instead, and says so at start).
    pub grpc_downgraded_from: Option<SocketAddr>,
    pub download: crate::artifact::DownloadLimits,
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
    /// Merges file < env/flags and validates. Errors name the file and the field.
    pub fn load(cli: Cli) -> Result<Config, AgentError> {
        let file = match &cli.config {
            Some(path) => {
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|e| AgentError::Config {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| AgentError::Config {
                    path: shown,
                    reason: e.to_string(),
                })?
            }
            None => FileConfig::default(),
        };
        let file_ports = file.ports.unwrap_or_default();
        let host = match cli.host.or(file.host) {
            Some(h) => h,
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .map_err(|e| {
                    AgentError::Setting(format!(
                        "host: not set and the hostname is unreadable: {e}"
                    ))
                })?,
        };
        let address = cli
            .address
            .or(file.address)
            .unwrap_or_else(|| "127.0.0.1".into());
        let grpc = cli
            .grpc_listen
            .or(file.grpc_listen)
            .unwrap_or_else(|| format!("{address}:7070"));
        let metrics_listen = metrics_address(cli.metrics_listen.or(file.metrics_listen), &address)?;
        let lease_ttl = cli
            .lease_ttl
            .or(file.lease_ttl)
            .unwrap_or_else(|| "10s".into());
        let etcd = proto::EtcdAccess::resolve(proto::AccessSettings {
            endpoints: cli
                .etcd
                .or(file.etcd)
                .unwrap_or_else(|| vec!["http://127.0.0.1:2379".into()]),
            cacert: cli.etcd_cacert.or(file.etcd_cacert),
            cert: cli.etcd_cert.or(file.etcd_cert),
            key: cli.etcd_key.or(file.etcd_key),
            user: cli.etcd_user.or(file.etcd_user),
            password_file: cli.etcd_password_file.or(file.etcd_password_file),
            password_env: std::env::var("BLUEGREEN_AGENT_ETCD_PASSWORD").ok(),
        })
        .map_err(AgentError::Setting)?;
        let grpc_tls = match (
            cli.tls_cert.or(file.tls_cert),
            cli.tls_key.or(file.tls_key),
            cli.tls_client_ca.or(file.tls_client_ca),
        ) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(client_ca)) => Some(GrpcTls { cert, key, client_ca }),
            _ => {
                return Err(AgentError::Setting(
                    "tls_cert, tls_key and tls_client_ca: set all three (mutual TLS) or none (loopback only)".into(),
                ))
            }
        };
        let mut download = crate::artifact::DownloadLimits::default();
        if let Some(t) = cli.download_timeout.or(file.download_timeout) {
            download.idle_timeout = humantime::parse_duration(&t)
                .map_err(|e| AgentError::Setting(format!("download_timeout: {t:?}: {e}")))?;
        }
        if let Some(max) = cli.download_max_bytes.or(file.download_max_bytes) {
            download.max_bytes = max;
        }
        let config = Config {
            download,
            etcd,
            prefix: cli
                .prefix
                .or(file.prefix)
                .unwrap_or_else(|| "/bluegreen".into()),
            app: cli.app.or(file.app).ok_or_else(|| {
                AgentError::Setting("app: required (which app this agent runs)".into())
            })?,
            host,
            address,
            state_dir: cli
                .state_dir
                .or(file.state_dir)
                .unwrap_or_else(|| "/var/lib/bluegreen/agent".into()),
            grpc_listen: grpc.parse().map_err(|_| {
                AgentError::Setting(format!("grpc_listen: {grpc:?} is not an address:port"))
            })?,
            metrics_listen,
            lease_ttl: humantime::parse_duration(&lease_ttl)
                .map_err(|e| AgentError::Setting(format!("lease_ttl: {lease_ttl:?}: {e}")))?,
            ports: Ports {
                blue: cli.blue_port.or(file_ports.blue).unwrap_or(8080),
                green: cli.green_port.or(file_ports.green).unwrap_or(8081),
            },
            max_restarts: cli.max_restarts.or(file.max_restarts).unwrap_or(3),
            log_max_bytes: cli
                .log_max_bytes
                .or(file.log_max_bytes)
                .unwrap_or(4 * 1024 * 1024),
            app_log_level: cli
                .app_log_level
                .or(file.app_log_level)
                .unwrap_or_else(|| "info".into()),
            grpc_tls,
            trusted_keys: cli.trusted_keys.or(file.trusted_keys).unwrap_or_default(),
            secrets_dir: cli.secrets_dir.or(file.secrets_dir),
            run_as: match cli
                .run_as
                .or(file.run_as)
                .unwrap_or_else(|| DEFAULT_RUN_AS.into())
                .as_str()
            {
                "root" => None,
                name => Some(crate::process::RunAs::lookup(name).map_err(AgentError::Setting)?),
            },
            grpc_downgraded_from: None,
        };
        // Without mutual TLS the gRPC API (app logs, pids, versions) would answer anyone who
        // reaches it: keep it on loopback.
        let mut config = config;
        if config.grpc_tls.is_none() && !config.grpc_listen.ip().is_loopback() {
            config.grpc_downgraded_from = Some(config.grpc_listen);
            config
                .grpc_listen
                .set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
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
            green_port: Some(9100),
            ..Default::default()
        };
        let c = Config::load(cli).unwrap();
        assert_eq!((c.ports.blue, c.ports.green), (9000, 9100));
        assert_eq!(c.grpc_listen.to_string(), "127.0.0.11:7070");
        assert_eq!(c.lease_ttl, Duration::from_secs(10));
        assert_eq!(c.run_as.map(|u| u.name), Some("nobody".into()));
    }

    #[test]
    fn apps_never_run_as_root_unless_configured() {
        let load = |run_as: Option<&str>| {
            Config::load(Cli {
                app: Some("shop".into()),
                host: Some("h".into()),
                run_as: run_as.map(str::to_string),
                ..Default::default()
            })
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
    fn grpc_without_tls_stays_on_loopback() {
        let c = Config::load(Cli {
            app: Some("shop".into()),
            host: Some("h".into()),
            run_as: Some("root".into()),
            grpc_listen: Some("0.0.0.0:7070".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.grpc_listen.to_string(), "127.0.0.1:7070");
        assert_eq!(
            c.grpc_downgraded_from.map(|a| a.to_string()),
            Some("0.0.0.0:7070".into())
        );
        let err = Config::load(Cli {
            app: Some("shop".into()),
            host: Some("h".into()),
            run_as: Some("root".into()),
            tls_cert: Some("/x.pem".into()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("tls_client_ca"), "{err}");
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
        let cli = Cli {
            app: Some("shop".into()),
            host: Some("h".into()),
            run_as: Some("root".into()),
            lease_ttl: Some("soon".into()),
            ..Default::default()
        };
        assert!(Config::load(cli)
            .unwrap_err()
            .to_string()
            .contains("lease_ttl"));
        let cli = Cli {
            app: Some("shop".into()),
            host: Some("h".into()),
            run_as: Some("root".into()),
            blue_port: Some(1),
            green_port: Some(1),
            ..Default::default()
        };
        assert!(Config::load(cli).unwrap_err().to_string().contains("ports"));
        let cli = Cli {
            host: Some("h".into()),
            ..Default::default()
        };
        assert!(Config::load(cli).unwrap_err().to_string().contains("app"));
    }
}
