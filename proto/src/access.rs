//! How a bluegreen process reaches etcd: the endpoints and, for a production cluster, TLS (a CA,
//! a client certificate and key) and an etcd user. The same settings, with the same names, exist
//! in every binary (file key, flag, `BLUEGREEN_<BINARY>_*` variable), modelled on etcdctl's
//! `--cacert`, `--cert`, `--key`, `--user`. The password comes from a file or the environment,
//! never from a flag (a flag shows in `ps`), and never appears in `Debug` output or errors.
use crate::ProtoError;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Clone, Default, PartialEq)]
pub struct EtcdAccess {
    pub endpoints: Vec<String>,
    /// CA bundle that signed etcd's server certificate (`etcd_cacert`).
    pub cacert: Option<PathBuf>,
    /// Client certificate and key for etcd's `--client-cert-auth` (`etcd_cert`, `etcd_key`).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// etcd user (`etcd_user`) when etcd auth is enabled.
    pub user: Option<String>,
    password: Option<String>,
    /// `etcd_allow_plaintext_password`, kept for [`EtcdAccess::as_user`].
    pub allow_plaintext_password: bool,
}

impl std::fmt::Debug for EtcdAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAccess")
            .field("endpoints", &self.endpoints)
            .field("cacert", &self.cacert)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The etcd settings every daemon has, declared once: each field is a key of the daemon's file,
/// a flag and a variable (see [`crate::settings`]). Endpoints default to the loopback etcd.
#[derive(Debug, Default, Clone, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct EtcdSettings {
    /// etcd endpoints, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub etcd: Option<Vec<String>>,
    /// CA that signed etcd's server certificate (https:// endpoints).
    #[arg(long)]
    pub etcd_cacert: Option<PathBuf>,
    /// Client certificate for etcd (with --etcd-key).
    #[arg(long)]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's private key.
    #[arg(long)]
    pub etcd_key: Option<PathBuf>,
    /// etcd user; its password from --etcd-password-file or the binary's `…_ETCD_PASSWORD`
    /// variable (never a flag: a flag shows in `ps`).
    #[arg(long)]
    pub etcd_user: Option<String>,
    /// A file holding the etcd user's password (its first line; mode 600).
    #[arg(long)]
    pub etcd_password_file: Option<PathBuf>,
    /// Send the etcd password to http:// endpoints in clear text anyway (a loopback etcd).
    #[arg(long)]
    pub etcd_allow_plaintext_password: Option<bool>,
}

impl EtcdSettings {
    /// Checked together ([`EtcdAccess::resolve`]); the password may also come from the
    /// environment variable `password_var`.
    pub fn resolve(self, password_var: &str) -> Result<EtcdAccess, String> {
        EtcdAccess::resolve(AccessSettings {
            endpoints: self
                .etcd
                .unwrap_or_else(|| vec!["http://127.0.0.1:2379".into()]),
            cacert: self.etcd_cacert,
            cert: self.etcd_cert,
            key: self.etcd_key,
            user: self.etcd_user,
            password_file: self.etcd_password_file,
            password_env: std::env::var(password_var).ok(),
            allow_plaintext_password: self.etcd_allow_plaintext_password.unwrap_or(false),
        })
    }
}

/// The settings as a binary's config layer collected them, before checking.
#[derive(Debug, Clone, Default)]
pub struct AccessSettings {
    pub endpoints: Vec<String>,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub user: Option<String>,
    /// `etcd_password_file`: the password is the file's first line.
    pub password_file: Option<PathBuf>,
    /// The binary's `BLUEGREEN_<BINARY>_ETCD_PASSWORD` variable, if set.
    pub password_env: Option<String>,
    /// `etcd_allow_plaintext_password`: a password may go to http:// endpoints.
    pub allow_plaintext_password: bool,
}

impl EtcdAccess {
    /// Plain endpoints, no TLS, no user (tests and the quickstart's loopback etcd).
    pub fn plain(endpoints: Vec<String>) -> EtcdAccess {
        EtcdAccess {
            endpoints,
            ..Default::default()
        }
    }

