//! The sidecar's settings: a TOML file, overridden by flags and `BLUEGREEN_SIDECAR_*` environment
//! variables, validated once into [`Config`]. Nothing else in the sidecar reads the environment.
use crate::error::SidecarError;
use clap::Parser;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where every sidecar setting's variable name starts: `[nginx] pid_file` is
/// `BLUEGREEN_SIDECAR_NGINX_PID_FILE`.
pub const ENV_PREFIX: &str = "BLUEGREEN_SIDECAR_";

/// Every default, in one place (the file's own format). Settings not here have a default that
/// depends on another (`name`, `public_url`, `state_dir`, `[nginx] include_file`) or none.
pub const DEFAULTS: &str = r#"
etcd = ["http://127.0.0.1:2379"]
prefix = "/bluegreen"
listen = "0.0.0.0:80"
preview_listen = "127.0.0.1:8088"
status_listen = "127.0.0.1:9901"
lease_ttl = "10s"
debounce = "250ms"
min_reload_interval = "2s"
[upstreams]
allow = []
[nginx]
binary = "nginx"
main_config = "/etc/nginx/nginx.conf"
pid_file = "/run/nginx.pid"
status_listen = "127.0.0.1:9902"
"#;

/// Command line of `lb-sidecar`: the config file, then every setting (also a file key and a
/// variable).
#[derive(Debug, Parser, Default)]
#[command(
    name = "lb-sidecar",
    version,
    about = "Points this load balancer's nginx at the active color in etcd"
)]
pub struct Cli {
    /// TOML config file (see deploy/examples/sidecar.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Settings,
}

impl proto::settings::Daemon for Cli {
    const ENV_PREFIX: &'static str = ENV_PREFIX;
    const DEFAULTS: &'static str = DEFAULTS;
}

/// Every sidecar setting, declared once: the field is the file's key, `--flag` and
/// `BLUEGREEN_SIDECAR_<KEY>` (see `proto::settings`); its default is in [`DEFAULTS`].
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    #[command(flatten)]
    #[serde(flatten)]
    pub etcd: proto::access::EtcdSettings,
    /// The etcd key prefix every app lives under.
    #[arg(long)]
    pub prefix: Option<String>,
    /// The app this load balancer serves (or `[[apps]]` in the file, for several).
    #[arg(long)]
    pub app: Option<String>,
    /// `[[apps]]`: every app this LB serves, each routed by its `server_names` on the shared
    /// `listen` (or on its own `listen`); file only, instead of `app`.
    #[arg(skip)]
    pub apps: Option<Vec<AppSettings>>,
    /// This load balancer's name in etcd (`lbs/<name>`) [default: the hostname].
    #[arg(long)]
    pub name: Option<String>,
    /// Public traffic.
    #[arg(long)]
    pub listen: Option<String>,
    /// The host names this app answers on `listen` and `preview_listen` (nginx `server_name`),
    /// so that several apps share one port; the coordinator verifies a switch with the first as
    /// `Host`. Empty: every host name.
    #[arg(long, value_delimiter = ',')]
    pub server_names: Option<Vec<String>>,
    /// The idle color, for checks before a switch.
    #[arg(long)]
    pub preview_listen: Option<String>,
    /// The sidecar's own /metrics and /healthz.
    #[arg(long)]
    pub status_listen: Option<String>,
    /// The URL other machines reach this LB at (e.g. https://lb-1.example.com); carried in the
    /// ack so a coordinator elsewhere can verify through it [default: http://<listen address>].
    #[arg(long)]
    pub public_url: Option<String>,
    /// How fast a dead sidecar's liveness key disappears (at least 2s).
    #[arg(long)]
    pub lease_ttl: Option<String>,
    /// How long health churn is collected before one reload (a switch never waits).
    #[arg(long)]
    pub debounce: Option<String>,
    /// The least time between two reloads caused by health churn (a switch never waits).
    #[arg(long)]
    pub min_reload_interval: Option<String>,
    /// A template replacing the built-in one (placeholders: see the README).
    #[arg(long)]
    pub template: Option<PathBuf>,
    /// Where candidate and test configs are written: never next to the include file, where an
    /// `include conf.d/*.conf` glob would pick them up [default: /var/lib/bluegreen/sidecar-<name>].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Public HTTPS (e.g. 0.0.0.0:443), served with `[tls]`'s certificate; the client's SNI
    /// picks the app by its `server_names`.
    #[arg(long)]
    pub listen_tls: Option<String>,
    #[command(flatten)]
    pub tls: TlsSettings,
    #[command(flatten)]
    pub nginx: NginxSettings,
    #[command(flatten)]
    pub upstreams: UpstreamsSettings,
}

