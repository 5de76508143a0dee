//! How the certificate of a receiving server is judged, per connection:
//! - `Opportunistic` (RFC 7435): the PKIX result is recorded, not enforced.
//! - `Pkix`: the chain must lead to a trusted root and name the MX host (MTA-STS enforce,
//!   `require_tls`, REQUIRETLS).
//! - `Dane` (RFC 7672): the chain must match a usable TLSA record: DANE-EE (3) matches the
//!   leaf, with no name or expiry check; DANE-TA (2) matches a certificate of the chain, which
//!   then serves as the only trust anchor for a normal check of the leaf and the MX host name.
//!
//! Whatever the mode, the handshake signature is always verified with the leaf's key, so the
//! peer proves it holds the key of the certificate that was judged.

use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256, Sha512};

use crate::tls_rpt::ResultType;

/// A TLSA record (RFC 6698 2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

impl Tlsa {
    /// RFC 7672 3.1.3: only DANE-TA(2) and DANE-EE(3) are used for SMTP, with known selectors
    /// and matching types.
    pub fn usable(&self) -> bool {
        matches!(self.usage, 2 | 3) && matches!(self.selector, 0 | 1) && matches!(self.matching, 0..=2)
    }

    fn matches(&self, cert: &[u8]) -> bool {
        let selected: Vec<u8> = match self.selector {
            0 => cert.to_vec(),
            1 => match spki(cert) {
                Some(spki) => spki,
                None => return false,
            },
            _ => return false,
        };
        let digest: Vec<u8> = match self.matching {
            0 => selected,
            1 => Sha256::digest(&selected).to_vec(),
            2 => Sha512::digest(&selected).to_vec(),
            _ => return false,
        };
        digest == self.data
    }
}

/// The DER SubjectPublicKeyInfo of a certificate.
pub fn spki(cert: &[u8]) -> Option<Vec<u8>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(parsed.tbs_certificate.subject_pki.raw.to_vec())
}

#[derive(Debug, Clone)]
pub enum Mode {
    Opportunistic,
    Pkix,
    /// The host's usable TLSA records (never empty).
    Dane(Vec<Tlsa>),
}

/// What the certificate check found; `None` until the handshake got that far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertCheck {
    /// `None` when the certificate passed; else how TLS-RPT counts its failure.
    pub failure: Option<ResultType>,
    pub detail: String,
}

impl CertCheck {
    pub fn verified(&self) -> bool {
        self.failure.is_none()
    }
}

/// Why a chain failed DANE. The text follows `DANE: ` in logs, deferral reasons and TLS
/// reports.
#[derive(Debug, thiserror::Error)]
pub enum DaneFailure {
    #[error("no TLSA record matches the certificate chain")]
    NoMatch,
    #[error("the matching DANE-TA certificate is unusable as an anchor: {0}")]
    UnusableAnchor(Error),
    #[error("{0}")]
    Verifier(rustls::client::VerifierBuilderError),
    #[error("DANE-TA matched but the chain does not verify: {0}")]
    Chain(Error),
}

#[derive(Debug)]
pub struct PeerVerifier {
    mode: Mode,
    pkix: Arc<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
    check: Mutex<Option<CertCheck>>,
}

impl PeerVerifier {
    pub fn new(mode: Mode, pkix: Arc<WebPkiServerVerifier>, provider: Arc<CryptoProvider>) -> PeerVerifier {
        PeerVerifier {
            mode,
            pkix,
            provider,
            check: Mutex::new(None),
        }
    }

    pub fn check(&self) -> Option<CertCheck> {
        self.check.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record(&self, check: CertCheck) {
        *self.check.lock().unwrap_or_else(|p| p.into_inner()) = Some(check);
    }

    fn dane(
        &self,
        records: &[Tlsa],
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<&'static str, DaneFailure> {
        dane_match(
            records,
            end_entity,
            intermediates,
            server_name,
            now,
            &self.provider,
        )
    }
}

/// Whether a chain matches usable TLSA records (RFC 7672 3.1): a DANE-EE record matching the
/// end-entity certificate (names and dates not checked), or a DANE-TA record matching one of
/// the chain's certificates, which then must verify the chain for `server_name`. Also used by
/// `sealmail check` to judge the TLSA records an MX host publishes.
pub fn dane_match(
    records: &[Tlsa],
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    server_name: &ServerName<'_>,
    now: UnixTime,
    provider: &Arc<CryptoProvider>,
) -> Result<&'static str, DaneFailure> {
    if records
        .iter()
        .any(|r| r.usage == 3 && r.matches(end_entity.as_ref()))
    {
        return Ok("DANE-EE match");
    }
    // Of several matching anchors, the last one's failure is told.
    let mut last = DaneFailure::NoMatch;
    for anchor in intermediates.iter().chain(std::iter::once(end_entity)) {
        if !records.iter().any(|r| r.usage == 2 && r.matches(anchor.as_ref())) {
            continue;
        }
        let mut roots = RootCertStore::empty();
        if let Err(e) = roots.add(anchor.clone().into_owned()) {
            last = DaneFailure::UnusableAnchor(e);
            continue;
        }
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(DaneFailure::Verifier)?;
        match verifier.verify_server_cert(end_entity, intermediates, server_name, &[], now) {
            Ok(_) => return Ok("DANE-TA match"),
            Err(e) => last = DaneFailure::Chain(e),
        }
    }
    Err(last)
}

