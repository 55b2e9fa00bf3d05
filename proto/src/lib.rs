//! The TailOps wire protocol (`tailops.v1`): generated prost messages and tonic services.
//!
//! The `.proto` sources live in `proto/tailops/v1/`; `build.rs` compiles them with protox.

#![allow(missing_debug_implementations, clippy::all, rust_2018_idioms)]

/// Package `tailops.v1`.
pub mod v1 {
    tonic::include_proto!("tailops.v1");
}

impl v1::Resolution {
    /// How people write it: `auto`, `raw`, `1m`, `1h`.
    pub fn short_name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Raw => "raw",
            Self::Minute => "1m",
            Self::Hour => "1h",
        }
    }
}

/// Encoded `FileDescriptorSet` of every TailOps proto file (for reflection and descriptor walks).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tailops_descriptor.bin"));

/// Timestamps on the wire and in the store are milliseconds since the Unix epoch (`int64`).
pub mod time {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    /// The current time in wire milliseconds.
    pub fn now_ms() -> i64 {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
    }

    /// RFC 3339 (seconds) for a wire timestamp, for messages a person reads.
    pub fn format_ms(ms: i64) -> String {
        let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
        humantime::format_rfc3339_seconds(t).to_string()
    }
}
