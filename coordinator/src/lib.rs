//! The coordinator: CI's and operators' handle on a bluegreen app. It never pushes work to hosts:
//! it writes desired state into etcd with fenced transactions and watches the fleet converge.
#![forbid(unsafe_code)]

pub use error::CoordinatorError;

pub mod actor;
pub mod aftermath;
pub mod canary;
pub mod cli;
pub mod deploy;
#[cfg(test)]
mod deploy_tests;
pub mod error;
pub mod fleet;
pub mod history;
pub mod hooks;
pub mod hosts;
pub mod lbs;
pub mod live;
pub mod lock;
pub mod membership;
pub mod migrate;
pub mod notify;
pub mod pipeline;
pub mod preview;
pub mod probes;
pub mod progress;
pub mod reconcile;
pub mod report;
pub mod spec;
pub mod status;
pub mod stop;
pub mod store;
pub mod switch;
#[cfg(test)]
mod testkit;
pub mod validate;

use lock::DeployLock;
pub use membership::Member;
use probes::{HttpProbes, Probes};
use progress::Progress;
use proto::records::{validate_artifact_url, validate_sha256, Artifact, LockRecord};
use proto::{Color, Keys, Operation, Outcome};
use sha2::{Digest, Sha256};
use std::time::Duration;
use store::EtcdStore;

/// Settings every command shares (flags or `BLUEGREEN_*` env).
#[derive(Debug, Clone)]
pub struct Global {
    pub etcd: proto::EtcdAccess,
    /// Client certificates for the agents' gRPC API (`logs`); `None`: plain gRPC.
    pub grpc_tls: Option<probes::GrpcClientTls>,
    pub prefix: String,
    pub app: Option<String>,
    pub json: bool,
    /// What the command learned about its operation, for the `result` event.
    pub recorder: report::Recorder,
}

impl Global {
    /// Progress output for this command, recording into [`Global::recorder`].
    pub fn progress(&self) -> Progress {
        Progress::recording(self.json, &self.recorder)
    }

    fn keys(&self) -> Result<Keys, CoordinatorError> {
        let app = self.app.as_deref().ok_or_else(|| {
            CoordinatorError::Usage("--app (or BLUEGREEN_APP) is required".into())
        })?;
        Ok(Keys::new(&self.prefix, app)?)
    }

    /// Keys and a client for an app that exists: a query about an app with nothing in etcd is a
    /// typo far more often than a question, so it is bad input (exit 2) naming the known apps.
    async fn existing_app(&self) -> Result<(Keys, etcd_client::Client), CoordinatorError> {
        let keys = self.keys()?;
        let client = self.connect().await?;
        let options = etcd_client::GetOptions::new()
            .with_prefix()
            .with_count_only();
        let found = client
            .clone()
            .get(keys.app_prefix(), Some(options))
            .await
            .map_err(|e| proto::ProtoError::etcd(format!("read {}", keys.app_prefix()), e))?;
        if found.count() > 0 {
            return Ok((keys, client));
        }
        let apps = proto::watch::list_apps(&client, &self.prefix).await?;
        let app = self.app.as_deref().unwrap_or_default();
        let known = if apps.is_empty() {
            format!("there is no app under {} yet", self.prefix)
        } else {
            format!("known apps: {}", apps.join(", "))
        };
        Err(CoordinatorError::Usage(format!(
            "--app {app:?}: nothing under {}; {known}",
            keys.app_prefix()
        )))
    }

    async fn connect(&self) -> Result<etcd_client::Client, CoordinatorError> {
        let endpoints = self.etcd.endpoints.join(",");
        let client = proto::connect_live(&self.etcd).await.map_err(|e| {
            CoordinatorError::Unreachable(format!("etcd {endpoints}: {}", e.brief()))
        })?;
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
            Err(e) => Err(CoordinatorError::Unreachable(e.brief())),
        }
    }
}

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
            return Err(CoordinatorError::Usage(format!(
                "--app {app} does not match app {:?} in {}",
                spec.app,
                path.display()
            )));
        }
    }
    Ok(spec)
}

