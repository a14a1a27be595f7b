//! Every integration suite, one module each, in one test binary: one link instead of one per
//! suite. Run one suite with `cargo test -p bluegreen-tests --test integration -- agent::`.
mod agent;
mod any_app;
mod canary;
mod chaos;
mod cluster;
mod coordinator;
mod demo_app;
mod faults;
mod lua_mode;
mod many_apps;
mod migrations;
mod operator;
mod partitions;
mod real_apps;
mod scale;
mod security;
mod sidecar;
mod ui;
mod upgrade;
