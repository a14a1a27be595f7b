//! The sidecar's settings: a TOML file, overridden by flags and `BLUEGREEN_SIDECAR_*` environment
//! variables, validated once into [`Config`]. Nothing else in the sidecar reads the environment.
use crate::error::SidecarError;
use clap::Parser;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser, Default)]
#[command(
    name = "lb-sidecar",
    version,
    about = "Points this load balancer's nginx at the active color in etcd"
)]
pub struct Cli {
    /// TOML config file (see deploy/examples/sidecar.toml).
    #[arg(long, env = "BLUEGREEN_SIDECAR_CONFIG")]
    pub config: Option<PathBuf>,
    /// etcd endpoints, comma separated [default: http://127.0.0.1:2379].
    #[arg(long, env = "BLUEGREEN_SIDECAR_ETCD", value_delimiter = ',')]
    pub etcd: Option<Vec<String>>,
    /// The etcd key prefix every app lives under [default: /bluegreen].
    #[arg(long, env = "BLUEGREEN_SIDECAR_PREFIX")]
    pub prefix: Option<String>,
    /// The app this load balancer serves (required).
    #[arg(long, env = "BLUEGREEN_SIDECAR_APP")]
    pub app: Option<String>,
    /// This load balancer's name in etcd (`lbs/<name>`) [default: the hostname].
    #[arg(long, env = "BLUEGREEN_SIDECAR_NAME")]
    pub name: Option<String>,
    /// Public traffic [default: 0.0.0.0:80].
    #[arg(long, env = "BLUEGREEN_SIDECAR_LISTEN")]
    pub listen: Option<String>,
    /// The idle color, for checks before a switch [default: 127.0.0.1:8088].
    #[arg(long, env = "BLUEGREEN_SIDECAR_PREVIEW_LISTEN")]
    pub preview_listen: Option<String>,
    /// The sidecar's own /metrics and /healthz [default: 127.0.0.1:9901].
    #[arg(long, env = "BLUEGREEN_SIDECAR_STATUS_LISTEN")]
    pub status_listen: Option<String>,
    /// The URL other machines reach this LB at (e.g. https://lb-1.example.com); carried in the
    /// ack so a coordinator elsewhere can verify through it. Default: http://<listen address>.
    #[arg(long, env = "BLUEGREEN_SIDECAR_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// How fast a dead sidecar's liveness key disappears [default: 10s].
    #[arg(long, env = "BLUEGREEN_SIDECAR_LEASE_TTL")]
    pub lease_ttl: Option<String>,
    /// How long health churn is collected before one reload (a switch never waits)
    /// [default: 250ms].
    #[arg(long, env = "BLUEGREEN_SIDECAR_DEBOUNCE")]
    pub debounce: Option<String>,
    /// The least time between two reloads caused by health churn (a switch never waits)
    /// [default: 2s].
    #[arg(long, env = "BLUEGREEN_SIDECAR_MIN_RELOAD_INTERVAL")]
    pub min_reload_interval: Option<String>,
    /// The nginx binary run for `-t` and `-s reload` [default: nginx].
    #[arg(long, env = "BLUEGREEN_SIDECAR_NGINX_BINARY")]
    pub nginx_binary: Option<PathBuf>,
    /// nginx's main config, which includes the sidecar's file [default: /etc/nginx/nginx.conf].
    #[arg(long, env = "BLUEGREEN_SIDECAR_NGINX_MAIN_CONFIG")]
    pub nginx_main_config: Option<PathBuf>,
    /// The file the sidecar writes [default: /etc/nginx/conf.d/bluegreen-<app>.conf].
    #[arg(long, env = "BLUEGREEN_SIDECAR_NGINX_INCLUDE_FILE")]
    pub nginx_include_file: Option<PathBuf>,
    /// nginx's master pid file [default: /run/nginx.pid].
    #[arg(long, env = "BLUEGREEN_SIDECAR_NGINX_PID_FILE")]
    pub nginx_pid_file: Option<PathBuf>,
    /// Loopback address where nginx answers the applied revision to this sidecar (never public)
    /// [default: 127.0.0.1:9902].
    #[arg(long, env = "BLUEGREEN_SIDECAR_NGINX_STATUS_LISTEN")]
    pub nginx_status_listen: Option<String>,
    /// A template replacing the built-in one (placeholders: see the README).
    #[arg(long, env = "BLUEGREEN_SIDECAR_TEMPLATE")]
    pub template: Option<PathBuf>,
    /// Where candidate and test configs are written: never next to the include file, where an
    /// `include conf.d/*.conf` glob would pick them up [default: /var/lib/bluegreen/sidecar-<name>].
    #[arg(long, env = "BLUEGREEN_SIDECAR_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// CA that signed etcd's server certificate (https:// endpoints).
    #[arg(long, env = "BLUEGREEN_SIDECAR_ETCD_CACERT")]
    pub etcd_cacert: Option<PathBuf>,
    /// Client certificate for etcd (with --etcd-key).
    #[arg(long, env = "BLUEGREEN_SIDECAR_ETCD_CERT")]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's private key.
    #[arg(long, env = "BLUEGREEN_SIDECAR_ETCD_KEY")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user; its password from --etcd-password-file or BLUEGREEN_SIDECAR_ETCD_PASSWORD.
    #[arg(long, env = "BLUEGREEN_SIDECAR_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// A file holding the etcd user's password.
    #[arg(long, env = "BLUEGREEN_SIDECAR_ETCD_PASSWORD_FILE")]
    pub etcd_password_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileNginx {
    binary: Option<PathBuf>,
    main_config: Option<PathBuf>,
    include_file: Option<PathBuf>,
    pid_file: Option<PathBuf>,
    status_listen: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    etcd: Option<Vec<String>>,
    prefix: Option<String>,
    app: Option<String>,
    name: Option<String>,
    listen: Option<String>,
    preview_listen: Option<String>,
    status_listen: Option<String>,
    public_url: Option<String>,
    lease_ttl: Option<String>,
    debounce: Option<String>,
    min_reload_interval: Option<String>,
    template: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    etcd_cacert: Option<PathBuf>,
    etcd_cert: Option<PathBuf>,
    etcd_key: Option<PathBuf>,
    etcd_user: Option<String>,
    etcd_password_file: Option<PathBuf>,
    nginx: Option<FileNginx>,
}

#[derive(Debug, Clone)]
pub struct NginxConfig {
    pub binary: PathBuf,
    pub main_config: PathBuf,
    pub include_file: PathBuf,
    pub pid_file: PathBuf,
    /// nginx's loopback-only server that answers `/.bluegreen/status`.
    pub status_listen: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub etcd: proto::EtcdAccess,
    pub prefix: String,
    pub app: String,
    pub name: String,
    pub listen: SocketAddr,
    pub preview_listen: SocketAddr,
    pub status_listen: SocketAddr,
    /// `None`: derived from `listen` (an unspecified address becomes loopback).
    pub public_url: Option<String>,
    pub lease_ttl: Duration,
    pub debounce: Duration,
    /// Reloads for health churn are at least this far apart: every reload starts new workers
    /// and leaves the old ones draining, so a flapping host must not cause one per second.
    pub min_reload_interval: Duration,
    pub template: Option<String>,
    pub nginx: NginxConfig,
    /// Candidate and test configs live here (default `/var/lib/bluegreen/sidecar-<name>`).
    pub state_dir: PathBuf,
}

fn addr(field: &str, value: String) -> Result<SocketAddr, SidecarError> {
    value
        .parse()
        .map_err(|_| SidecarError::Setting(format!("{field}: {value:?} is not an address:port")))
}

/// An http(s) URL with a host and nothing that could break a header or a log line.
fn check_public_url(url: String) -> Result<String, SidecarError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    let ok = rest.is_some_and(|r| {
        !r.is_empty()
            && r.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~:/[]%".contains(&b))
    });
    if ok {
        Ok(url)
    } else {
        Err(SidecarError::Setting(format!(
            "public_url: {url:?} is not an http:// or https:// URL"
        )))
    }
}

