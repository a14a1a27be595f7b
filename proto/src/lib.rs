//! What crosses a process boundary in bluegreen: the agent's gRPC API and the Rust side of the etcd
//! contract. Every etcd key string is formed in [`keys`], every value is a record in
//! [`records`], so that the agent, the coordinator and the sidecars cannot drift apart.
#![forbid(unsafe_code)]

pub mod access;
pub mod color;
pub mod daemon;
pub mod error;
pub mod fence;
pub mod keys;
pub mod leased;
pub mod names;
pub mod ops;
pub mod records;
pub mod repeats;
pub mod requests;
pub mod retry;
pub mod rng;
pub mod secrets;
pub mod session;
pub mod settings;
pub mod signing;
pub mod text;
pub mod time;
pub mod tls_check;
pub mod unpack;
pub mod watch;

pub use access::{connect, connect_live, AccessSettings, EtcdAccess};
pub use color::Color;
pub use error::ProtoError;
pub use keys::{AppKey, Keys};
pub use names::check_name;
pub use ops::{Operation, Outcome, Phase};

/// The agent gRPC API generated from `proto/agent.proto`.
pub mod agent_api {
    tonic::include_proto!("bluegreen.agent.v1");

    /// A channel to an agent's API on its unix socket (`grpc_socket`), which the agent serves
    /// when it has no mutual TLS. Fails as opening the socket fails (absent, permission denied).
    pub async fn socket_channel(
        path: &std::path::Path,
    ) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        let path = path.to_path_buf();
        let connector = tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });
        // The URI only names the peer for HTTP/2; the connector decides where it goes.
        tonic::transport::Endpoint::from_static("http://agent.sock")
            .connect_with_connector(connector)
            .await
    }
}