    /// Checks the settings together and reads the password file; errors name the setting.
    pub fn resolve(s: AccessSettings) -> Result<EtcdAccess, String> {
        if s.endpoints.is_empty() {
            return Err("etcd: at least one endpoint is required".into());
        }
        for e in &s.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(format!("etcd: {e:?} is not an http:// or https:// URL"));
            }
        }
        let tls = s.cacert.is_some() || s.cert.is_some();
        if tls && s.endpoints.iter().any(|e| e.starts_with("http://")) {
            return Err(
                "etcd: TLS settings are given but an endpoint is http://; use https://".into(),
            );
        }
        match (&s.cert, &s.key) {
            (Some(_), None) => return Err("etcd_key: required with etcd_cert".into()),
            (None, Some(_)) => return Err("etcd_cert: required with etcd_key".into()),
            _ => {}
        }
        for (field, path) in [
            ("etcd_cacert", &s.cacert),
            ("etcd_cert", &s.cert),
            ("etcd_key", &s.key),
        ] {
            if let Some(p) = path {
                std::fs::metadata(p).map_err(|e| format!("{field}: {}: {e}", p.display()))?;
            }
        }
        let password = match (&s.password_file, s.password_env) {
            (Some(path), _) => Some(read_password(path)?),
            (None, Some(value)) => Some(value),
            (None, None) => None,
        };
        match (&s.user, &password) {
            (Some(user), None) => {
                return Err(format!(
                    "etcd_user {user:?}: no password (set etcd_password_file or the ETCD_PASSWORD variable)"
                ))
            }
            (None, Some(_)) => return Err("etcd_password_file: given without etcd_user".into()),
            _ => {}
        }
        let plaintext = s.endpoints.iter().find(|e| e.starts_with("http://"));
        if let (Some(user), Some(endpoint)) = (&s.user, plaintext) {
            if !s.allow_plaintext_password {
                return Err(format!(
                    "etcd_user {user:?}: its password would cross the network in clear text to \
                     {endpoint}: use https:// endpoints (etcd_cacert), or set \
                     etcd_allow_plaintext_password = true for an etcd on loopback"
                ));
            }
        }
        Ok(EtcdAccess {
            endpoints: s.endpoints,
            cacert: s.cacert,
            cert: s.cert,
            key: s.key,
            user: s.user,
            password,
            allow_plaintext_password: s.allow_plaintext_password,
        })
    }

    /// The same endpoints and TLS as `user` with `password`: a person logging in to the
    /// dashboard, who then reads and acts with exactly what their etcd role allows. The
    /// plaintext rule of [`EtcdAccess::resolve`] holds for them too.
    pub fn as_user(&self, user: &str, password: &str) -> Result<EtcdAccess, String> {
        let plaintext = self.endpoints.iter().find(|e| e.starts_with("http://"));
        if let (Some(endpoint), false) = (plaintext, self.allow_plaintext_password) {
            return Err(format!(
                "a password would cross the network in clear text to {endpoint}: use https:// \
                 endpoints, or --etcd-allow-plaintext-password for an etcd on loopback"
            ));
        }
        Ok(EtcdAccess {
            user: Some(user.to_string()),
            password: Some(password.to_string()),
            ..self.clone()
        })
    }

    /// The same endpoints and TLS with no user: what answers to nobody in particular.
    pub fn anonymous(&self) -> EtcdAccess {
        EtcdAccess {
            user: None,
            password: None,
            cert: None,
            key: None,
            ..self.clone()
        }
    }

    pub fn uses_tls(&self) -> bool {
        self.endpoints.iter().any(|e| e.starts_with("https://"))
    }

    /// HTTP/2 pings every 2 s find a dead connection in about 4 s, but only while a request or
    /// stream is open: etcd counts a ping on a connection with nothing open as abuse and closes
    /// the connection at the third ("too_many_pings"), failing whatever request races the close.
    /// Every daemon's lease keep-alive stream keeps its connection pinged; an idle client has
    /// nothing to lose, and its next request has its own timeout.
    fn options(&self) -> Result<etcd_client::ConnectOptions, ProtoError> {
        let mut options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(false);
        if self.uses_tls() {
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &self.cacert {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read_file(
                    "etcd_cacert",
                    ca,
                )?));
            }
            if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
                tls = tls.identity(etcd_client::Identity::from_pem(
                    read_file("etcd_cert", cert)?,
                    read_file("etcd_key", key)?,
                ));
            }
            options = options.with_tls(tls);
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.with_user(user.clone(), password.clone());
        }
        Ok(options)
    }
}

