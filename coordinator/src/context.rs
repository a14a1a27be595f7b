//! What every command shares: the global settings and connection ([`Global`]), the spec loader,
//! duration flags, JSON output, the lock holder's name. Below the command layer: commands use it,
//! it uses no command.
use crate::error::{CoordinatorError, Subject};
use crate::{history, probes, progress, report, spec, status};
use progress::Progress;
use proto::Keys;
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Settings every command shares (flags or `BLUEGREEN_*` env).
#[derive(Debug, Clone)]
pub struct Global {
    pub etcd: proto::EtcdAccess,
    /// Client certificates for the agents' gRPC API (`logs`); `None`: plain gRPC.
    pub grpc_tls: Option<probes::GrpcClientTls>,
    pub prefix: String,
    pub app: Option<String>,
    pub json: bool,
    /// TTL of the deploy lock's lease (`--lock-ttl`, at least [`lock::MIN_LOCK_TTL`]).
    pub lock_ttl: Duration,
    /// What the command learned about its operation, for the `result` event.
    pub recorder: report::Recorder,
}

impl Global {
    /// Progress output for this command, recording into [`Global::recorder`].
    pub fn progress(&self) -> Progress {
        Progress::recording(self.json, &self.recorder)
    }

    pub(crate) fn keys(&self) -> Result<Keys, CoordinatorError> {
        let app = self
            .app
            .as_deref()
            .ok_or_else(|| Subject::flag("--app").usage("required (or BLUEGREEN_APP)"))?;
        Ok(Keys::new(&self.prefix, app)?)
    }

    /// Keys and a client for an app that exists: a query about an app with nothing in etcd is a
    /// typo far more often than a question, so it is bad input (exit 2) naming the known apps.
    pub(crate) async fn existing_app(
        &self,
    ) -> Result<(Keys, etcd_client::Client), CoordinatorError> {
        let keys = self.keys()?;
        let client = self.connect().await?;
        let options = etcd_client::GetOptions::new()
            .with_prefix()
            .with_count_only();
        let found = client
            .clone()
            .get(keys.app_prefix(), Some(options))
            .await
            .map_err(|e| proto::ProtoError::etcd(format!("read {}", keys.app_prefix()), e));
        match found {
            Ok(found) if found.count() > 0 => return Ok((keys, client)),
            Ok(_) => {}
            // A least-privilege user may read only its own app: another name is, for it, an app
            // that does not exist (most often a typo), answered like one.
            Err(e) if e.is_permission_denied() => {}
            Err(e) => return Err(e.into()),
        }
        let apps = proto::watch::list_apps(&client, &self.prefix).await?;
        let app = self.app.as_deref().unwrap_or_default();
        let known = if apps.is_empty() {
            format!("there is no app under {} yet", self.prefix)
        } else {
            format!("known apps: {}", apps.join(", "))
        };
        let nothing = format!(
            "nothing under {} that this user may read; {known}",
            keys.app_prefix()
        );
        Err(Subject::flag_value("--app", format!("{app:?}")).usage(nothing))
    }

    /// The fleet probes for this app (`--grpc-*` for the agents' mutual TLS).
    pub(crate) fn probes(&self) -> crate::probes::HttpProbes {
        crate::probes::HttpProbes::new(self.grpc_tls.clone(), self.app.as_deref().unwrap_or(""))
    }

