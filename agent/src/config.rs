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
#[derive(Debug, Clone, Parser, Default)]
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
    /// The app this agent runs, with `[ports]` (the single-app form; `[[apps]]` in the file
    /// runs several).
    #[arg(long)]
    pub app: Option<String>,
    /// `[[apps]]`: every app this agent runs, each with its own ports (file only; instead of
    /// `app` and `[ports]`).
    #[arg(skip)]
    pub apps: Option<Vec<AppSettings>>,
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

/// One `[[apps]]` entry as written: an app's name and ports, and what it may change of the
/// agent-wide defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSettings {
    pub name: String,
    pub ports: Ports,
    /// The user this app runs as [default: the agent's `run_as`].
    #[serde(default)]
    pub run_as: Option<String>,
    /// This app's secrets [default: the agent's `secrets_dir`].
    #[serde(default)]
    pub secrets_dir: Option<PathBuf>,
    /// This app's artifacts, pid files and logs [default: STATE_DIR/apps/NAME]. An app that a
    /// single-app agent ran before names that agent's `state_dir` here, so its running
    /// processes are adopted rather than orphaned.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

/// One app this agent runs, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct AppConfig {
    pub name: String,
    pub ports: Ports,
    /// Its artifacts, pid files and logs: never shared with another app.
    pub state_dir: PathBuf,
    /// The user it runs as; `None` means root, and only when configured so.
    pub run_as: Option<crate::process::RunAs>,
    pub secrets_dir: Option<PathBuf>,
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
    /// Every app this agent runs (one for the single-app form), in the file's order.
    pub apps: Vec<AppConfig>,
    pub host: String,
    pub address: String,
    /// The agent's own state (its instance id); in the single-app form also the app's.
    pub state_dir: PathBuf,
    /// Where the gRPC API (`coordinator logs`) answers.
    pub grpc: GrpcServe,
    /// `None`: no /metrics.
    pub metrics_listen: Option<SocketAddr>,
    pub lease_ttl: Duration,
    pub max_restarts: u32,
    pub log_max_bytes: u64,
    pub app_log_level: String,
    /// Paths of trusted release-signing public keys; empty: releases need no signature.
    pub trusted_keys: Vec<PathBuf>,
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

/// What the settings say about the apps, before validation.
struct AppsAsked {
    app: Option<String>,
    apps: Option<Vec<AppSettings>>,
    /// `[ports]` (or its default, for the single-app form).
    ports: Ports,
    /// Whether `[ports]` was set by the file, a flag or a variable (not only defaulted).
    ports_given: bool,
    run_as: String,
    secrets_dir: Option<PathBuf>,
}

/// The apps this agent runs: `app` with `[ports]`, or `[[apps]]`, never both. In the single-app
/// form the app keeps the agent's `state_dir` (so an upgrade changes no path); each `[[apps]]`
/// entry gets `STATE_DIR/apps/NAME` unless it names its own. Two apps never share a name, a
/// port or a state directory (pid files and logs live there). Errors name the entry.
fn apps(asked: AppsAsked, state_dir: &std::path::Path) -> Result<Vec<AppConfig>, AgentError> {
    let setting = |why: String| AgentError::Setting(why);
    let user = |name: &str| -> Result<Option<crate::process::RunAs>, AgentError> {
        match name {
            "root" => Ok(None),
            name => crate::process::RunAs::lookup(name)
                .map(Some)
                .map_err(AgentError::Setting),
        }
    };
    let apps = match (asked.app, asked.apps) {
        (Some(app), Some(_)) => {
            return Err(setting(format!(
                "app ({app}) and [[apps]]: use one form; list {app} as an [[apps]] entry"
            )))
        }
        (None, None) => {
            return Err(setting(
                "app: required (which app this agent runs), or [[apps]] entries in the file".into(),
            ))
        }
        (Some(name), None) => vec![AppConfig {
            name,
            ports: asked.ports,
            state_dir: state_dir.to_path_buf(),
            run_as: user(&asked.run_as)?,
            secrets_dir: asked.secrets_dir,
        }],
        (None, Some(entries)) => {
            if asked.ports_given {
                return Err(setting(
                    "ports: with [[apps]], each entry has its own `ports`; remove [ports]                      (and --blue-port/--green-port)"
                        .into(),
                ));
            }
            if entries.is_empty() {
                return Err(setting("apps: no [[apps]] entry".into()));
            }
            let mut apps = Vec::new();
            for entry in entries {
                let named = |what: &str, e: &dyn std::fmt::Display| {
                    AgentError::Setting(format!("apps {:?}: {what}: {e}", entry.name))
                };
                proto::keys::validate_segment("app", &entry.name).map_err(|e| named("name", &e))?;
                apps.push(AppConfig {
                    state_dir: entry
                        .state_dir
                        .clone()
                        .unwrap_or_else(|| state_dir.join("apps").join(&entry.name)),
                    run_as: user(entry.run_as.as_deref().unwrap_or(&asked.run_as))
                        .map_err(|e| named("run_as", &e))?,
                    secrets_dir: entry.secrets_dir.clone().or(asked.secrets_dir.clone()),
                    ports: entry.ports,
                    name: entry.name,
                });
            }
            apps
        }
    };
    check_apps_apart(&apps)?;
    Ok(apps)
}

