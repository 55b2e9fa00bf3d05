//! The `/metrics` endpoint: a small HTTP/1.1 server on its own listener, so that a scraper needs
//! neither a client certificate nor gRPC.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future as _;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::prometheus_text;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use super::{SnapshotSource, Telemetry, fleet};

/// The time limits of the endpoint; fixed in production, shortened by tests.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// A scrape answers 503 rather than wait longer than this for the fleet snapshot.
    pub(crate) scrape_timeout: Duration,
    /// A connection that has not sent a complete request head within this is closed. This also
    /// ends idle keep-alive connections between scrapes, so none linger.
    pub(crate) header_read_timeout: Duration,
    /// How long open connections get to finish their response after shutdown.
    pub(crate) shutdown_grace: Duration,
    /// A response write that makes no progress for this long (the client stopped reading)
    /// closes the connection, so clients that never read cannot hold the slots.
    pub(crate) write_stall_timeout: Duration,
    /// Connections from one source address; beyond it new ones are closed at once.
    pub(crate) max_per_address: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            scrape_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(2),
            write_stall_timeout: Duration::from_secs(10),
            max_per_address: 8,
        }
    }
}

/// Connections served at once. Scrapers use one or two; the cap only stops a flood of idle
/// connections from taking file descriptors the gRPC server needs.
const MAX_CONNECTIONS: usize = 64;

const INDEX: &str = "TailOps controller. Prometheus metrics are at /metrics.\n";

/// Serves `GET /metrics` on `listener` until `shutdown` is cancelled, then gives open connections
/// a short grace period to finish. Errors of single connections are logged, never fatal.
pub async fn serve(
    listener: TcpListener,
    telemetry: Telemetry,
    source: Arc<dyn SnapshotSource>,
    shutdown: CancellationToken,
) {
    serve_with(listener, telemetry, source, shutdown, Limits::default()).await;
}

struct Ctx {
    telemetry: Telemetry,
    source: Arc<dyn SnapshotSource>,
    limits: Limits,
}

pub(crate) async fn serve_with(
    listener: TcpListener,
    telemetry: Telemetry,
    source: Arc<dyn SnapshotSource>,
    shutdown: CancellationToken,
    limits: Limits,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listen = %addr, "Prometheus metrics at http://{addr}/metrics");
    }
    let ctx = Arc::new(Ctx { telemetry, source, limits });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_address: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let mut connections = JoinSet::new();
    loop {
        // Waiting for a free slot before accepting leaves excess connections in the kernel's
        // backlog instead of accepting and dropping them.
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // the semaphore is never closed
            },
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Some(place) = AddressPlace::take(&per_address, peer.ip(), limits.max_per_address) else {
                    // One address holding every slot would lock out the real scraper.
                    tracing::debug!(%peer, "too many metrics connections from one address; closed");
                    continue;
                };
                let ctx = ctx.clone();
                let shutdown = shutdown.clone();
                connections.spawn(async move {
                    connection(stream, ctx, shutdown).await;
                    drop(place);
                    drop(permit);
                });
            }
            Err(e) => {
                // Typically out of file descriptors: wait a moment instead of spinning on it.
                tracing::warn!(error = %e, "cannot accept a metrics connection");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
        // Reap finished connections so the set does not grow over the process's lifetime.
        while connections.try_join_next().is_some() {}
    }
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!("metrics connections still open at shutdown were closed");
    }
    // Dropping the set aborts whatever is left.
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

pin_project_lite::pin_project! {
    /// A stream whose writes fail once they have made no progress for `limit`: hyper has no
    /// write timeout, and a response larger than the socket buffers waits on the client.
    struct WriteStallLimit<S> {
        #[pin]
        inner: S,
        limit: Duration,
        stalled: Option<Pin<Box<Sleep>>>,
    }
}

impl<S> WriteStallLimit<S> {
    fn new(inner: S, limit: Duration) -> Self {
        Self { inner, limit, stalled: None }
    }

    /// Turns a pending write into an error once it has been pending for too long.
    fn check<T>(
        stalled: &mut Option<Pin<Box<Sleep>>>,
        limit: Duration,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            *stalled = None;
            return poll;
        }
        let timer = stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading the response",
            )));
        }
        Poll::Pending
    }
}

impl<S: AsyncRead> AsyncRead for WriteStallLimit<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<S: AsyncWrite> AsyncWrite for WriteStallLimit<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.project();
        let poll = this.inner.poll_write(cx, buf);
        Self::check(this.stalled, *this.limit, cx, poll)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let poll = this.inner.poll_flush(cx);
        Self::check(this.stalled, *this.limit, cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let poll = this.inner.poll_shutdown(cx);
        Self::check(this.stalled, *this.limit, cx, poll)
    }
}

async fn connection(stream: TcpStream, ctx: Arc<Ctx>, shutdown: CancellationToken) {
    // Responses are written in one go; no reason to wait for delayed ACKs.
    let _ = stream.set_nodelay(true);
    let stream = WriteStallLimit::new(stream, ctx.limits.write_stall_timeout);
    let header_read_timeout = ctx.limits.header_read_timeout;
    let service = service_fn(move |request| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(respond(&request, &ctx).await) }
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.cancelled() => {
            // Finish the response in flight, then close; `serve` bounds how long that may take.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // Clients hanging up and header timeouts end up here; neither is the controller's problem.
        tracing::debug!(error = %e, "metrics connection ended with an error");
    }
}

async fn respond(request: &Request<Incoming>, ctx: &Ctx) -> Response<String> {
    let path = request.uri().path();
    let get = request.method() == Method::GET;
    match path {
        "/metrics" if get => scrape(ctx).await,
        "/" if get => text(StatusCode::OK, INDEX.to_owned()),
        "/metrics" | "/" => {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported\n".to_owned());
            response.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET"));
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found; metrics are at /metrics\n".to_owned()),
    }
}

async fn scrape(ctx: &Ctx) -> Response<String> {
    let Ok(snapshot) = tokio::time::timeout(ctx.limits.scrape_timeout, ctx.source.snapshot()).await else {
        tracing::warn!(timeout = ?ctx.limits.scrape_timeout, "fleet snapshot timed out; answering the scrape with 503");
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the fleet snapshot took longer than {:?}; try again\n", ctx.limits.scrape_timeout),
        );
    };
    let mut body = String::new();
    let encoded = ctx.telemetry.encode(&mut body).and_then(|()| fleet::encode(&mut body, snapshot));
    if encoded.is_err() {
        // Writing to a String cannot fail; only an encoder bug would get here.
        tracing::error!("cannot encode metrics");
        return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n".to_owned());
    }
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(prometheus_text::CONTENT_TYPE));
    response
}

fn text(status: StatusCode, body: String) -> Response<String> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
