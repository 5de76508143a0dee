//! Channel binding data this server computes for SCRAM-PLUS: `tls-server-end-point` (RFC 5929
//! section 4.1), the hash of the certificate the server presented. `tls-exporter` (RFC 9266)
//! comes from the rustls session itself (`sealmail_types::proof::TlsActive`).

use sealmail_types::proof::ClientCertificate;
use sha2::Digest;
use x509_parser::prelude::{FromDer, X509Certificate};

/// RFC 5929 4.1: the certificate hashed with the hash of its own signature algorithm, except
/// that MD5 and SHA-1 are replaced by SHA-256 (and so is any algorithm without a single hash,
/// such as Ed25519, for which the RFC defines nothing; SHA-256 is what other servers use).
pub fn server_end_point(certificate_der: &[u8]) -> Vec<u8> {
    const SHA384: &[&str] = &["1.2.840.10045.4.3.3", "1.2.840.113549.1.1.12"];
    const SHA512: &[&str] = &["1.2.840.10045.4.3.4", "1.2.840.113549.1.1.13"];
    let algorithm = X509Certificate::from_der(certificate_der)
        .map(|(_, cert)| cert.signature_algorithm.algorithm.to_id_string())
        .unwrap_or_default();
    if SHA384.contains(&algorithm.as_str()) {
        sha2::Sha384::digest(certificate_der).to_vec()
    } else if SHA512.contains(&algorithm.as_str()) {
        sha2::Sha512::digest(certificate_der).to_vec()
    } else {
        sha2::Sha256::digest(certificate_der).to_vec()
    }
}

/// What a session needs of the certificate a client presented (and the verifier accepted):
/// its fingerprint, its e-mail addresses and its end of validity. `None` for DER that does not
/// parse, which the verifier would not have accepted.
pub fn client_certificate(certificate_der: &[u8]) -> Option<ClientCertificate> {
    let (_, cert) = X509Certificate::from_der(certificate_der).ok()?;
    let mut emails = Vec::new();
    if let Ok(Some(names)) = cert.subject_alternative_name() {
        for name in &names.value.general_names {
            if let x509_parser::extensions::GeneralName::RFC822Name(email) = name {
                emails.push(email.to_string());
            }
        }
    }
    Some(ClientCertificate {
        fingerprint: crate::client_ca::fingerprint(certificate_der),
        emails,
        not_after: cert.validity().not_after.timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_follows_the_signature_algorithm() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let files = crate::CertificateFiles {
            cert: dir.path().join("c.pem"),
            key: dir.path().join("c.key"),
        };
        crate::selfsigned::generate(&["mail.example.test".to_string()], &files, 30)?;
        let loaded = crate::load_certificate(&files)?;
        let leaf = loaded.key.cert.first().ok_or("no certificate")?;
        let (_, cert) = X509Certificate::from_der(leaf.as_ref())?;
        let algorithm = cert.signature_algorithm.algorithm.to_id_string();
        let expected = match algorithm.as_str() {
            "1.2.840.10045.4.3.3" => sha2::Sha384::digest(leaf.as_ref()).to_vec(),
            _ => sha2::Sha256::digest(leaf.as_ref()).to_vec(),
        };
        assert_eq!(server_end_point(leaf.as_ref()), expected);
        assert_eq!(
            server_end_point(b"not a certificate").len(),
            32,
            "SHA-256 when unknown"
        );
        Ok(())
    }
}
