//! Streamable HTTP: the SDK's transport behind Host and Origin allow-lists (a web page cannot
//! reach the bridge through DNS rebinding) and, when configured, a bearer token.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::bridge::Bridge;

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Who may reach the HTTP endpoint.
#[derive(Debug, Clone)]
pub struct HttpPolicy {
    /// Accepted `Host` header values (host, or host:port).
    pub allowed_hosts: Vec<String>,
    /// Accepted `Origin` values (`scheme://host[:port]`); requests without `Origin` (not from a
    /// browser) pass, any other origin is refused.
    pub allowed_origins: Vec<String>,
    /// When set, every request needs `Authorization: Bearer TOKEN`.
    pub token: Option<String>,
    /// How long an idle session lives. Longer than any call may wait, or a session would expire
    /// under a call that is still following its job (and cancel it).
    pub session_idle: Duration,
}

/// Serves MCP sessions on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, bridge: Bridge, policy: HttpPolicy, shutdown: CancellationToken) {
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(policy.allowed_hosts.clone())
        .with_allowed_origins(policy.allowed_origins.clone())
        .enforce_origin_validation()
        .with_cancellation_token(shutdown.child_token());
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(policy.session_idle);
    let service = StreamableHttpService::new(move || Ok(bridge.clone()), Arc::new(sessions), config);
    let token_hash = policy.token.as_deref().map(|t| Sha256::digest(t.as_bytes()));
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = service.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let handler = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let mut service = service.clone();
                async move {
                    if let Some(expected) = token_hash
                        && !bearer_matches(&request, &expected)
                    {
                        tracing::warn!(%peer, "HTTP request without the right bearer token refused");
                        return Ok::<_, Infallible>(unauthorized());
                    }
                    // The SDK's service is always ready (its poll_ready returns Ready).
                    tower::Service::call(&mut service, request).await
                }
            });
            // The timer enables hyper's header-read timeout: a client that never finishes its
            // request headers does not hold a connection forever.
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), handler);
            tokio::select! {
                result = connection => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                    }
                }
                () = shutdown.cancelled() => {}
            }
        });
    }
}

fn bearer_matches<B>(request: &hyper::Request<B>, expected: &[u8]) -> bool {
    request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token)
        // Comparing digests keeps the comparison's timing independent of the secret.
        .is_some_and(|given| Sha256::digest(given.trim().as_bytes())[..] == *expected)
}

fn unauthorized() -> http::Response<http_body_util::combinators::BoxBody<Bytes, Infallible>> {
    let body = Full::new(Bytes::from_static(
        b"Unauthorized: this bridge needs `Authorization: Bearer TOKEN` (the token given to tailops-mcp)\n",
    ))
    .boxed();
    let mut response = http::Response::new(body);
    *response.status_mut() = http::StatusCode::UNAUTHORIZED;
    response.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
    response
}
