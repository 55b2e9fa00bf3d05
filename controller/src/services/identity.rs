//! `Identity`: principals, invites, certificates, join tokens, forgetting hosts, renewal.

use std::time::Duration;

use base64::Engine;
use serde_json::json;
use tailops_pki::{PrincipalId, PrincipalKind};
use tailops_proto::v1::{self, identity_server::Identity};
use tonic::{Request, Response, Status};

use crate::audit::AuditRecord;
use crate::auth::{Principal, Role, check_validity};
use crate::revocation::Revoked;
use crate::services::enrollment::hash_secret;
use crate::services::{internal, validate_labels, validate_name};
use crate::store::{NewInvite, NewPrincipal, PrincipalRecord, StoreError};
use crate::{AppState, now_ms};

/// Invite secrets start with this, so they are recognisable in a secret scanner.
const INVITE_PREFIX: &str = "topi_";

#[derive(Debug, Clone)]
pub struct IdentityService {
    state: AppState,
}

impl IdentityService {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }

    async fn audit(&self, who: &Principal, action: &str, targets: Vec<String>, arguments: serde_json::Value) {
        let record = AuditRecord::allow(who.uri(), action, targets, arguments, "ok").via(who.client.clone());
        self.state.audit.record(record).await;
    }

    /// Withdraws the pending approvals and running jobs of `uri`; what was withdrawn, for the
    /// audit row. A failure is logged and recorded there, never hidden: the standing change
    /// itself has happened and stays.
    async fn withdraw(&self, uri: &str, why: &str) -> serde_json::Value {
        match self.state.jobs.withdraw_principal(uri, why).await {
            Ok((withdrawn, cancelled)) => {
                json!({"approvals_withdrawn": withdrawn, "jobs_cancelled": cancelled})
            }
            Err(e) => {
                tracing::error!(principal = uri, error = %e, "could not withdraw the jobs of a principal");
                json!({"withdraw_failed": e.to_string()})
            }
        }
    }

    fn principal_id(&self, kind: &str, name: &str) -> Result<PrincipalId, Status> {
        let kind = match kind {
            "user" => PrincipalKind::User,
            "bridge" => PrincipalKind::Bridge,
            _ => return Err(Status::invalid_argument("kind must be user or bridge")),
        };
        PrincipalId::new(&self.state.config.trust_domain, kind, name)
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }

    fn info(&self, record: &PrincipalRecord) -> v1::PrincipalInfo {
        let p = &record.principal;
        v1::PrincipalInfo {
            id: self.principal_id(&p.kind, &p.name).map(|id| id.uri()).unwrap_or_default(),
            kind: kind_to_wire(&p.kind) as i32,
            name: p.name.clone(),
            role: p.role.clone(),
            scope: p.scope.clone(),
            disabled: record.disabled,
            created_at_ms: record.created_at_ms,
        }
    }
}

/// `user` / `bridge` from the wire enum.
pub fn kind_from_wire(kind: i32) -> Result<&'static str, Status> {
    match v1::PrincipalKindProto::try_from(kind) {
        Ok(v1::PrincipalKindProto::User) => Ok("user"),
        Ok(v1::PrincipalKindProto::Bridge) => Ok("bridge"),
        _ => Err(Status::invalid_argument("kind must be user or bridge")),
    }
}

fn kind_to_wire(kind: &str) -> v1::PrincipalKindProto {
    match kind {
        "user" => v1::PrincipalKindProto::User,
        "bridge" => v1::PrincipalKindProto::Bridge,
        _ => v1::PrincipalKindProto::Unspecified,
    }
}

fn validate_role(role: &str) -> Result<(), Status> {
    match Role::named(role) {
        Some(_) => Ok(()),
        None => Err(Status::invalid_argument(format!("unknown role {role:?}; roles are {}", Role::names()))),
    }
}

