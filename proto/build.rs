//! Compiles `tailops/v1/*.proto` with protox (pure Rust), so building needs no system `protoc`.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "tailops/v1/common.proto",
    "tailops/v1/monitoring.proto",
    "tailops/v1/enrollment.proto",
    "tailops/v1/agent_link.proto",
    "tailops/v1/fleet.proto",
    "tailops/v1/identity.proto",
    "tailops/v1/audit.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }

    let fds = protox::compile(PROTOS, ["."])?;
    // The encoded descriptor set is embedded for gRPC server reflection and for tests that
    // walk every service method.
    #[allow(clippy::disallowed_methods)] // a build script has no async runtime to block
    std::fs::write(out_dir.join("tailops_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Clients are built from our own mTLS channels; the generated `connect` helper would also
        // clash with the `AgentLink.Connect` RPC.
        .build_transport(false)
        .btree_map(".")
        // Small initial stream buffers: see src/codec.rs.
        .codec_path("crate::codec::CompactCodec")
        .compile_fds(fds)?;
    Ok(())
}
