//! The TailOps controller: internal CA and enrollment, the agent link, jobs, and the admin API.
//!
//! - [`data_dir`]: what `init` creates and `serve` loads; [`config`]: `controller.toml`.
//! - [`store`]: SQLite through sqlx.
//! - [`auth`]: who is calling (from the verified certificate only) and the per-method policy.
//! - [`agents`]: the live agent connections; [`jobs`]: fan-out, results, watchers.
//! - [`services`]: the gRPC services; [`server`]: wiring them into one mTLS server.

pub mod agents;
pub mod audit;
pub mod auth;
pub mod batch;
pub mod config;
pub mod data_dir;
pub mod jobs;
pub mod monitoring;
pub mod output_budget;
#[cfg(test)]
mod properties;
pub mod rate_limit;
pub mod result_writer;
pub mod retention;
pub mod revocation;
pub mod server;
pub mod services;
pub mod store;
pub mod telemetry;

use std::path::PathBuf;

pub use server::{AppState, Controller};

/// Errors of the controller library. `main` reports them; services map theirs to `tonic::Status`.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("{} already holds a controller (found its configuration or CA key); refusing to overwrite it", .0.display())]
    AlreadyInitialized(PathBuf),
    #[error("{} is not an initialized controller data directory; run `tailops-controller init --data-dir {}` first", .0.display(), .0.display())]
    NotInitialized(PathBuf),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("invalid configuration {}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error(transparent)]
    Pki(#[from] tailops_pki::PkiError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Profile(#[from] tailopsctl::ProfileError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

pub use tailops_proto::time::now_ms;