/// Two apps on one host never share a name, a port or a state directory. Pure; the error names
/// both apps.
pub fn check_apps_apart(apps: &[AppConfig]) -> Result<(), AgentError> {
    let mut names = std::collections::BTreeSet::new();
    let mut ports: std::collections::BTreeMap<u16, String> = Default::default();
    let mut dirs: std::collections::BTreeMap<&std::path::Path, &str> = Default::default();
    for app in apps {
        if !names.insert(&app.name) {
            return Err(AgentError::Setting(format!(
                "apps: {} is listed twice",
                app.name
            )));
        }
        for color in proto::Color::ALL {
            let port = app.ports.of(color);
            let label = format!("{} ({color})", app.name);
            if let Some(other) = ports.insert(port, label.clone()) {
                return Err(AgentError::Setting(format!(
                    "ports: {port} is used by both {other} and {label}"
                )));
            }
        }
        if let Some(other) = dirs.insert(&app.state_dir, &app.name) {
            return Err(AgentError::Setting(format!(
                "apps: {other} and {} share the state_dir {} (pid files and logs would collide)",
                app.name,
                app.state_dir.display()
            )));
        }
    }
    Ok(())
}

/// Whether the TOML file at `path` sets `key` at its top level (an unreadable file was already
/// reported by the settings loader).
fn file_has_key(path: Option<&std::path::Path>, key: &str) -> bool {
    path.and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| text.parse::<toml::Table>().ok())
        .is_some_and(|table| table.contains_key(key))
}