/// `[tls]`: the app's certificate on `listen_tls` (flags `--tls-<key>`). nginx reads the files at
/// every reload, and the sidecar reloads when they change (a renewed certificate).
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsSettings {
    /// The certificate chain (PEM), readable by nginx's master.
    #[arg(id = "tls_cert", long = "tls-cert")]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(id = "tls_key", long = "tls-key")]
    pub key: Option<PathBuf>,
}

/// One `[[apps]]` entry as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSettings {
    pub name: String,
    /// Its host names on the shared listeners (required when several apps share one).
    #[serde(default)]
    pub server_names: Vec<String>,
    /// A public listener of its own instead of the shared `listen`.
    #[serde(default)]
    pub listen: Option<String>,
    /// Its certificate on `listen_tls`.
    #[serde(default)]
    pub tls: Option<AppTls>,
}

/// An `[[apps]]` entry's `tls = { cert, key }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// HTTPS for the app: where, and with which certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `listen_tls` with `[tls] cert` and `key`: all three or none. The files must exist (nginx
/// would refuse the config) and their paths must be safe to write into nginx's config.
fn tls(listen: Option<String>, settings: TlsSettings) -> Result<Option<Tls>, SidecarError> {
    match (listen, settings.cert, settings.key) {
        (None, None, None) => Ok(None),
        (Some(listen), Some(cert), Some(key)) => {
            for (field, path) in [("tls.cert", &cert), ("tls.key", &key)] {
                let shown = path.display().to_string();
                if !path.is_absolute()
                    || shown.contains(|c: char| {
                        c.is_whitespace() || c.is_control() || ";{}'\"$\\#".contains(c)
                    })
                {
                    return Err(SidecarError::Setting(format!(
                        "{field}: {shown:?} must be an absolute path without spaces, quotes, ';', '{{', '}}', '$' or '#'"
                    )));
                }
                std::fs::metadata(path).map_err(|e| SidecarError::Config {
                    path: shown.clone(),
                    reason: format!("{field}: {e}"),
                })?;
            }
            Ok(Some(Tls {
                listen: addr("listen_tls", listen)?,
                cert,
                key,
            }))
        }
        _ => Err(SidecarError::Setting(
            "listen_tls, tls.cert and tls.key: set all three (HTTPS) or none".into(),
        )),
    }
}

/// `[nginx] mode`. A custom `template` renders the upstreams themselves, which is reload mode.
fn mode(set: Option<&str>, template: bool) -> Result<Option<Mode>, SidecarError> {
    match (set, template) {
        (None, false) => Ok(None),
        (None, true) | (Some("reload"), _) => Ok(Some(Mode::Reload)),
        (Some("lua"), false) => Ok(Some(Mode::Lua)),
        (Some("lua"), true) => Err(SidecarError::Setting(
            "nginx.mode: \"lua\" cannot use `template`, which renders the upstreams for reload mode; remove one of them".into(),
        )),
        (Some(other), _) => Err(SidecarError::Setting(format!(
            "nginx.mode: {other:?} is not \"lua\" or \"reload\""
        ))),
    }
}

