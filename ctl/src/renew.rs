//! Keeps a profile's certificate fresh: past about 70% of its lifetime, the CLI asks the
//! controller for a new one over its authenticated channel, with a key generated here.

use std::path::Path;

use tailops_pki::CertificateInfo;
use tailops_proto::v1::{self, identity_client::IdentityClient};
use tonic::transport::Channel;

use crate::{Profile, ProfileError};

/// Renew when this fraction of the certificate's lifetime has passed.
const RENEW_AT_FRACTION: f64 = 0.7;

#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error("cannot read the profile's certificate: {0}")]
    Certificate(#[from] tailops_pki::PkiError),
    #[error("the controller refused to renew the certificate: {}", .0.message())]
    Refused(#[from] tonic::Status),
    #[error(transparent)]
    Profile(#[from] ProfileError),
}

/// Whether the certificate is past the renewal point.
pub fn renewal_due(profile: &Profile, now_ms: i64) -> Result<bool, RenewError> {
    let info = CertificateInfo::from_pem(&profile.cert_pem)?;
    let lifetime = info.not_after_ms.saturating_sub(info.not_before_ms).max(0);
    #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
    let renew_at = info.not_before_ms + (lifetime as f64 * RENEW_AT_FRACTION) as i64;
    Ok(now_ms >= renew_at)
}

/// Renews the profile's certificate if due and rewrites the profile file. Returns whether it did.
pub async fn renew_if_due(channel: Channel, profile: &mut Profile, path: &Path) -> Result<bool, RenewError> {
    if !renewal_due(profile, tailops_proto::time::now_ms())? {
        return Ok(false);
    }
    let (key_pem, csr_pem) = tailops_pki::csr::generate_key_and_csr("tailopsctl")?;
    let response = IdentityClient::new(channel)
        .renew_certificate(v1::RenewCertificateRequest { csr_pem })
        .await?
        .into_inner();
    profile.cert_pem = response.certificate_pem;
    profile.key_pem = key_pem;
    profile.save_replacing(path).await?;
    Ok(true)
}
