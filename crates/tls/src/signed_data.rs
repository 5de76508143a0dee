//! CMS SignedData (RFC 5652) made with a served certificate's key: what signs an Apple
//! configuration profile (`.mobileconfig`) so that the device shows who made it.
//!
//! The `cms` crate gives the ASN.1 types; its builder is not used because it signs only with
//! RustCrypto key types, and our keys live behind rustls' [`SigningKey`] (aws-lc-rs), which is
//! also what serves them in TLS. One signer, identified by issuer and serial number (version 1),
//! with the signed attributes content type, signing time and message digest (RFC 5652 5.3, 11),
//! the content attached, and the certificate chain included.

use std::time::{Duration, SystemTime};

use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use rustls::SignatureScheme;
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256, Sha384};
use x509_cert::Certificate;
use x509_cert::attr::Attribute;
use x509_cert::der::asn1::{ObjectIdentifier, OctetString, SetOfVec, UtcTime};
use x509_cert::der::{Any, Decode, Encode};
use x509_cert::spki::AlgorithmIdentifierOwned;

const ID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const ID_CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const ID_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
const ID_SIGNING_TIME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.5");
const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const ID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");

/// Why content could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the certificate's key signs with none of ECDSA P-256/P-384 or RSA PKCS#1 SHA-256")]
    UnsupportedKey,
    #[error("the served certificate has no certificate in its chain")]
    NoCertificate,
    #[error("cannot encode the signature: {0}")]
    Encoding(#[from] x509_cert::der::Error),
    #[error("the key refused to sign: {0}")]
    Signing(#[from] rustls::Error),
}

/// The schemes we sign with, with their digest and CMS signature algorithm; rustls' ECDSA
/// signatures are DER `Ecdsa-Sig-Value`s and its RSA ones PKCS#1 v1.5, as CMS wants them.
const SCHEMES: &[(SignatureScheme, Hash, ObjectIdentifier)] = &[
    (
        SignatureScheme::ECDSA_NISTP256_SHA256,
        Hash::Sha256,
        ECDSA_WITH_SHA256,
    ),
    (
        SignatureScheme::ECDSA_NISTP384_SHA384,
        Hash::Sha384,
        ECDSA_WITH_SHA384,
    ),
    (SignatureScheme::RSA_PKCS1_SHA256, Hash::Sha256, SHA256_WITH_RSA),
];

#[derive(Debug, Clone, Copy)]
enum Hash {
    Sha256,
    Sha384,
}

impl Hash {
    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha256 => Sha256::digest(data).to_vec(),
            Hash::Sha384 => Sha384::digest(data).to_vec(),
        }
    }

    fn algorithm(self) -> AlgorithmIdentifierOwned {
        AlgorithmIdentifierOwned {
            oid: match self {
                Hash::Sha256 => ID_SHA256,
                Hash::Sha384 => ID_SHA384,
            },
            parameters: None,
        }
    }
}

/// `content` as a DER `ContentInfo` holding a SignedData signed by `key` at `now`, with the
/// content attached and `key`'s chain included.
pub fn sign_attached(content: &[u8], key: &CertifiedKey, now: SystemTime) -> Result<Vec<u8>, SignError> {
    let offered: Vec<SignatureScheme> = SCHEMES.iter().map(|(scheme, _, _)| *scheme).collect();
    let signer = key.key.choose_scheme(&offered).ok_or(SignError::UnsupportedKey)?;
    let (_, hash, signature_oid) = SCHEMES
        .iter()
        .find(|(scheme, _, _)| *scheme == signer.scheme())
        .ok_or(SignError::UnsupportedKey)?;
    let chain = key
        .cert
        .iter()
        .map(|der| Certificate::from_der(der.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    let leaf = chain.first().ok_or(SignError::NoCertificate)?;

    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let signed_attrs: SetOfVec<Attribute> = SetOfVec::try_from(vec![
        attribute(ID_CONTENT_TYPE, Any::encode_from(&ID_DATA)?)?,
        attribute(
            ID_SIGNING_TIME,
            Any::encode_from(&UtcTime::from_unix_duration(since_epoch)?)?,
        )?,
        attribute(
            ID_MESSAGE_DIGEST,
            Any::encode_from(&OctetString::new(hash.digest(content))?)?,
        )?,
    ])?;
    // The signature covers the attributes' DER as a SET OF (RFC 5652 5.4), not as the
    // [0] IMPLICIT field they are carried in.
    let signature = signer.sign(&signed_attrs.to_der()?)?;

    let tbs = leaf.tbs_certificate();
    let signer_info = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: tbs.issuer().clone(),
            serial_number: tbs.serial_number().clone(),
        }),
        digest_alg: hash.algorithm(),
        signed_attrs: Some(signed_attrs),
        signature_algorithm: AlgorithmIdentifierOwned {
            oid: *signature_oid,
            // RSA algorithm identifiers carry NULL parameters (RFC 4055 5); ECDSA's none.
            parameters: (*signature_oid == SHA256_WITH_RSA).then(Any::null),
        },
        signature: OctetString::new(signature)?,
        unsigned_attrs: None,
    };
    let certificates = SetOfVec::try_from(
        chain
            .into_iter()
            .map(CertificateChoices::Certificate)
            .collect::<Vec<_>>(),
    )?;
    let signed_data = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::try_from(vec![hash.algorithm()])?,
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: ID_DATA,
            econtent: Some(Any::encode_from(&OctetString::new(content)?)?),
        },
        certificates: Some(CertificateSet(certificates)),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::try_from(vec![signer_info])?),
    };
    Ok(ContentInfo {
        content_type: ID_SIGNED_DATA,
        content: Any::encode_from(&signed_data)?,
    }
    .to_der()?)
}

