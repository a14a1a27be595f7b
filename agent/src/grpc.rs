//! The agent's diagnostic gRPC API (`proto/agent.proto`): `Status` and the `Logs` stream, used by
//! `coordinator status --hosts`, `coordinator logs` and to attach log lines to a failed deploy.
use crate::logs;
use crate::status::ColorStatus;
use proto::agent_api::agent_server::Agent;
use proto::agent_api::{
    ColorStatus as ApiColorStatus, LogLine, LogsRequest, StatusReply, StatusRequest,
};
use proto::Color;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

pub struct AgentService {
    pub host: String,
    pub address: String,
    pub ports: proto::records::Ports,
    pub state_dir: PathBuf,
    pub statuses: Vec<watch::Receiver<Option<ColorStatus>>>,
}

/// Lines a `Logs` call returns when it asks for none in particular.
const DEFAULT_TAIL: usize = 100;
const MAX_TAIL: usize = 10_000;

#[tonic::async_trait]
impl Agent for AgentService {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let colors = self
            .statuses
            .iter()
            .filter_map(|rx| rx.borrow().clone())
            .map(|s| ApiColorStatus {
                color: s.color.to_string(),
                version: s.version,
                state: s.state.as_str().to_string(),
                pid: s.pid.unwrap_or(0),
                port: u32::from(self.ports.of(s.color)),
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
        }))
    }

    type LogsStream = Pin<Box<dyn futures::Stream<Item = Result<LogLine, Status>> + Send>>;

    async fn logs(
        &self,
        request: Request<LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let req = request.into_inner();
        let color: Color = req
            .color
            .parse()
            .map_err(|e: proto::ProtoError| Status::invalid_argument(e.to_string()))?;
        let tail = match req.tail as usize {
            0 => DEFAULT_TAIL,
            n => n.min(MAX_TAIL),
        };
        let path = logs::log_path(&self.state_dir, color);
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
