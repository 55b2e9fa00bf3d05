//! Authentication and authorization for every RPC, in one tower layer in front of all services.
//!
//! The caller's identity comes only from its verified client certificate (the URI SAN). Every
//! method has an entry in [`POLICY`]; a method that is not listed is denied. Certificate, host and
//! user standing are read from the database on every call, so a change takes effect at once.
//! Every denial is audited; callers are rate limited per principal and tier (and enrollment per
//! source address).

mod refusals;
pub mod roles;

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use rustls::pki_types::CertificateDer;
use tailops_pki::{CertificateInfo, PrincipalId, PrincipalKind};
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use tailops_proto::v1;

use crate::audit::{AuditLog, AuditRecord};
use crate::rate_limit::{Bucket, RateLimiter};
use crate::revocation::{Revocations, Revoked};
use crate::store::{CertStanding, HostIdentity, HostKey, Store};
use crate::{AppState, now_ms};

pub use refusals::RefusalLog;
pub use roles::{Grant, Risk, Role, Tier};

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No client certificate needed: enrollment, login and health checks.
    Anyone,
    /// An enrolled agent (its own link only).
    Agent,
    /// An enabled user or bridge whose role grants this tier outright.
    Principal(Tier),
}

/// The policy table: every RPC method of every service the controller serves.
pub const POLICY: &[(&str, Access)] = &[
    ("/tailops.v1.Enrollment/Enroll", Access::Anyone),
    ("/tailops.v1.Enrollment/Login", Access::Anyone),
    ("/grpc.health.v1.Health/Check", Access::Anyone),
    ("/grpc.health.v1.Health/Watch", Access::Anyone),
    ("/grpc.health.v1.Health/List", Access::Anyone),
    ("/tailops.v1.AgentLink/Connect", Access::Agent),
    ("/tailops.v1.Fleet/CreateJoinToken", Access::Principal(Tier::Admin)),
    ("/tailops.v1.Fleet/ListHosts", Access::Principal(Tier::Observe)),
    // The job's own risk is checked per action and host inside.
    ("/tailops.v1.Fleet/RunJob", Access::Principal(Tier::Observe)),
    ("/tailops.v1.Fleet/WatchJob", Access::Principal(Tier::Observe)),
    ("/tailops.v1.Fleet/ListJobs", Access::Principal(Tier::Observe)),
    ("/tailops.v1.Fleet/GetJob", Access::Principal(Tier::Observe)),
    // Requesters may cancel their own jobs; others' need the control tier (checked inside).
    ("/tailops.v1.Fleet/CancelJob", Access::Principal(Tier::Observe)),
    ("/tailops.v1.Fleet/ListApprovals", Access::Principal(Tier::Observe)),
    // Approvers are further checked inside: human, not the requester, allowed to run the job.
    ("/tailops.v1.Fleet/DecideApproval", Access::Principal(Tier::Control)),
    ("/tailops.v1.Identity/WhoAmI", Access::Principal(Tier::Observe)),
    ("/tailops.v1.Identity/RenewCertificate", Access::Principal(Tier::Observe)),
    ("/tailops.v1.Identity/CreateInvite", Access::Principal(Tier::Admin)),
    ("/tailops.v1.Identity/ListPrincipals", Access::Principal(Tier::Admin)),
    ("/tailops.v1.Identity/SetPrincipalDisabled", Access::Principal(Tier::Admin)),
    ("/tailops.v1.Identity/SetPrincipalRole", Access::Principal(Tier::Admin)),
    ("/tailops.v1.Identity/ListCertificates", Access::Principal(Tier::Admin)),
    ("/tailops.v1.Identity/RevokeCertificate", Access::Principal(Tier::Admin)),
    ("/tailops.v1.Identity/ListJoinTokens", Access::Principal(Tier::Admin)),
    ("/tailops.v1.Identity/RevokeJoinToken", Access::Principal(Tier::Admin)),
    ("/tailops.v1.Identity/ForgetHost", Access::Principal(Tier::Admin)),
    ("/tailops.v1.Monitoring/GetHost", Access::Principal(Tier::Observe)),
    ("/tailops.v1.Monitoring/QueryMetrics", Access::Principal(Tier::Observe)),
    ("/tailops.v1.Monitoring/FleetSummary", Access::Principal(Tier::Observe)),
    ("/tailops.v1.Monitoring/ListChanges", Access::Principal(Tier::Observe)),
    // Non-admins are limited to their own rows inside.
    ("/tailops.v1.Audit/ListAudit", Access::Principal(Tier::Observe)),
    ("/tailops.v1.Audit/VerifyAudit", Access::Principal(Tier::Admin)),
    ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", Access::Principal(Tier::Admin)),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", Access::Principal(Tier::Admin)),
];