fn attribute(oid: ObjectIdentifier, value: Any) -> Result<Attribute, SignError> {
    Ok(Attribute {
        oid,
        values: SetOfVec::try_from(vec![value])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

    fn certified(alg: &'static rcgen::SignatureAlgorithm) -> TestResult<(CertifiedKey, String)> {
        let key = if *alg == rcgen::PKCS_RSA_SHA256 {
            rcgen::KeyPair::generate_rsa_for(alg, rcgen::RsaKeySize::_2048)?
        } else {
            rcgen::KeyPair::generate_for(alg)?
        };
        let cert = rcgen::CertificateParams::new(vec!["mail.example.test".to_string()])?.self_signed(&key)?;
        let der = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der())?;
        let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)?;
        Ok((CertifiedKey::new(vec![cert.der().clone()], signing), cert.pem()))
    }

    /// Whether OpenSSL, an independent CMS implementation, accepts the signature against the
    /// certificate: the content it gives back when it does.
    fn openssl_verifies(signed: &[u8], ca_pem: &str) -> TestResult<Option<Vec<u8>>> {
        let dir = tempfile::tempdir()?;
        let (input, ca, out) = (
            dir.path().join("profile.der"),
            dir.path().join("ca.pem"),
            dir.path().join("content"),
        );
        std::fs::write(&input, signed)?;
        std::fs::write(&ca, ca_pem)?;
        let status = Command::new("openssl")
            .args([
                "cms", "-verify", "-binary", "-inform", "DER", "-purpose", "any", "-in",
            ])
            .arg(&input)
            .arg("-CAfile")
            .arg(&ca)
            .arg("-out")
            .arg(&out)
            .stderr(std::process::Stdio::null())
            .status()?;
        Ok(if status.success() {
            Some(std::fs::read(&out)?)
        } else {
            None
        })
    }

    #[test]
    fn openssl_verifies_what_each_key_type_signs() -> TestResult {
        let content = b"<?xml version=\"1.0\"?><plist version=\"1.0\"><dict/></plist>\n";
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_RSA_SHA256,
        ] {
            let (key, pem) = certified(alg)?;
            let signed = sign_attached(content, &key, SystemTime::now())?;
            assert_eq!(
                openssl_verifies(&signed, &pem)?.as_deref(),
                Some(&content[..]),
                "{alg:?}"
            );
            // Against another certificate it is not verified.
            let (_, other) = certified(alg)?;
            assert_eq!(openssl_verifies(&signed, &other)?, None, "{alg:?}");
        }
        Ok(())
    }

    #[test]
    fn changed_content_fails_verification() -> TestResult {
        let (key, pem) = certified(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let content = b"payload that will be changed";
        let mut signed = sign_attached(content, &key, SystemTime::now())?;
        let at = signed
            .windows(content.len())
            .position(|w| w == content)
            .ok_or("content not attached")?;
        signed[at] ^= 0x20;
        assert_eq!(openssl_verifies(&signed, &pem)?, None);
        Ok(())
    }

    #[test]
    fn an_ed25519_key_is_refused() -> TestResult {
        let (key, _) = certified(&rcgen::PKCS_ED25519)?;
        assert!(matches!(
            sign_attached(b"x", &key, SystemTime::now()),
            Err(SignError::UnsupportedKey)
        ));
        Ok(())
    }
}