fn duration(field: &str, value: String) -> Result<Duration, SidecarError> {
    humantime::parse_duration(&value)
        .map_err(|e| SidecarError::Setting(format!("{field}: {value:?}: {e}")))
}

impl Config {
    pub fn load(cli: Cli) -> Result<Config, SidecarError> {
        let file = match &cli.config {
            Some(path) => {
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|e| SidecarError::Config {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| SidecarError::Config {
                    path: shown,
                    reason: e.to_string(),
                })?
            }
            None => FileConfig::default(),
        };
        let nginx = file.nginx.unwrap_or_default();
        let template = match cli.template.or(file.template) {
            Some(path) => {
                Some(
                    std::fs::read_to_string(&path).map_err(|e| SidecarError::Config {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })?,
                )
            }
            None => None,
        };
        let app = cli
            .app
            .or(file.app)
            .ok_or_else(|| SidecarError::Setting("app: required".into()))?;
        let name = match cli.name.or(file.name) {
            Some(n) => n,
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default(),
        };
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
            password_env: std::env::var("BLUEGREEN_SIDECAR_ETCD_PASSWORD").ok(),
        })
        .map_err(SidecarError::Setting)?;
        let state_dir = cli
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| format!("/var/lib/bluegreen/sidecar-{name}").into());
        let config = Config {
            etcd,
            state_dir,
            prefix: cli
                .prefix
                .or(file.prefix)
                .unwrap_or_else(|| "/bluegreen".into()),
            name,
            listen: addr(
                "listen",
                cli.listen
                    .or(file.listen)
                    .unwrap_or_else(|| "0.0.0.0:80".into()),
            )?,
            preview_listen: addr(
                "preview_listen",
                cli.preview_listen
                    .or(file.preview_listen)
                    .unwrap_or_else(|| "127.0.0.1:8088".into()),
            )?,
            status_listen: addr(
                "status_listen",
                cli.status_listen
                    .or(file.status_listen)
                    .unwrap_or_else(|| "127.0.0.1:9901".into()),
            )?,
            public_url: cli
                .public_url
                .or(file.public_url)
                .map(|u| check_public_url(u.trim_end_matches('/').to_string()))
                .transpose()?,
            lease_ttl: duration(
                "lease_ttl",
                cli.lease_ttl
                    .or(file.lease_ttl)
                    .unwrap_or_else(|| "10s".into()),
            )?,
            debounce: duration(
                "debounce",
                cli.debounce
                    .or(file.debounce)
                    .unwrap_or_else(|| "250ms".into()),
            )?,
            min_reload_interval: duration(
                "min_reload_interval",
                cli.min_reload_interval
                    .or(file.min_reload_interval)
                    .unwrap_or_else(|| "2s".into()),
            )?,
            template,
            nginx: NginxConfig {
                binary: cli
                    .nginx_binary
                    .or(nginx.binary)
                    .unwrap_or_else(|| "nginx".into()),
                main_config: cli
                    .nginx_main_config
                    .or(nginx.main_config)
                    .unwrap_or_else(|| "/etc/nginx/nginx.conf".into()),
                include_file: cli
                    .nginx_include_file
                    .or(nginx.include_file)
                    .unwrap_or_else(|| format!("/etc/nginx/conf.d/bluegreen-{app}.conf").into()),
                pid_file: cli
                    .nginx_pid_file
                    .or(nginx.pid_file)
                    .unwrap_or_else(|| "/run/nginx.pid".into()),
                status_listen: addr(
                    "nginx.status_listen",
                    cli.nginx_status_listen
                        .or(nginx.status_listen)
                        .unwrap_or_else(|| "127.0.0.1:9902".into()),
                )?,
            },
            app,
        };
        proto::Keys::new(&config.prefix, &config.app)?;
        proto::keys::validate_segment("name", &config.name)?;
        if !config.nginx.status_listen.ip().is_loopback() {
            return Err(SidecarError::Setting(format!(
                "nginx.status_listen: {} is not a loopback address; it answers the live color and revision to anyone who reaches it",
                config.nginx.status_listen
            )));
        }
        if config.lease_ttl < Duration::from_secs(2) {
            return Err(SidecarError::Setting(format!(
                "lease_ttl: {:?} is shorter than 2s",
                config.lease_ttl
            )));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_nginx_key_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sidecar.toml");
        std::fs::write(&path, "app = \"shop\"\n[nginx]\nbinnary = \"nginx\"\n").unwrap();
        let err = Config::load(Cli {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("sidecar.toml") && err.contains("binnary"),
            "{err}"
        );
    }

    #[test]
    fn defaults_and_bad_address() {
        let c = Config::load(Cli {
            app: Some("shop".into()),
            name: Some("lb-1".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            c.nginx.include_file,
            PathBuf::from("/etc/nginx/conf.d/bluegreen-shop.conf")
        );
        assert_eq!(c.debounce, Duration::from_millis(250));
        assert_eq!(c.min_reload_interval, Duration::from_secs(2));
        let err = Config::load(Cli {
            app: Some("shop".into()),
            listen: Some("port 80".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("listen"));
    }

    #[test]
    fn public_url_and_name_are_checked() {
        let load = |url: Option<&str>, name: &str| {
            Config::load(Cli {
                app: Some("shop".into()),
                name: Some(name.into()),
                public_url: url.map(str::to_string),
                ..Default::default()
            })
        };
        let c = load(Some("https://lb-1.example.com/"), "lb-1").unwrap();
        assert_eq!(c.public_url.as_deref(), Some("https://lb-1.example.com"));
        assert_eq!(load(None, "lb-1").unwrap().public_url, None);
        for bad in ["lb-1.example.com", "http://", "http://x y", "http://x\"\n"] {
            let err = load(Some(bad), "lb-1").unwrap_err().to_string();
            assert!(err.contains("public_url"), "{err}");
        }
        let err = load(None, "lb 1;").unwrap_err().to_string();
        assert!(err.contains("name"), "{err}");
    }
}