/// The longest client name recorded, in bytes: room for `NAME/VERSION`, not for a payload.
pub const MAX_CLIENT_BYTES: usize = 128;

pub fn access_for(path: &str) -> Option<Access> {
    POLICY.iter().find(|(method, _)| *method == path).map(|(_, access)| *access)
}

/// The authenticated caller, placed in the request extensions for the services.
#[derive(Debug, Clone)]
pub struct Principal {
    pub id: PrincipalId,
    pub serial: String,
    /// When the presented certificate expires (unix ms): long-lived streams end then.
    pub not_after_ms: i64,
    /// Users and bridges: their role. Agents have none.
    pub role: Option<&'static Role>,
    /// Users and bridges: the hosts their role is limited to (`None`: every host).
    pub scope: Option<v1::HostSelector>,
    /// The program the request came through, as the caller named it in
    /// [`tailops_proto::CLIENT_HEADER`] (sanitized). The caller asserts it, so it is attribution
    /// for the audit log and for approvers only: nothing may ever be granted on it.
    pub client: Option<String>,
}

impl Principal {
    /// The caller of a request that passed [`AuthLayer`] with a certificate-bearing policy.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Self, Status> {
        request
            .extensions()
            .get::<Self>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("this method needs a client certificate"))
    }

    pub fn uri(&self) -> String {
        self.id.uri()
    }

    /// Humans can approve; automation cannot.
    pub fn is_human(&self) -> bool {
        self.id.kind == PrincipalKind::User
    }

    /// Whether the principal's role grants `tier` outright (not merely with approval).
    pub fn holds(&self, tier: Tier) -> bool {
        self.role.is_some_and(|r| r.tier(tier) == Grant::Yes)
    }

    pub fn grant(&self, risk: Risk) -> Grant {
        self.role.map_or(Grant::No, |r| r.grant(risk))
    }

    /// The ids of the hosts among `hosts` that the principal's scope covers.
    pub fn covered_ids<'h>(&self, hosts: &'h [HostKey]) -> HashSet<&'h str> {
        hosts.iter().filter(|h| self.covers(*h)).map(|h| h.id.as_str()).collect()
    }

    /// Whether the principal's scope covers `host`.
    pub fn covers(&self, host: &impl HostIdentity) -> bool {
        match &self.scope {
            None => true,
            Some(scope) => {
                scope.labels.iter().all(|(k, v)| host.label(k) == Some(v.as_str()))
                    && (scope.hosts.is_empty()
                        || scope.hosts.iter().any(|h| h == host.name() || h == host.id()))
            }
        }
    }
}

/// Decides each call. Fails closed: any error reading the database denies.
#[derive(Debug, Clone)]
pub struct Authorizer {
    store: Store,
    trust_domain: String,
    audit: AuditLog,
    limiter: Arc<RateLimiter>,
    refusals: Arc<RefusalLog>,
    revocations: Revocations,
    lock_on_clone: bool,
}

