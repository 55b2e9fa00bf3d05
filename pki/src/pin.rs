//! Trust on first use, done right: the operator hands the agent (or CLI) the CA fingerprint
//! printed by the controller; the CA presented over TLS is trusted only if it matches.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::PkiError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// SHA-256 over a certificate's DER, written `sha256:<64 hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of_der(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Fingerprint {
    type Err = PkiError;
    /// Accepts `sha256:HEX`, upper or lower case, with or without `:` between byte pairs.
    fn from_str(s: &str) -> Result<Self, PkiError> {
        let bad = || PkiError::BadFingerprint(s.to_owned());
        let hex_part = s.trim().strip_prefix("sha256:").ok_or_else(bad)?.replace(':', "");
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part.to_ascii_lowercase(), &mut bytes).map_err(|_| bad())?;
        Ok(Self(bytes))
    }
}

/// Splits `https://HOST:PORT[/]` into host and port (IPv6 hosts in brackets).
pub fn parse_https_url(url: &str) -> Result<(String, u16), PkiError> {
    let bad = || PkiError::BadUrl(url.to_owned());
    let rest = url.strip_prefix("https://").ok_or_else(bad)?.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse().map_err(|_| bad())?;
    if host.is_empty() || host.contains('/') {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// Connects to the controller at `url`, and returns the PEM of the CA certificate in its TLS
/// chain if and only if its fingerprint equals `expected`.
///
/// The handshake here accepts any chain, but nothing is sent over it and nothing it says is
/// trusted until the pin matches; every later connection verifies fully against the pinned CA.
pub async fn fetch_pinned_ca(url: &str, expected: &Fingerprint) -> Result<String, PkiError> {
    let (host, port) = parse_https_url(url)?;
    let addr = format!("{host}:{port}");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Handshake { addr: addr.clone(), source: std::io::Error::other(e) })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyChain::new(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let server_name = ServerName::try_from(host.clone()).map_err(|_| PkiError::BadUrl(url.into()))?;

    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&addr))
        .await
        .map_err(|_| PkiError::Connect { addr: addr.clone(), source: timeout_error() })?
        .map_err(|source| PkiError::Connect { addr: addr.clone(), source })?;
    let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(server_name, tcp))
        .await
        .map_err(|_| PkiError::Handshake { addr: addr.clone(), source: timeout_error() })?
        .map_err(|source| PkiError::Handshake { addr: addr.clone(), source })?;

    let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
    // The leaf is the server itself; only the certificates after it can be the CA.
    let candidates = chain.get(1..).unwrap_or_default();
    if let Some(ca) = candidates.iter().find(|c| Fingerprint::of_der(c) == *expected) {
        return Ok(der_to_pem(ca));
    }
    match candidates.last() {
        Some(presented) => Err(PkiError::FingerprintMismatch {
            expected: *expected,
            presented: Fingerprint::of_der(presented),
        }),
        None => Err(PkiError::NoCaInChain(addr)),
    }
}

/// A channel for enrollment and login: it trusts only the CA whose fingerprint was given (and
/// presents no client certificate). Returns the channel and the pinned CA in PEM.
pub async fn pinned_channel(
    url: &str,
    expected: &Fingerprint,
) -> Result<(tonic::transport::Channel, String), PkiError> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let ca_pem = fetch_pinned_ca(url, expected).await?;
    // From here on the controller is verified against the pinned CA like any other connection.
    let err = |e: tonic::transport::Error| PkiError::Channel {
        url: url.to_owned(),
        detail: crate::error_chain(&e),
    };
    let channel = Endpoint::from_shared(url.to_owned())
        .map_err(err)?
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem)))
        .map_err(err)?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .map_err(err)?;
    Ok((channel, ca_pem))
}

fn timeout_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out")
}

fn der_to_pem(der: &CertificateDer<'_>) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// Accepts whatever chain the server presents, so it can be judged afterwards (compared with a
/// pin, or reported by a TLS check). It still checks the handshake signatures, so the peer must
/// hold the key of the leaf it presents. Never use it where the chain is not judged afterwards.
#[derive(Debug)]
pub struct AcceptAnyChain {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl AcceptAnyChain {
    pub fn new(provider: Arc<rustls::crypto::CryptoProvider>) -> Self {
        Self { provider }
    }
}

impl ServerCertVerifier for AcceptAnyChain {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_round_trips_and_is_lenient_on_format() {
        let fp = Fingerprint::of_der(b"example");
        let text = fp.to_string();
        assert_eq!(text.parse::<Fingerprint>().expect("parse"), fp);
        let upper_colons = format!(
            "sha256:{}",
            hex::encode_upper(fp.0)
                .as_bytes()
                .chunks(2)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join(":")
        );
        assert_eq!(upper_colons.parse::<Fingerprint>().expect("parse"), fp);
        assert!("md5:abcd".parse::<Fingerprint>().is_err());
        assert!("sha256:abcd".parse::<Fingerprint>().is_err());
    }

    #[test]
    fn parses_urls() {
        assert_eq!(parse_https_url("https://h.ts.net:7443/").expect("ok"), ("h.ts.net".into(), 7443));
        assert_eq!(parse_https_url("https://[::1]:1").expect("ok"), ("::1".into(), 1));
        assert!(parse_https_url("http://h:1").is_err());
        assert!(parse_https_url("https://h").is_err());
    }
}
