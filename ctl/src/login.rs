//! `tailopsctl login`: redeem an invite. The key is generated here and never leaves this machine;
//! the controller's CA is trusted only if its fingerprint matches the one the admin gave.

use std::time::Duration;

use tailops_pki::Fingerprint;
use tailops_proto::v1::{self, enrollment_client::EnrollmentClient};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::Profile;
use crate::client::error_chain;

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error(transparent)]
    Pki(#[from] tailops_pki::PkiError),
    #[error("cannot connect to the controller at {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("the controller refused the login: {}", .0.message())]
    Refused(tonic::Status),
}

#[derive(Debug, Clone)]
pub struct LoginOptions {
    pub controller_url: String,
    pub token: String,
    pub ca_fingerprint: Fingerprint,
}

/// Redeems the invite and returns the new profile (not yet saved).
pub async fn login(options: LoginOptions) -> Result<Profile, LoginError> {
    let url = options.controller_url.trim_end_matches('/').to_owned();
    let ca_pem = tailops_pki::pin::fetch_pinned_ca(&url, &options.ca_fingerprint).await?;
    let (key_pem, csr_pem) = tailops_pki::csr::generate_key_and_csr("tailopsctl")?;
    let connect_err =
        |e: tonic::transport::Error| LoginError::Connect { url: url.clone(), detail: error_chain(&e) };
    let channel = Endpoint::from_shared(url.clone())
        .map_err(connect_err)?
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem)))
        .map_err(connect_err)?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .map_err(connect_err)?;
    let response = EnrollmentClient::new(channel)
        .login(v1::LoginRequest { token: options.token, csr_pem })
        .await
        .map_err(LoginError::Refused)?
        .into_inner();
    Ok(Profile {
        endpoint: url,
        principal: response.principal,
        ca_pem,
        cert_pem: response.certificate_pem,
        key_pem,
    })
}