impl Authorizer {
    pub fn new(state: &AppState) -> Self {
        Self {
            store: state.store.clone(),
            trust_domain: state.config.trust_domain.clone(),
            audit: state.audit.clone(),
            refusals: RefusalLog::start(state.audit.clone(), state.limiter.clone()),
            limiter: state.limiter.clone(),
            revocations: state.revocations.clone(),
            lock_on_clone: state.config.security.lock_on_clone,
        }
    }

    /// A certificate that a renewal already replaced was presented: two holders of one identity.
    /// Always flagged; with `security.lock_on_clone`, every certificate of the identity is
    /// revoked too, so neither copy works until an admin re-enrolls it.
    async fn on_clone_suspected(
        &self,
        uri: &str,
        serial: &str,
        remote: Option<SocketAddr>,
        client: Option<&str>,
    ) {
        tracing::warn!(principal = %uri, serial, ?remote, "superseded certificate presented: identity may be copied");
        let mut outcome = "flagged".to_owned();
        if self.lock_on_clone {
            match self
                .store
                .revoke_principal_certificates(uri, "locked: copied identity suspected", now_ms())
                .await
            {
                Ok(n) => {
                    self.revocations.publish(Revoked::Principal(uri.to_owned()));
                    outcome = format!("flagged and locked ({n} certificate(s) revoked)");
                }
                Err(e) => tracing::error!(error = %e, "could not lock a suspected copied identity"),
            }
        }
        let arguments = serde_json::json!({"serial": serial, "from": anonymous(remote)});
        self.audit
            .record(
                AuditRecord::allow(
                    uri,
                    "identity.clone_suspected",
                    vec![uri.to_owned()],
                    arguments,
                    &outcome,
                )
                .via(client.map(str::to_owned)),
            )
            .await;
    }