/// Proves that this client's etcd user may read each of `reads` and write each of `writes`,
/// without writing anything: a transaction whose guard never holds is still checked against
/// every operation it could run. The error names the first key refused. A daemon checks its own
/// keys at start, so a wrong role stops it before it starts apps the fleet would never see.
pub async fn check_permissions(
    client: &etcd_client::Client,
    reads: &[String],
    writes: &[String],
) -> Result<(), ProtoError> {
    use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
    let mut client = client.clone();
    for key in reads {
        client
            .get(key.as_str(), Some(GetOptions::new().with_count_only()))
            .await
            .map_err(|e| ProtoError::etcd(format!("read {key}"), e))?;
    }
    for key in writes {
        let never = Txn::new()
            .when(vec![Compare::version(key.as_str(), CompareOp::Less, 0)])
            .and_then(vec![TxnOp::put(key.as_str(), "", None)]);
        client
            .txn(never)
            .await
            .map_err(|e| ProtoError::etcd(format!("write {key}"), e))?;
    }
    Ok(())
}

/// Connects with the timeouts every bluegreen process uses, so that an unreachable etcd is an
/// error after a few seconds rather than a hang.
pub async fn connect(access: &EtcdAccess) -> Result<etcd_client::Client, ProtoError> {
    let options = access.options()?;
    etcd_client::Client::connect(&access.endpoints, Some(options))
        .await
        .map_err(|source| ProtoError::Etcd {
            what: format!("connect to {}", access.endpoints.join(",")),
            source,
        })
}

/// [`connect`] to the endpoints that answer now. etcd-client balances requests over every
/// endpoint it was given, and a request that lands on a member that is down fails ("tcp connect
/// error") instead of going to a live one: a command (the coordinator) asks each endpoint first
/// and keeps only those that answered, so one dead member of three costs nothing. When none
/// answers, all are kept and the caller's first request reports why. [`connect_kept_live`] also
/// follows members that die or come back while the command runs.
pub async fn connect_live(access: &EtcdAccess) -> Result<etcd_client::Client, ProtoError> {
    let (client, _) = connect_live_with(access).await?;
    Ok(client)
}

/// [`connect_live`], and a [`KeepLive`] that keeps the client's balancer to the endpoints that
/// accept connections for as long as it is held (a member killed right after a switch failed the
/// deploy's last writes, exit 4 with traffic moved, because etcd-client kept sending a share of
/// the requests to it).
pub async fn connect_kept_live(
    access: &EtcdAccess,
) -> Result<(etcd_client::Client, KeepLive), ProtoError> {
    let (client, in_use) = connect_live_with(access).await?;
    let keeper = keep_live(&client, access, in_use);
    Ok((client, keeper))
}

async fn connect_live_with(
    access: &EtcdAccess,
) -> Result<(etcd_client::Client, Vec<String>), ProtoError> {
    let live = if access.endpoints.len() < 2 {
        access.endpoints.clone()
    } else {
        live_endpoints(access).await
    };
    let client = connect(&EtcdAccess {
        endpoints: live.clone(),
        ..access.clone()
    })
    .await?;
    Ok((client, live))
}

/// The endpoints of `access` that answer a status request now, in the operator's order (which
/// may list the nearest member first); all of them when none does.
async fn live_endpoints(access: &EtcdAccess) -> Vec<String> {
    let mut probes = tokio::task::JoinSet::new();
    for endpoint in access.endpoints.clone() {
        let one = EtcdAccess {
            endpoints: vec![endpoint.clone()],
            ..access.clone()
        };
        probes.spawn(async move {
            let answered = tokio::time::timeout(LIVE_PROBE_TIMEOUT, async {
                let mut client = connect(&one).await.ok()?;
                client.status().await.ok()
            })
            .await
            .ok()
            .flatten()
            .is_some();
            (endpoint, answered)
        });
    }
    let mut live = Vec::new();
    while let Some(joined) = probes.join_next().await {
        if let Ok((endpoint, true)) = joined {
            live.push(endpoint);
        }
    }
    if live.is_empty() || live.len() == access.endpoints.len() {
        return access.endpoints.clone();
    }
    live.sort_by_key(|e| access.endpoints.iter().position(|x| x == e));
    let skipped: Vec<&String> = access
        .endpoints
        .iter()
        .filter(|e| !live.contains(e))
        .collect();
    tracing::warn!(
        ?skipped,
        "etcd endpoints that did not answer are left out until they do"
    );
    live
}

/// How long [`connect_live`] waits for each endpoint's status.
const LIVE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often [`keep_live`] checks every endpoint, and how long one check may take. Each check
/// is a bare TCP connect (a TLS etcd logs it as a rejected handshake), so not more often.
const KEEP_LIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEP_LIVE_TIMEOUT: Duration = Duration::from_millis(500);

/// Keeps a client's endpoints live while held; dropping it stops the checks.
pub struct KeepLive(Option<tokio::task::JoinHandle<()>>);

