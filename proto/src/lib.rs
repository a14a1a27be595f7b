//! What crosses a process boundary in bluegreen: the agent's gRPC API and the Rust side of the etcd
//! contract (DESIGN.md §3). Every etcd key string is formed in [`keys`], every value is a record in
//! [`records`], so that the agent, the coordinator and the sidecars cannot drift apart.
#![forbid(unsafe_code)]

pub mod color;
pub mod daemon;
pub mod error;
pub mod fence;
pub mod keys;
pub mod leased;
pub mod names;
pub mod ops;
pub mod records;
pub mod session;
pub mod time;
pub mod watch;

pub use color::Color;
pub use error::ProtoError;
pub use keys::{AppKey, Keys};
pub use names::check_name;
pub use ops::{Operation, Outcome, Phase};

/// The agent gRPC API generated from `proto/agent.proto`.
pub mod agent_api {
    tonic::include_proto!("bluegreen.agent.v1");
}

/// Connects to etcd with the timeouts every bluegreen process uses, so that an unreachable etcd
/// is an error after a few seconds rather than a hang.
pub async fn connect(endpoints: &[String]) -> Result<etcd_client::Client, ProtoError> {
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(std::time::Duration::from_secs(3))
        .with_timeout(std::time::Duration::from_secs(5))
        .with_keep_alive(
            std::time::Duration::from_secs(2),
            std::time::Duration::from_secs(2),
        );
    etcd_client::Client::connect(endpoints, Some(options))
        .await
        .map_err(|source| ProtoError::Etcd {
            what: format!("connect to {}", endpoints.join(",")),
            source,
        })
}
