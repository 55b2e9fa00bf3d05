//! The TailOps agent: enrolls once with a join token, then holds one outbound mutual-TLS stream
//! to the controller and runs the jobs it is sent.
//!
//! - [`state`]: the state directory (identity, controller address, pinned CA).
//! - [`enroll`]: join-token enrollment with CA pinning; the key never leaves the host.
//! - [`link`]: the long-lived stream, heartbeats, reconnects, certificate renewal.
//! - [`jobs`]: running each job at most once, across reconnects and restarts (journal, held
//!   results); [`executor`]: running one command safely.
//! - [`host`]: what the agent says about its host in its hello.
//! - [`monitor`]: resource samples and facts pushed over the link; [`facts`]: the inventory
//!   sources; [`mounts`]: which filesystems count as disks.
//! - [`ops`]: typed operations (services, files, network checks).

pub mod enroll;
pub mod executor;
pub mod facts;
pub mod host;
pub mod jobs;
pub mod link;
pub mod monitor;
pub mod mounts;
pub mod ops;
pub mod state;

use std::path::PathBuf;

pub use enroll::{EnrollOptions, enroll};
pub use link::{LinkOptions, run, run_with_state};
pub use state::AgentState;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Pki(#[from] tailops_pki::PkiError),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{} is not valid: {message}", path.display())]
    BadState { path: PathBuf, message: String },
    #[error("{} is not enrolled; run `tailops-agent enroll` first", .0.display())]
    NotEnrolled(PathBuf),
    #[error("{} already holds an enrolled agent ({name}); use another --state-dir, or remove it to enroll again", path.display())]
    AlreadyEnrolled { path: PathBuf, name: String },
    #[error("cannot connect to the controller at {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("the controller refused: {}", .0.message())]
    Refused(tonic::Status),
    #[error("invalid --name {0:?}: use 1-63 letters, digits, '-', '_' or '.'")]
    BadName(String),
}
