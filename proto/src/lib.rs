//! The TailOps wire protocol (`tailops.v1`): generated prost messages and tonic services.
//!
//! The `.proto` sources live in `proto/tailops/v1/`; `build.rs` compiles them with protox.

#![allow(missing_debug_implementations, clippy::all, rust_2018_idioms)]

/// Package `tailops.v1`.
pub mod v1 {
    tonic::include_proto!("tailops.v1");
}

/// Encoded `FileDescriptorSet` of every TailOps proto file (for reflection and descriptor walks).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tailops_descriptor.bin"));
