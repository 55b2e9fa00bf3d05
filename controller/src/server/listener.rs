//! The gRPC listener's front door. tonic accepts whatever its incoming stream yields, holds every
//! pending TLS handshake, and spins when `accept` fails for lack of file descriptors. So the
//! controller accepts connections itself and hands tonic only those within its limits:
//!
//! - a cap on open connections in total and per source address: beyond it a new connection is
//!   closed at once (the descriptor is back before the next accept);
//! - a cap on connections that have not yet made an authenticated call, in total (the oldest is
//!   closed to make room, so a flood cannot lock out a peer that completes its handshake in
//!   milliseconds) and per source address (new ones are closed);
//! - a deadline for the first authenticated call, after which the connection is closed;
//! - once authenticated, the connection is closed when the certificate it used expires.
//!
//! Accept errors (out of descriptors, say) back off instead of spinning.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{Either, Ready, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_stream::StreamExt as _;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming, TlsConnectInfo};

use crate::auth::Principal;
use crate::now_ms;

/// The limits [`ConnectionGuard`] enforces.
#[derive(Debug, Clone)]
pub(crate) struct GuardLimits {
    pub(crate) max_connections: usize,
    pub(crate) max_per_address: usize,
    pub(crate) max_unauthenticated: usize,
    pub(crate) max_unauthenticated_per_address: usize,
    pub(crate) unauthenticated_timeout: Duration,
}

/// Why a new connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Total,
    PerAddress,
    UnauthenticatedPerAddress,
}

/// Counts and registers connections; shared by the accept loop, every connection and the layer
/// that marks connections authenticated.
#[derive(Debug)]
pub(crate) struct ConnectionGuard {
    limits: GuardLimits,
    state: Mutex<GuardState>,
}

