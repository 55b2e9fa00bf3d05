//! `net.http` and `net.tls`: requests and TLS handshakes made from the host, under an address
//! policy every connection passes (SSRF guard).
//!
//! The policy: a name is resolved once and the connection goes to the checked address (no
//! second lookup a rebinding DNS server could answer differently). Link-local addresses
//! (169.254.0.0/16 with the cloud metadata service, fe80::/10), the metadata services outside it
//! (Alibaba Cloud's 100.100.100.200, AWS's fd00:ec2::254), unspecified, multicast and broadcast
//! addresses are refused; an IPv4 address inside IPv6 (`::ffff:a.b.c.d`, NAT64's
//! `64:ff9b::a.b.c.d`) is judged as the IPv4 address it reaches. `net.port`, `net.ping` and
//! `net.traceroute` resolve through [`resolve_checked`] and go to the checked address. Loopback and private ranges are allowed (homelab targets),
//! but a redirect from a public address to a loopback or private one is refused: that is how a
//! public URL is turned against the host's own network. Redirects are followed by hand, at most
//! [`MAX_REDIRECTS`], each hop checked like the first.
//!
//! HTTP is hyper's HTTP/1 client over a tokio `TcpStream` (and tokio-rustls for https, verified
//! against Mozilla's roots from `webpki-roots`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tailops_ops::{ParamKind, Validated};
use tailops_proto::v1;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::OpError;
use super::output::{Cell, Table};

/// Redirects followed before giving up.
pub const MAX_REDIRECTS: usize = 5;
/// Body bytes read to time the transfer; the rest is not downloaded.
const MAX_BODY: u64 = 8 * 1024 * 1024;
const USER_AGENT: &str = concat!("tailops-agent/", env!("CARGO_PKG_VERSION"));

/// Where an allowed address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    Public,
    /// Loopback, private (RFC 1918, CGNAT/Tailscale 100.64.0.0/10, IPv6 ULA).
    Internal,
}

/// Cloud metadata services outside the link-local range: Alibaba Cloud's (inside CGNAT space,
/// which is otherwise internal) and AWS's IPv6 one (inside the ULA range).
const METADATA_V4: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 200);
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// The IPv4 address a NAT64 address (well-known prefix `64:ff9b::/96`, RFC 6052) reaches.
fn nat64_target(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let octets = v6.octets();
    (octets[..12] == [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0])
        .then(|| Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15]))
}

/// Whether `ip` may be connected to, and where it is; `Err` says why not.
pub fn classify(ip: IpAddr) -> Result<Reach, &'static str> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped().or_else(|| nat64_target(v6)) {
                return classify_v4(v4);
            }
            let first = v6.segments()[0];
            if v6 == METADATA_V6 {
                Err("cloud metadata service")
            } else if v6.is_unspecified() {
                Err("unspecified")
            } else if v6.is_multicast() {
                Err("multicast")
            } else if first & 0xffc0 == 0xfe80 {
                Err("link-local")
            } else if v6.is_loopback() || first & 0xfe00 == 0xfc00 {
                Ok(Reach::Internal)
            } else {
                Ok(Reach::Public)
            }
        }
    }
}

fn classify_v4(v4: Ipv4Addr) -> Result<Reach, &'static str> {
    let [a, b, ..] = v4.octets();
    if v4.is_link_local() {
        Err("link-local (the cloud metadata service lives at 169.254.169.254)")
    } else if v4 == METADATA_V4 {
        Err("cloud metadata service")
    } else if a == 0 {
        Err("unspecified")
    } else if v4.is_multicast() {
        Err("multicast")
    } else if v4.is_broadcast() {
        Err("broadcast")
    } else if v4.is_loopback() || v4.is_private() || (a == 100 && (64..128).contains(&b)) {
        Ok(Reach::Internal)
    } else {
        Ok(Reach::Public)
    }
}

/// Checks every address `host` resolved to. `after_public`: the previous hop was public, so
/// internal addresses are refused too.
pub fn check_addresses(host: &str, addrs: &[SocketAddr], after_public: bool) -> Result<Reach, OpError> {
    if addrs.is_empty() {
        return Err(OpError::Failed(format!("{host} resolves to no address")));
    }
    let mut reach = Reach::Internal;
    for addr in addrs {
        match classify(addr.ip()) {
            Err(why) => {
                return Err(OpError::Refused(format!(
                    "{host} resolves to {}, a {why} address, which the address policy does not allow",
                    addr.ip()
                )));
            }
            Ok(Reach::Internal) if after_public => {
                return Err(OpError::Refused(format!(
                    "a redirect from a public address to {host} ({}, loopback or private) is refused (SSRF guard)",
                    addr.ip()
                )));
            }
            Ok(Reach::Public) => reach = Reach::Public,
            Ok(Reach::Internal) => {}
        }
    }
    Ok(reach)
}

