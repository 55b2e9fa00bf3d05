//! Authentication and authorization for every RPC, in one tower layer in front of all services.
//!
//! The caller's identity comes only from its verified client certificate (the URI SAN). Every
//! method has an entry in [`POLICY`]; a method that is not listed is denied. Certificate, host and
//! user standing are read from the database on every call, so a change takes effect at once.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use rustls::pki_types::CertificateDer;
use tailops_pki::{CertificateInfo, PrincipalId, PrincipalKind};
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::store::Store;

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No client certificate needed: enrollment and health checks.
    Anyone,
    /// An enrolled, not-forgotten agent (its own link only).
    Agent,
    /// An enabled user with the `admin` role.
    Admin,
}

/// The policy table: every RPC method of every service the controller serves.
pub const POLICY: &[(&str, Access)] = &[
    ("/tailops.v1.Enrollment/Enroll", Access::Anyone),
    ("/grpc.health.v1.Health/Check", Access::Anyone),
    ("/grpc.health.v1.Health/Watch", Access::Anyone),
    ("/grpc.health.v1.Health/List", Access::Anyone),
    ("/tailops.v1.AgentLink/Connect", Access::Agent),
    ("/tailops.v1.Fleet/CreateJoinToken", Access::Admin),
    ("/tailops.v1.Fleet/ListHosts", Access::Admin),
    ("/tailops.v1.Fleet/RunJob", Access::Admin),
    ("/tailops.v1.Fleet/WatchJob", Access::Admin),
    ("/tailops.v1.Fleet/ListJobs", Access::Admin),
    ("/tailops.v1.Fleet/GetJob", Access::Admin),
    ("/tailops.v1.Fleet/CancelJob", Access::Admin),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Access::Admin,
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        Access::Admin,
    ),
];

pub fn access_for(path: &str) -> Option<Access> {
    POLICY
        .iter()
        .find(|(method, _)| *method == path)
        .map(|(_, access)| *access)
}

/// The authenticated caller, placed in the request extensions for the services.
#[derive(Debug, Clone)]
pub struct Principal {
    pub id: PrincipalId,
    pub serial: String,
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
}

/// Decides each call. Fails closed: any error reading the database denies.
#[derive(Debug, Clone)]
pub struct Authorizer {
    store: Store,
    trust_domain: String,
}

impl Authorizer {
    pub fn new(store: Store, trust_domain: String) -> Self {
        Self {
            store,
            trust_domain,
        }
    }

    pub async fn authorize(
        &self,
        path: &str,
        peer_certs: Option<&[CertificateDer<'static>]>,
    ) -> Result<Option<Principal>, Status> {
        let access = access_for(path)
            .ok_or_else(|| Status::permission_denied(format!("{path} is not an allowed method")))?;
        if access == Access::Anyone {
            return Ok(None);
        }
        let leaf = peer_certs.and_then(<[_]>::first).ok_or_else(|| {
            Status::unauthenticated(
                "this method needs a client certificate: use a tailopsctl profile or an enrolled agent",
            )
        })?;
        // The TLS layer has already verified the chain against our CA and the validity period.
        let info = CertificateInfo::from_der(leaf)
            .map_err(|e| Status::unauthenticated(format!("unusable client certificate: {e}")))?;
        let principal = info.principal;
        if principal.trust_domain != self.trust_domain {
            return Err(Status::permission_denied(
                "certificate belongs to another trust domain",
            ));
        }
        let uri = principal.uri();
        let db = |e: crate::store::StoreError| {
            tracing::error!(error = %e, "authorization lookup failed; denying");
            Status::unavailable("authorization check failed; try again")
        };
        if !self
            .store
            .certificate_usable(&info.serial, &uri)
            .await
            .map_err(db)?
        {
            return Err(Status::unauthenticated(
                "certificate is revoked or unknown to this controller",
            ));
        }
        match (access, principal.kind) {
            (Access::Agent, PrincipalKind::Agent) => {
                if self
                    .store
                    .host(&principal.name)
                    .await
                    .map_err(db)?
                    .is_none()
                {
                    return Err(Status::permission_denied(
                        "this host is not enrolled (or was forgotten)",
                    ));
                }
            }
            (Access::Admin, PrincipalKind::User) => {
                let user = self.store.user(&principal.name).await.map_err(db)?;
                match user {
                    Some(u) if !u.disabled && u.role == "admin" => {}
                    Some(u) if u.disabled => {
                        return Err(Status::permission_denied("this user is disabled"));
                    }
                    _ => {
                        return Err(Status::permission_denied(
                            "this method needs the admin role",
                        ));
                    }
                }
            }
            (Access::Agent, kind) => {
                return Err(Status::permission_denied(format!(
                    "only agents may use the agent link, not a {} certificate",
                    kind.as_str()
                )));
            }
            (Access::Admin, kind) => {
                return Err(Status::permission_denied(format!(
                    "{} certificates may not call admin methods",
                    kind.as_str()
                )));
            }
            (Access::Anyone, _) => {}
        }
        Ok(Some(Principal {
            id: principal,
            serial: info.serial,
        }))
    }
}

/// Tower layer that runs [`Authorizer`] before any service sees a request.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    authorizer: Arc<Authorizer>,
}

impl AuthLayer {
    pub fn new(authorizer: Authorizer) -> Self {
        Self {
            authorizer: Arc::new(authorizer),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            authorizer: self.authorizer.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    authorizer: Arc<Authorizer>,
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
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
            let certs = request
                .extensions()
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(TlsConnectInfo::peer_certs);
            let path = request.uri().path().to_owned();
            match authorizer
                .authorize(&path, certs.as_deref().map(Vec::as_slice))
                .await
            {
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