impl Config {
    /// The app named `name`, if this agent runs it.
    pub fn app(&self, name: &str) -> Option<&AppConfig> {
        self.apps.iter().find(|a| a.name == name)
    }

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
        let state_dir = s.state_dir.ok_or_else(|| defaulted("state_dir"))?;
        let ports_given = cli.settings.ports.blue.is_some()
            || cli.settings.ports.green.is_some()
            || file_has_key(cli.config.as_deref(), "ports");
        let apps = apps(
            AppsAsked {
                app: s.app,
                apps: s.apps,
                ports: Ports {
                    blue: s.ports.blue.ok_or_else(|| defaulted("ports.blue"))?,
                    green: s.ports.green.ok_or_else(|| defaulted("ports.green"))?,
                },
                ports_given,
                run_as: s.run_as.ok_or_else(|| defaulted("run_as"))?,
                secrets_dir: s.secrets_dir,
            },
            &state_dir,
        )?;
        let config = Config {
            download,
            etcd,
            prefix: s.prefix.ok_or_else(|| defaulted("prefix"))?,
            apps,
            host,
            address,
            state_dir,
            grpc,
            metrics_listen,
            lease_ttl: humantime::parse_duration(&lease_ttl)
                .map_err(|e| AgentError::Setting(format!("lease_ttl: {lease_ttl:?}: {e}")))?,
            max_restarts: s.max_restarts.ok_or_else(|| defaulted("max_restarts"))?,
            log_max_bytes: s.log_max_bytes.ok_or_else(|| defaulted("log_max_bytes"))?,
            app_log_level: s.app_log_level.ok_or_else(|| defaulted("app_log_level"))?,
            trusted_keys: s.trusted_keys.unwrap_or_default(),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), AgentError> {
        for app in &self.apps {
            proto::Keys::new(&self.prefix, &app.name)?;
        }
        proto::keys::validate_segment("host", &self.host)?;
        proto::records::check_address(&self.address)
            .map_err(|e| AgentError::Setting(format!("address: {e}")))?;
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
        assert_eq!((c.apps[0].ports.blue, c.apps[0].ports.green), (9000, 9100));
        assert_eq!(
            c.grpc.endpoint().to_string(),
            "unix:/run/bluegreen/agent.sock"
        );
        assert_eq!(c.lease_ttl, Duration::from_secs(10));
        assert_eq!(
            c.apps[0].run_as.clone().map(|u| u.name),
            Some("nobody".into())
        );
        // The single-app form keeps the agent's state_dir as the app's: an upgrade moves nothing.
        assert_eq!(c.apps[0].state_dir, c.state_dir);
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
        assert_eq!(load(Some("root")).unwrap().apps[0].run_as, None);
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

    fn load_file(text: &str) -> Result<Config, String> {
        let f = file(text);
        Config::load(Cli {
            config: Some(f.path().into()),
            settings: Settings::default(),
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn apps_each_get_their_own_ports_directory_and_user() {
        let c = load_file(
            "host = \"web-1\"\nrun_as = \"root\"\nstate_dir = \"/srv/agent\"\n\
             [[apps]]\nname = \"shop\"\nports = { blue = 8080, green = 8081 }\n\
             [[apps]]\nname = \"api\"\nports = { blue = 9080, green = 9081 }\n\
             run_as = \"nobody\"\nsecrets_dir = \"/etc/api-secrets\"\n",
        )
        .unwrap();
        let names: Vec<&str> = c.apps.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["shop", "api"]);
        let shop = c.app("shop").unwrap();
        let api = c.app("api").unwrap();
        assert_eq!(shop.state_dir, PathBuf::from("/srv/agent/apps/shop"));
        assert_eq!(api.state_dir, PathBuf::from("/srv/agent/apps/api"));
        assert_eq!((api.ports.blue, api.ports.green), (9080, 9081));
        assert_eq!(shop.run_as, None, "the agent-wide run_as is the default");
        assert_eq!(api.run_as.clone().map(|u| u.name), Some("nobody".into()));
        assert_eq!(api.secrets_dir, Some(PathBuf::from("/etc/api-secrets")));
    }

    #[test]
    fn apps_that_would_collide_are_refused_naming_both() {
        let two = |second: &str| {
            load_file(&format!(
                "host = \"h\"\nrun_as = \"root\"\n\
                 [[apps]]\nname = \"shop\"\nports = {{ blue = 8080, green = 8081 }}\n\
                 [[apps]]\n{second}\n"
            ))
            .unwrap_err()
        };
        let err = two("name = \"api\"\nports = { blue = 9080, green = 8081 }");
        assert!(
            err.contains("8081") && err.contains("shop (green)") && err.contains("api (green)"),
            "{err}"
        );
        let err = two("name = \"shop\"\nports = { blue = 9080, green = 9081 }");
        assert!(err.contains("shop is listed twice"), "{err}");
        let err = two("name = \"api\"\nports = { blue = 9080, green = 9081 }\nstate_dir = \"/var/lib/bluegreen/agent/apps/shop\"");
        assert!(err.contains("share the state_dir"), "{err}");
        let err = two("name = \"api\"\nprots = { blue = 9080, green = 9081 }");
        assert!(err.contains("apps") && err.contains("prots"), "{err}");
        let err = two("name = \"a/b\"\nports = { blue = 9080, green = 9081 }");
        assert!(err.contains("\"a/b\"") && err.contains("name"), "{err}");
        // The two forms are never mixed: `app` or `[ports]` beside [[apps]] is refused.
        let err = load_file("app = \"shop\"\nhost = \"h\"\n[[apps]]\nname = \"api\"\nports = { blue = 1, green = 2 }\n").unwrap_err();
        assert!(err.contains("app (shop) and [[apps]]"), "{err}");
        let err = load_file("host = \"h\"\n[ports]\nblue = 1\ngreen = 2\n[[apps]]\nname = \"api\"\nports = { blue = 3, green = 4 }\n").unwrap_err();
        assert!(err.contains("ports: with [[apps]]"), "{err}");
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
