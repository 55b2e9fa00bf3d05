//! Keys are generated on the machine that will use them; only a CSR leaves it.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

use crate::PkiError;

/// Generates a new private key and a CSR for it. Returns `(key_pem, csr_pem)`.
///
/// The CSR carries only the key and a descriptive common name: the CA decides the identity.
pub fn generate_key_and_csr(common_name: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}