/// A scope must name something: an empty selector would silently mean "nothing".
fn validate_scope(scope: Option<&v1::HostSelector>) -> Result<Option<v1::HostSelector>, Status> {
    match scope {
        None => Ok(None),
        Some(s) if s.all => Ok(None),
        Some(s) if s.labels.is_empty() && s.hosts.is_empty() => {
            Err(Status::invalid_argument("a scope needs labels or host names (or omit it for every host)"))
        }
        Some(s) => {
            validate_labels(&s.labels)?;
            for host in &s.hosts {
                validate_name("host name", host)?;
            }
            Ok(Some(s.clone()))
        }
    }
}

/// Certificate lifetime for a principal kind.
pub fn lifetime_for(state: &AppState, kind: PrincipalKind) -> Duration {
    let t = &state.config.timing;
    Duration::from_secs(match kind {
        PrincipalKind::Agent => t.agent_cert_lifetime_secs,
        PrincipalKind::Bridge => t.bridge_cert_lifetime_secs,
        PrincipalKind::User | PrincipalKind::Controller => t.user_cert_lifetime_secs,
    })
}

fn not_found_principal(kind: &str, name: &str) -> Status {
    Status::not_found(format!("no {kind} named {name:?}; see `tailopsctl users ls`"))
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn who_am_i(
        &self,
        request: Request<v1::WhoAmIRequest>,
    ) -> Result<Response<v1::PrincipalInfo>, Status> {
        let me = Principal::of(&request)?;
        let record = self
            .state
            .store
            .principal(me.id.kind.as_str(), &me.id.name)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::permission_denied("this principal no longer exists"))?;
        Ok(Response::new(self.info(&record)))
    }

    async fn create_invite(
        &self,
        request: Request<v1::CreateInviteRequest>,
    ) -> Result<Response<v1::CreateInviteResponse>, Status> {
        let me = Principal::of(&request)?;
        let req = request.into_inner();
        let kind = kind_from_wire(req.kind)?;
        validate_name("name", &req.name)?;
        validate_role(&req.role)?;
        let scope = validate_scope(req.scope.as_ref())?;
        let id = self.principal_id(kind, &req.name)?;
        let ttl = match req.ttl_secs {
            0 => self.state.config.timing.invite_default_ttl_secs,
            n => n.min(self.state.config.timing.join_token_max_ttl_secs),
        };
        let secret = format!(
            "{INVITE_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
        );
        let now = now_ms();
        let expires_at_ms = now.saturating_add(i64::try_from(ttl.saturating_mul(1000)).unwrap_or(i64::MAX));
        let invite = NewInvite {
            id: hex::encode(rand::random::<[u8; 6]>()),
            secret_hash: hash_secret(&secret),
            principal: NewPrincipal {
                kind: kind.into(),
                name: req.name.clone(),
                role: req.role.clone(),
                scope,
            },
            created_by: me.uri(),
            created_at_ms: now,
            expires_at_ms,
        };
        match self.state.store.insert_invite(&invite).await {
            Ok(()) => {}
            Err(e @ StoreError::PrincipalExists(_)) => return Err(Status::already_exists(e.to_string())),
            Err(e) => return Err(internal(e)),
        }
        self.audit(&me, "identity.invite", vec![id.uri()], json!({"role": req.role, "ttl_secs": ttl})).await;
        Ok(Response::new(v1::CreateInviteResponse {
            token: secret,
            principal: id.uri(),
            expires_at_ms,
            ca_fingerprint: self.state.ca.fingerprint().to_string(),
            controller_url: self.state.public_url.clone(),
        }))
    }

    async fn list_principals(
        &self,
        _request: Request<v1::ListPrincipalsRequest>,
    ) -> Result<Response<v1::ListPrincipalsResponse>, Status> {
        let records = self.state.store.list_principals().await.map_err(internal)?;
        Ok(Response::new(v1::ListPrincipalsResponse {
            principals: records.iter().map(|r| self.info(r)).collect(),
        }))
    }

    async fn set_principal_disabled(
        &self,
        request: Request<v1::SetPrincipalDisabledRequest>,
    ) -> Result<Response<v1::PrincipalInfo>, Status> {
        let me = Principal::of(&request)?;
        let req = request.into_inner();
        let kind = kind_from_wire(req.kind)?;
        let id = self.principal_id(kind, &req.name)?;
        if id == me.id && req.disabled {
            return Err(Status::failed_precondition("you cannot disable yourself; ask another admin"));
        }
        let record = self
            .state
            .store
            .set_principal_disabled(kind, &req.name, req.disabled)
            .await
            .map_err(internal)?
            .ok_or_else(|| not_found_principal(kind, &req.name))?;
        let mut arguments = json!({});
        if req.disabled {
            self.state.revocations.publish(Revoked::Principal(id.uri()));
            arguments = self.withdraw(&id.uri(), "the requester was disabled").await;
        }
        let action = if req.disabled { "identity.disable" } else { "identity.enable" };
        self.audit(&me, action, vec![id.uri()], arguments).await;
        Ok(Response::new(self.info(&record)))
    }

    async fn set_principal_role(
        &self,
        request: Request<v1::SetPrincipalRoleRequest>,
    ) -> Result<Response<v1::PrincipalInfo>, Status> {
        let me = Principal::of(&request)?;
        let req = request.into_inner();
        let kind = kind_from_wire(req.kind)?;
        validate_role(&req.role)?;
        let scope = validate_scope(req.scope.as_ref())?;
        let id = self.principal_id(kind, &req.name)?;
        if id == me.id {
            return Err(Status::failed_precondition("you cannot change your own role; ask another admin"));
        }
        let record = self
            .state
            .store
            .set_principal_role(kind, &req.name, &req.role, scope.as_ref())
            .await
            .map_err(internal)?
            .ok_or_else(|| not_found_principal(kind, &req.name))?;
        // What the principal asked for under its old role is not what an admin now allows.
        self.state.revocations.publish(Revoked::Changed(id.uri()));
        let withdrawn = self.withdraw(&id.uri(), "the requester's role or scope changed").await;
        let scope_text = scope
            .as_ref()
            .map(|s| json!({"labels": s.labels, "hosts": s.hosts}))
            .unwrap_or_else(|| json!("all hosts"));
        self.audit(
            &me,
            "identity.set_role",
            vec![id.uri()],
            json!({"role": req.role, "scope": scope_text, "jobs": withdrawn}),
        )
        .await;
        Ok(Response::new(self.info(&record)))
    }

    async fn list_certificates(
        &self,
        request: Request<v1::ListCertificatesRequest>,
    ) -> Result<Response<v1::ListCertificatesResponse>, Status> {
        let req = request.into_inner();
        let certificates = self
            .state
            .store
            .list_certificates(&req.principal, req.include_expired, now_ms())
            .await
            .map_err(internal)?;
        Ok(Response::new(v1::ListCertificatesResponse { certificates }))
    }

    async fn revoke_certificate(
        &self,
        request: Request<v1::RevokeCertificateRequest>,
    ) -> Result<Response<v1::RevokeCertificateResponse>, Status> {
        let me = Principal::of(&request)?;
        let req = request.into_inner();
        let serial = req.serial.trim().to_ascii_lowercase().replace(':', "");
        if serial == me.serial {
            return Err(Status::failed_precondition(
                "you cannot revoke the certificate you are calling with",
            ));
        }
        let reason = if req.reason.is_empty() { "revoked by an admin" } else { req.reason.as_str() };
        let (certificate, renewals) = self
            .state
            .store
            .revoke_certificate(&serial, reason, now_ms())
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                Status::not_found(format!("no certificate with serial {serial}; see `tailopsctl certs ls`"))
            })?;
        let mut closed_streams = 0;
        for revoked in std::iter::once(&serial).chain(&renewals) {
            self.state.revocations.publish(Revoked::Serial(revoked.clone()));
            closed_streams += self.state.agents.close_serial(revoked);
        }
        self.audit(
            &me,
            "identity.revoke_certificate",
            vec![certificate.principal.clone()],
            json!({"serial": serial, "reason": reason, "renewals_revoked": renewals}),
        )
        .await;
        Ok(Response::new(v1::RevokeCertificateResponse { certificate: Some(certificate), closed_streams }))
    }

    async fn list_join_tokens(
        &self,
        _request: Request<v1::ListJoinTokensRequest>,
    ) -> Result<Response<v1::ListJoinTokensResponse>, Status> {
        let tokens = self.state.store.list_join_tokens(now_ms()).await.map_err(internal)?;
        Ok(Response::new(v1::ListJoinTokensResponse { tokens }))
    }

    async fn revoke_join_token(
        &self,
        request: Request<v1::RevokeJoinTokenRequest>,
    ) -> Result<Response<v1::RevokeJoinTokenResponse>, Status> {
        let me = Principal::of(&request)?;
        let id = request.into_inner().id;
        if !self.state.store.revoke_join_token(&id).await.map_err(internal)? {
            return Err(Status::not_found(format!("no usable join token {id:?}; see `tailopsctl token ls`")));
        }
        self.audit(&me, "identity.revoke_join_token", Vec::new(), json!({"token_id": id})).await;
        Ok(Response::new(v1::RevokeJoinTokenResponse {}))
    }

    async fn forget_host(
        &self,
        request: Request<v1::ForgetHostRequest>,
    ) -> Result<Response<v1::ForgetHostResponse>, Status> {
        let me = Principal::of(&request)?;
        let name = request.into_inner().host;
        let host = self
            .state
            .store
            .find_host(&name)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no host {name:?}; see `tailopsctl hosts ls`")))?;
        let id = PrincipalId::new(&self.state.config.trust_domain, PrincipalKind::Agent, &host.id)
            .map_err(|e| Status::internal(e.to_string()))?;
        let revoked = self
            .state
            .store
            .revoke_principal_certificates(&id.uri(), "host forgotten", now_ms())
            .await
            .map_err(internal)?;
        self.state.store.delete_host(&host.id).await.map_err(internal)?;
        self.state.monitoring.forget(&host.id);
        self.state.revocations.publish(Revoked::Principal(id.uri()));
        self.audit(&me, "identity.forget_host", vec![host.name.clone()], json!({"host_id": host.id})).await;
        Ok(Response::new(v1::ForgetHostResponse {
            host_id: host.id,
            revoked_certificates: u32::try_from(revoked).unwrap_or(u32::MAX),
        }))
    }

    async fn renew_certificate(
        &self,
        request: Request<v1::RenewCertificateRequest>,
    ) -> Result<Response<v1::RenewCertificateResponse>, Status> {
        let me = Principal::of(&request)?;
        // The auth layer checked the period already; checked again here because this is the
        // one call that would extend a credential past its end.
        check_validity(i64::MIN, me.not_after_ms, now_ms())?;
        let csr = request.into_inner().csr_pem;
        let cert =
            self.state.ca.sign_csr(&csr, &me.id, lifetime_for(&self.state, me.id.kind)).map_err(|e| {
                Status::invalid_argument(format!("the certificate signing request is invalid: {e}"))
            })?;
        let retired = self
            .state
            .store
            .record_renewal(&cert, &me.uri(), &me.serial, now_ms())
            .await
            .map_err(internal)?;
        self.audit(
            &me,
            "identity.renew",
            vec![me.uri()],
            json!({"serial": cert.serial, "renewed_from": me.serial, "retired": retired}),
        )
        .await;
        Ok(Response::new(v1::RenewCertificateResponse {
            certificate_pem: cert.pem,
            expires_at_ms: cert.not_after_ms,
        }))
    }
}