/// `[upstreams]`: where hosts' addresses may point (flags `--upstreams-<key>`).
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize)]
#[serde(default)]
pub struct UpstreamsSettings {
    /// Networks on this LB's own machine (loopback, link-local, its addresses) that upstreams
    /// may still point into, as CIDRs (127.0.0.0/8); its own listeners never.
    #[arg(
        id = "upstreams_allow",
        long = "upstreams-allow",
        value_delimiter = ','
    )]
    pub allow: Option<Vec<String>>,
}

/// `[nginx]`: the nginx this sidecar drives (flags `--nginx-<key>`).
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize)]
#[serde(default)]
pub struct NginxSettings {
    /// The nginx binary run for `-t` and `-s reload`.
    #[arg(id = "nginx_binary", long = "nginx-binary")]
    pub binary: Option<PathBuf>,
    /// nginx's main config, which includes the sidecar's file.
    #[arg(id = "nginx_main_config", long = "nginx-main-config")]
    pub main_config: Option<PathBuf>,
    /// The file the sidecar writes [default: /etc/nginx/conf.d/bluegreen-<app>.conf].
    #[arg(id = "nginx_include_file", long = "nginx-include-file")]
    pub include_file: Option<PathBuf>,
    /// nginx's master pid file.
    #[arg(id = "nginx_pid_file", long = "nginx-pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Loopback address where nginx answers the applied revision to this sidecar (never public).
    #[arg(id = "nginx_status_listen", long = "nginx-status-listen")]
    pub status_listen: Option<String>,
    /// `lua`: switches, canary weights and host changes are pushed to nginx's Lua balancer and
    /// never reload it; `reload`: each renders the upstreams and reloads nginx [default: lua
    /// whenever nginx loads the Lua module (checked with `nginx -t` at start), else reload].
    #[arg(id = "nginx_mode", long = "nginx-mode")]
    pub mode: Option<String>,
}

/// How the sidecar makes nginx follow etcd (`[nginx] mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A traffic state pushed to nginx's Lua balancer: no reload.
    Lua,
    /// Rendered upstreams and a graceful reload.
    Reload,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Lua => "lua",
            Mode::Reload => "reload",
        }
    }
}

#[derive(Debug, Clone)]
pub struct NginxConfig {
    pub binary: PathBuf,
    pub main_config: PathBuf,
    pub include_file: PathBuf,
    pub pid_file: PathBuf,
    /// nginx's loopback-only server that answers `/.bluegreen/status`.
    pub status_listen: SocketAddr,
    /// `[nginx] mode` as set; `None`: Lua whenever nginx takes it (decided at start).
    pub mode: Option<Mode>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub etcd: proto::EtcdAccess,
    pub prefix: String,
    pub app: String,
    pub name: String,
    pub listen: SocketAddr,
    /// nginx `server_name`s of the public and preview servers; empty: every host name.
    pub server_names: Vec<String>,
    /// HTTPS beside `listen`, when configured.
    pub tls: Option<Tls>,
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
    /// `[upstreams] allow`.
    pub upstreams_allow: Vec<crate::upstreams::Cidr>,
    /// With `[[apps]]`: each app's own settings, derived from these (the fields above then
    /// describe the first app). Empty in the single-app form.
    pub apps: Vec<Config>,
    /// The host name of this app's status server on nginx's status listener, which several
    /// apps share (`None`: the only server there).
    pub status_host: Option<String>,
    /// With `[[apps]]`: the file holding the default servers that answer 404 on the shared
    /// listeners for host names no app claims.
    pub default_server: Option<PathBuf>,
}