async fn acquire(
    client: &etcd_client::Client,
    keys: &Keys,
    op_id: &str,
    operation: Operation,
    version: Option<&str>,
    wait: Duration,
    progress: &Progress,
) -> Result<DeployLock, CoordinatorError> {
    progress.record().operation(op_id, keys.app());
    let record = LockRecord {
        deploy_id: op_id.into(),
        holder: holder(),
        operation,
        version: version.map(str::to_string),
        acquired_at: proto::time::now_rfc3339(),
    };
    DeployLock::acquire(client, keys, &record, wait, progress).await
}

/// What `deploy` and `promote` share: the lock wait, the checks, the signing key.
pub struct Checks {
    pub lock_wait: Duration,
    pub health_timeout: Option<Duration>,
    pub verify_for: Option<Duration>,
    pub keep_failed: bool,
    pub allow_no_lb: bool,
    pub signing_key: Option<std::path::PathBuf>,
}

impl Checks {
    fn signing_key(&self) -> Result<Option<proto::signing::SigningKey>, CoordinatorError> {
        self.signing_key
            .as_deref()
            .map(proto::signing::SigningKey::load)
            .transpose()
            .map_err(|e| CoordinatorError::Usage(format!("--signing-key: {e}")))
    }
}

pub struct DeployRequest {
    pub spec: std::path::PathBuf,
    pub version: String,
    pub artifact: String,
    pub sha256: Option<String>,
    pub checks: Checks,
    /// Stop after staging and checks; `promote` switches.
    pub no_switch: bool,
    /// Ramp traffic to the new version by the spec's `[canary]` steps before the switch.
    pub canary: bool,
}

pub struct PromoteRequest {
    pub spec: std::path::PathBuf,
    pub checks: Checks,
}

/// `coordinator promote`: switches to what `deploy --no-switch` staged, after its checks again.
pub async fn promote(global: &Global, req: PromoteRequest) -> Result<String, CoordinatorError> {
    let spec = load_spec(global.app.as_deref(), &req.spec)?;
    global.recorder.spec(&spec);
    let signing_key = req.checks.signing_key()?;
    let progress = global.progress();
    let keys = Keys::new(&global.prefix, &spec.app)?;
    let client = global.connect().await?;
    let op_id = format!("promote-{}", uuid::Uuid::new_v4());
    let lock = acquire(
        &client,
        &keys,
        &op_id,
        Operation::Promote,
        None,
        req.checks.lock_wait,
        &progress,
    )
    .await?;
    let store = EtcdStore::new(&client, &keys, &lock);
    let probes = HttpProbes::new(global.grpc_tls.clone());
    let pipeline: deploy::Deploy<'_, _, _, deploy::NoMigrations> = deploy::Deploy {
        store: &store,
        probes: &probes,
        migrator: None,
        spec: &spec,
        progress: &progress,
        op_id: op_id.clone(),
        signing_key: signing_key.as_ref(),
    };
    let args = deploy::PromoteArgs {
        health_timeout: req.checks.health_timeout,
        verify_for: req.checks.verify_for,
        keep_failed: req.checks.keep_failed,
        allow_no_lb: req.checks.allow_no_lb,
    };
    let result = tokio::select! {
        r = pipeline.promote(&args) => r,
        lost = lock.session.lost() => Err(CoordinatorError::Failed(format!("lock lost mid-promote ({lost}); stopped, the fence rejects anything further"))),
    };
    lock.release().await;
    result
}

/// `deploy`'s input, checked completely before etcd is touched (every error is exit 2).
struct CheckedDeploy {
    spec: spec::AppSpec,
    /// `None` until computed: `--plan` does not fetch the artifact to hash it.
    sha256: Option<String>,
    signing_key: Option<proto::signing::SigningKey>,
}