    pub(crate) async fn connect(&self) -> Result<etcd_client::Client, CoordinatorError> {
        let endpoints = self.etcd.endpoints.join(",");
        let (client, keeper) = match proto::access::connect_kept_live(&self.etcd).await {
            Ok(connected) => connected,
            Err(e) => {
                let why = proto::tls_check::explained(&self.etcd, &e).await;
                return Err(CoordinatorError::unreachable(why).about(Subject::Etcd(endpoints)));
            }
        };
        // A command is one process: its client follows the members for as long as it runs.
        std::mem::forget(keeper);
        // Fail here, before anything is written, when etcd does not answer (exit 5, one line).
        // Probe a key every role of this app may read (a least-privilege user may read nothing else).
        let probe_key = match &self.app {
            Some(app) => Keys::new(&self.prefix, app)?.lock(),
            None => format!("{}/", self.prefix),
        };
        // A moment without a leader (an election) is asked again, for a few seconds.
        let until = tokio::time::Instant::now() + history::TRANSIENT_BUDGET;
        let probe = proto::retry::transient("reach etcd", until, |_| {
            let (mut probe_client, key) = (client.clone(), probe_key.clone());
            let endpoints = endpoints.clone();
            async move {
                let count_only = etcd_client::GetOptions::new().with_count_only();
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    probe_client.get(key, Some(count_only)),
                )
                .await
                {
                    Ok(answer) => answer
                        .map(|_| ())
                        .map_err(|e| proto::ProtoError::etcd(endpoints, e)),
                    // No answer at all: not worth asking again (the caller reports it).
                    Err(_) => Err(proto::ProtoError::Setting(format!(
                        "etcd {endpoints}: no answer in 5s"
                    ))),
                }
            }
        });
        match probe.await {
            Ok(()) => Ok(client),
            // etcd answered: it is reachable. What the user may not read is the command's own
            // concern (a mistyped --app is exit 2; a key its role lacks, exit 6).
            Err(e) if e.is_permission_denied() => Ok(client),
            // A refused certificate looks like a dropped connection: ask TLS itself what it was.
            Err(e) => Err(CoordinatorError::unreachable(
                proto::tls_check::explained(&self.etcd, &e).await,
            )),
        }
    }
}

/// Who holds the lock, as the lock record and history name it: this host and process.
pub(crate) fn holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}:{}", host.trim(), std::process::id())
}

/// The app spec, checked against `--app` (`app`) when both name the app.
pub(crate) fn load_spec(
    app: Option<&str>,
    path: &std::path::Path,
) -> Result<spec::AppSpec, CoordinatorError> {
    let spec = spec::AppSpec::load(path)?;
    if let Some(app) = app {
        if app != spec.app {
            return Err(Subject::flag_value("--app", app).usage(format!(
                "does not match app {:?} in {}",
                spec.app,
                path.display()
            )));
        }
    }
    Ok(spec)
}

/// A query's JSON document, pretty-printed with a final newline.
pub fn pretty_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("views serialize") + "\n"
}

/// The live host `--host` names, as its agent registered it (exit 2 when none does).
pub(crate) async fn registered_host(
    global: &Global,
    host: &str,
) -> Result<proto::records::HostRecord, CoordinatorError> {
    let (keys, client) = global.existing_app().await?;
    let state = status::read(&client, &keys).await?;
    state.hosts.get(host).cloned().ok_or_else(|| {
        let prefix = keys.hosts_prefix();
        Subject::flag_value("--host", host).usage(format!("not registered under {prefix}"))
    })
}

/// The `--artifact` URL and `--sha256` as given, checked: the digest lowercased, if given.
pub(crate) fn checked_artifact(
    url: &str,
    sha256: Option<&str>,
) -> Result<Option<String>, CoordinatorError> {
    proto::records::validate_artifact_url(url).map_err(|e| Subject::flag("--artifact").usage(e))?;
    sha256
        .map(|hex| {
            proto::records::validate_sha256(hex)
                .map(|()| hex.to_ascii_lowercase())
                .map_err(|e| Subject::flag("--sha256").usage(e))
        })
        .transpose()
}

/// The artifact's sha256 when `--sha256` was not given: the coordinator fetches it once itself.
pub(crate) async fn sha256_of(url: &str) -> Result<String, CoordinatorError> {
    Ok(hex::encode(Sha256::digest(artifact_bytes(url).await?)))
}

/// The artifact's bytes, from its `file://` or `http(s)://` URL.
pub(crate) async fn artifact_bytes(url: &str) -> Result<Vec<u8>, CoordinatorError> {
    let artifact = || Subject::flag_value("--artifact", url).usage("");
    let bytes = if let Some(path) = url.strip_prefix("file://") {
        tokio::fs::read(path)
            .await
            .map_err(|e| artifact().because(e))?
    } else {
        let resp = reqwest::get(url).await.map_err(|e| artifact().because(e))?;
        if !resp.status().is_success() {
            return Err(artifact().because(format!("HTTP {}", resp.status())));
        }
        resp.bytes()
            .await
            .map_err(|e| artifact().because(e))?
            .to_vec()
    };
    Ok(bytes)
}

/// Parses a humantime duration flag, naming the flag on error.
pub fn parse_duration(flag: &'static str, value: &str) -> Result<Duration, CoordinatorError> {
    humantime::parse_duration(value).map_err(|e| {
        Subject::flag_value(flag, format!("{value:?}"))
            .usage("")
            .because(e)
    })
}