/// Each `[[apps]]` entry's own settings: `base` with the entry's name, host names, listener and
/// certificate, its own include file beside the configured one and its own state directory.
/// Apps that share a listener must each name their hosts, and never the same one.
fn apps_of(
    base: &Config,
    entries: Vec<AppSettings>,
    listen_tls: Option<String>,
) -> Result<Vec<Config>, SidecarError> {
    if entries.is_empty() {
        return Err(SidecarError::Setting("apps: no [[apps]] entry".into()));
    }
    let include_dir = base
        .nginx
        .include_file
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_else(|| PathBuf::from("/etc/nginx/conf.d"));
    let mut apps: Vec<Config> = Vec::new();
    for entry in entries {
        let named = |e: SidecarError| SidecarError::Setting(format!("apps {:?}: {e}", entry.name));
        proto::Keys::new(&base.prefix, &entry.name).map_err(|e| named(e.into()))?;
        if apps.iter().any(|a| a.app == entry.name) {
            return Err(SidecarError::Setting(format!(
                "apps: {} is listed twice",
                entry.name
            )));
        }
        let tls = match entry.tls {
            None => None,
            Some(t) => tls(
                Some(listen_tls.clone().ok_or_else(|| {
                    named(SidecarError::Setting(
                        "tls: set listen_tls, the HTTPS listener the apps share".into(),
                    ))
                })?),
                TlsSettings {
                    cert: Some(t.cert),
                    key: Some(t.key),
                },
            )
            .map_err(named)?,
        };
        let mut app = base.clone();
        app.server_names = entry
            .server_names
            .into_iter()
            .map(check_server_name)
            .collect::<Result<_, _>>()
            .map_err(named)?;
        if let Some(listen) = entry.listen {
            app.listen = addr("listen", listen).map_err(named)?;
        }
        app.tls = tls;
        app.nginx.include_file = include_dir.join(format!("bluegreen-{}.conf", entry.name));
        app.state_dir = base.state_dir.join("apps").join(&entry.name);
        app.status_host = Some(format!("status.{}.bluegreen", entry.name));
        app.app = entry.name;
        apps.push(app);
    }
    for (i, a) in apps.iter().enumerate() {
        for b in &apps[i + 1..] {
            if a.listen != b.listen {
                continue;
            }
            if a.server_names.is_empty() || b.server_names.is_empty() {
                return Err(SidecarError::Setting(format!(
                    "apps: {} and {} share the listener {} and one of them has no server_names                      (nginx could not tell their requests apart)",
                    a.app, b.app, a.listen
                )));
            }
            if let Some(name) = a.server_names.iter().find(|n| b.server_names.contains(n)) {
                return Err(SidecarError::Setting(format!(
                    "apps: {} and {} both claim the host name {name} on {}",
                    a.app, b.app, a.listen
                )));
            }
        }
    }
    Ok(apps)
}

/// An internal listener (the sidecar's `/metrics` and `/healthz`) never faces the network.
fn loopback(field: &str, address: SocketAddr) -> Result<SocketAddr, SidecarError> {
    if address.ip().is_loopback() {
        Ok(address)
    } else {
        Err(SidecarError::Setting(format!(
            "{field}: {address} is not a loopback address: the sidecar's /metrics and /healthz \
             are for this machine only (scrape them through a local agent or proxy)"
        )))
    }
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

/// A host name nginx can match literally and a `Host` header can carry: letters, digits, '-'
/// and '.', lower case (nginx compares case-insensitively; the ack carries it as written).
pub fn check_server_name(name: String) -> Result<String, SidecarError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(name)
    } else {
        Err(SidecarError::Setting(format!(
            "server_names: {:?} is not a host name (lower-case letters, digits, '-' and '.')",
            name
        )))
    }
}

fn duration(field: &str, value: String) -> Result<Duration, SidecarError> {
    humantime::parse_duration(&value)
        .map_err(|e| SidecarError::Setting(format!("{field}: {value:?}: {e}")))
}

