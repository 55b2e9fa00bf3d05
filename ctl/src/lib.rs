//! `tailopsctl` as a library: profiles (where credentials live) and the mutual-TLS client.
//! The CLI (`main.rs`) and the MCP bridge are built on it.

pub mod client;
pub mod login;
pub mod profile;
pub mod renew;

pub use client::{ClientError, connect};
pub use profile::{Profile, ProfileError};