fn check_deploy_input(
    global: &Global,
    req: &DeployRequest,
) -> Result<CheckedDeploy, CoordinatorError> {
    let spec = load_spec(global.app.as_deref(), &req.spec)?;
    proto::check_name("--version", &req.version).map_err(CoordinatorError::Usage)?;
    validate_artifact_url(&req.artifact)
        .map_err(|e| CoordinatorError::Usage(format!("--artifact: {e}")))?;
    let sha256 = req
        .sha256
        .as_deref()
        .map(|hex| {
            validate_sha256(hex)
                .map(|()| hex.to_ascii_lowercase())
                .map_err(|e| CoordinatorError::Usage(format!("--sha256: {e}")))
        })
        .transpose()?;
    let signing_key = req.checks.signing_key()?;
    Ok(CheckedDeploy {
        spec,
        sha256,
        signing_key,
    })
}

/// `coordinator deploy --plan`: the preview document and the exit code the deploy would have.
pub async fn deploy_plan(
    global: &Global,
    req: DeployRequest,
) -> Result<(String, i32), CoordinatorError> {
    let CheckedDeploy { spec, .. } = check_deploy_input(global, &req)?;
    let migrations = migrate::runner::Migrations::load(&spec, &Progress::silent())?;
    let pending = preview::pending_migrations(migrations.as_ref()).await;
    let keys = Keys::new(&global.prefix, &spec.app)?;
    let client = global.connect().await?;
    let state = status::read(&client, &keys).await?;
    let holder = lock::status(&client, &keys)
        .await?
        .map(|held| held.holder());
    let intent = pipeline::Intent {
        version: req.version.clone(),
        allow_no_lb: req.checks.allow_no_lb,
        migrations: migrations.is_some(),
        verify_for: req.checks.verify_for.unwrap_or(spec.switch.verify_for),
        no_switch: req.no_switch,
        canary: req.canary,
    };
    let preview = preview::judge(&spec.app, &state, &intent, holder, pending);
    let text = if global.json {
        pretty_json(&preview)
    } else {
        preview.render_text()
    };
    Ok((text, preview.exit))
}

/// `coordinator deploy`. Input is checked completely before etcd is touched (exit 2).
pub async fn deploy(global: &Global, req: DeployRequest) -> Result<String, CoordinatorError> {
    let CheckedDeploy {
        spec,
        sha256,
        signing_key,
    } = check_deploy_input(global, &req)?;
    global.recorder.spec(&spec);
    let sha256 = match sha256 {
        Some(hex) => hex,
        None => sha256_of(&req.artifact).await?,
    };
    let progress = global.progress();
    let migrations = migrate::runner::Migrations::load(&spec, &progress)?;
    if let Some(m) = &migrations {
        m.precheck().await?;
    }
    let keys = Keys::new(&global.prefix, &spec.app)?;
    let client = global.connect().await?;
    let op_id = uuid::Uuid::new_v4().to_string();
    let lock = acquire(
        &client,
        &keys,
        &op_id,
        Operation::Deploy,
        Some(&req.version),
        req.checks.lock_wait,
        &progress,
    )
    .await?;
    let args = deploy::DeployArgs {
        version: req.version.clone(),
        artifact: Artifact {
            url: req.artifact.clone(),
            sha256,
        },
        health_timeout: req.checks.health_timeout,
        verify_for: req.checks.verify_for,
        keep_failed: req.checks.keep_failed,
        allow_no_lb: req.checks.allow_no_lb,
        no_switch: req.no_switch,
        canary: req.canary,
    };
    let store = EtcdStore::new(&client, &keys, &lock);
    let probes = HttpProbes::new(global.grpc_tls.clone());
    let migrator = migrations
        .as_ref()
        .map(|m| migrate::expand::SchemaMigrator {
            migrations: m,
            client: &client,
            keys: &keys,
            lock: &lock,
            spec: &spec,
            probes: &probes,
            progress: &progress,
            op_id: &op_id,
        });
    let pipeline = deploy::Deploy {
        store: &store,
        probes: &probes,
        migrator: migrator.as_ref(),
        spec: &spec,
        progress: &progress,
        op_id: op_id.clone(),
        signing_key: signing_key.as_ref(),
    };
    let result = tokio::select! {
        r = pipeline.run(&args) => r,
        lost = lock.session.lost() => Err(CoordinatorError::Failed(format!("deploy lock lost mid-deploy ({lost}); stopped, the fence rejects anything further"))),
    };
    lock.release().await;
    result
}

