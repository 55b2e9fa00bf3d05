//! The controller's internal certificate authority.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use time::OffsetDateTime;

use crate::identity::{PrincipalId, PrincipalKind};
use crate::{Fingerprint, PkiError, offset_to_unix_ms};

/// How far back a new certificate's validity starts, so hosts with a slightly slow clock accept it.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(5 * 60);
/// The same for the CA and server certificates, which every agent checks against its own clock: a host
/// up to an hour slow still connects right after `init` or a rotation. Client certificates are
/// only checked by the controller that issued them, by the clock that issued them, and keep the
/// short allowance (renewal at 70% of the lifetime counts from `notBefore`).
const SERVER_CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(3600);
/// Lifetime of the CA itself.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A certificate the CA has just signed.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub pem: String,
    /// Lower-case hex serial, as read back by [`crate::CertificateInfo`].
    pub serial: String,
    pub not_after_ms: i64,
}

/// The CA: its certificate and the issuer built from its key.
pub struct CertificateAuthority {
    trust_domain: String,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Creates a fresh CA for `trust_domain`.
    pub fn generate(trust_domain: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&format!("TailOps CA ({trust_domain})"));
        // Path length 0: the CA signs leaves only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - SERVER_CLOCK_SKEW_ALLOWANCE;
        params.not_after = now + CA_LIFETIME;
        let cert = params.self_signed(&key)?;
        Self::load(trust_domain, &cert.pem(), &key.serialize_pem())
    }

    /// Loads a CA from its certificate and private key in PEM.
    pub fn load(trust_domain: &str, cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            cert_pem: cert_pem.to_owned(),
            cert_der: first_cert_der(cert_pem)?,
            issuer,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key in PKCS#8 PEM; the caller stores it 0600 and never logs it.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_der(&self.cert_der)
    }

    /// Issues the controller's TLS server certificate for every advertised DNS name and IP.
    /// Returns the certificate chain (leaf then CA, so clients can pin the CA) and the new key.
    pub fn issue_server_certificate(
        &self,
        names: &[String],
        lifetime: Duration,
    ) -> Result<(IssuedCertificate, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = leaf_params("tailops-controller", lifetime);
        params.not_before = OffsetDateTime::now_utc() - SERVER_CLOCK_SKEW_ALLOWANCE;
        for name in names {
            params.subject_alt_names.push(match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.as_str().try_into()?),
            });
        }
        let id = PrincipalId::new(&self.trust_domain, PrincipalKind::Controller, "controller")?;
        params.subject_alt_names.push(SanType::URI(id.uri().try_into()?));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let mut issued = self.sign(&params, &key)?;
        issued.pem.push_str(&self.cert_pem);
        Ok((issued, key.serialize_pem()))
    }

    /// Signs a client certificate for `principal` over the public key in `csr_pem`.
    ///
    /// Only the key is taken from the request: names, usages and lifetime are the CA's choice,
    /// so a CSR cannot ask for more than it is given.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        principal: &PrincipalId,
        lifetime: Duration,
    ) -> Result<IssuedCertificate, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        let params = self.client_params(principal, lifetime)?;
        Ok(self.sign(&params, &csr.public_key)?)
    }

    /// Issues a client certificate together with a new key (the first admin at `init`).
    pub fn issue_client_with_new_key(
        &self,
        principal: &PrincipalId,
        lifetime: Duration,
    ) -> Result<(IssuedCertificate, String), PkiError> {
        let key = KeyPair::generate()?;
        let params = self.client_params(principal, lifetime)?;
        Ok((self.sign(&params, &key)?, key.serialize_pem()))
    }

    fn client_params(
        &self,
        principal: &PrincipalId,
        lifetime: Duration,
    ) -> Result<CertificateParams, PkiError> {
        let mut params = leaf_params(&principal.name, lifetime);
        params.subject_alt_names.push(SanType::URI(principal.uri().try_into()?));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        Ok(params)
    }

    fn sign(
        &self,
        params: &CertificateParams,
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<IssuedCertificate, rcgen::Error> {
        let cert = params.signed_by(public_key, &self.issuer)?;
        let serial = params.serial_number.as_ref().map(|s| hex::encode(s.to_bytes()));
        Ok(IssuedCertificate {
            pem: cert.pem(),
            serial: serial.unwrap_or_default(),
            not_after_ms: offset_to_unix_ms(params.not_after),
        })
    }
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "TailOps");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn leaf_params(common_name: &str, lifetime: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(common_name);
    // Explicit CA:FALSE, so a leaf can never be used to sign other certificates.
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW_ALLOWANCE;
    params.not_after = now + lifetime;
    params
}

/// A positive 128-bit random serial, so serials are unique without coordination.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // no leading zero byte, so hex round-trips through DER unchanged
    SerialNumber::from_slice(&bytes)
}

/// The DER of the first certificate in a PEM bundle.
pub fn first_cert_der(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| PkiError::BadCertificate("no CERTIFICATE block".into()))?
        .map_err(|e| PkiError::BadCertificate(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::CertificateInfo;

    #[test]
    fn issues_client_cert_from_csr_with_ca_chosen_identity() {
        let ca = CertificateAuthority::generate("test.local").expect("ca");
        let (_key, csr) = crate::csr::generate_key_and_csr("whatever-the-host-asks").expect("csr");
        let principal = PrincipalId::new("test.local", PrincipalKind::Agent, "host-1").expect("principal");
        let cert = ca.sign_csr(&csr, &principal, Duration::from_secs(3600)).expect("signed");
        let info = CertificateInfo::from_pem(&cert.pem).expect("parse");
        assert_eq!(info.principal, principal);
        assert_eq!(info.serial, cert.serial);
        assert!(info.not_after_ms > info.not_before_ms);
    }

    #[test]
    fn refuses_garbage_csr() {
        let ca = CertificateAuthority::generate("test.local").expect("ca");
        let principal = PrincipalId::new("test.local", PrincipalKind::Agent, "h").expect("id");
        let err = ca.sign_csr("not a csr", &principal, Duration::from_secs(60));
        assert!(matches!(err, Err(PkiError::BadCsr(_))));
    }

    #[test]
    fn server_certificate_is_valid_for_agents_with_an_hour_slow_clock() {
        let ca = CertificateAuthority::generate("test.local").expect("ca");
        let now_ms = i64::try_from(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis(),
        )
        .expect("ms");
        let (server, _key) = ca
            .issue_server_certificate(&["localhost".to_owned()], Duration::from_secs(86_400))
            .expect("server");
        let info = CertificateInfo::from_pem(&server.pem).expect("parse");
        assert!(
            info.not_before_ms <= now_ms - 3_599_000,
            "server notBefore {} vs now {now_ms}",
            info.not_before_ms
        );
        // Client certificates keep the short allowance: their renewal point counts from it.
        let principal = PrincipalId::new("test.local", PrincipalKind::Agent, "h").expect("id");
        let (client, _key) =
            ca.issue_client_with_new_key(&principal, Duration::from_secs(60)).expect("client");
        let info = CertificateInfo::from_pem(&client.pem).expect("parse");
        assert!((now_ms - info.not_before_ms) <= 301_000, "client notBefore {}", info.not_before_ms);
    }

    #[test]
    fn reloads_from_pem() {
        let ca = CertificateAuthority::generate("test.local").expect("ca");
        let again = CertificateAuthority::load("test.local", ca.cert_pem(), &ca.key_pem()).expect("reload");
        assert_eq!(ca.fingerprint(), again.fingerprint());
    }
}
