//! The coordinator: CI's and operators' handle on a bluegreen app. It never pushes work to hosts:
//! it writes desired state into etcd with fenced transactions and watches the fleet converge.
//!
//! This file only wires the modules: `cli` parses the command line, [`commands`] holds one module
//! per command, and everything they use sits below them (see docs/architecture.md).
#![forbid(unsafe_code)]

pub use context::{parse_duration, pretty_json, Global};
pub use error::CoordinatorError;
pub use membership::Member;

pub mod actor;
pub mod aftermath;
pub mod canary;
pub mod cli;
pub mod commands;
pub mod context;
pub mod dashboard;
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
pub mod locked;
pub mod membership;
pub mod migrate;
pub mod notify;
pub mod pipeline;
pub mod preview;
pub mod probes;
pub mod progress;
pub mod reconcile;
pub mod redeploy;
pub mod report;
pub mod spec;
pub mod status;
pub mod stop;
pub mod store;
pub mod switch;
#[cfg(test)]
mod testkit;
pub mod traffic;
pub mod validate;
