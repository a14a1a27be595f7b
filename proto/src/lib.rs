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
}
