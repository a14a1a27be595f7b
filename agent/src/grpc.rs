//! The agent's diagnostic gRPC API (`proto/agent.proto`): `Status` and the `Logs` stream, used by
//! `coordinator status --hosts`, `coordinator logs` and to attach log lines to a failed deploy.
use crate::apps::AppView;
use crate::logs;
use proto::agent_api::agent_server::Agent;
use proto::agent_api::{
    ColorStatus as ApiColorStatus, LogLine, LogsRequest, StatusReply, StatusRequest,
};
use proto::Color;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

pub struct AgentService {
    pub host: String,
    pub address: String,
    /// The apps this agent runs now (reloads add and remove them).
    pub apps: crate::apps::AppViews,
}

/// Lines a `Logs` call returns when it asks for none in particular.
const DEFAULT_TAIL: usize = 100;
const MAX_TAIL: usize = 10_000;

#[tonic::async_trait]
impl Agent for AgentService {
    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        admit(&request)?;
        let (app, view) = self.serves(&request.get_ref().app)?;
        let colors = view
            .statuses
            .iter()
            .filter_map(|rx| rx.borrow().clone())
            .map(|s| ApiColorStatus {
                color: s.color.to_string(),
                version: s.version,
                state: s.state.as_str().to_string(),
                pid: s.pid.unwrap_or(0),
                port: u32::from(view.ports.of(s.color)),
                restarts: s.restarts,
                error: s.error.unwrap_or_default(),
                since: s.since,
            })
            .collect();
        Ok(Response::new(StatusReply {
            host: self.host.clone(),
            address: self.address.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            colors,
            app,
        }))
    }

    type LogsStream = Pin<Box<dyn futures::Stream<Item = Result<LogLine, Status>> + Send>>;

    async fn logs(
        &self,
        request: Request<LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        admit(&request)?;
        let req = request.into_inner();
        let (_, view) = self.serves(&req.app)?;
        let color: Color = req
            .color
            .parse()
            .map_err(|e: proto::ProtoError| Status::invalid_argument(e.to_string()))?;
        let tail = match req.tail as usize {
            0 => DEFAULT_TAIL,
            n => n.min(MAX_TAIL),
        };
        let path = logs::log_path(&view.state_dir, color);
        let lines = logs::tail(&path, tail)
            .map_err(|e| Status::internal(format!("{}: {e}", path.display())))?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            for line in lines {
                if tx.send(Ok(LogLine { line })).await.is_err() {
                    return;
                }
            }
            if req.follow {
                follow(path, tx).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Streams lines appended after the call started until the client goes away.
async fn follow(path: PathBuf, tx: mpsc::Sender<Result<LogLine, Status>>) {
    let mut offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let mut partial = String::new();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if tx.is_closed() {
            return;
        }
        let Ok(mut file) = std::fs::File::open(&path) else {
            continue;
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < offset {
            offset = 0; // rotated
        }
        if file.seek(SeekFrom::Start(offset)).is_err() {
            continue;
        }
        let mut buf = Vec::new();
        if file.read_to_end(&mut buf).is_err() {
            continue;
        }
        offset += buf.len() as u64;
        partial.push_str(&String::from_utf8_lossy(&buf));
        while let Some(end) = partial.find('\n') {
            let line: String = partial.drain(..=end).collect();
            if tx
                .send(Ok(LogLine {
                    line: line.trim_end().to_string(),
                }))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

impl AgentService {
    /// The app a request is about. An app this agent does not run is refused, so that a host
    /// record or a socket path pointing at the wrong agent never shows another app's logs as the
    /// one asked for. No app named (an older coordinator) means the only one; with several, the
    /// caller must name it.
    fn serves(&self, asked: &str) -> Result<(String, AppView), Status> {
        let apps = self.apps.read().expect("views lock");
        let names = || apps.keys().cloned().collect::<Vec<_>>().join(", ");
        match (asked, apps.len()) {
            ("", 1) => {
                let (name, view) = apps.iter().next().expect("one app");
                Ok((name.clone(), view.clone()))
            }
            ("", _) => Err(Status::invalid_argument(format!(
                "this agent on {} runs {}: name the app",
                self.host,
                names()
            ))),
            (asked, _) => match apps.get(asked) {
                Some(view) => Ok((asked.to_string(), view.clone())),
                None => Err(Status::not_found(format!(
                    "this agent on {} runs {}, not {}",
                    self.host,
                    names(),
                    proto::text::escaped(asked)
                ))),
            },
        }
    }
}

/// Who may call over the unix socket: root, or the agent's own user. The socket's mode says the
/// same; this holds even if someone loosens the mode (or the agent ran with a wide umask for the
/// instant between bind and chmod). Over TCP, mutual TLS already admitted the caller.
fn admit<T>(request: &Request<T>) -> Result<(), Status> {
    use tonic::transport::server::UdsConnectInfo;
    let Some(info) = request.extensions().get::<UdsConnectInfo>() else {
        return Ok(());
    };
    let peer = info.peer_cred.map(|c| c.uid());
    if socket_peer_admitted(peer, nix::unistd::geteuid().as_raw()) {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "uid {}: only root (or the agent's own user) reads this host's app logs",
            peer.map_or("unknown".to_string(), |u| u.to_string())
        )))
    }
}

/// The decision of [`admit`]: an unknown peer is refused.
fn socket_peer_admitted(peer_uid: Option<u32>, own_uid: u32) -> bool {
    matches!(peer_uid, Some(uid) if uid == 0 || uid == own_uid)
}

/// Where the gRPC API is bound: a TCP port (mutual TLS) or the root-only unix socket.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    /// The socket and its path (removed when the agent stops).
    Socket(tokio::net::UnixListener, PathBuf),
}

impl Listener {
    /// Binds what `serve` says. Errors name the setting.
    pub async fn bind(
        serve: &crate::config::GrpcServe,
    ) -> Result<Listener, crate::error::AgentError> {
        use crate::config::GrpcServe;
        use crate::error::AgentError;
        match serve {
            GrpcServe::Tls { listen, .. } => tokio::net::TcpListener::bind(listen)
                .await
                .map(Listener::Tcp)
                .map_err(|e| {
                    AgentError::Setting(format!("grpc_listen: cannot listen on {listen}: {e}"))
                }),
            GrpcServe::Socket { path, .. } => {
                let failed = |e: &dyn std::fmt::Display| {
                    AgentError::Setting(format!(
                        "grpc_socket: cannot listen on {}: {e}",
                        path.display()
                    ))
                };
                bind_socket(path).await.map_err(|e| failed(&e))
            }
        }
    }
}

/// Binds the socket only root can open: mode 0600, in a directory created if missing. A socket
/// left by an agent that died is replaced; one another agent still answers on is not taken.
async fn bind_socket(path: &std::path::Path) -> Result<Listener, String> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            // Only a refused connection proves nobody listens: a live agent with a full backlog
            // (stuck, say) must not lose its socket to a second one.
            match tokio::net::UnixStream::connect(path).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path)
                        .map_err(|e| format!("removing the stale socket: {e}"))?;
                }
                Err(e) => return Err(format!("it exists and cannot be probed: {e}")),
                Ok(_) => {
                    return Err(
                        "another process answers on it (a second agent on this host?); give \
                         each agent its own grpc_socket"
                            .into(),
                    )
                }
            }
        }
        Ok(_) => return Err("it exists and is not a socket".into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.to_string()),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| e.to_string())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    Ok(Listener::Socket(listener, path.to_path_buf()))
}

#[cfg(test)]
mod admit_tests {
    use super::socket_peer_admitted;

    #[test]
    fn only_root_or_the_agents_own_user_is_admitted() {
        assert!(socket_peer_admitted(Some(0), 0));
        assert!(socket_peer_admitted(Some(0), 998));
        assert!(socket_peer_admitted(Some(998), 998));
        assert!(!socket_peer_admitted(Some(65534), 0));
        assert!(!socket_peer_admitted(None, 0));
    }
}
