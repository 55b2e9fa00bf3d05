//! `Enrollment.Enroll`: join token + CSR in, agent certificate out.

use std::time::Duration;

use sha2::{Digest, Sha256};
use tailops_pki::{PkiError, PrincipalId, PrincipalKind};
use tailops_proto::v1::{self, enrollment_server::Enrollment};
use tonic::{Request, Response, Status};

use crate::services::validate_name;
use std::net::SocketAddr;

use serde_json::json;

use crate::audit::AuditRecord;
use crate::auth::anonymous;
use crate::services::identity::lifetime_for;
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

impl EnrollmentService {
    async fn audit_denied(
        &self,
        peer: Option<SocketAddr>,
        action: &str,
        arguments: serde_json::Value,
        reason: &str,
    ) {
        self.state.audit.record(AuditRecord::deny(anonymous(peer), action, arguments, reason)).await;
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
        // Selectors and scopes match a host by name or id: a name shaped like an id could stand
        // in for another host.
        if uuid::Uuid::try_parse(&req.name).is_ok() {
            return Err(Status::invalid_argument(format!(
                "invalid host name {:?}: a name may not look like a host id (a UUID); pick another with --name",
                req.name
            )));
        }
        if !req.labels.is_empty() {
            // Labels decide which jobs reach a host and which scopes cover it, so they come from
            // the join token (set by an admin), not from the host itself.
            tracing::warn!(?peer, name = %req.name, "labels the agent asked for are ignored; labels come from the join token");
        }
        if req.token.is_empty() || req.token.len() > 256 {
            return Err(Status::unauthenticated(
                "a join token is required; create one with `tailopsctl token create`",
            ));
        }

        let host_id = uuid::Uuid::new_v4().to_string();
        let principal = PrincipalId::new(self.state.ca.trust_domain(), PrincipalKind::Agent, &host_id)
            .map_err(|e| Status::internal(e.to_string()))?;
        let lifetime = Duration::from_secs(self.state.config.timing.agent_cert_lifetime_secs);
        let outcome = self
            .state
            .store
            .enroll_host(
                &hash_secret(&req.token),
                &NewHost { id: host_id.clone(), name: req.name.clone(), principal_uri: principal.uri() },
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
                return Err(Status::internal(format!("could not sign the certificate: {e}")));
            }
            Err(e @ (StoreError::TokenUnknown | StoreError::TokenExpired(_) | StoreError::TokenUsedUp)) => {
                tracing::warn!(?peer, name = %req.name, reason = %e, "enrollment refused");
                self.audit_denied(peer, "enrollment.enroll", json!({"name": req.name}), &e.to_string()).await;
                return Err(Status::unauthenticated(e.to_string()));
            }
            Err(e @ StoreError::HostNameTaken(_)) => {
                return Err(Status::already_exists(e.to_string()));
            }
            Err(e @ StoreError::HostNameLikeId(_)) => {
                return Err(Status::invalid_argument(e.to_string()));
            }
            Err(e) => {
                tracing::error!(error = %e, "enrollment failed");
                return Err(Status::internal("enrollment could not be recorded; see the controller log"));
            }
        };
        tracing::info!(?peer, name = %req.name, host_id = %host_id, "host enrolled");
        self.state
            .audit
            .record(AuditRecord::allow(
                principal.uri(),
                "enrollment.enroll",
                vec![req.name.clone()],
                json!({"from": anonymous(peer), "labels": labels}),
                "enrolled",
            ))
            .await;
        Ok(Response::new(v1::EnrollResponse {
            host_id,
            name: req.name,
            certificate_pem: cert.pem,
            ca_certificate_pem: self.state.ca.cert_pem().to_owned(),
            labels,
            certificate_expires_at_ms: cert.not_after_ms,
        }))
    }

    async fn login(&self, request: Request<v1::LoginRequest>) -> Result<Response<v1::LoginResponse>, Status> {
        let peer = request.remote_addr();
        let req = request.into_inner();
        if req.token.is_empty() || req.token.len() > 256 {
            return Err(Status::unauthenticated("an invite token is required; ask an admin for one"));
        }
        let trust_domain = self.state.config.trust_domain.clone();
        let outcome = self
            .state
            .store
            .redeem_invite(&hash_secret(&req.token), now_ms(), |p| {
                let kind = if p.kind == "bridge" { PrincipalKind::Bridge } else { PrincipalKind::User };
                let id = PrincipalId::new(&trust_domain, kind, &p.name)?;
                let cert = self.state.ca.sign_csr(&req.csr_pem, &id, lifetime_for(&self.state, kind))?;
                Ok::<_, PkiError>((cert, id.uri()))
            })
            .await;
        let (principal, cert) = match outcome {
            Ok(Ok(done)) => done,
            Ok(Err(PkiError::BadCsr(e))) => {
                return Err(Status::invalid_argument(format!(
                    "the certificate signing request is invalid: {e}"
                )));
            }
            Ok(Err(e)) => return Err(Status::internal(format!("could not sign the certificate: {e}"))),
            Err(e @ (StoreError::InviteUnknown | StoreError::InviteExpired(_) | StoreError::InviteUsed)) => {
                tracing::warn!(?peer, reason = %e, "login refused");
                self.audit_denied(peer, "enrollment.login", json!({}), &e.to_string()).await;
                return Err(Status::unauthenticated(e.to_string()));
            }
            Err(e @ StoreError::PrincipalExists(_)) => return Err(Status::already_exists(e.to_string())),
            Err(e) => {
                tracing::error!(error = %e, "login failed");
                return Err(Status::internal("login could not be recorded; see the controller log"));
            }
        };
        let kind = if principal.kind == "bridge" { PrincipalKind::Bridge } else { PrincipalKind::User };
        let id = PrincipalId::new(&self.state.config.trust_domain, kind, &principal.name)
            .map_err(|e| Status::internal(e.to_string()))?;
        tracing::info!(?peer, principal = %id, role = %principal.role, "principal logged in");
        self.state
            .audit
            .record(AuditRecord::allow(
                id.uri(),
                "enrollment.login",
                vec![id.uri()],
                json!({"from": anonymous(peer), "role": principal.role}),
                "certificate issued",
            ))
            .await;
        Ok(Response::new(v1::LoginResponse {
            principal: id.uri(),
            role: principal.role,
            certificate_pem: cert.pem,
            ca_certificate_pem: self.state.ca.cert_pem().to_owned(),
            certificate_expires_at_ms: cert.not_after_ms,
        }))
    }
}
