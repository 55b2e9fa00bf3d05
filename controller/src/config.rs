//! `controller.toml` in the data directory: written by `init`, read by `serve`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::telemetry::PrometheusConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// Names principals: `spiffe://<trust_domain>/<kind>/<name>`.
    pub trust_domain: String,
    /// Address the gRPC server listens on.
    pub listen: SocketAddr,
    /// DNS names and IPs clients use to reach the controller; all are in the server certificate.
    /// The first one is the address printed in enrollment commands and written to profiles.
    pub advertise: Vec<String>,
    #[serde(default)]
    pub timing: Timing,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub rate_limits: RateLimits,
    #[serde(default)]
    pub security: Security,
    #[serde(default)]
    pub monitoring: MonitoringConfig,
    /// The Prometheus `/metrics` endpoint; off unless `listen` is set.
    #[serde(default)]
    pub prometheus: PrometheusConfig,
    /// How long job history, certificates and join tokens are kept.
    #[serde(default)]
    pub retention: crate::retention::RetentionConfig,
    /// Connection limits of the gRPC listener.
    #[serde(default)]
    pub network: Network,
}

/// How the gRPC listener protects itself from peers that connect and never get anywhere: every
/// connection costs a file descriptor and memory before its certificate is even seen.
///
/// A connection is *authenticated* once it has made a call with a client certificate that the
/// auth layer accepted. Until then (TLS handshake, enrollment, health checks) it counts against
/// the `unauthenticated` limits and lives at most `unauthenticated_timeout_secs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Network {
    /// A TLS handshake that takes longer than this is abandoned.
    pub tls_handshake_timeout_secs: u64,
    /// A connection that has not made an authenticated call this long after it was accepted is
    /// closed, whatever it is doing (enrollment and health checks take well under a second).
    pub unauthenticated_timeout_secs: u64,
    /// Open connections in total; beyond it new connections are closed at once. The controller
    /// also keeps it below its file-descriptor limit.
    pub max_connections: usize,
    /// Open connections from one source address (agents use one each; users' CLIs and bridges
    /// behind one address share it).
    pub max_connections_per_address: usize,
    /// Connections not yet authenticated, in total. When full, the oldest one is closed to make
    /// room, so a flood of idle connections cannot lock out an admin or an agent that completes
    /// its handshake in milliseconds.
    pub max_unauthenticated: usize,
    /// Connections not yet authenticated from one source address; beyond it new ones are closed.
    pub max_unauthenticated_per_address: usize,
    /// HTTP/2 ping interval; a peer that does not answer within the timeout is dropped.
    pub http2_keepalive_interval_secs: u64,
    pub http2_keepalive_timeout_secs: u64,
    /// Concurrent calls on one connection.
    pub max_concurrent_streams: u32,
    /// A connection is asked to close (HTTP/2 GOAWAY) this long after it was accepted, and
    /// closed `max_connection_age_grace_secs` later. Never longer than the shortest certificate
    /// lifetime in `[timing]`, so no connection outlives a whole certificate generation; a
    /// connection is also closed when the certificate it authenticated with expires. Agents
    /// reconnect within a second.
    pub max_connection_age_secs: u64,
    pub max_connection_age_grace_secs: u64,
    /// A job watcher (`WatchJob`, or `RunJob`'s event stream) that has not taken its next
    /// event this long, while events wait for it, is ended with `RESOURCE_EXHAUSTED`: a client
    /// that stops reading cannot hold a job's output in memory. Watching again replays the job.
    pub watch_stall_timeout_secs: u64,
}

impl Default for Network {
    fn default() -> Self {
        Self {
            tls_handshake_timeout_secs: 10,
            unauthenticated_timeout_secs: 30,
            max_connections: 16_384,
            max_connections_per_address: 256,
            max_unauthenticated: 1024,
            max_unauthenticated_per_address: 64,
            http2_keepalive_interval_secs: 30,
            http2_keepalive_timeout_secs: 10,
            max_concurrent_streams: 256,
            max_connection_age_secs: 24 * 3600,
            max_connection_age_grace_secs: 300,
            watch_stall_timeout_secs: 60,
        }
    }
}

/// Metric retention, rollup cadence and the thresholds behind host health.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitoringConfig {
    pub raw_retention_hours: u64,
    pub minute_retention_days: u64,
    pub hour_retention_days: u64,
    pub change_retention_days: u64,
    /// How often rollups and pruning run.
    pub rollup_interval_secs: u64,
    /// A minute is rolled up this long after it ends, so samples still in flight count.
    /// Samples later than that are rolled up again when they arrive.
    pub rollup_delay_secs: u64,
    /// A host whose newest sample is older than this is stale.
    pub stale_after_secs: u64,
    pub health: HealthThresholds,
}

