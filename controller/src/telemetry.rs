//! The controller's Prometheus exposition: its own RPC and database metrics plus a per-scrape view
//! of the fleet, served as the classic text format (0.0.4) on a separate plain-HTTP listener.
//!
//! - [`metrics`]: the long-lived registry ([`Telemetry`]) and what the controller records into it.
//! - [`layer`]: the tower layer that times every gRPC call.
//! - [`fleet`]: the fleet snapshot a scrape asks for and how it becomes gauges.
//! - [`endpoint`]: the tiny HTTP/1.1 server behind `[prometheus] listen`.
//!
//! Everything lives in a [`Telemetry`] value injected into state; nothing is global, so tests and
//! several controllers in one process never share counters.

pub mod endpoint;
pub mod fleet;
pub mod layer;
pub mod metrics;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;

use tokio::net::TcpListener;

pub use endpoint::serve;
pub use fleet::{FleetSnapshot, HostGauges, SnapshotSource};
pub use layer::{RpcMetricsLayer, RpcMetricsService};
pub use metrics::Telemetry;

/// `[prometheus]` in `controller.toml`. Without `listen` there is no metrics endpoint at all: the
/// endpoint is unauthenticated plain HTTP, so exposing it must be a deliberate choice.
/// `Serialize` too because `ControllerConfig`, which will hold it, is written by `init`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Address of the plain-HTTP `/metrics` endpoint, e.g. `127.0.0.1:9464`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "cannot listen for Prometheus on {addr}: {source}; change [prometheus] listen in controller.toml"
    )]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// Binds the configured metrics address; `None` when the endpoint is off.
pub async fn bind(config: &PrometheusConfig) -> Result<Option<TcpListener>, TelemetryError> {
    let Some(addr) = config.listen else {
        return Ok(None);
    };
    TcpListener::bind(addr).await.map(Some).map_err(|source| TelemetryError::Listen { addr, source })
}
