//! `tailopsctl login`: redeem an invite. The key is generated here and never leaves this machine;
//! the controller's CA is trusted only if its fingerprint matches the one the admin gave.

use tailops_pki::Fingerprint;
use tailops_proto::v1::{self, enrollment_client::EnrollmentClient};

use crate::Profile;

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error(transparent)]
    Pki(#[from] tailops_pki::PkiError),
    #[error("the controller refused the login: {}", .0.message())]
    Refused(tonic::Status),
}

#[derive(Clone)]
pub struct LoginOptions {
    pub controller_url: String,
    pub token: String,
    pub ca_fingerprint: Fingerprint,
}

/// Without the invite token: a log line or a panic message must never carry it.
impl std::fmt::Debug for LoginOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginOptions")
            .field("controller_url", &self.controller_url)
            .field("token", &"[redacted]")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .finish()
    }
}

/// Redeems the invite and returns the new profile (not yet saved).
pub async fn login(options: LoginOptions) -> Result<Profile, LoginError> {
    let url = options.controller_url.trim_end_matches('/').to_owned();
    let (channel, ca_pem) = tailops_pki::pin::pinned_channel(&url, &options.ca_fingerprint).await?;
    let (key_pem, csr_pem) = tailops_pki::csr::generate_key_and_csr("tailopsctl")?;
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