#[derive(Debug, Default)]
struct GuardState {
    next_id: u64,
    total: usize,
    unauthenticated_total: usize,
    per_address: HashMap<IpAddr, AddressCount>,
    /// Not yet authenticated, oldest first (ids grow with accept order).
    unauthenticated: BTreeMap<u64, Arc<Conn>>,
    /// Open connections by peer address: how a call finds the connection it came on.
    by_peer: HashMap<SocketAddr, Arc<Conn>>,
    /// When a refusal was last logged, so a flood logs once in a while, not per connection.
    last_refusal_log: Option<Instant>,
    refused_since_log: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct AddressCount {
    all: usize,
    unauthenticated: usize,
}

/// One open connection, as the guard and its stream share it.
#[derive(Debug)]
struct Conn {
    id: u64,
    peer: SocketAddr,
    authenticated: AtomicBool,
    /// Wall-clock expiry (ms) of the certificate the connection authenticated with; 0: none yet.
    cert_expiry_ms: AtomicI64,
    /// Cancelled to close the connection from outside (to make room for a newer one).
    evict: CancellationToken,
}

impl ConnectionGuard {
    pub(crate) fn new(limits: GuardLimits) -> Arc<Self> {
        Arc::new(Self { limits, state: Mutex::new(GuardState::default()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GuardState> {
        // The state stays consistent across a panic (every update is a few integer steps), so a
        // poisoned lock is still usable.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits a freshly accepted connection, or says why not.
    fn admit(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr) -> Result<GuardedStream, Refusal> {
        let ip = peer.ip().to_canonical();
        let conn = {
            let mut state = self.lock();
            let count = state.per_address.get(&ip).copied().unwrap_or_default();
            if state.total >= self.limits.max_connections {
                return Err(Refusal::Total);
            }
            if count.all >= self.limits.max_per_address {
                return Err(Refusal::PerAddress);
            }
            if count.unauthenticated >= self.limits.max_unauthenticated_per_address {
                return Err(Refusal::UnauthenticatedPerAddress);
            }
            if state.unauthenticated_total >= self.limits.max_unauthenticated {
                // The oldest has had the longest to finish its handshake and call; it goes.
                if let Some((_, oldest)) = state.unauthenticated.pop_first() {
                    state.forget_unauthenticated(&oldest);
                    oldest.evict.cancel();
                }
            }
            state.next_id += 1;
            let conn = Arc::new(Conn {
                id: state.next_id,
                peer,
                authenticated: AtomicBool::new(false),
                cert_expiry_ms: AtomicI64::new(0),
                evict: CancellationToken::new(),
            });
            state.total += 1;
            state.unauthenticated_total += 1;
            let count = state.per_address.entry(ip).or_default();
            count.all += 1;
            count.unauthenticated += 1;
            state.unauthenticated.insert(conn.id, conn.clone());
            state.by_peer.insert(peer, conn.clone());
            conn
        };
        let deadline = Instant::now() + self.limits.unauthenticated_timeout;
        Ok(GuardedStream {
            evicted: Box::pin(conn.evict.clone().cancelled_owned()),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            deadline_armed: true,
            deadline_is_expiry: false,
            closed: None,
            inner: stream,
            conn,
            guard: self.clone(),
        })
    }

    /// A call on the connection from `peer` passed the auth layer with a certificate:
    /// the connection leaves the unauthenticated limits and lives until the certificate, whose
    /// expiry `cert_expiry_ms` reads (once per connection), expires. Returns false, and closes
    /// the connection, when that certificate has already expired: TLS 1.3 session resumption
    /// restores the certificate of the original handshake without checking its validity again.
    fn authenticated(&self, peer: SocketAddr, cert_expiry_ms: impl FnOnce() -> Option<i64>) -> bool {
        let Some(conn) = self.lock().by_peer.get(&peer).cloned() else { return true };
        if conn.authenticated.load(Ordering::Acquire) {
            return true;
        }
        let Some(expiry_ms) = cert_expiry_ms() else { return true };
        if expiry_ms <= now_ms() {
            conn.cert_expiry_ms.store(expiry_ms, Ordering::Release);
            conn.evict.cancel();
            return false;
        }
        // The expiry first: the stream reads it once it sees the flag.
        conn.cert_expiry_ms.store(expiry_ms, Ordering::Release);
        if conn.authenticated.swap(true, Ordering::AcqRel) {
            return true;
        }
        let mut state = self.lock();
        if state.unauthenticated.remove(&conn.id).is_some() {
            state.forget_unauthenticated(&conn);
        }
        true
    }

    fn closed(&self, conn: &Conn) {
        let mut state = self.lock();
        if state.unauthenticated.remove(&conn.id).is_some() {
            state.forget_unauthenticated(conn);
        }
        state.total -= 1;
        let ip = conn.peer.ip().to_canonical();
        if let Some(count) = state.per_address.get_mut(&ip) {
            count.all -= 1;
            if count.all == 0 {
                state.per_address.remove(&ip);
            }
        }
        if state.by_peer.get(&conn.peer).is_some_and(|c| c.id == conn.id) {
            state.by_peer.remove(&conn.peer);
        }
    }

    fn note_refusal(&self, peer: SocketAddr, why: Refusal) {
        let mut state = self.lock();
        state.refused_since_log += 1;
        let now = Instant::now();
        if state.last_refusal_log.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(10)) {
            let refused = std::mem::take(&mut state.refused_since_log);
            state.last_refusal_log = Some(now);
            let (open, unauthenticated) = (state.total, state.unauthenticated_total);
            drop(state);
            tracing::warn!(
                %peer, reason = ?why, refused, open, unauthenticated,
                "refusing connections over the listener's limits ([network] in controller.toml)"
            );
        }
    }
}

impl GuardState {
    /// Takes a connection that just left `unauthenticated` out of the unauthenticated counts.
    fn forget_unauthenticated(&mut self, conn: &Conn) {
        self.unauthenticated_total -= 1;
        if let Some(count) = self.per_address.get_mut(&conn.peer.ip().to_canonical()) {
            count.unauthenticated -= 1;
        }
    }
}

/// Accepts on `incoming` for as long as the returned stream is consumed, admitting connections
/// through `guard`. Accept errors are retried after a pause: when descriptors run out, the
/// pending connection stays in the kernel's queue and an immediate retry would fail again.
pub(crate) fn guarded_incoming(
    mut incoming: TcpIncoming,
    guard: Arc<ConnectionGuard>,
    shutdown: CancellationToken,
) -> impl futures::Stream<Item = Result<GuardedStream, io::Error>> {
    // Small: while tonic is busy, connections wait in the kernel's queue, not here.
    let (tx, rx) = mpsc::channel::<Result<GuardedStream, io::Error>>(16);
    tokio::spawn(async move {
        let mut last_error_log: Option<Instant> = None;
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                () = tx.closed() => return,
                accepted = incoming.next() => accepted,
            };
            let stream = match accepted {
                None => return,
                Some(Ok(stream)) => stream,
                Some(Err(e)) => {
                    if last_error_log.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                        tracing::warn!(error = %e, "cannot accept connections; retrying");
                        last_error_log = Some(Instant::now());
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                    continue;
                }
            };
            let Ok(peer) = stream.peer_addr() else { continue };
            match guard.admit(stream, peer) {
                Ok(guarded) => {
                    if tx.send(Ok(guarded)).await.is_err() {
                        return;
                    }
                }
                // Dropping the stream closes it.
                Err(why) => guard.note_refusal(peer, why),
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A TCP connection within the guard's limits. It closes itself (reads and writes fail, so the
/// TLS or HTTP/2 layer above drops it) when evicted, when it has not authenticated in time, or
/// when the certificate it authenticated with expires; dropping it releases its place.
pub(crate) struct GuardedStream {
    inner: TcpStream,
    conn: Arc<Conn>,
    guard: Arc<ConnectionGuard>,
    evicted: Pin<Box<WaitForCancellationFutureOwned>>,
    deadline: Pin<Box<Sleep>>,
    deadline_armed: bool,
    /// Whether `deadline` is the certificate's expiry rather than the authentication deadline.
    deadline_is_expiry: bool,
    closed: Option<&'static str>,
}

impl std::fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedStream").field("peer", &self.conn.peer).field("closed", &self.closed).finish()
    }
}

impl GuardedStream {
    /// Whether the connection must close now; registers the wake-ups for when it must later.
    /// Polled from `poll_read` only: the connection's one task always has a read pending.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Option<&'static str> {
        if self.closed.is_some() {
            return self.closed;
        }
        if self.evicted.as_mut().poll(cx).is_ready() {
            let expiry_ms = self.conn.cert_expiry_ms.load(Ordering::Acquire);
            self.closed = Some(if expiry_ms != 0 && expiry_ms <= now_ms() {
                "the client certificate expired"
            } else {
                "closed to make room for newer connections"
            });
            return self.closed;
        }
        if !self.deadline_is_expiry && self.conn.authenticated.load(Ordering::Acquire) {
            // Authenticated before the first deadline: from now on the certificate's expiry counts.
            self.deadline_is_expiry = true;
            let left_ms = self.conn.cert_expiry_ms.load(Ordering::Acquire).saturating_sub(now_ms());
            let left = Duration::from_millis(u64::try_from(left_ms).unwrap_or(0));
            match Instant::now().checked_add(left) {
                Some(at) => self.deadline.as_mut().reset(at),
                None => self.deadline_armed = false,
            }
        }
        while self.deadline_armed && self.deadline.as_mut().poll(cx).is_ready() {
            if !self.conn.authenticated.load(Ordering::Acquire) {
                self.closed = Some("no authenticated call in time");
                return self.closed;
            }
            let expiry_ms = self.conn.cert_expiry_ms.load(Ordering::Acquire);
            let left_ms = expiry_ms.saturating_sub(now_ms());
            if left_ms <= 0 {
                self.closed = Some("the client certificate expired");
                return self.closed;
            }
            let left = Duration::from_millis(u64::try_from(left_ms).unwrap_or(u64::MAX));
            match Instant::now().checked_add(left) {
                Some(at) => self.deadline.as_mut().reset(at),
                None => self.deadline_armed = false,
            }
        }
        None
    }

    fn closed_error(reason: &'static str) -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionAborted, reason)
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(reason) = self.poll_close(cx) {
            tracing::debug!(peer = %self.conn.peer, reason, "closing connection");
            return Poll::Ready(Err(Self::closed_error(reason)));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(reason) = self.closed {
            return Poll::Ready(Err(Self::closed_error(reason)));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(reason) = self.closed {
            return Poll::Ready(Err(Self::closed_error(reason)));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for GuardedStream {
    // The plain TCP info, so that `remote_addr()` and `peer_certs()` keep working unchanged.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl Drop for GuardedStream {
    fn drop(&mut self) {
        self.guard.closed(&self.conn);
    }
}

/// Marks the connection of every call that passed the auth layer with a certificate as
/// authenticated. Sits inside the auth layer, so refused calls (a revoked certificate, say)
/// leave their connection under the unauthenticated limits.
#[derive(Debug, Clone)]
pub(crate) struct AuthenticatedConnectionLayer {
    guard: Arc<ConnectionGuard>,
}

impl AuthenticatedConnectionLayer {
    pub(crate) fn new(guard: Arc<ConnectionGuard>) -> Self {
        Self { guard }
    }
}

impl<S> tower::Layer<S> for AuthenticatedConnectionLayer {
    type Service = AuthenticatedConnection<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthenticatedConnection { inner, guard: self.guard.clone() }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct AuthenticatedConnection<S> {
    inner: S,
    guard: Arc<ConnectionGuard>,
}

impl<S, B> tower::Service<http::Request<B>> for AuthenticatedConnection<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.extensions().get::<Principal>().is_some()
            && let Some(info) = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>()
            && let Some(peer) = info.get_ref().remote_addr()
        {
            let valid = self.guard.authenticated(peer, || {
                let certs = info.peer_certs()?;
                let leaf = tailops_pki::CertificateInfo::from_der(certs.first()?).ok()?;
                Some(leaf.not_after_ms)
            });
            if !valid {
                tracing::info!(%peer, "call on a resumed TLS session with an expired certificate refused");
                let status = tonic::Status::unauthenticated(
                    "the client certificate has expired; renew it (tailopsctl login with a new invite)",
                );
                return Either::Right(ready(Ok(status.into_http())));
            }
        }
        Either::Left(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;
    use tokio::net::TcpListener;

    use super::*;

    /// Reads from a connection the guard closed on the client side: end of file or reset.
    async fn closed_by_server(client: &mut TcpStream) -> bool {
        let mut buf = [0u8; 8];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn the_oldest_unauthenticated_goes_first_and_places_are_given_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let guard = ConnectionGuard::new(GuardLimits {
            max_connections: 100,
            max_per_address: 3,
            max_unauthenticated: 2,
            max_unauthenticated_per_address: 3,
            unauthenticated_timeout: Duration::from_secs(60),
        });
        let shutdown = CancellationToken::new();
        let incoming = guarded_incoming(TcpIncoming::from(listener), guard.clone(), shutdown.clone());
        let mut incoming = std::pin::pin!(incoming);
        let mut accept = async || {
            let client = TcpStream::connect(addr).await.expect("connect");
            let server = incoming.next().await.expect("a connection").expect("accepted");
            (client, server)
        };

        let (_c1, mut s1) = accept().await;
        let (_c2, s2) = accept().await;
        // A third unauthenticated connection pushes the first, the oldest, out.
        let (_c3, s3) = accept().await;
        let mut buf = [0u8; 8];
        let evicted = s1.read(&mut buf).await.expect_err("the oldest was closed");
        assert_eq!(evicted.kind(), io::ErrorKind::ConnectionAborted);
        drop(s1);

        // Three per address: with two open, one more fits and the next is closed at once.
        let (_c4, s4) = accept().await;
        let mut refused = TcpStream::connect(addr).await.expect("connect");
        assert!(closed_by_server(&mut refused).await, "a fourth connection from one address was kept");

        drop((s2, s3, s4));
        {
            let state = guard.lock();
            assert_eq!((state.total, state.unauthenticated_total), (0, 0));
            assert!(
                state.per_address.is_empty() && state.by_peer.is_empty() && state.unauthenticated.is_empty()
            );
        }
        // Everything given back: the address is served again.
        let (_c5, _s5) = accept().await;
        shutdown.cancel();
    }
}
