//! `tailops-agent enroll`: pin the controller's CA by fingerprint, generate the host key here,
//! and trade a join token plus a CSR for a certificate.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tailops_pki::Fingerprint;
use tailops_proto::v1::{self, enrollment_client::EnrollmentClient};

use crate::AgentError;
use crate::state::{AgentConfig, AgentState};

#[derive(Clone)]
pub struct EnrollOptions {
    pub controller_url: String,
    pub token: String,
    pub ca_fingerprint: Fingerprint,
    pub state_dir: PathBuf,
    /// Defaults to the machine's host name.
    pub name: Option<String>,
    /// Sent for older controllers; current ones take a host's labels only from its join token.
    pub labels: BTreeMap<String, String>,
}

/// Without the token: a log line or a panic message must never carry it.
impl std::fmt::Debug for EnrollOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollOptions")
            .field("controller_url", &self.controller_url)
            .field("token", &"[redacted]")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .field("state_dir", &self.state_dir)
            .field("name", &self.name)
            .field("labels", &self.labels)
            .finish()
    }
}

pub async fn enroll(options: EnrollOptions) -> Result<AgentState, AgentError> {
    if let Some(name) = AgentState::enrolled_name(&options.state_dir).await {
        return Err(AgentError::AlreadyEnrolled { path: options.state_dir, name });
    }
    let name = options.name.unwrap_or_else(crate::host::hostname);
    if name.is_empty() {
        return Err(AgentError::BadName(name));
    }
    let url = options.controller_url.trim_end_matches('/').to_owned();
    let (channel, ca_pem) = tailops_pki::pin::pinned_channel(&url, &options.ca_fingerprint).await?;
    let (key_pem, csr_pem) = tailops_pki::csr::generate_key_and_csr(&name)?;
    let response = EnrollmentClient::new(channel)
        .enroll(v1::EnrollRequest { token: options.token, csr_pem, name, labels: options.labels })
        .await
        .map_err(AgentError::Refused)?
        .into_inner();

    let state = AgentState {
        dir: options.state_dir,
        config: AgentConfig { controller_url: url, host_id: response.host_id, name: response.name },
        ca_pem,
        cert_pem: response.certificate_pem,
        key_pem,
    };
    state.save_new().await?;
    Ok(state)
}