/// Resolves `host` once and checks every address it has against the policy (loopback and
/// private ranges are fine for checks run from the host); returns the addresses, in the
/// resolver's order, for the caller to use instead of the name.
pub async fn resolve_checked(host: &str, port: u16, timeout: Duration) -> Result<Vec<SocketAddr>, OpError> {
    let addrs: Vec<SocketAddr> = tokio::time::timeout(timeout, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| {
            OpError::Failed(format!(
                "resolving {host} took longer than {}",
                humantime::format_duration(timeout)
            ))
        })?
        .map_err(|e| OpError::Failed(format!("cannot resolve {host}: {e}")))?
        .collect();
    check_addresses(host, &addrs, false)?;
    Ok(addrs)
}

/// A URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    pub https: bool,
    /// Without IPv6 brackets.
    pub host: String,
    pub port: u16,
    /// `host[:port]` as written, for the `Host` header.
    pub authority: String,
    /// Path and query.
    pub path: String,
}

impl Target {
    /// Checks `raw` like the catalog does (http or https, no credentials) and takes it apart.
    pub fn parse(raw: &str) -> Result<Self, OpError> {
        ParamKind::Url.parse(raw).map_err(|e| OpError::Refused(format!("{raw}: {e}")))?;
        let without_fragment = raw.split('#').next().unwrap_or(raw);
        let uri: http::Uri = without_fragment
            .parse()
            .map_err(|e| OpError::Failed(format!("{raw} is not a valid URL: {e}")))?;
        let https = uri.scheme_str() == Some("https");
        let authority = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
        let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let path = if path.is_empty() { "/".to_owned() } else { path };
        Ok(Self { url: without_fragment.to_owned(), https, host, port, authority, path })
    }

    /// Where a redirect's `Location` leads from here.
    pub fn join(&self, location: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else if let Some(rest) = location.strip_prefix("//") {
            format!("{scheme}://{rest}")
        } else if location.starts_with('/') {
            format!("{scheme}://{}{location}", self.authority)
        } else {
            let path = self.path.split('?').next().unwrap_or("/");
            let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
            format!("{scheme}://{}{}{location}", self.authority, if dir.is_empty() { "/" } else { dir })
        }
    }
}

/// One request of a chain.
#[derive(Debug, Clone, Default)]
struct Hop {
    url: String,
    address: Option<SocketAddr>,
    status: u16,
    dns_ms: f64,
    connect_ms: f64,
    tls_ms: Option<f64>,
    first_byte_ms: f64,
    total_ms: f64,
    location: Option<String>,
    server: Option<String>,
    content_length: Option<u64>,
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Verifies against Mozilla's roots.
fn verifying_config(alpn: bool) -> Result<Arc<rustls::ClientConfig>, OpError> {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| OpError::Failed(format!("TLS set-up: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    if alpn {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    Ok(Arc::new(config))
}

/// Accepts any certificate (signatures are still checked), to report on one that does not verify.
fn reporting_config() -> Result<Arc<rustls::ClientConfig>, OpError> {
    let provider = provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| OpError::Failed(format!("TLS set-up: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(tailops_pki::pin::AcceptAnyChain::new(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn server_name(host: &str) -> Result<ServerName<'static>, OpError> {
    ServerName::try_from(host.to_owned()).map_err(|e| OpError::Failed(format!("{host}: {e}")))
}

/// Resolves `host` once, checks every address, and connects to the first checked one that
/// answers. Returns the stream, the address, whether it is public, and the DNS and connect times.
async fn resolve_and_connect(
    host: &str,
    port: u16,
    after_public: bool,
) -> Result<(TcpStream, SocketAddr, Reach, Duration, Duration), OpError> {
    let started = Instant::now();
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| OpError::Failed(format!("cannot resolve {host}: {e}")))?
        .collect();
    let dns = started.elapsed();
    let reach = check_addresses(host, &addrs, after_public)?;
    let started = Instant::now();
    let mut last_error = None;
    for addr in &addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok((stream, *addr, reach, dns, started.elapsed())),
            Err(e) => last_error = Some(format!("{addr}: {e}")),
        }
    }
    Err(OpError::Failed(format!("cannot connect to {host}: {}", last_error.unwrap_or_default())))
}

/// Aborts a spawned task when dropped (the connection driver dies with the request).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends one request over `io`; returns the response head, how long after sending the request
/// it came, and how many body bytes were read.
async fn exchange<S>(
    io: S,
    method: &Method,
    target: &Target,
) -> Result<(http::response::Parts, Duration, u64), OpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let failed = |e: hyper::Error| OpError::Failed(format!("{}: {e}", target.url));
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io)).await.map_err(failed)?;
    let _driver = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let request = Request::builder()
        .method(method.clone())
        .uri(target.path.as_str())
        .header(http::header::HOST, target.authority.as_str())
        .header(http::header::USER_AGENT, USER_AGENT)
        .header(http::header::ACCEPT, "*/*")
        .body(Empty::<Bytes>::new())
        .map_err(|e| OpError::Failed(format!("{}: {e}", target.url)))?;
    let sent = Instant::now();
    let response = sender.send_request(request).await.map_err(failed)?;
    let first_byte = sent.elapsed();
    let (parts, mut body) = response.into_parts();
    let mut read = 0u64;
    let is_redirect = parts.status.is_redirection();
    while !is_redirect && read < MAX_BODY {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len() as u64),
            Some(Err(e)) => return Err(failed(e)),
            None => break,
        }
    }
    Ok((parts, first_byte, read))
}

