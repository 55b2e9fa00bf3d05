//! Principal identities: `spiffe://<trust-domain>/<kind>/<name>` in a certificate's URI SAN.
//!
//! The identity of a caller comes only from its verified certificate, never from a request field.

use std::fmt;
use std::str::FromStr;

use x509_parser::extensions::GeneralName;

use crate::PkiError;

/// What kind of principal a certificate names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrincipalKind {
    /// A host's agent; may only use the agent link.
    Agent,
    /// A human operator (e.g. the admin created by `init`).
    User,
    /// Automation such as the MCP bridge.
    Bridge,
    /// The controller's own server certificate.
    Controller,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::User => "user",
            Self::Bridge => "bridge",
            Self::Controller => "controller",
        }
    }
}

impl FromStr for PrincipalKind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "agent" => Ok(Self::Agent),
            "user" => Ok(Self::User),
            "bridge" => Ok(Self::Bridge),
            "controller" => Ok(Self::Controller),
            _ => Err(()),
        }
    }
}

/// A principal identity such as `spiffe://tailops.local/agent/3f2a...`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PrincipalId {
    pub trust_domain: String,
    pub kind: PrincipalKind,
    pub name: String,
}

impl PrincipalId {
    pub fn new(trust_domain: &str, kind: PrincipalKind, name: &str) -> Result<Self, PkiError> {
        let id = Self { trust_domain: trust_domain.to_owned(), kind, name: name.to_owned() };
        // Round-trip through the parser so that every constructed id is also a valid one.
        id.to_string().parse()
    }

    pub fn uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for PrincipalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/{}/{}", self.trust_domain, self.kind.as_str(), self.name)
    }
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl FromStr for PrincipalId {
    type Err = PkiError;
    fn from_str(uri: &str) -> Result<Self, PkiError> {
        let bad = |reason| PkiError::BadIdentity { uri: uri.to_owned(), reason };
        let rest = uri.strip_prefix("spiffe://").ok_or_else(|| bad("must start with spiffe://"))?;
        let mut parts = rest.split('/');
        let (Some(td), Some(kind), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected spiffe://TRUST-DOMAIN/KIND/NAME"));
        };
        if !valid_segment(td) || !valid_segment(name) {
            return Err(bad("segments may use only letters, digits, '-', '_' and '.'"));
        }
        let kind = kind.parse().map_err(|()| bad("unknown principal kind"))?;
        Ok(Self { trust_domain: td.to_owned(), kind, name: name.to_owned() })
    }
}

/// What the controller needs to know about a presented certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    pub principal: PrincipalId,
    /// Lower-case hex of the serial number, as stored in the certificate table.
    pub serial: String,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
}

impl CertificateInfo {
    /// Reads the identity (the single `spiffe://` URI SAN), serial and validity of a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::BadCertificate(e.to_string()))?;
        let sans = cert
            .subject_alternative_name()
            .map_err(|e| PkiError::BadCertificate(e.to_string()))?
            .ok_or_else(|| PkiError::BadCertificate("no subject alternative names".into()))?;
        let mut uris = sans.value.general_names.iter().filter_map(|n| match n {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
        let uri = uris.next().ok_or_else(|| PkiError::BadCertificate("no spiffe:// identity URI".into()))?;
        if uris.next().is_some() {
            return Err(PkiError::BadCertificate("more than one identity URI".into()));
        }
        let validity = cert.validity();
        Ok(Self {
            principal: uri.parse()?,
            serial: hex::encode(cert.tbs_certificate.raw_serial()),
            not_before_ms: validity.not_before.timestamp().saturating_mul(1000),
            not_after_ms: validity.not_after.timestamp().saturating_mul(1000),
        })
    }

    /// Same as [`Self::from_der`] for the first certificate of a PEM bundle.
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        let der = crate::ca::first_cert_der(pem)?;
        Self::from_der(&der)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        let id: PrincipalId = "spiffe://home.arpa/agent/abc-123".parse().expect("valid");
        assert_eq!(id.kind, PrincipalKind::Agent);
        assert_eq!(id.name, "abc-123");
        assert_eq!(id.to_string(), "spiffe://home.arpa/agent/abc-123");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "https://x/agent/a",
            "spiffe://x/agent",
            "spiffe://x/agent/a/b",
            "spiffe://x/root/a",
            "spiffe://x/agent/a b",
            "spiffe:///agent/a",
        ] {
            assert!(bad.parse::<PrincipalId>().is_err(), "{bad} should be refused");
        }
    }
}