/// The artifact's sha256 when `--sha256` was not given: the coordinator fetches it once itself.
pub(crate) async fn sha256_of(url: &str) -> Result<String, CoordinatorError> {
    let bytes = if let Some(path) = url.strip_prefix("file://") {
        tokio::fs::read(path)
            .await
            .map_err(|e| CoordinatorError::Usage(format!("--artifact {url}: {e}")))?
    } else {
        let resp = reqwest::get(url)
            .await
            .map_err(|e| CoordinatorError::Usage(format!("--artifact {url}: {e}")))?;
        if !resp.status().is_success() {
            return Err(CoordinatorError::Usage(format!(
                "--artifact {url}: HTTP {}",
                resp.status()
            )));
        }
        resp.bytes()
            .await
            .map_err(|e| CoordinatorError::Usage(format!("--artifact {url}: {e}")))?
            .to_vec()
    };
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// `rollback` (target None: the other color) and `switch <color>`. One operation id covers the
/// lock, `active`, `deploy` and the history record.
pub async fn switch(
    global: &Global,
    target: Option<Color>,
    lock_wait: Duration,
    allow_no_lb: bool,
) -> Result<String, CoordinatorError> {
    let keys = global.keys()?;
    let client = global.connect().await?;
    let progress = global.progress();
    let operation = if target.is_some() {
        Operation::Switch
    } else {
        Operation::Rollback
    };
    let op_id = format!("{operation}-{}", uuid::Uuid::new_v4());
    let lock = acquire(
        &client, &keys, &op_id, operation, None, lock_wait, &progress,
    )
    .await?;
    let store = EtcdStore::new(&client, &keys, &lock);
    let request = switch::SwitchRequest {
        operation,
        target,
        op_id: op_id.clone(),
        allow_no_lb,
    };
    let probes = HttpProbes::new(global.grpc_tls.clone());
    let result = tokio::select! {
        r = switch::switch_command(&store, &probes, &request, &progress) => r,
        lost = lock.session.lost() => Err(CoordinatorError::Failed(format!("lock lost mid-{operation} ({lost}); stopped, the fence rejects anything further"))),
    };
    lock.release().await;
    result
}

/// `coordinator stop <color>`: the idle color only.
pub async fn stop(
    global: &Global,
    color: Color,
    lock_wait: Duration,
) -> Result<String, CoordinatorError> {
    let keys = global.keys()?;
    let client = global.connect().await?;
    let progress = global.progress();
    let id = format!("stop-{}", uuid::Uuid::new_v4());
    let lock = acquire(
        &client,
        &keys,
        &id,
        Operation::Stop,
        None,
        lock_wait,
        &progress,
    )
    .await?;
    let result = stop::stop_color(&client, &keys, &lock, color, &id, &progress).await;
    lock.release().await;
    result
}

/// `coordinator host list` and `coordinator lb list`: every registered member, alive or not.
pub async fn member_list(global: &Global, kind: Member) -> Result<String, CoordinatorError> {
    let (keys, client) = global.existing_app().await?;
    let state = status::read(&client, &keys).await?;
    Ok(match (kind, global.json) {
        (Member::Host, true) => pretty_json(&hosts::views(&state)),
        (Member::Host, false) => hosts::render_text(&hosts::views(&state)),
        (Member::Lb, true) => pretty_json(&lbs::views(&state)),
        (Member::Lb, false) => lbs::render_text(&lbs::views(&state)),
    })
}

pub fn pretty_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("views serialize") + "\n"
}

