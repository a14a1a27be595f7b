//! Turns the sidecar's view of etcd into what nginx serves, in one of two modes.
//!
//! Lua mode: the include file holds only listeners, host names, certificates and the Lua
//! balancer, and is reloaded only when one of those changes; every traffic decision (a switch,
//! a canary weight, a host's health) is a state pushed to nginx, acked once every worker
//! serves it, and written to a file nginx loads at start.
//!
//! Reload mode: a switch is an atomic file swap plus SIGHUP: both colors' variants are rendered
//! and validated ahead of time (whenever the hosts change), so `nginx -t` never sits between a
//! switch and traffic moving. A reload nginx refused (it keeps its old config silently) is
//! caught by polling the status location, and the last good file is put back.
use crate::error::SidecarError;
use crate::lua;
use crate::nginx::{Nginx, NginxControl};
use crate::render::{self, View};
use crate::state::LbState;
use proto::records::{LbRecord, LbUpstreamsRecord};
use proto::Color;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::time::Duration;

/// How long nginx gets to start serving a new config before the reload counts as refused.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Applier<N: NginxControl = Nginx> {
    pub nginx: N,
    template: String,
    app: String,
    listen: String,
    preview_listen: String,
    /// sha256 of rendered texts (with the revision token) that passed `nginx -t`.
    validated: HashSet<String>,
    /// What nginx serves, before the revision was swapped in: to skip reloads that change nothing.
    served: Option<String>,
    /// Where nginx sends its request log (see [`crate::requests`]); `None`: no log.
    request_log: Option<String>,
    /// The app's host names on its listeners (empty: any).
    pub server_names: Vec<String>,
    /// HTTPS beside the public listener.
    pub tls: Option<crate::config::Tls>,
    /// The status server's host name (several apps share nginx's status listener).
    pub status_host: Option<String>,
    /// Lua mode's push token and files; `None`: reload mode.
    lua: Option<LuaSetup>,
    /// Lua mode: the last state pushed, with its revision zeroed (to skip pushes that change
    /// nothing).
    pushed: Option<String>,
    /// Lua mode: the include must be reloaded even though its text is the same (a renewed
    /// certificate at the same paths).
    reload_due: bool,
}

/// What an app's Lua mode needs beside the template's settings.
#[derive(Debug, Clone)]
pub struct LuaSetup {
    /// Authorizes pushes; in the include file, readable by root only.
    pub token: String,
    /// The app's balancer ([`lua::module`]), which nginx's workers load.
    pub module_file: std::path::PathBuf,
    /// Where the last state pushed is written, for a worker of an nginx restarted without it.
    pub state_file: std::path::PathBuf,
}

fn sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The canary split to render with `color` live: only a record whose stable color is that color
/// (one left from before a switch describes traffic that no longer exists).
fn split(state: &LbState, color: Color) -> Option<render::Split> {
    let traffic = state.traffic.as_ref()?;
    if traffic.stable != color || traffic.weight == 0 {
        return None;
    }
    Some(render::Split {
        canary: traffic.canary,
        weight: traffic.weight,
        sticky: traffic.sticky.clone(),
        servers: state.upstream(traffic.canary, None),
        fallback: state.registered(traffic.canary),
    })
}

impl<N: NginxControl> Applier<N> {
    pub fn new(
        nginx: N,
        template: Option<String>,
        app: &str,
        listen: String,
        preview_listen: String,
    ) -> Applier<N> {
        let template = template.unwrap_or_else(|| render::BUILTIN_TEMPLATE.to_string());
        Applier {
            nginx,
            template,
            app: app.to_string(),
            listen,
            preview_listen,
            validated: HashSet::new(),
            served: None,
            request_log: None,
            server_names: Vec::new(),
            tls: None,
            status_host: None,
            lua: None,
            pushed: None,
            reload_due: false,
        }
    }

    /// Runs in Lua mode with `setup`.
    pub fn with_lua(mut self, setup: Option<LuaSetup>) -> Self {
        self.lua = setup;
        self
    }

    pub fn mode(&self) -> crate::config::Mode {
        match self.lua {
            Some(_) => crate::config::Mode::Lua,
            None => crate::config::Mode::Reload,
        }
    }