/// The RFC 8460 result type for a failed PKIX check.
fn result_type(error: &Error) -> ResultType {
    match error {
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => ResultType::CertificateHostMismatch,
        Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            ResultType::CertificateExpired
        }
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => ResultType::CertificateNotTrusted,
        _ => ResultType::ValidationFailure,
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match &self.mode {
            Mode::Dane(records) => match self.dane(records, end_entity, intermediates, server_name, now) {
                Ok(detail) => {
                    self.record(CertCheck {
                        failure: None,
                        detail: detail.into(),
                    });
                    Ok(ServerCertVerified::assertion())
                }
                Err(detail) => {
                    let detail = format!("DANE: {detail}");
                    self.record(CertCheck {
                        failure: Some(ResultType::ValidationFailure),
                        detail: detail.clone(),
                    });
                    Err(Error::General(detail))
                }
            },
            Mode::Pkix | Mode::Opportunistic => {
                match self
                    .pkix
                    .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                {
                    Ok(verified) => {
                        self.record(CertCheck {
                            failure: None,
                            detail: "PKIX".into(),
                        });
                        Ok(verified)
                    }
                    Err(e) => {
                        self.record(CertCheck {
                            failure: Some(result_type(&e)),
                            detail: e.to_string(),
                        });
                        match self.mode {
                            // RFC 7435: an unauthenticated encrypted session beats plaintext.
                            Mode::Opportunistic => Ok(ServerCertVerified::assertion()),
                            _ => Err(e),
                        }
                    }
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
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
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlsa_matching_by_selector_and_type() -> Result<(), Box<dyn std::error::Error>> {
        let key = rcgen::KeyPair::generate()?;
        let cert = rcgen::CertificateParams::new(vec!["mx.b.test".to_string()])?.self_signed(&key)?;
        let der = cert.der().to_vec();
        let spki = spki(&der).ok_or("no SPKI")?;
        let record = |selector, matching, data: Vec<u8>| Tlsa {
            usage: 3,
            selector,
            matching,
            data,
        };
        assert!(record(1, 1, Sha256::digest(&spki).to_vec()).matches(&der));
        assert!(record(0, 1, Sha256::digest(&der).to_vec()).matches(&der));
        assert!(record(1, 2, Sha512::digest(&spki).to_vec()).matches(&der));
        assert!(record(0, 0, der.clone()).matches(&der));
        assert!(!record(1, 1, Sha256::digest(&der).to_vec()).matches(&der));
        assert!(!record(1, 1, vec![0; 32]).matches(&der));
        assert!(
            !Tlsa {
                usage: 1,
                ..record(1, 1, vec![])
            }
            .usable()
        );
        assert!(record(1, 1, vec![]).usable());
        Ok(())
    }

    /// What a DANE check records: the text is the deferral reason and the TLS report detail.
    #[test]
    fn dane_checks_are_recorded_with_their_reason() -> Result<(), Box<dyn std::error::Error>> {
        let key = rcgen::KeyPair::generate()?;
        let cert = rcgen::CertificateParams::new(vec!["mx.b.test".to_string()])?.self_signed(&key)?;
        let der = CertificateDer::from(cert.der().to_vec());
        let spki = spki(&der).ok_or("no SPKI")?;
        let provider = Arc::new(sealmail_tls::restricted_provider());
        let mut roots = RootCertStore::empty();
        roots.add(der.clone())?;
        let pkix = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
        let name = ServerName::try_from("mx.b.test")?;
        let check = |data: Vec<u8>| {
            let tlsa = Tlsa {
                usage: 3,
                selector: 1,
                matching: 1,
                data,
            };
            let verifier = PeerVerifier::new(Mode::Dane(vec![tlsa]), pkix.clone(), provider.clone());
            let verified = verifier
                .verify_server_cert(&der, &[], &name, &[], UnixTime::now())
                .is_ok();
            (verified, verifier.check())
        };
        assert_eq!(
            check(Sha256::digest(&spki).to_vec()),
            (
                true,
                Some(CertCheck {
                    failure: None,
                    detail: "DANE-EE match".into()
                })
            )
        );
        assert_eq!(
            check(vec![0; 32]),
            (
                false,
                Some(CertCheck {
                    failure: Some(ResultType::ValidationFailure),
                    detail: "DANE: no TLSA record matches the certificate chain".into()
                })
            )
        );
        Ok(())
    }
}
