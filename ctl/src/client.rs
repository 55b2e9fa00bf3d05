//! The mutual-TLS gRPC channel to the controller.

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::Profile;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid controller endpoint {endpoint:?}: {source}")]
    Endpoint { endpoint: String, source: tonic::transport::Error },
    #[error(
        "cannot connect to the controller at {endpoint}: {detail}; is `tailops-controller serve` \
         running there, and does the profile's CA match it?"
    )]
    Connect { endpoint: String, detail: String },
}

/// Opens a channel authenticated by the profile's certificate, trusting only the profile's CA.
pub async fn connect(profile: &Profile) -> Result<Channel, ClientError> {
    endpoint(profile)?
        .connect()
        .await
        .map_err(|e| ClientError::Connect { endpoint: profile.endpoint.clone(), detail: error_chain(&e) })
}

/// The configured endpoint without connecting (for lazy channels).
pub fn endpoint(profile: &Profile) -> Result<Endpoint, ClientError> {
    let bad = |source| ClientError::Endpoint { endpoint: profile.endpoint.clone(), source };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&profile.ca_pem))
        .identity(Identity::from_pem(&profile.cert_pem, &profile.key_pem));
    Ok(Endpoint::from_shared(profile.endpoint.clone())
        .map_err(bad)?
        .tls_config(tls)
        .map_err(bad)?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10)))
}

pub use tailops_pki::error_chain;