/// `coordinator host remove NAME --yes` and `coordinator lb remove NAME --yes`: forgets a member
/// that is gone for good, under the deploy lock.
pub async fn member_remove(
    global: &Global,
    kind: Member,
    name: &str,
    confirmed: bool,
    lock_wait: Duration,
) -> Result<String, CoordinatorError> {
    proto::check_name(kind.noun(), name).map_err(CoordinatorError::Usage)?;
    if !confirmed {
        return Err(CoordinatorError::Usage(format!(
            "{} remove forgets {name}{}; repeat with --yes to confirm",
            kind.command(),
            kind.consequence()
        )));
    }
    let keys = global.keys()?;
    let client = global.connect().await?;
    let progress = global.progress();
    let id = format!("{}-remove-{}", kind.command(), uuid::Uuid::new_v4());
    let lock = acquire(
        &client,
        &keys,
        &id,
        kind.operation(),
        None,
        lock_wait,
        &progress,
    )
    .await?;
    let result = match kind {
        Member::Host => hosts::remove(&client, &keys, &lock, name, &id).await,
        Member::Lb => lbs::remove(&client, &keys, &lock, name, &id).await,
    };
    lock.release().await;
    result
}

/// `coordinator status`.
pub async fn status(global: &Global) -> Result<String, CoordinatorError> {
    let (keys, client) = global.existing_app().await?;
    let mut status = status::read(&client, &keys).await?;
    for release in status.releases.values_mut() {
        release.run.env = proto::secrets::mask_env(&release.run.env);
    }
    Ok(if global.json {
        serde_json::to_string_pretty(&status).expect("status serializes") + "\n"
    } else {
        status::render_text(global.app.as_deref().unwrap_or_default(), &status)
    })
}

/// `coordinator apps`: the apps that have keys under the prefix, one per line (JSON: an array).
pub async fn apps(global: &Global) -> Result<String, CoordinatorError> {
    let client = global.connect().await?;
    let apps = proto::watch::list_apps(&client, &global.prefix).await?;
    Ok(if global.json {
        pretty_json(&apps)
    } else {
        apps.iter().map(|a| format!("{a}\n")).collect()
    })
}

/// `coordinator history --limit N`: one line per record (JSON: one array, oldest first).
pub async fn history(
    global: &Global,
    limit: usize,
    filter: &history::Filter,
) -> Result<String, CoordinatorError> {
    let (keys, client) = global.existing_app().await?;
    let records = history::list(&client, &keys, limit, filter).await?;
    if global.json {
        let list: Vec<serde_json::Value> = records
            .into_iter()
            .map(|(key, record)| serde_json::json!({"key": key, "record": record}))
            .collect();
        return Ok(pretty_json(&list));
    }
    let mut out = String::new();
    for (_, r) in records {
        let arrow = match (r.from, r.to) {
            (Some(f), Some(t)) => format!("{f} -> {t}"),
            (None, Some(t)) => format!("-> {t}"),
            _ => String::new(),
        };
        let reason = r
            .reason
            .map(|x| format!(": {}", x.lines().next().unwrap_or("")))
            .unwrap_or_default();
        let actor = r.actor.map(|a| format!(" by {a}")).unwrap_or_default();
        out.push_str(&format!(
            "{} {:<10} {:<12} {} {} {arrow}{actor}{reason}\n",
            r.at,
            r.kind.as_str(),
            r.outcome.as_str(),
            r.deploy_id,
            r.version.unwrap_or_default()
        ));
    }
    Ok(out)
}

/// `coordinator lock status`.
pub async fn lock_status(global: &Global) -> Result<String, CoordinatorError> {
    let (keys, client) = global.existing_app().await?;
    let held = lock::status(&client, &keys).await?;
    if global.json {
        let doc = match &held {
            None => serde_json::json!({"held": false}),
            Some(h) => serde_json::json!({
                "held": true,
                "holder": h.holder(),
                "token": h.token,
                "lease": format!("{:x}", h.lease),
                "record": h.record.as_ref().ok(),
                "problem": h.record.as_ref().err(),
            }),
        };
        return Ok(pretty_json(&doc));
    }
    Ok(match held {
        None => "lock: free\n".into(),
        Some(held) => format!(
            "lock: held by {}; token {}, lease {:x}\n",
            held.holder(),
            held.token,
            held.lease
        ),
    })
}

