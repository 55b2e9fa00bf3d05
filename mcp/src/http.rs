//! Streamable HTTP: the SDK's transport behind Host and Origin allow-lists (a web page cannot
//! reach the bridge through DNS rebinding) and, when configured, a bearer token.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future as _;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
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
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use crate::bridge::Bridge;

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
    /// Connection limits and timeouts.
    pub limits: HttpLimits,
}

/// What one client can hold of the bridge: every connection is a file descriptor and a task.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Open connections in total; beyond it new connections wait in the kernel's queue.
    pub max_connections: usize,
    /// Open connections from one source address; beyond it new ones are closed at once.
    pub max_connections_per_address: usize,
    /// A request head must arrive within this; it also ends idle keep-alive connections.
    pub header_timeout: Duration,
    /// A request body must arrive in full within this after its head.
    pub body_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            max_connections_per_address: 16,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
        }
    }
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
    let limits = policy.limits.clone();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_address: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    loop {
        // Waiting for a slot before accepting leaves excess connections in the kernel's queue.
        let permit = tokio::select! {
            () = shutdown.cancelled() => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return, // never closed
            },
        };
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
        let Some(place) = AddressPlace::take(&per_address, peer.ip(), limits.max_connections_per_address)
        else {
            // One address holding every slot would lock out every other client.
            tracing::warn!(%peer, "too many HTTP connections from one address; closed");
            continue;
        };
        let service = service.clone();
        let shutdown = shutdown.clone();
        let body_timeout = limits.body_timeout;
        let header_timeout = limits.header_timeout;
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
                    let request = request.map(|body| TimedBody::new(body, body_timeout));
                    // The SDK's service is always ready (its poll_ready returns Ready).
                    tower::Service::call(&mut service, request).await
                }
            });
            // The timer enables hyper's header-read timeout: a client that never finishes its
            // request headers, or sits idle between requests, does not hold a connection forever.
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), handler);
            tokio::select! {
                result = connection => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                    }
                }
                () = shutdown.cancelled() => {}
            }
            drop(place);
            drop(permit);
        });
    }
}

/// A connection's place in the per-address count; given back on drop.
struct AddressPlace {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl AddressPlace {
    fn take(counts: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr, max: usize) -> Option<Self> {
        let ip = ip.to_canonical();
        let mut map = counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = map.entry(ip).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Self { counts: counts.clone(), ip })
    }
}

impl Drop for AddressPlace {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = map.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("the request body did not arrive within {0:?}; send it in one go")]
    Timeout(Duration),
    #[error("reading the request body: {0}")]
    Read(#[from] hyper::Error),
}

/// A request body that fails once its deadline passes: hyper bounds only the head, and a body
/// trickled a byte at a time would hold the connection (and a session's request) for ever.
struct TimedBody {
    inner: hyper::body::Incoming,
    deadline: Pin<Box<Sleep>>,
    limit: Duration,
}

impl TimedBody {
    fn new(inner: hyper::body::Incoming, limit: Duration) -> Self {
        Self { inner, deadline: Box::pin(tokio::time::sleep(limit)), limit }
    }
}

impl hyper::body::Body for TimedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BodyError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(BodyError::from))),
            Poll::Pending => {
                if self.deadline.as_mut().poll(cx).is_ready() {
                    let limit = self.limit;
                    return Poll::Ready(Some(Err(BodyError::Timeout(limit))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
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