    /// Lua mode's include file for this app, which holds no traffic decision.
    /// Names the balancer module's hash, so that a new module (an upgraded sidecar) changes
    /// the file and reloads nginx: its workers keep a module they loaded until then.
    fn lua_include(&self, lua: &LuaSetup) -> String {
        let view = self.view(&LbState::default(), Color::Blue, "");
        format!(
            "{}# balancer.lua sha256 {}\n",
            lua::render(&view, &lua.token, &lua.module_file.display().to_string()),
            sha256(&self.lua_module(lua))
        )
    }

    fn lua_module(&self, lua: &LuaSetup) -> String {
        lua::module(&self.app, &lua.state_file.display().to_string())
    }

    /// Whether this nginx takes Lua mode's include (`nginx -t`); Err is nginx's complaint.
    pub async fn check_lua(&self, lua: &LuaSetup) -> Result<(), String> {
        self.nginx.validate(&self.lua_include(lua)).await
    }

    /// The next apply reloads nginx even if the include file is unchanged: its certificate
    /// files were renewed.
    pub fn certificate_changed(&mut self) {
        self.reload_due = true;
    }

    /// Names the status server, for a sidecar whose apps share nginx's status listener.
    pub fn with_status_host(mut self, host: Option<String>) -> Self {
        self.status_host = host;
        self
    }

    /// Also serves the public server over HTTPS with this certificate.
    pub fn with_tls(mut self, tls: Option<crate::config::Tls>) -> Self {
        self.tls = tls;
        self
    }

    /// Serves the app only to requests for these host names (nginx `server_name`).
    pub fn with_server_names(mut self, names: Vec<String>) -> Self {
        self.server_names = names;
        self
    }

    /// Has nginx log every public request to the sidecar's socket at `path`.
    pub fn with_request_log(mut self, path: String) -> Self {
        self.request_log = Some(path);
        self
    }

    fn view(&self, state: &LbState, color: Color, version: &str) -> View {
        View {
            app: self.app.clone(),
            listen: self.listen.clone(),
            preview_listen: self.preview_listen.clone(),
            status_listen: self.nginx.status_listen().to_string(),
            color,
            version: version.to_string(),
            live: state.upstream(color, Some(version)),
            preview: state.upstream(color.other(), None),
            live_fallback: state.registered(color),
            preview_fallback: state.registered(color.other()),
            split: split(state, color),
            request_log: self.request_log.clone(),
            server_names: self.server_names.clone(),
            tls: self.tls.as_ref().map(|t| {
                (
                    t.listen.to_string(),
                    t.cert.display().to_string(),
                    t.key.display().to_string(),
                )
            }),
            status_host: self.status_host.clone(),
        }
    }

    async fn ensure_validated(&mut self, rendered: &str, color: Color) -> Result<(), SidecarError> {
        let hash = sha256(rendered);
        if self.validated.contains(&hash) {
            return Ok(());
        }
        // Validate with a real revision number in place: the token itself is not a valid argument
        // everywhere a template may put it.
        self.nginx
            .validate(&render::with_revision(rendered, 0))
            .await
            .map_err(|output| SidecarError::Invalid {
                color: color.to_string(),
                output,
            })?;
        self.validated.insert(hash);
        Ok(())
    }

    /// Renders and validates the variant for `color` without touching nginx (pre-validation).
    pub async fn prepare(
        &mut self,
        state: &LbState,
        color: Color,
        version: &str,
    ) -> Result<(), SidecarError> {
        if self.lua.is_some() {
            // Nothing in Lua mode's file depends on the color.
            return Ok(());
        }
        let rendered = render::render(&self.template, &self.view(state, color, version))
            .map_err(SidecarError::Render)?;
        self.ensure_validated(&rendered, color).await
    }

