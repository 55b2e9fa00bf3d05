//! Identities and certificates shared by every TailOps component.
//!
//! - [`identity`]: SPIFFE-style principal ids carried in certificate URI SANs.
//! - [`ca`]: the controller's internal certificate authority.
//! - [`csr`]: key generation and signing requests on the machine that will own the key.
//! - [`pin`]: fetching the controller's CA over TLS and trusting it only if its fingerprint
//!   matches the one the operator was given.

pub mod ca;
pub mod csr;
pub mod identity;
pub mod pin;

pub use ca::{CertificateAuthority, IssuedCertificate};
pub use identity::{CertificateInfo, PrincipalId, PrincipalKind};
pub use pin::Fingerprint;

/// Errors from certificate handling. Messages say what to do next where there is something to do.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("not a valid PEM certificate: {0}")]
    BadCertificate(String),
    #[error("not a valid certificate signing request: {0}")]
    BadCsr(String),
    #[error("not a valid identity URI {uri:?}: {reason}")]
    BadIdentity { uri: String, reason: &'static str },
    #[error("not a valid CA fingerprint {0:?}: expected sha256: followed by 64 hex digits")]
    BadFingerprint(String),
    #[error(
        "the controller presented a CA with fingerprint {presented}, but {expected} was expected; \
         check the --ca-fingerprint value, or you may be talking to the wrong server"
    )]
    FingerprintMismatch { expected: Fingerprint, presented: Fingerprint },
    #[error("could not reach the controller at {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("TLS handshake with {addr} failed: {source}")]
    Handshake { addr: String, source: std::io::Error },
    #[error("the controller at {0} did not present its CA certificate in the TLS chain")]
    NoCaInChain(String),
    #[error("invalid controller URL {0:?}: expected https://HOST:PORT")]
    BadUrl(String),
    #[error("cannot connect to the controller at {url}: {detail}")]
    Channel { url: String, detail: String },
}

/// The full cause chain of an error on one line; transport errors hide the useful part deep down.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    // A certificate that is "not valid yet" or "expired" by this machine's clock is more often a
    // wrong clock than a wrong certificate; say what to check.
    if text.contains("certificate not valid yet") || text.contains("certificate expired") {
        text.push_str(
            " (if this machine's clock is wrong, fix its time sync first: compare `date -u` here and on the controller)",
        );
    }
    text
}

/// Installs ring as the process-wide rustls crypto provider.
///
/// Call at the top of every binary's `main` (and in test harnesses): with more than one
/// provider compiled in, rustls cannot pick one on its own. Calling it twice is harmless.
pub fn install_crypto_provider() {
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
}

/// Milliseconds since the Unix epoch for a certificate time.
pub(crate) fn offset_to_unix_ms(t: time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}