/// `coordinator lock break --yes`: for a stuck holder. The holder's fence makes it harmless.
pub async fn lock_break(global: &Global, confirmed: bool) -> Result<String, CoordinatorError> {
    if !confirmed {
        return Err(CoordinatorError::Usage(
            "lock break revokes the holder's lease; repeat with --yes to confirm".into(),
        ));
    }
    let keys = global.keys()?;
    let client = global.connect().await?;
    let Some(broken) = lock::break_lock(&client, &keys).await? else {
        return Ok("lock: already free\n".into());
    };
    let op_id = broken
        .record
        .as_ref()
        .map(|l| l.deploy_id.clone())
        .unwrap_or_else(|_| format!("unreadable-lock-{}", broken.token));
    let mut record = history::record(Operation::LockBreak, &op_id, Outcome::Broken);
    record.reason = Some(format!(
        "lock held by {} broken by {}",
        broken.holder(),
        holder()
    ));
    history::append(&client, &keys, None, &record).await?;
    Ok(format!("lock: broken (was held by {})\n", broken.holder()))
}

/// `coordinator logs --host H --color C --tail N`.
pub async fn logs(
    global: &Global,
    host: &str,
    color: Color,
    tail: u32,
) -> Result<String, CoordinatorError> {
    let record = registered_host(global, host).await?;
    let lines = HttpProbes::new(global.grpc_tls.clone())
        .logs(&record, color, tail)
        .await
        .map_err(CoordinatorError::Failed)?;
    let lines: Vec<String> = lines.iter().map(|l| proto::secrets::mask_text(l)).collect();
    if global.json {
        let doc = serde_json::json!({"host": host, "color": color, "lines": lines});
        return Ok(pretty_json(&doc));
    }
    Ok(lines.into_iter().map(|l| l + "\n").collect())
}

/// The live host `--host` names, as its agent registered it (exit 2 when none does).
pub(crate) async fn registered_host(
    global: &Global,
    host: &str,
) -> Result<proto::records::HostRecord, CoordinatorError> {
    let (keys, client) = global.existing_app().await?;
    let state = status::read(&client, &keys).await?;
    state.hosts.get(host).cloned().ok_or_else(|| {
        CoordinatorError::Usage(format!(
            "--host {host}: not registered under {}",
            keys.hosts_prefix()
        ))
    })
}

/// `coordinator keygen`: writes `<name>.key` (mode 0600) and `<name>.pub` into `dir`, refusing to
/// overwrite either.
pub fn keygen(dir: &std::path::Path, name: &str) -> Result<String, CoordinatorError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    proto::check_name("--name", name).map_err(CoordinatorError::Usage)?;
    let (private, public) = proto::signing::generate().map_err(CoordinatorError::Failed)?;
    let (key_path, pub_path) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    );
    for (path, text, mode) in [(&key_path, &private, 0o600), (&pub_path, &public, 0o644)] {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(|e| CoordinatorError::Usage(format!("{}: {e}", path.display())))?;
        file.write_all(text.as_bytes())
            .map_err(|e| CoordinatorError::Failed(format!("{}: {e}", path.display())))?;
    }
    Ok(format!(
        "private key {} (give it to CI: --signing-key or BLUEGREEN_SIGNING_KEY_FILE)
public key  {} (list it in every agent's trusted_keys)
",
        key_path.display(),
        pub_path.display()
    ))
}

/// Parses a humantime duration flag, naming the flag on error.
pub fn parse_duration(flag: &str, value: &str) -> Result<Duration, CoordinatorError> {
    humantime::parse_duration(value)
        .map_err(|e| CoordinatorError::Usage(format!("{flag} {value:?}: {e}")))
}