impl MonitoringConfig {
    /// How long raw samples are kept, in ms. Saturating: a huge setting means "keep them".
    pub fn raw_retention_ms(&self) -> i64 {
        i64::try_from(self.raw_retention_hours).unwrap_or(i64::MAX).saturating_mul(3_600_000)
    }
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        Self {
            raw_retention_hours: 48,
            minute_retention_days: 30,
            hour_retention_days: 365,
            change_retention_days: 365,
            rollup_interval_secs: 60,
            rollup_delay_secs: 90,
            stale_after_secs: 60,
            health: HealthThresholds::default(),
        }
    }
}

/// Percentages (and load per core) at which a host is degraded (`warn`) or unhealthy (`crit`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthThresholds {
    pub cpu_warn: f64,
    pub cpu_crit: f64,
    pub memory_warn: f64,
    pub memory_crit: f64,
    pub disk_warn: f64,
    pub disk_crit: f64,
    pub swap_warn: f64,
    pub load_per_core_warn: f64,
}

impl Default for HealthThresholds {
    fn default() -> Self {
        Self {
            cpu_warn: 85.0,
            cpu_crit: 97.0,
            memory_warn: 85.0,
            memory_crit: 95.0,
            disk_warn: 85.0,
            disk_crit: 95.0,
            swap_warn: 50.0,
            load_per_core_warn: 2.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Security {
    /// When a certificate that a renewal already replaced is presented (a copied identity),
    /// revoke every certificate of that identity instead of only flagging it. On by default:
    /// a copy that renewed first would otherwise keep the identity and lock the real holder
    /// out. Turn it off only to investigate a suspected copy before acting.
    pub lock_on_clone: bool,
}

impl Default for Security {
    fn default() -> Self {
        Self { lock_on_clone: true }
    }
}

/// Token-bucket sizes per minute, per principal (and per source address for enrollment).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    pub observe_per_minute: u32,
    pub control_per_minute: u32,
    pub admin_per_minute: u32,
    pub exec_per_minute: u32,
    pub enroll_per_minute_per_address: u32,
    /// Refusals recorded one by one in the audit log, per principal (or source address for
    /// callers without a certificate); past it they are counted and recorded as one row a minute.
    pub refusals_per_minute: u32,
    /// Agent link streams one agent identity may open; past it, Connect is refused and the agent
    /// backs off.
    pub agent_connects_per_minute: u32,
    /// Messages the controller reads from one agent's stream per second (twice that in a
    /// burst); past it, it reads more slowly and the agent's own queue holds the rest.
    pub agent_messages_per_second: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            observe_per_minute: 600,
            control_per_minute: 30,
            admin_per_minute: 10,
            exec_per_minute: 10,
            enroll_per_minute_per_address: 20,
            refusals_per_minute: 30,
            agent_connects_per_minute: 30,
            agent_messages_per_second: 2000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timing {
    /// How often agents send heartbeats.
    pub heartbeat_interval_ms: u64,
    /// A host goes offline after this many heartbeat intervals without a message.
    pub offline_after_missed: u32,
    pub agent_cert_lifetime_secs: u64,
    pub user_cert_lifetime_secs: u64,
    pub bridge_cert_lifetime_secs: u64,
    /// The first admin's certificate (written by `init`).
    pub admin_cert_lifetime_secs: u64,
    pub server_cert_lifetime_secs: u64,
    pub join_token_default_ttl_secs: u64,
    pub join_token_max_ttl_secs: u64,
    pub invite_default_ttl_secs: u64,
    /// Jobs waiting for approval expire after this long.
    pub approval_ttl_secs: u64,
    /// After a restart, how long the hosts of jobs that were running get to reconnect and
    /// report (results they kept, or that the job still runs) before their part is recorded
    /// interrupted.
    pub recovery_window_secs: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 10_000,
            offline_after_missed: 3,
            agent_cert_lifetime_secs: 24 * 3600,
            user_cert_lifetime_secs: 30 * 24 * 3600,
            bridge_cert_lifetime_secs: 7 * 24 * 3600,
            // As long as any user's: tailopsctl renews it on use, like any profile.
            admin_cert_lifetime_secs: 30 * 24 * 3600,
            server_cert_lifetime_secs: 365 * 24 * 3600,
            join_token_default_ttl_secs: 15 * 60,
            join_token_max_ttl_secs: 7 * 24 * 3600,
            // Longer than the agents' largest reconnect backoff (30 s), so every agent that is
            // up tries at least once.
            recovery_window_secs: 60,
            invite_default_ttl_secs: 3600,
            approval_ttl_secs: 3600,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub default_job_timeout_secs: u64,
    pub max_job_timeout_secs: u64,
    /// Per stream (stdout, stderr) and host.
    pub default_output_cap_bytes: u64,
    pub max_output_cap_bytes: u64,
    pub max_argv_bytes: usize,
    pub max_join_token_uses: u32,
    /// The longest a job may wait for offline hosts (`--queue-for`).
    pub max_queue_for_secs: u64,
    /// Output all running jobs may hold in memory together; beyond it, output is cut (and the
    /// results say so) until running jobs finish.
    pub max_live_output_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            default_job_timeout_secs: 30,
            max_job_timeout_secs: 24 * 3600,
            default_output_cap_bytes: 1024 * 1024,
            max_output_cap_bytes: 64 * 1024 * 1024,
            max_argv_bytes: 128 * 1024,
            max_join_token_uses: 10_000,
            max_queue_for_secs: 7 * 24 * 3600,
            max_live_output_bytes: 256 * 1024 * 1024,
        }
    }
}

/// The longest any `[network]` timeout or age may be.
pub const MAX_NETWORK_SECS: u64 = 10 * 365 * 24 * 3600;

impl Network {
    /// Refuses limits that would make the listener useless; says which field to fix.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("tls_handshake_timeout_secs", self.tls_handshake_timeout_secs),
            ("unauthenticated_timeout_secs", self.unauthenticated_timeout_secs),
            ("max_connections", self.max_connections as u64),
            ("max_connections_per_address", self.max_connections_per_address as u64),
            ("max_unauthenticated", self.max_unauthenticated as u64),
            ("max_unauthenticated_per_address", self.max_unauthenticated_per_address as u64),
            ("http2_keepalive_interval_secs", self.http2_keepalive_interval_secs),
            ("http2_keepalive_timeout_secs", self.http2_keepalive_timeout_secs),
            ("max_concurrent_streams", u64::from(self.max_concurrent_streams)),
            ("max_connection_age_secs", self.max_connection_age_secs),
            ("watch_stall_timeout_secs", self.watch_stall_timeout_secs),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!(
                "{name} must be at least 1; remove it from [network] in controller.toml to use the default"
            ));
        }
        // Each is added to the current time for a deadline, which must not overflow.
        let durations = [
            ("tls_handshake_timeout_secs", self.tls_handshake_timeout_secs),
            ("unauthenticated_timeout_secs", self.unauthenticated_timeout_secs),
            ("http2_keepalive_interval_secs", self.http2_keepalive_interval_secs),
            ("http2_keepalive_timeout_secs", self.http2_keepalive_timeout_secs),
            ("max_connection_age_secs", self.max_connection_age_secs),
            ("max_connection_age_grace_secs", self.max_connection_age_grace_secs),
            ("watch_stall_timeout_secs", self.watch_stall_timeout_secs),
        ];
        if let Some((name, value)) = durations.iter().find(|(_, value)| *value > MAX_NETWORK_SECS) {
            return Err(format!(
                "{name} = {value} is more than {MAX_NETWORK_SECS} seconds (ten years); [network] in \
                 controller.toml"
            ));
        }
        Ok(())
    }
}