    /// Authorizes one call; denials are audited. `client` is the sanitized
    /// [`tailops_proto::CLIENT_HEADER`]: recorded, never consulted.
    pub async fn authorize(
        &self,
        path: &str,
        peer_certs: Option<&[CertificateDer<'static>]>,
        remote: Option<SocketAddr>,
        client: Option<String>,
    ) -> Result<Option<Principal>, Status> {
        let result = self.decide(path, peer_certs, remote, client.clone()).await;
        if let Err((who, status)) = &result {
            // Recorded within each caller's refusal budget, counted past it (M8): callers
            // without a certificate are told apart by source address.
            let who = who.clone().unwrap_or_else(|| anonymous(remote));
            let arguments = serde_json::json!({ "method": path, "code": format!("{:?}", status.code()) });
            let record = AuditRecord::deny(who.clone(), "call", arguments, status.message()).via(client);
            self.refusals.record(&who, path, record).await;
        }
        result.map_err(|(_, status)| status)
    }

    async fn decide(
        &self,
        path: &str,
        peer_certs: Option<&[CertificateDer<'static>]>,
        remote: Option<SocketAddr>,
        client: Option<String>,
    ) -> Result<Option<Principal>, (Option<String>, Status)> {
        let anon = |status| Err((None, status));
        let Some(access) = access_for(path) else {
            return anon(Status::permission_denied(format!("{path} is not an allowed method")));
        };
        if access == Access::Anyone {
            if path.starts_with("/tailops.v1.Enrollment/") {
                let address = remote.map(|a| a.ip().to_string()).unwrap_or_default();
                if let Err(retry) = self.limiter.check(&address, Bucket::Enroll) {
                    return anon(retry.into_status(Bucket::Enroll));
                }
            }
            return Ok(None);
        }
        let Some(leaf) = peer_certs.and_then(<[_]>::first) else {
            return anon(Status::unauthenticated(
                "this method needs a client certificate: use a tailopsctl profile or an enrolled agent",
            ));
        };
        // The TLS layer has verified the chain against our CA, and the validity period at the
        // handshake only: an HTTP/2 connection outlives it, so the period is checked per call.
        let info = match CertificateInfo::from_der(leaf) {
            Ok(info) => info,
            Err(e) => return anon(Status::unauthenticated(format!("unusable client certificate: {e}"))),
        };
        let id = info.principal;
        let uri = id.uri();
        let deny = |status| Err((Some(uri.clone()), status));
        if id.trust_domain != self.trust_domain {
            return deny(Status::permission_denied("certificate belongs to another trust domain"));
        }
        if let Err(status) = check_validity(info.not_before_ms, info.not_after_ms, now_ms()) {
            return deny(status);
        }
        let db = |e: crate::store::StoreError| {
            tracing::error!(error = %e, "authorization lookup failed; denying");
            Status::unavailable("authorization check failed; try again")
        };
        match self.store.certificate_standing(&info.serial, &uri).await {
            Ok(CertStanding::Usable) => {}
            Ok(CertStanding::Superseded) => {
                self.on_clone_suspected(&uri, &info.serial, remote, client.as_deref()).await;
                return deny(Status::unauthenticated(
                    "certificate was superseded by a renewal; it is no longer valid",
                ));
            }
            Ok(CertStanding::Revoked | CertStanding::Unknown) => {
                return deny(Status::unauthenticated("certificate is revoked or unknown to this controller"));
            }
            Err(e) => return deny(db(e)),
        }
        let mut principal = Principal {
            id,
            serial: info.serial,
            not_after_ms: info.not_after_ms,
            role: None,
            scope: None,
            client,
        };
        match (access, principal.id.kind) {
            (Access::Agent, PrincipalKind::Agent) => match self.store.host(&principal.id.name).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return deny(Status::permission_denied("this host is not enrolled (or was forgotten)"));
                }
                Err(e) => return deny(db(e)),
            },
            (Access::Principal(tier), PrincipalKind::User | PrincipalKind::Bridge) => {
                let record = match self.store.principal(principal.id.kind.as_str(), &principal.id.name).await
                {
                    Ok(Some(record)) => record,
                    Ok(None) => return deny(Status::permission_denied("this principal no longer exists")),
                    Err(e) => return deny(db(e)),
                };
                if record.disabled {
                    return deny(Status::permission_denied(format!(
                        "{} {} is disabled",
                        record.principal.kind, record.principal.name
                    )));
                }
                let Some(role) = Role::named(&record.principal.role) else {
                    return deny(Status::permission_denied(format!(
                        "unknown role {:?}",
                        record.principal.role
                    )));
                };
                // Changes nobody could find in the audit log afterwards are not made.
                if tier >= Tier::Control
                    && let Err(e) = self.audit.ensure_writable()
                {
                    return deny(e.into());
                }
                if role.tier(tier) != Grant::Yes {
                    return deny(Status::permission_denied(format!(
                        "role {} does not grant the {tier} tier that {path} needs",
                        role.name
                    )));
                }
                let bucket = match tier {
                    Tier::Observe => Bucket::Observe,
                    Tier::Control => Bucket::Control,
                    Tier::Admin => Bucket::Admin,
                };
                if let Err(retry) = self.limiter.check(&uri, bucket) {
                    return deny(retry.into_status(bucket));
                }
                principal.role = Some(role);
                principal.scope = record.principal.scope;
            }
            (Access::Agent, kind) => {
                return deny(Status::permission_denied(format!(
                    "only agents may use the agent link, not a {} certificate",
                    kind.as_str()
                )));
            }
            (Access::Principal(_), kind) => {
                return deny(Status::permission_denied(format!(
                    "{} certificates may not call {path}",
                    kind.as_str()
                )));
            }
            (Access::Anyone, _) => {}
        }
        Ok(Some(principal))
    }
}

/// Refuses a certificate outside its validity period at `now_ms`, saying what to do next.
pub fn check_validity(not_before_ms: i64, not_after_ms: i64, now_ms: i64) -> Result<(), Status> {
    if now_ms > not_after_ms {
        return Err(Status::unauthenticated(format!(
            "this certificate expired at {}: renew it before it expires (tailopsctl renews when due), \
             or log in again with a new invite; agents must be enrolled again",
            tailops_proto::time::format_ms(not_after_ms)
        )));
    }
    if now_ms < not_before_ms {
        return Err(Status::unauthenticated(format!(
            "this certificate is valid only from {}: check this machine's clock",
            tailops_proto::time::format_ms(not_before_ms)
        )));
    }
    Ok(())
}