impl Config {
    /// Merges defaults < file < environment < flags once ([`proto::settings::load`]) and
    /// validates. Errors name the file and the field.
    pub fn load(cli: Cli) -> Result<Config, SidecarError> {
        let s =
            proto::settings::load(DEFAULTS, cli.config.as_deref(), &cli.settings).map_err(|e| {
                match e.file {
                    Some(path) => SidecarError::Config {
                        path,
                        reason: e.reason,
                    },
                    None => SidecarError::Setting(e.reason),
                }
            })?;
        let defaulted =
            |what: &str| SidecarError::Setting(format!("{what}: no value and no default"));
        let template = match s.template {
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
        let entries = s.apps;
        let app = match (s.app, &entries) {
            (Some(app), Some(_)) => {
                return Err(SidecarError::Setting(format!(
                    "app ({app}) and [[apps]]: use one form; list {app} as an [[apps]] entry"
                )))
            }
            (Some(app), None) => app,
            (None, Some(entries)) => entries.first().map(|e| e.name.clone()).unwrap_or_default(),
            (None, None) => {
                return Err(SidecarError::Setting(
                    "app: required (or [[apps]] entries in the file)".into(),
                ))
            }
        };
        let multi = entries.is_some();
        if multi && (s.server_names.is_some() || s.tls.cert.is_some() || s.tls.key.is_some()) {
            return Err(SidecarError::Setting(
                "server_names and [tls]: with [[apps]], give each app its own (`server_names`, \
                 `tls = { cert, key }`)"
                    .into(),
            ));
        }
        let listen_tls = s.listen_tls;
        let name = match s.name {
            Some(n) => n,
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default(),
        };
        let etcd = s
            .etcd
            .resolve(&format!("{ENV_PREFIX}ETCD_PASSWORD"))
            .map_err(SidecarError::Setting)?;
        let state_dir = s
            .state_dir
            .unwrap_or_else(|| format!("/var/lib/bluegreen/sidecar-{name}").into());
        let nginx = s.nginx;
        let upstreams_allow = s
            .upstreams
            .allow
            .unwrap_or_default()
            .iter()
            .map(|c| crate::upstreams::Cidr::parse(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SidecarError::Setting(format!("[upstreams] allow: {e}")))?;
        let has_template = template.is_some();
        let config = Config {
            etcd,
            state_dir,
            upstreams_allow,
            prefix: s.prefix.ok_or_else(|| defaulted("prefix"))?,
            name,
            listen: addr("listen", s.listen.ok_or_else(|| defaulted("listen"))?)?,
            tls: if multi {
                None
            } else {
                tls(listen_tls.clone(), s.tls)?
            },
            apps: Vec::new(),
            status_host: None,
            default_server: None,
            server_names: s
                .server_names
                .unwrap_or_default()
                .into_iter()
                .map(check_server_name)
                .collect::<Result<_, _>>()?,
            preview_listen: addr(
                "preview_listen",
                s.preview_listen
                    .ok_or_else(|| defaulted("preview_listen"))?,
            )?,
            status_listen: loopback(
                "status_listen",
                addr(
                    "status_listen",
                    s.status_listen.ok_or_else(|| defaulted("status_listen"))?,
                )?,
            )?,
            public_url: s
                .public_url
                .map(|u| check_public_url(u.trim_end_matches('/').to_string()))
                .transpose()?,
            lease_ttl: duration(
                "lease_ttl",
                s.lease_ttl.ok_or_else(|| defaulted("lease_ttl"))?,
            )?,
            debounce: duration("debounce", s.debounce.ok_or_else(|| defaulted("debounce"))?)?,
            min_reload_interval: duration(
                "min_reload_interval",
                s.min_reload_interval
                    .ok_or_else(|| defaulted("min_reload_interval"))?,
            )?,
            template,
            nginx: NginxConfig {
                binary: nginx.binary.ok_or_else(|| defaulted("nginx.binary"))?,
                main_config: nginx
                    .main_config
                    .ok_or_else(|| defaulted("nginx.main_config"))?,
                include_file: nginx
                    .include_file
                    .unwrap_or_else(|| format!("/etc/nginx/conf.d/bluegreen-{app}.conf").into()),
                pid_file: nginx.pid_file.ok_or_else(|| defaulted("nginx.pid_file"))?,
                status_listen: addr(
                    "nginx.status_listen",
                    nginx
                        .status_listen
                        .ok_or_else(|| defaulted("nginx.status_listen"))?,
                )?,
                mode: mode(nginx.mode.as_deref(), has_template)?,
            },
            app,
        };
        let mut config = config;
        if let Some(entries) = entries {
            config.apps = apps_of(&config, entries, listen_tls)?;
            config.default_server = config
                .nginx
                .include_file
                .parent()
                .map(|dir| dir.join("bluegreen-default.conf"));
        }
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

    fn cli(settings: Settings) -> Cli {
        Cli {
            config: None,
            settings,
        }
    }

    #[test]
    fn tls_needs_its_listener_certificate_and_key_as_safe_existing_paths() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("shop.pem");
        std::fs::write(&cert, "x").unwrap();
        let settings = |cert: &str, key: &str| TlsSettings {
            cert: Some(cert.into()),
            key: Some(key.into()),
        };
        let shown = cert.display().to_string();
        let ok = tls(Some("0.0.0.0:443".into()), settings(&shown, &shown)).unwrap();
        assert_eq!(ok.map(|t| t.listen.port()), Some(443));
        assert_eq!(tls(None, TlsSettings::default()).unwrap(), None);
        let err = tls(None, settings(&shown, &shown)).unwrap_err().to_string();
        assert!(err.contains("listen_tls"), "{err}");
        let err = tls(Some("0.0.0.0:443".into()), settings("shop.pem", &shown))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tls.cert") && err.contains("absolute"),
            "{err}"
        );
        let err = tls(Some("0.0.0.0:443".into()), settings(&shown, "/etc/x;y"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls.key"), "{err}");
        let missing = dir.path().join("missing.key").display().to_string();
        let err = tls(Some("0.0.0.0:443".into()), settings(&shown, &missing))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("missing.key") && err.contains("tls.key"),
            "{err}"
        );
    }

    fn load_file(text: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sidecar.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(Cli {
            config: Some(path),
            settings: Settings::default(),
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn apps_get_their_own_include_file_state_and_status_host_on_shared_listeners() {
        let c = load_file(
            "name = \"lb-1\"\nstate_dir = \"/srv/lb\"\n\
             [[apps]]\nname = \"shop\"\nserver_names = [\"shop.example.com\"]\n\
             [[apps]]\nname = \"api\"\nserver_names = [\"api.example.com\"]\nlisten = \"0.0.0.0:8080\"\n\
             [nginx]\ninclude_file = \"/etc/nginx/conf.d/bluegreen.conf\"\n",
        )
        .unwrap();
        let names: Vec<&str> = c.apps.iter().map(|a| a.app.as_str()).collect();
        assert_eq!(names, ["shop", "api"]);
        let (shop, api) = (&c.apps[0], &c.apps[1]);
        assert_eq!(
            shop.nginx.include_file,
            PathBuf::from("/etc/nginx/conf.d/bluegreen-shop.conf")
        );
        assert_eq!(api.state_dir, PathBuf::from("/srv/lb/apps/api"));
        assert_eq!(shop.listen.to_string(), "0.0.0.0:80");
        assert_eq!(api.listen.to_string(), "0.0.0.0:8080");
        assert_ne!(shop.status_host, api.status_host);
        assert_eq!(
            c.default_server,
            Some(PathBuf::from("/etc/nginx/conf.d/bluegreen-default.conf"))
        );
        // Only the shared listeners whose apps all name their hosts get a 404 default.
        let listeners = crate::nginx::default_listeners(&c.apps);
        assert!(
            listeners.contains(&("0.0.0.0:80".to_string(), false)),
            "{listeners:?}"
        );
    }

    #[test]
    fn apps_that_nginx_could_not_tell_apart_are_refused() {
        let two = |a: &str, b: &str| {
            load_file(&format!(
                "name = \"lb-1\"\n[[apps]]\nname = \"shop\"\n{a}\n[[apps]]\nname = \"api\"\n{b}\n"
            ))
            .unwrap_err()
        };
        let err = two("server_names = [\"x.test\"]", "");
        assert!(err.contains("one of them has no server_names"), "{err}");
        let err = two("server_names = [\"x.test\"]", "server_names = [\"x.test\"]");
        assert!(err.contains("both claim the host name x.test"), "{err}");
        let err = two("server_names = [\"x.test\"]", "server_names = [\"Y\"]");
        assert!(
            err.contains("apps \"api\"") && err.contains("server_names"),
            "{err}"
        );
        let err = two(
            "server_names = [\"x.test\"]",
            "server_names = [\"y.test\"]\ntls = { cert = \"/c.pem\", key = \"/k.pem\" }",
        );
        assert!(err.contains("listen_tls"), "{err}");
        let err = load_file("app = \"shop\"\n[[apps]]\nname = \"api\"\n").unwrap_err();
        assert!(err.contains("app (shop) and [[apps]]"), "{err}");
        let err = load_file("server_names = [\"a.test\"]\n[[apps]]\nname = \"api\"\n").unwrap_err();
        assert!(err.contains("give each app its own"), "{err}");
    }

    #[test]
    fn server_names_are_host_names() {
        for good in ["shop.example.com", "api-2.internal", "localhost"] {
            assert!(check_server_name(good.into()).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Shop.example.com",
            "a b",
            "*.example.com",
            ".x",
            "x;y",
            "a\nb",
        ] {
            let err = check_server_name(bad.into()).unwrap_err().to_string();
            assert!(err.contains("server_names"), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_nginx_key_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sidecar.toml");
        std::fs::write(&path, "app = \"shop\"\n[nginx]\nbinnary = \"nginx\"\n").unwrap();
        let err = Config::load(Cli {
            config: Some(path.clone()),
            settings: Settings::default(),
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("sidecar.toml") && err.contains("binnary"),
            "{err}"
        );
    }

    /// The sidecar's /metrics and /healthz never face the network; [upstreams] allow is parsed.
    #[test]
    fn internal_listeners_are_loopback_and_allowed_upstreams_are_cidrs() {
        let err = Config::load(cli(Settings {
            app: Some("shop".into()),
            status_listen: Some("0.0.0.0:9901".into()),
            ..Default::default()
        }))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("status_listen") && err.contains("loopback"),
            "{err}"
        );
        let bad = Config::load(cli(Settings {
            app: Some("shop".into()),
            upstreams: UpstreamsSettings {
                allow: Some(vec!["10.0.0.0/99".into()]),
            },
            ..Default::default()
        }))
        .unwrap_err()
        .to_string();
        assert!(
            bad.contains("[upstreams] allow") && bad.contains("10.0.0.0/99"),
            "{bad}"
        );
    }

    #[test]
    fn defaults_and_bad_address() {
        let c = Config::load(cli(Settings {
            app: Some("shop".into()),
            name: Some("lb-1".into()),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(
            c.nginx.include_file,
            PathBuf::from("/etc/nginx/conf.d/bluegreen-shop.conf")
        );
        assert_eq!(c.debounce, Duration::from_millis(250));
        assert_eq!(c.min_reload_interval, Duration::from_secs(2));
        let err = Config::load(cli(Settings {
            app: Some("shop".into()),
            listen: Some("port 80".into()),
            ..Default::default()
        }))
        .unwrap_err();
        assert!(err.to_string().contains("listen"));
    }

    #[test]
    fn public_url_and_name_are_checked() {
        let load = |url: Option<&str>, name: &str| {
            Config::load(cli(Settings {
                app: Some("shop".into()),
                name: Some(name.into()),
                public_url: url.map(str::to_string),
                ..Default::default()
            }))
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