impl ControllerConfig {
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.timing.heartbeat_interval_ms.max(100))
    }

    /// Silence longer than this takes a host offline.
    pub fn offline_after(&self) -> Duration {
        // Saturating: both factors come from the file, and their product can overflow.
        self.heartbeat_interval().saturating_mul(self.timing.offline_after_missed.max(1))
    }

    /// `https://<first advertised name>:<port>`, the URL agents and profiles use.
    pub fn public_url(&self, port: u16) -> String {
        let host = self.advertise.first().map_or("localhost", String::as_str);
        if host.contains(':') { format!("https://[{host}]:{port}") } else { format!("https://{host}:{port}") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_defaults_are_valid_and_zero_limits_are_explained() {
        assert_eq!(Network::default().validate(), Ok(()));
        let zero = Network { max_unauthenticated_per_address: 0, ..Network::default() };
        let error = zero.validate().expect_err("a zero cap is refused");
        assert!(error.contains("max_unauthenticated_per_address must be at least 1"), "{error}");
        let zero = Network { tls_handshake_timeout_secs: 0, ..Network::default() };
        assert!(zero.validate().is_err());
        // A section with only some fields takes the rest from the defaults.
        let partial: Network = toml::from_str("max_connections = 10").expect("parse");
        assert_eq!(partial.max_connections, 10);
        assert_eq!(partial.tls_handshake_timeout_secs, Network::default().tls_handshake_timeout_secs);
        // A misspelt field is an error, not silently ignored.
        assert!(toml::from_str::<Network>("max_conections = 10").is_err());
    }
}