async fn fetch(target: &Target, method: &Method, after_public: bool) -> Result<(Hop, Reach), OpError> {
    let started = Instant::now();
    let (tcp, addr, reach, dns, connect) =
        resolve_and_connect(&target.host, target.port, after_public).await?;
    let handshake = Instant::now();
    let (parts, first_byte, read, tls) = if target.https {
        let connector = tokio_rustls::TlsConnector::from(verifying_config(true)?);
        let stream = connector.connect(server_name(&target.host)?, tcp).await.map_err(|e| {
            OpError::Failed(format!("TLS handshake with {} ({addr}) failed: {e}", target.host))
        })?;
        let tls = handshake.elapsed();
        let (parts, first_byte, read) = exchange(stream, method, target).await?;
        (parts, first_byte, read, Some(tls))
    } else {
        let (parts, first_byte, read) = exchange(tcp, method, target).await?;
        (parts, first_byte, read, None)
    };
    let header = |name: http::header::HeaderName| {
        parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    };
    let content_length = header(http::header::CONTENT_LENGTH)
        .and_then(|v| v.parse().ok())
        .or((*method == Method::GET).then_some(read));
    let hop = Hop {
        url: target.url.clone(),
        address: Some(addr),
        status: parts.status.as_u16(),
        dns_ms: millis(dns),
        connect_ms: millis(connect),
        tls_ms: tls.map(millis),
        // From the request sent to the response's head (after connect and TLS).
        first_byte_ms: millis(first_byte),
        total_ms: millis(started.elapsed()),
        location: parts.status.is_redirection().then(|| header(http::header::LOCATION)).flatten(),
        server: header(http::header::SERVER),
        content_length,
    };
    Ok((hop, reach))
}

pub async fn http(op: &Validated, timeout: Duration) -> Result<v1::OperationOutput, OpError> {
    let url = op.text("url").unwrap_or_default();
    let method = if op.text("method") == Some("HEAD") { Method::HEAD } else { Method::GET };
    let timeout = op.duration("timeout").unwrap_or(Duration::from_secs(10)).min(timeout);
    let mut hops: Vec<Hop> = Vec::new();
    let chain = async {
        let mut target = Target::parse(url)?;
        let mut after_public = false;
        loop {
            let (hop, reach) = fetch(&target, &method, after_public).await.map_err(|e| match e {
                OpError::Refused(why) if !hops.is_empty() => {
                    OpError::Refused(format!("redirect to {}: {why}", target.url))
                }
                other => other,
            })?;
            after_public |= reach == Reach::Public;
            let next = hop.location.clone();
            hops.push(hop);
            let Some(location) = next else { return Ok(()) };
            if hops.len() > MAX_REDIRECTS {
                return Err(OpError::Failed(format!(
                    "more than {MAX_REDIRECTS} redirects; stopped at {}",
                    target.url
                )));
            }
            target = Target::parse(&target.join(&location)).map_err(|e| match e {
                OpError::Refused(why) => OpError::Refused(format!("redirect refused: {why}")),
                other => other,
            })?;
        }
    };
    match tokio::time::timeout(timeout, chain).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(OpError::Failed(format!(
                "{url}: no complete answer within {}",
                humantime::format_duration(timeout)
            )));
        }
    }
    let mut table = Table::new(&[
        "hop",
        "url",
        "address",
        "status",
        "dns_ms",
        "connect_ms",
        "tls_ms",
        "first_byte_ms",
        "total_ms",
        "location",
        "server",
        "content_length",
    ]);
    for (i, hop) in hops.iter().enumerate() {
        table.row([
            Cell::from(i as u64),
            Cell::from(hop.url.as_str()),
            Cell::from(hop.address.map(|a| a.to_string())),
            Cell::from(u32::from(hop.status)),
            Cell::from(hop.dns_ms),
            Cell::from(hop.connect_ms),
            Cell::from(hop.tls_ms),
            Cell::from(hop.first_byte_ms),
            Cell::from(hop.total_ms),
            Cell::from(hop.location.clone()),
            Cell::from(hop.server.clone()),
            Cell::from(hop.content_length),
        ]);
    }
    let last = hops.last().cloned().unwrap_or_default();
    let total: f64 = hops.iter().map(|h| h.total_ms).sum();
    let redirects = hops.len().saturating_sub(1);
    table.summary(format!(
        "{method} {url}: {} in {total:.1} ms{}",
        last.status,
        if redirects > 0 {
            format!(" after {redirects} redirect(s), final URL {}", last.url)
        } else {
            String::new()
        }
    ));
    Ok(table.finish())
}