    /// Makes nginx serve the active color as of `revision`. With `force` false, a render identical
    /// to what is served is a no-op (health churn that changed nothing). Returns the ack to write
    /// and the upstream lists it summarizes.
    pub async fn apply(
        &mut self,
        state: &LbState,
        revision: i64,
        force: bool,
    ) -> Result<Option<(LbRecord, LbUpstreamsRecord)>, SidecarError> {
        let Some(active) = &state.active else {
            return Ok(None);
        };
        let (color, version) = (active.color, active.version.clone());
        let view = self.view(state, color, &version);
        if let Some(lua) = self.lua.clone() {
            return self.apply_lua(&lua, view, revision, force).await;
        }
        let rendered = render::render(&self.template, &view).map_err(SidecarError::Render)?;
        if !force && self.served.as_deref() == Some(rendered.as_str()) {
            return Ok(None);
        }
        let started = tokio::time::Instant::now();
        self.ensure_validated(&rendered, color).await?;
        let validated_ms = started.elapsed().as_secs_f64() * 1000.0;
        let text = render::with_revision(&rendered, revision);
        let previous = self.nginx.current();
        self.nginx.install(&text)?;
        let reloaded = self.nginx.reload_in_batch().await;
        let expected = format!("{revision} {color}");
        let verified = match &reloaded {
            Ok(old_workers) => {
                let signalled_ms = started.elapsed().as_secs_f64() * 1000.0;
                let serving = self.nginx.wait_serving(&expected, VERIFY_TIMEOUT).await;
                let serving_ms = started.elapsed().as_secs_f64() * 1000.0;
                let drained = serving
                    && self
                        .nginx
                        .wait_old_workers(old_workers, VERIFY_TIMEOUT)
                        .await;
                tracing::info!(
                    revision,
                    validated_ms,
                    signalled_ms,
                    serving_ms,
                    done_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "reload timings"
                );
                drained
            }
            Err(_) => false,
        };
        if !verified {
            let why = match reloaded {
                Err(e) => e.to_string(),
                Ok(_) => format!(
                    "nginx did not start serving revision {revision} within {VERIFY_TIMEOUT:?}"
                ),
            };
            if let Some(previous) = previous {
                self.nginx.install(&previous)?;
                let _ = self.nginx.reload();
            }
            self.served = None;
            return Err(SidecarError::Reload(format!(
                "{why}; restored the last good config"
            )));
        }
        self.served = Some(rendered);
        let mut upstreams = LbUpstreamsRecord::default();
        upstreams.upstreams.insert(color, view.live);
        if let Some(split) = view.split {
            upstreams.upstreams.insert(split.canary, split.servers);
        }
        let ack = LbRecord {
            applied_revision: revision,
            color: Some(color),
            upstream_counts: upstreams.counts(),
            upstreams: Vec::new(),
            config_sha256: sha256(&text),
            reloaded_at: proto::time::now_rfc3339(),
            error: None,
            url: Some(self.nginx.public_url()),
            host: self.server_names.first().cloned(),
        };
        Ok(Some((ack, upstreams)))
    }

    /// Lua mode: reloads only if the include file changed, then pushes the state and waits
    /// until every worker serves it.
    async fn apply_lua(
        &mut self,
        lua: &LuaSetup,
        view: View,
        revision: i64,
        force: bool,
    ) -> Result<Option<(LbRecord, LbUpstreamsRecord)>, SidecarError> {
        let started = tokio::time::Instant::now();
        let include = self.lua_include(lua);
        let reloaded = self.ensure_include(&include).await?;
        let resolved = resolve_names(&view).await;
        let (state, unresolved) = lua::state(&view, revision, |s| {
            lua::literal(s).or_else(|| resolved.get(s).copied())
        });
        if state.pools["live"].primary.is_empty() {
            return Err(SidecarError::Render(format!(
                "no live server could be resolved ({}): nginx keeps serving the state before",
                unresolved.join(", ")
            )));
        }
        if !unresolved.is_empty() {
            tracing::warn!(servers = ?unresolved, "left out: their names do not resolve");
        }
        let text = serde_json::to_string(&state).expect("a state serializes");
        let unchanged = serde_json::to_string(&lua::State {
            revision: 0,
            ..state.clone()
        })
        .expect("serializes");
        if !force && !reloaded && self.pushed.as_deref() == Some(unchanged.as_str()) {
            return Ok(None);
        }
        self.push_until_taken(lua, &text, reloaded.then_some(VERIFY_TIMEOUT))
            .await?;
        // Written after nginx took it: a state nginx refused must not come back at its restart.
        write_for_workers(&lua.state_file, &text)?;
        let expected = format!("{revision} {}", view.color);
        if !self.nginx.wait_serving(&expected, VERIFY_TIMEOUT).await {
            self.pushed = None;
            return Err(SidecarError::Push(format!(
                "nginx took revision {revision} but not every worker serves it within {VERIFY_TIMEOUT:?}"
            )));
        }
        tracing::info!(
            revision,
            reloaded,
            done_ms = started.elapsed().as_secs_f64() * 1000.0,
            "push timings"
        );
        self.pushed = Some(unchanged);
        let mut upstreams = LbUpstreamsRecord::default();
        upstreams.upstreams.insert(view.color, view.live);
        if let Some(split) = view.split.filter(|s| s.weight > 0) {
            upstreams.upstreams.insert(split.canary, split.servers);
        }
        let ack = LbRecord {
            applied_revision: revision,
            color: Some(view.color),
            upstream_counts: upstreams.counts(),
            upstreams: Vec::new(),
            config_sha256: sha256(&format!("{include}{text}")),
            reloaded_at: proto::time::now_rfc3339(),
            error: None,
            url: Some(self.nginx.public_url()),
            host: self.server_names.first().cloned(),
        };
        Ok(Some((ack, upstreams)))
    }