impl Drop for KeepLive {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Keeps `client`'s balancer (which holds `in_use` of `access`'s endpoints) to the endpoints that
/// accept connections: every [`KEEP_LIVE_INTERVAL`] each endpoint gets a TCP connect; one that
/// accepts again is put back, then one that refuses or does not answer is taken out, as long as
/// an endpoint that accepted stays in.
fn keep_live(client: &etcd_client::Client, access: &EtcdAccess, in_use: Vec<String>) -> KeepLive {
    if access.endpoints.len() < 2 {
        return KeepLive(None);
    }
    let tls = access.uses_tls();
    let client = client.clone();
    let endpoints: Vec<String> = access
        .endpoints
        .iter()
        .map(|e| normalized(e, tls))
        .collect();
    let mut in_use: std::collections::BTreeSet<String> =
        in_use.iter().map(|e| normalized(e, tls)).collect();
    KeepLive(Some(tokio::spawn(async move {
        loop {
            tokio::time::sleep(KEEP_LIVE_INTERVAL).await; // the check's period
            let mut accepting = std::collections::BTreeSet::new();
            for endpoint in &endpoints {
                if accepts(endpoint).await {
                    accepting.insert(endpoint.clone());
                }
            }
            for endpoint in to_add(&in_use, &accepting) {
                if client.add_endpoint(&endpoint).await.is_ok() {
                    tracing::info!(endpoint, "etcd endpoint accepts connections again");
                    in_use.insert(endpoint);
                }
            }
            for endpoint in to_remove(&in_use, &accepting) {
                if client.remove_endpoint(&endpoint).await.is_ok() {
                    tracing::warn!(endpoint, "etcd endpoint stopped accepting connections");
                    in_use.remove(&endpoint);
                }
            }
        }
    })))
}

/// An endpoint as etcd-client keys it in its balancer: with the scheme it dials (`https://` when
/// TLS is configured, else `http://`) when none was given.
fn normalized(endpoint: &str, tls: bool) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else if tls {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    }
}

/// Whether `endpoint` (a normalized URL) accepts a TCP connection within [`KEEP_LIVE_TIMEOUT`],
/// at its port or its scheme's (as the client dials it).
async fn accepts(endpoint: &str) -> bool {
    let Ok(uri) = endpoint.parse::<tonic::codegen::http::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else {
        return false;
    };
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let host = host.trim_start_matches('[').trim_end_matches(']');
    matches!(
        tokio::time::timeout(
            KEEP_LIVE_TIMEOUT,
            tokio::net::TcpStream::connect((host, port))
        )
        .await,
        Ok(Ok(_))
    )
}

/// Endpoints that accept connections and are not in the balancer: put them back.
fn to_add(
    in_use: &std::collections::BTreeSet<String>,
    accepting: &std::collections::BTreeSet<String>,
) -> Vec<String> {
    accepting.difference(in_use).cloned().collect()
}

/// Endpoints in the balancer that do not accept connections: take them out, but only while one
/// that accepts stays in. With none accepting (a blip, or every member down) nothing changes and
/// the requests' own errors say what is wrong.
fn to_remove(
    in_use: &std::collections::BTreeSet<String>,
    accepting: &std::collections::BTreeSet<String>,
) -> Vec<String> {
    if in_use.intersection(accepting).next().is_none() {
        return Vec::new();
    }
    in_use.difference(accepting).cloned().collect()
}

fn read_file(field: &str, path: &Path) -> Result<Vec<u8>, ProtoError> {
    std::fs::read(path)
        .map_err(|e| ProtoError::Setting(format!("{field}: {}: {e}", path.display())))
}

/// Refuses a credential file (a password, a private key) that users other than its owner may
/// read: whoever can read it is that user, so the mistake is named before it is relied on.
pub fn check_private_file(setting: &str, path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("{setting}: {}: {e}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "{setting}: {} is readable by group or others (mode {:o}): chmod 600 it",
            path.display(),
            mode & 0o777
        ));
    }
    Ok(())
}

