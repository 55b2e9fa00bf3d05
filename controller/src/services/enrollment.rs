//! `Enrollment.Enroll`: join token + CSR in, agent certificate out.

use std::time::Duration;

use sha2::{Digest, Sha256};
use tailops_pki::{PkiError, PrincipalId, PrincipalKind};
use tailops_proto::v1::{self, enrollment_server::Enrollment};
use tonic::{Request, Response, Status};

use crate::services::{validate_labels, validate_name};
use crate::store::{NewHost, StoreError};
use crate::{AppState, now_ms};

#[derive(Debug, Clone)]
pub struct EnrollmentService {
    state: AppState,
}

impl EnrollmentService {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

/// The stored form of a join token secret.
pub fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

#[tonic::async_trait]
impl Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        request: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::EnrollResponse>, Status> {
        let peer = request.remote_addr();
        let req = request.into_inner();
        validate_name("host name", &req.name)?;
        validate_labels(&req.labels)?;
        if req.token.is_empty() || req.token.len() > 256 {
            return Err(Status::unauthenticated(
                "a join token is required; create one with `tailopsctl token create`",
            ));
        }

        let host_id = uuid::Uuid::new_v4().to_string();
        let principal =
            PrincipalId::new(self.state.ca.trust_domain(), PrincipalKind::Agent, &host_id)
                .map_err(|e| Status::internal(e.to_string()))?;
        let lifetime = Duration::from_secs(self.state.config.timing.agent_cert_lifetime_secs);
        let outcome = self
            .state
            .store
            .enroll_host(
                &hash_secret(&req.token),
                &NewHost {
                    id: host_id.clone(),
                    name: req.name.clone(),
                    labels: req.labels.clone(),
                    principal_uri: principal.uri(),
                },
                now_ms(),
                || self.state.ca.sign_csr(&req.csr_pem, &principal, lifetime),
            )
            .await;
        let (labels, cert) = match outcome {
            Ok(Ok(issued)) => issued,
            Ok(Err(PkiError::BadCsr(e))) => {
                return Err(Status::invalid_argument(format!(
                    "the certificate signing request is invalid: {e}"
                )));
            }
            Ok(Err(e)) => {
                return Err(Status::internal(format!(
                    "could not sign the certificate: {e}"
                )));
            }
            Err(
                e @ (StoreError::TokenUnknown
                | StoreError::TokenExpired(_)
                | StoreError::TokenUsedUp),
            ) => {
                tracing::warn!(?peer, name = %req.name, reason = %e, "enrollment refused");
                return Err(Status::unauthenticated(e.to_string()));
            }
            Err(e @ StoreError::HostNameTaken(_)) => {
                return Err(Status::already_exists(e.to_string()));
            }
            Err(e) => {
                tracing::error!(error = %e, "enrollment failed");
                return Err(Status::internal(
                    "enrollment could not be recorded; see the controller log",
                ));
            }
        };
        tracing::info!(?peer, name = %req.name, host_id = %host_id, "host enrolled");
        Ok(Response::new(v1::EnrollResponse {
            host_id,
            name: req.name,
            certificate_pem: cert.pem,
            ca_certificate_pem: self.state.ca.cert_pem().to_owned(),
            labels,
            certificate_expires_at_ms: cert.not_after_ms,
        }))
    }
}