    /// Makes nginx run `include` (validated, installed, reloaded) unless it already does; true
    /// when it reloaded. A restarted sidecar finds its file in place and reloads nothing.
    async fn ensure_include(&mut self, include: &str) -> Result<bool, SidecarError> {
        // Checked at every apply: a module deleted or altered on disk would break every request
        // of the next worker that loads it.
        let lua = self.lua.as_ref().expect("Lua mode");
        let module = self.lua_module(lua);
        if std::fs::read_to_string(&lua.module_file).ok().as_deref() != Some(module.as_str()) {
            write_for_workers(&lua.module_file, &module)?;
        }
        let on_disk = self.served.is_none() && self.nginx.current().as_deref() == Some(include);
        if on_disk {
            self.served = Some(include.to_string());
        }
        if self.served.as_deref() == Some(include) && !self.reload_due {
            return Ok(false);
        }
        self.ensure_validated(include, Color::Blue).await?;
        let previous = self.nginx.current();
        self.nginx.install(include)?;
        let old_workers = match self.nginx.reload() {
            Ok(old) => old,
            Err(e) => {
                if let Some(previous) = previous {
                    self.nginx.install(&previous)?;
                }
                self.served = None;
                return Err(e);
            }
        };
        if !self
            .nginx
            .wait_old_workers(&old_workers, VERIFY_TIMEOUT)
            .await
        {
            // nginx refused the new file (a listener it cannot bind passes `nginx -t`) and kept
            // its workers: put the last good file back, as reload mode does.
            if let Some(previous) = previous {
                self.nginx.install(&previous)?;
                let _ = self.nginx.reload();
            }
            self.served = None;
            return Err(SidecarError::Reload(format!(
                "nginx kept its old workers {VERIFY_TIMEOUT:?} after the reload (it refused the new file?); restored the last good config"
            )));
        }
        self.served = Some(include.to_string());
        self.reload_due = false;
        self.pushed = None;
        Ok(true)
    }

    /// Pushes `text`; right after a reload, the new workers' status server may not answer yet,
    /// so a refused connection is retried for up to `patience`.
    async fn push_until_taken(
        &self,
        lua: &LuaSetup,
        text: &str,
        patience: Option<Duration>,
    ) -> Result<(), SidecarError> {
        let end = tokio::time::Instant::now() + patience.unwrap_or_default();
        loop {
            match self.nginx.push(&lua.token, text).await {
                Ok(()) => return Ok(()),
                Err(e) if e.starts_with("PUT ") && tokio::time::Instant::now() < end => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => return Err(SidecarError::Push(e)),
            }
        }
    }
}

/// Replaces `path` atomically with `text`, readable by nginx's workers (which run as another
/// user): the balancer module and the last state, neither of which holds the push token.
fn write_for_workers(path: &std::path::Path, text: &str) -> Result<(), SidecarError> {
    use std::os::unix::fs::PermissionsExt;
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, text).map_err(|e| SidecarError::io(&tmp, e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| SidecarError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| SidecarError::io(path, e))
}

/// The addresses of hosts registered by name (`set_current_peer` takes IPs only). A name that
/// does not resolve is missing from the map.
async fn resolve_names(view: &View) -> std::collections::HashMap<String, std::net::SocketAddr> {
    let mut out = std::collections::HashMap::new();
    let mut names: Vec<&String> = view
        .live
        .iter()
        .chain(&view.preview)
        .chain(&view.live_fallback)
        .chain(&view.preview_fallback)
        .collect();
    if let Some(split) = &view.split {
        names.extend(split.servers.iter().chain(&split.fallback));
    }
    for server in names {
        if lua::literal(server).is_some() || out.contains_key(server) {
            continue;
        }
        if let Ok(Ok(mut addrs)) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::lookup_host(server.as_str()),
        )
        .await
        {
            if let Some(addr) = addrs.next() {
                out.insert(server.clone(), addr);
            }
        }
    }
    out
}