fn read_password(path: &Path) -> Result<String, String> {
    check_private_file("etcd_password_file", path)?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("etcd_password_file: {}: {e}", path.display()))?;
    let password = text.lines().next().unwrap_or_default().to_string();
    if password.is_empty() {
        return Err(format!("etcd_password_file: {} is empty", path.display()));
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_password(endpoint: &str, password_file: &Path) -> AccessSettings {
        AccessSettings {
            endpoints: vec![endpoint.into()],
            user: Some("shop".into()),
            password_file: Some(password_file.to_path_buf()),
            ..AccessSettings::default()
        }
    }

    /// A password never goes to etcd in clear text by mistake, and a password file anyone on
    /// the machine can read is refused.
    #[test]
    fn passwords_stay_private_on_disk_and_on_the_wire() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("etcd.password");
        std::fs::write(&file, "pw\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = EtcdAccess::resolve(with_password("https://etcd:2379", &file)).unwrap_err();
        assert!(
            err.contains("etcd_password_file") && err.contains("644"),
            "{err}"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(EtcdAccess::resolve(with_password("https://etcd:2379", &file)).is_ok());
        let err = EtcdAccess::resolve(with_password("http://etcd:2379", &file)).unwrap_err();
        assert!(
            err.contains("clear text") && err.contains("etcd_allow_plaintext_password"),
            "{err}"
        );
        let allowed = AccessSettings {
            allow_plaintext_password: true,
            ..with_password("http://127.0.0.1:2379", &file)
        };
        assert!(EtcdAccess::resolve(allowed).is_ok());
    }

    #[test]
    fn dead_members_leave_and_return_but_only_while_a_live_one_stays() {
        let set = |v: &[&str]| -> std::collections::BTreeSet<String> {
            v.iter().map(|s| s.to_string()).collect()
        };
        // A member dies: out. It comes back: in.
        assert_eq!(to_remove(&set(&["a", "b", "c"]), &set(&["a", "c"])), ["b"]);
        assert!(to_add(&set(&["a", "b", "c"]), &set(&["a", "c"])).is_empty());
        assert_eq!(to_add(&set(&["a", "c"]), &set(&["a", "b", "c"])), ["b"]);
        // Nothing accepts (a blip, or all down): nothing leaves.
        assert!(to_remove(&set(&["a", "b"]), &set(&[])).is_empty());
        // The only live one is not in use yet: nothing leaves until it is back in.
        assert!(to_remove(&set(&["a"]), &set(&["b"])).is_empty());
        assert_eq!(to_remove(&set(&["a", "b"]), &set(&["b"])), ["a"]);
    }

    #[test]
    fn endpoints_are_keyed_as_the_client_dials_them() {
        assert_eq!(normalized("http://e:2379", true), "http://e:2379");
        assert_eq!(normalized("e:2379", false), "http://e:2379");
        assert_eq!(normalized("e:2379", true), "https://e:2379");
    }

    #[tokio::test]
    async fn an_endpoint_accepts_while_something_listens_there() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        assert!(accepts(&url).await);
        assert!(!accepts("http://[::1").await, "unparsable: never accepting");
        drop(listener);
        assert!(!accepts(&url).await);
    }

    fn settings() -> AccessSettings {
        AccessSettings {
            endpoints: vec!["https://etcd-1:2379".into()],
            ..Default::default()
        }
    }

    #[test]
    fn settings_are_checked_together_and_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "s3cret\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let cases: Vec<(AccessSettings, &str)> = vec![
            (
                AccessSettings {
                    endpoints: vec![],
                    ..settings()
                },
                "etcd:",
            ),
            (
                AccessSettings {
                    endpoints: vec!["etcd:2379".into()],
                    ..settings()
                },
                "not an http",
            ),
            (
                AccessSettings {
                    endpoints: vec!["http://e:2379".into()],
                    cacert: Some(file.clone()),
                    ..settings()
                },
                "use https://",
            ),
            (
                AccessSettings {
                    cert: Some(file.clone()),
                    ..settings()
                },
                "etcd_key",
            ),
            (
                AccessSettings {
                    cacert: Some(dir.path().join("none")),
                    ..settings()
                },
                "etcd_cacert",
            ),
            (
                AccessSettings {
                    user: Some("agent".into()),
                    ..settings()
                },
                "no password",
            ),
            (
                AccessSettings {
                    password_file: Some(file.clone()),
                    ..settings()
                },
                "without etcd_user",
            ),
            (
                AccessSettings {
                    user: Some("a".into()),
                    password_file: Some(dir.path().join("none")),
                    ..settings()
                },
                "etcd_password_file",
            ),
        ];
        for (s, expected) in cases {
            let err = EtcdAccess::resolve(s).unwrap_err();
            assert!(err.contains(expected), "{expected}: {err}");
        }
        let ok = EtcdAccess::resolve(AccessSettings {
            user: Some("agent".into()),
            password_file: Some(file),
            allow_plaintext_password: true,
            ..settings()
        })
        .unwrap();
        assert_eq!(ok.password.as_deref(), Some("s3cret"));
        assert!(
            !format!("{ok:?}").contains("s3cret"),
            "never in Debug output"
        );
    }
}