/// The client a request names in [`tailops_proto::CLIENT_HEADER`], made safe to store and to
/// print on an approver's terminal: at most [`MAX_CLIENT_BYTES`] bytes (cut at a character
/// boundary), control characters replaced by '?'. Absent or blank: `None`.
pub fn client_of(headers: &http::HeaderMap) -> Option<String> {
    sanitize_client(headers.get(tailops_proto::CLIENT_HEADER)?.as_bytes())
}

fn sanitize_client(raw: &[u8]) -> Option<String> {
    // Header values may carry any byte from 0x80 up: not necessarily UTF-8.
    let raw = String::from_utf8_lossy(raw);
    let mut client: String =
        raw.trim().chars().map(|c| if tailops_proto::text::is_hidden(c) { '?' } else { c }).collect();
    if client.len() > MAX_CLIENT_BYTES {
        let mut end = MAX_CLIENT_BYTES;
        while !client.is_char_boundary(end) {
            end -= 1;
        }
        client.truncate(end);
    }
    (!client.is_empty()).then_some(client)
}

/// How a caller without a certificate is named in the audit log.
pub fn anonymous(remote: Option<SocketAddr>) -> String {
    match remote {
        Some(addr) => format!("anonymous@{}", addr.ip()),
        None => "anonymous".to_owned(),
    }
}

/// Tower layer that runs [`Authorizer`] before any service sees a request.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    authorizer: Arc<Authorizer>,
}

impl AuthLayer {
    pub fn new(authorizer: Authorizer) -> Self {
        Self { authorizer: Arc::new(authorizer) }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, authorizer: self.authorizer.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    authorizer: Arc<Authorizer>,
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was polled ready is the one that must serve this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authorizer = self.authorizer.clone();
        Box::pin(async move {
            let info = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>();
            let certs = info.and_then(TlsConnectInfo::peer_certs);
            let remote = info.and_then(|i| i.get_ref().remote_addr());
            let path = request.uri().path().to_owned();
            // Read before authorizing, so that denials are attributed to the client too.
            let client = client_of(request.headers());
            match authorizer.authorize(&path, certs.as_deref().map(Vec::as_slice), remote, client).await {
                Ok(principal) => {
                    if let Some(principal) = principal {
                        request.extensions_mut().insert(principal);
                    }
                    inner.call(request).await
                }
                Err(status) => {
                    tracing::info!(method = %path, code = ?status.code(), reason = status.message(), "call denied");
                    Ok(status.into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_names_are_sanitized() {
        assert_eq!(sanitize_client(b"claude-code/1.0.3").as_deref(), Some("claude-code/1.0.3"));
        assert_eq!(sanitize_client(b""), None);
        assert_eq!(sanitize_client(b"  \t "), None);
        // Tab and the 8-bit CSI (a terminal escape) are control characters.
        assert_eq!(sanitize_client("a\tb\u{9b}31mc".as_bytes()).as_deref(), Some("a?b?31mc"));
        assert_eq!(sanitize_client(b"bad\xffutf8").as_deref(), Some("bad\u{fffd}utf8"));
        let long = "x".repeat(MAX_CLIENT_BYTES + 10);
        assert_eq!(sanitize_client(long.as_bytes()).map(|c| c.len()), Some(MAX_CLIENT_BYTES));
        // A two-byte character straddling the limit is dropped whole.
        let straddling = format!("{}é", "x".repeat(MAX_CLIENT_BYTES - 1));
        assert_eq!(sanitize_client(straddling.as_bytes()), Some("x".repeat(MAX_CLIENT_BYTES - 1)));
    }
}
