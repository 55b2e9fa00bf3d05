//! The TailOps wire protocol (`tailops.v1`): generated prost messages and tonic services.
//!
//! The `.proto` sources live in `proto/tailops/v1/`; `build.rs` compiles them with protox.

#![allow(missing_debug_implementations, clippy::all, rust_2018_idioms)]

pub mod codec;
pub mod text;

/// Package `tailops.v1`.
pub mod v1 {
    tonic::include_proto!("tailops.v1");
}

/// gRPC metadata key naming the program a request comes through on behalf of its principal
/// (`NAME/VERSION`, for example the MCP client behind the bridge). The controller records it in
/// the audit rows the request causes; it never grants anything.
pub const CLIENT_HEADER: &str = "x-tailops-client";

/// `part` as a percentage of `whole` (0 when `whole` is 0).
#[allow(clippy::cast_precision_loss)]
fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 * 100.0 / whole as f64 }
}

impl v1::DiskUsage {
    pub fn used_percent(&self) -> f64 {
        percent(self.used_bytes, self.total_bytes)
    }
}

/// Figures derived from a sample, computed the same way by the controller (health, rollups,
/// Prometheus) and the CLI.
impl v1::MetricSample {
    pub fn memory_percent(&self) -> f64 {
        percent(self.mem_used_bytes, self.mem_total_bytes)
    }

    pub fn swap_percent(&self) -> f64 {
        percent(self.swap_used_bytes, self.swap_total_bytes)
    }

    /// The fullest mount and its used percentage.
    pub fn fullest_disk(&self) -> Option<(&str, f64)> {
        self.disks
            .iter()
            .filter(|d| d.total_bytes > 0)
            .map(|d| (d.mount.as_str(), d.used_percent()))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// The fullest mount's used percentage (0 without disks).
    pub fn fullest_disk_percent(&self) -> f64 {
        self.fullest_disk().map_or(0.0, |(_, p)| p)
    }
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

/// The names people and programs read (CLI tables and JSON, MCP results), one place for all.
impl v1::JobState {
    pub fn short_name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::PendingApproval => "pending_approval",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Unspecified => "unknown",
        }
    }
}

impl v1::TargetState {
    pub fn short_name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Unreachable => "unreachable",
            Self::Cancelled => "cancelled",
            Self::Queued => "queued",
            Self::Lost => "lost",
            Self::Expired => "expired",
            Self::Interrupted => "interrupted",
            Self::Unspecified => "unknown",
        }
    }
}

impl v1::HealthStatus {
    pub fn short_name(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Unhealthy => "unhealthy",
            Self::Unknown | Self::Unspecified => "unknown",
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

#[cfg(test)]
mod tests {
    use super::v1;

    #[test]
    fn state_names_are_short() {
        assert_eq!(v1::JobState::PendingApproval.short_name(), "pending_approval");
        assert_eq!(v1::TargetState::TimedOut.short_name(), "timed_out");
        assert_eq!(v1::HealthStatus::Unspecified.short_name(), "unknown");
    }
}