/// What a handshake established.
struct Handshake {
    chain: Vec<CertificateDer<'static>>,
    protocol: Option<String>,
    cipher: Option<String>,
}

async fn handshake(
    config: Arc<rustls::ClientConfig>,
    host: &str,
    port: u16,
) -> Result<(Handshake, SocketAddr), OpError> {
    let (tcp, addr, ..) = resolve_and_connect(host, port, false).await?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(server_name(host)?, tcp)
        .await
        .map_err(|e| OpError::Failed(e.to_string()))?;
    let (_, conn) = stream.get_ref();
    let shake = Handshake {
        chain: conn.peer_certificates().unwrap_or_default().iter().map(|c| c.clone().into_owned()).collect(),
        protocol: conn.protocol_version().map(|v| format!("{v:?}")),
        cipher: conn.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())),
    };
    Ok((shake, addr))
}

fn rfc3339(unix: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

pub async fn tls(op: &Validated, timeout: Duration) -> Result<v1::OperationOutput, OpError> {
    let host = op.text("host").unwrap_or_default();
    let port = u16::try_from(op.int("port").unwrap_or(443)).unwrap_or(443);
    let timeout = op.duration("timeout").unwrap_or(Duration::from_secs(10)).min(timeout);
    let attempt = async {
        match handshake(verifying_config(false)?, host, port).await {
            Ok((shake, addr)) => Ok((shake, addr, None)),
            Err(OpError::Failed(why)) => {
                // Report on what the server presents even when it does not verify.
                let (shake, addr) = handshake(reporting_config()?, host, port).await.map_err(|e| {
                    OpError::Failed(format!(
                        "TLS handshake with {host}:{port} failed: {why}; without verification: {e}"
                    ))
                })?;
                Ok((shake, addr, Some(why)))
            }
            Err(other) => Err(other),
        }
    };
    let (shake, addr, verify_error) = tokio::time::timeout(timeout, attempt).await.map_err(|_| {
        OpError::Failed(format!(
            "{host}:{port}: no TLS handshake within {}",
            humantime::format_duration(timeout)
        ))
    })??;
    let leaf = shake
        .chain
        .first()
        .ok_or_else(|| OpError::Failed(format!("{host}:{port} presented no certificate")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| OpError::Failed(format!("{host}:{port}: unreadable certificate: {e}")))?;
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => sans.push((*dns).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => sans.push(IpAddr::from(<[u8; 4]>::try_from(*bytes).unwrap_or_default()).to_string()),
                    16 => {
                        sans.push(IpAddr::from(<[u8; 16]>::try_from(*bytes).unwrap_or_default()).to_string())
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    let validity = cert.validity();
    let (not_before, not_after) = (validity.not_before.timestamp(), validity.not_after.timestamp());
    let now =
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    let days_left = (not_after - now).div_euclid(86_400);
    let verified = verify_error.is_none();
    let mut table = Table::new(&[
        "host",
        "port",
        "address",
        "verified",
        "verify_error",
        "subject",
        "issuer",
        "sans",
        "not_before",
        "not_after",
        "days_left",
        "protocol",
        "cipher",
        "chain_length",
    ]);
    table.row([
        Cell::from(host),
        Cell::from(u32::from(port)),
        Cell::from(addr.to_string()),
        Cell::from(verified),
        Cell::from(verify_error.clone()),
        Cell::from(cert.subject().to_string()),
        Cell::from(cert.issuer().to_string()),
        Cell::from(sans.join(", ")),
        Cell::from(rfc3339(not_before)),
        Cell::from(rfc3339(not_after)),
        Cell::from(days_left),
        Cell::from(shake.protocol.clone()),
        Cell::from(shake.cipher.clone()),
        Cell::from(shake.chain.len() as u64),
    ]);
    table.summary(format!(
        "{host}:{port}: {} certificate for {}, {days_left} day(s) left{}",
        if verified { "verified" } else { "UNVERIFIED" },
        if sans.is_empty() { cert.subject().to_string() } else { sans.join(", ") },
        verify_error.map(|e| format!(" ({e})")).unwrap_or_default()
    ));
    Ok(table.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().expect("ip"), 80)
    }

    #[test]
    fn the_address_policy() {
        for bad in [
            "169.254.169.254",
            "169.254.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "fe80::1",
            "::",
            "ff02::1",
            "::ffff:169.254.169.254",
            // Metadata services outside link-local, and metadata reached through NAT64.
            "100.100.100.200",
            "::ffff:100.100.100.200",
            "fd00:ec2::254",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::100.100.100.200",
            "64:ff9b::",
            "64:ff9b::224.0.0.1",
        ] {
            assert!(classify(bad.parse().expect("ip")).is_err(), "{bad}");
        }
        assert_eq!(classify("fd00:ec2::254".parse().expect("ip")), Err("cloud metadata service"));
        assert_eq!(classify("100.100.100.200".parse().expect("ip")), Err("cloud metadata service"));
        // NAT64 reaches what its embedded address is; its neighbours are ordinary.
        assert_eq!(classify("64:ff9b::1.1.1.1".parse().expect("ip")), Ok(Reach::Public));
        assert_eq!(classify("64:ff9b::10.0.0.1".parse().expect("ip")), Ok(Reach::Internal));
        assert_eq!(classify("100.100.100.201".parse().expect("ip")), Ok(Reach::Internal));
        assert_eq!(classify("fd00:ec2::253".parse().expect("ip")), Ok(Reach::Internal));
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.100.1.1",
            "::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert_eq!(classify(internal.parse().expect("ip")), Ok(Reach::Internal), "{internal}");
        }
        for public in ["1.1.1.1", "93.184.216.34", "2606:4700::1111"] {
            assert_eq!(classify(public.parse().expect("ip")), Ok(Reach::Public), "{public}");
        }
        // From public to internal is the classic SSRF; internal to internal is a homelab.
        let e = check_addresses("evil.example", &[sock("127.0.0.1")], true).unwrap_err();
        assert!(matches!(e, OpError::Refused(ref m) if m.contains("from a public address")), "{e}");
        assert!(check_addresses("nas.lan", &[sock("192.168.1.5")], false).is_ok());
        let e = check_addresses("meta", &[sock("1.1.1.1"), sock("169.254.169.254")], false).unwrap_err();
        assert!(matches!(e, OpError::Refused(ref m) if m.contains("link-local")), "{e}");
    }

    #[tokio::test]
    async fn resolving_refuses_what_the_policy_refuses_and_names_the_address() {
        let addrs = resolve_checked("127.0.0.1", 22, Duration::from_secs(5)).await.expect("loopback");
        assert_eq!(addrs, vec![SocketAddr::new("127.0.0.1".parse().expect("ip"), 22)]);
        for bad in ["169.254.169.254", "100.100.100.200", "fd00:ec2::254", "64:ff9b::a9fe:a9fe", "0.0.0.0"] {
            let e = resolve_checked(bad, 80, Duration::from_secs(5)).await.expect_err(bad);
            assert!(
                matches!(e, OpError::Refused(ref m) if m.contains("address policy does not allow")),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn urls_and_redirect_locations() {
        let t = Target::parse("http://[::1]:8080/a/b?x=1#frag").expect("url");
        assert_eq!((t.host.as_str(), t.port, t.path.as_str(), t.https), ("::1", 8080, "/a/b?x=1", false));
        assert_eq!(t.authority, "[::1]:8080");
        assert_eq!(t.join("/c"), "http://[::1]:8080/c");
        assert_eq!(t.join("c?y"), "http://[::1]:8080/a/c?y");
        assert_eq!(t.join("//other/x"), "http://other/x");
        assert_eq!(t.join("https://x.example/"), "https://x.example/");
        let t = Target::parse("https://example.com").expect("url");
        assert_eq!((t.port, t.path.as_str()), (443, "/"));
        assert!(matches!(Target::parse("file:///etc/passwd"), Err(OpError::Refused(_))));
        assert!(matches!(Target::parse("http://u:p@example.com/"), Err(OpError::Refused(_))));
    }
}
