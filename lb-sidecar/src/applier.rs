//! Turns the sidecar's view of etcd into what nginx serves. A switch is only an atomic file swap
//! plus SIGHUP: both colors' variants are rendered and validated ahead of time (whenever the hosts
//! change), so `nginx -t` never sits between a switch and traffic moving. A reload nginx refused
//! (it keeps its old config silently) is caught by polling the status location, and the last good
//! file is put back.
use crate::error::SidecarError;
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
        }
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
}
