//! WebAuthn (W3C Web Authentication, Level 2): security keys and passkeys as a second factor
//! of the web login. What the relying party checks of a registration (section 7.1) and of an
//! authentication (section 7.2).
//!
//! Why not webauthn-rs: it verifies with OpenSSL, a second crypto library beside aws-lc-rs
//! that would also make OpenSSL's C headers a build requirement of `cargo run`. What we need
//! is narrow: attestation is not asked for (`"none"`: we do not vet authenticator makers), so
//! the browser hands over the credential's public key as a SubjectPublicKeyInfo
//! (`AuthenticatorAttestationResponse.getPublicKey()`) and the authenticator data
//! (`getAuthenticatorData()`): no CBOR is parsed, and signatures are checked by the aws-lc-rs
//! verifiers rustls uses for certificates. Keys: ES256 (P-256), EdDSA (Ed25519), RS256.
//!
//! Challenges are derived from the cookie of the session they belong to
//! ([`challenge`]): a half login's cookie is used once, so an assertion made for it cannot be
//! replayed; the signature counter, updated atomically by the store, catches a cloned
//! authenticator.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls::SignatureScheme;
use rustls::pki_types::SignatureVerificationAlgorithm;
use sha2::{Digest, Sha256};
use x509_cert::der::{Decode, Encode};
use x509_cert::spki::SubjectPublicKeyInfoRef;

/// The longest credential id accepted (WebAuthn: at most 1023 bytes).
pub const MAX_CREDENTIAL_ID: usize = 1023;
/// The longest public key accepted (DER SubjectPublicKeyInfo; RSA-8192 needs about 1.1 KiB).
pub const MAX_PUBLIC_KEY: usize = 2048;
/// The longest clientDataJSON read.
const MAX_CLIENT_DATA: usize = 4096;

/// The COSE algorithms offered at registration, most wanted first: ES256, EdDSA, RS256.
pub const COSE_ALGORITHMS: [i64; 3] = [-7, -8, -257];

const FLAG_USER_PRESENT: u8 = 0x01;
const FLAG_ATTESTED_DATA: u8 = 0x40;

/// Why a ceremony's response was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebauthnError {
    #[error("the response is not well formed: {0}")]
    Malformed(&'static str),
    #[error("the response was made for another ceremony")]
    WrongType,
    #[error("the response answers another challenge")]
    WrongChallenge,
    #[error("the response was made on another site")]
    WrongOrigin,
    #[error("the authenticator was used for another site")]
    WrongRelyingParty,
    #[error("the authenticator did not see the user")]
    UserNotPresent,
    #[error("the credential's key is of a kind not accepted (P-256, Ed25519 or RSA)")]
    UnsupportedKey,
    #[error("the signature does not verify")]
    BadSignature,
}

/// The challenge of a ceremony bound to the session cookie `cookie` (`label` names the
/// ceremony), as the base64url text clientDataJSON carries.
pub fn challenge(label: &str, cookie: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(b"sealmail webauthn\0");
    hash.update(label.as_bytes());
    hash.update(b"\0");
    hash.update(cookie.as_bytes());
    URL_SAFE_NO_PAD.encode(hash.finalize())
}

/// What the response must have been made for.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The relying party id: our host name.
    pub rp_id: &'a str,
    /// The challenge sent ([`challenge`]).
    pub challenge: &'a str,
    /// The ports an origin may name: the listener's the page came from (an origin without a
    /// port is 443, which a port forward may map to it). Another service on our host name
    /// and another port is another origin.
    pub ports: &'a [u16],
}

/// A registration's response, as the page's script sends it (decoded from base64url).
#[derive(Debug, Clone, Default)]
pub struct Registration {
    pub credential_id: Vec<u8>,
    pub client_data_json: Vec<u8>,
    pub authenticator_data: Vec<u8>,
    /// `getPublicKey()`: DER SubjectPublicKeyInfo.
    pub public_key: Vec<u8>,
}

/// A credential that passed the registration checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCredential {
    pub credential_id: Vec<u8>,
    pub public_key: Vec<u8>,
    pub sign_count: u32,
}

/// An authentication's response (decoded from base64url).
#[derive(Debug, Clone, Default)]
pub struct Assertion {
    pub credential_id: Vec<u8>,
    pub client_data_json: Vec<u8>,
    pub authenticator_data: Vec<u8>,
    pub signature: Vec<u8>,
}

#[derive(serde::Deserialize)]
struct ClientData {
    #[serde(rename = "type")]
    kind: String,
    challenge: String,
    origin: String,
    #[serde(rename = "crossOrigin", default)]
    cross_origin: bool,
}

/// Checks clientDataJSON (7.1 steps 5-10, 7.2 steps 10-14): the ceremony, the challenge, an
/// origin of our host name over https (any port: every https listener is ours), not framed.
fn check_client_data(json: &[u8], kind: &str, expected: &Expected) -> Result<(), WebauthnError> {
    if json.len() > MAX_CLIENT_DATA {
        return Err(WebauthnError::Malformed("clientDataJSON is too long"));
    }
    let data: ClientData =
        serde_json::from_slice(json).map_err(|_| WebauthnError::Malformed("clientDataJSON"))?;
    if data.kind != kind {
        return Err(WebauthnError::WrongType);
    }
    if data.challenge != expected.challenge {
        return Err(WebauthnError::WrongChallenge);
    }
    let origin = data
        .origin
        .strip_prefix("https://")
        .map(|rest| match rest.rsplit_once(':') {
            Some((host, port)) => (host, port.parse::<u16>().ok()),
            None => (rest, Some(443)),
        });
    let ours = origin.is_some_and(|(host, port)| {
        host.eq_ignore_ascii_case(expected.rp_id)
            && port.is_some_and(|port| port == 443 || expected.ports.contains(&port))
    });
    if data.cross_origin || !ours {
        return Err(WebauthnError::WrongOrigin);
    }
    Ok(())
}

/// The authenticator data's fixed part: flags and signature counter, after checking the
/// relying party id hash and user presence.
fn check_authenticator_data(data: &[u8], rp_id: &str) -> Result<(u8, u32), WebauthnError> {
    let Some((rp_id_hash, rest)) = data.split_first_chunk::<32>() else {
        return Err(WebauthnError::Malformed("authenticatorData is too short"));
    };
    let Some((&flags, rest)) = rest.split_first() else {
        return Err(WebauthnError::Malformed("authenticatorData is too short"));
    };
    let Some((counter, _)) = rest.split_first_chunk::<4>() else {
        return Err(WebauthnError::Malformed("authenticatorData is too short"));
    };
    if rp_id_hash[..] != Sha256::digest(rp_id.as_bytes())[..] {
        return Err(WebauthnError::WrongRelyingParty);
    }
    if flags & FLAG_USER_PRESENT == 0 {
        return Err(WebauthnError::UserNotPresent);
    }
    Ok((flags, u32::from_be_bytes(*counter)))
}

/// Checks a registration (7.1) and gives the credential to store.
pub fn verify_registration(
    response: &Registration,
    expected: &Expected,
) -> Result<NewCredential, WebauthnError> {
    check_client_data(&response.client_data_json, "webauthn.create", expected)?;
    let (flags, sign_count) = check_authenticator_data(&response.authenticator_data, expected.rp_id)?;
    if flags & FLAG_ATTESTED_DATA == 0 {
        return Err(WebauthnError::Malformed("no attested credential data"));
    }
    // Attested credential data (6.5.1): AAGUID (16), length (2), credential id; the id the
    // authenticator put there must be the one the script sent.
    let attested = response
        .authenticator_data
        .get(37 + 16..)
        .ok_or(WebauthnError::Malformed("attested credential data"))?;
    let (length, rest) = attested
        .split_first_chunk::<2>()
        .ok_or(WebauthnError::Malformed("attested credential data"))?;
    let length = usize::from(u16::from_be_bytes(*length));
    if length == 0 || length > MAX_CREDENTIAL_ID {
        return Err(WebauthnError::Malformed("credential id length"));
    }
    let credential_id = rest
        .get(..length)
        .ok_or(WebauthnError::Malformed("attested credential data"))?;
    if credential_id != response.credential_id.as_slice() {
        return Err(WebauthnError::Malformed(
            "the credential id is not the authenticator's",
        ));
    }
    if response.public_key.len() > MAX_PUBLIC_KEY {
        return Err(WebauthnError::UnsupportedKey);
    }
    verifier_for(&response.public_key)?;
    Ok(NewCredential {
        credential_id: credential_id.to_vec(),
        public_key: response.public_key.clone(),
        sign_count,
    })
}

/// Checks an authentication (7.2) made with the stored `public_key`; gives the signature
/// counter to record (the store refuses it unless it grew, or both are 0).
pub fn verify_assertion(
    response: &Assertion,
    public_key: &[u8],
    expected: &Expected,
) -> Result<u32, WebauthnError> {
    check_client_data(&response.client_data_json, "webauthn.get", expected)?;
    let (_, sign_count) = check_authenticator_data(&response.authenticator_data, expected.rp_id)?;
    let (algorithm, key) = verifier_for(public_key)?;
    let mut signed = response.authenticator_data.clone();
    signed.extend_from_slice(&Sha256::digest(&response.client_data_json));
    algorithm
        .verify_signature(key, &signed, &response.signature)
        .map_err(|_| WebauthnError::BadSignature)?;
    Ok(sign_count)
}

/// The verifier for a SubjectPublicKeyInfo, and the key bits it takes: the one of ES256,
/// EdDSA and RS256 (the algorithms offered at registration) whose key algorithm identifier
/// (curve included) is the key's.
fn verifier_for(spki: &[u8]) -> Result<(&'static dyn SignatureVerificationAlgorithm, &[u8]), WebauthnError> {
    let info = SubjectPublicKeyInfoRef::from_der(spki).map_err(|_| WebauthnError::UnsupportedKey)?;
    let algorithm = info
        .algorithm
        .to_der()
        .map_err(|_| WebauthnError::UnsupportedKey)?;
    // rustls gives the identifier's contents, without the SEQUENCE header.
    let contents = x509_cert::der::asn1::AnyRef::from_der(&algorithm)
        .map_err(|_| WebauthnError::UnsupportedKey)?
        .value()
        .to_vec();
    let key = info
        .subject_public_key
        .as_bytes()
        .ok_or(WebauthnError::UnsupportedKey)?;
    use rustls::pki_types::alg_id;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    // ES256 is P-256 only (rustls' ECDSA-SHA-256 list also takes P-384 keys).
    for (scheme, key_algorithm) in [
        (SignatureScheme::ECDSA_NISTP256_SHA256, alg_id::ECDSA_P256),
        (SignatureScheme::ED25519, alg_id::ED25519),
        (SignatureScheme::RSA_PKCS1_SHA256, alg_id::RSA_ENCRYPTION),
    ] {
        if key_algorithm.as_ref() != contents.as_slice() {
            continue;
        }
        let found = provider
            .signature_verification_algorithms
            .mapping
            .iter()
            .filter(|(s, _)| *s == scheme)
            .flat_map(|(_, algorithms)| algorithms.iter())
            .find(|candidate| candidate.public_key_alg_id() == key_algorithm);
        if let Some(candidate) = found {
            return Ok((*candidate, key));
        }
    }
    Err(WebauthnError::UnsupportedKey)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::sign::SigningKey;

    type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

    const RP: &str = "mail.example.test";

    /// A software authenticator: a key of `alg`, and its SubjectPublicKeyInfo.
    struct Authenticator {
        key: std::sync::Arc<dyn SigningKey>,
        spki: Vec<u8>,
        credential_id: Vec<u8>,
    }

    impl Authenticator {
        fn new(alg: &'static rcgen::SignatureAlgorithm) -> TestResult<Authenticator> {
            let pair = if *alg == rcgen::PKCS_RSA_SHA256 {
                rcgen::KeyPair::generate_rsa_for(alg, rcgen::RsaKeySize::_2048)?
            } else {
                rcgen::KeyPair::generate_for(alg)?
            };
            let der = rustls::pki_types::PrivateKeyDer::try_from(pair.serialize_der())?;
            Ok(Authenticator {
                key: rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)?,
                spki: rcgen::PublicKeyData::subject_public_key_info(&pair),
                credential_id: b"credential-1".to_vec(),
            })
        }

        fn authenticator_data(&self, rp: &str, flags: u8, counter: u32, attested: bool) -> Vec<u8> {
            let mut data = Sha256::digest(rp.as_bytes()).to_vec();
            data.push(flags);
            data.extend_from_slice(&counter.to_be_bytes());
            if attested {
                data.extend_from_slice(&[0u8; 16]);
                data.extend_from_slice(&(self.credential_id.len() as u16).to_be_bytes());
                data.extend_from_slice(&self.credential_id);
                data.extend_from_slice(b"\xa0"); // a COSE key would follow; not read
            }
            data
        }

        fn register(&self, client_data: &str) -> Registration {
            Registration {
                credential_id: self.credential_id.clone(),
                client_data_json: client_data.as_bytes().to_vec(),
                authenticator_data: self.authenticator_data(RP, 0x41, 0, true),
                public_key: self.spki.clone(),
            }
        }

        fn assert(&self, client_data: &str, authenticator_data: Vec<u8>) -> TestResult<Assertion> {
            let mut signed = authenticator_data.clone();
            signed.extend_from_slice(&Sha256::digest(client_data.as_bytes()));
            let signer = self
                .key
                .choose_scheme(&[
                    SignatureScheme::ECDSA_NISTP256_SHA256,
                    SignatureScheme::ED25519,
                    SignatureScheme::RSA_PKCS1_SHA256,
                ])
                .ok_or("no scheme")?;
            Ok(Assertion {
                credential_id: self.credential_id.clone(),
                client_data_json: client_data.as_bytes().to_vec(),
                authenticator_data,
                signature: signer.sign(&signed)?,
            })
        }
    }

    fn client_data(kind: &str, challenge: &str, origin: &str) -> String {
        format!(r#"{{"type":"{kind}","challenge":"{challenge}","origin":"{origin}","crossOrigin":false}}"#)
    }

    #[test]
    fn each_key_kind_registers_and_signs_in() -> TestResult {
        let challenge = challenge("register", "cookie");
        let expected = Expected {
            rp_id: RP,
            challenge: &challenge,
            ports: &[8443],
        };
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ED25519,
            &rcgen::PKCS_RSA_SHA256,
        ] {
            let authenticator = Authenticator::new(alg)?;
            let registered = verify_registration(
                &authenticator.register(&client_data(
                    "webauthn.create",
                    &challenge,
                    "https://mail.example.test:8443",
                )),
                &expected,
            )?;
            assert_eq!(registered.credential_id, b"credential-1");
            let assertion = authenticator.assert(
                &client_data("webauthn.get", &challenge, "https://mail.example.test"),
                authenticator.authenticator_data(RP, 0x05, 7, false),
            )?;
            assert_eq!(
                verify_assertion(&assertion, &registered.public_key, &expected),
                Ok(7),
                "{alg:?}"
            );
            // Another key's signature does not verify.
            let other = Authenticator::new(alg)?;
            assert_eq!(
                verify_assertion(&assertion, &other.spki, &expected),
                Err(WebauthnError::BadSignature)
            );
        }
        Ok(())
    }

    #[test]
    fn responses_for_another_challenge_site_or_ceremony_are_refused() -> TestResult {
        let challenge = challenge("login", "cookie");
        let expected = Expected {
            rp_id: RP,
            challenge: &challenge,
            ports: &[8443],
        };
        let authenticator = Authenticator::new(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let data = || authenticator.authenticator_data(RP, 0x01, 1, false);
        let check = |client: String, data: Vec<u8>| -> TestResult<Result<u32, WebauthnError>> {
            Ok(verify_assertion(
                &authenticator.assert(&client, data)?,
                &authenticator.spki,
                &expected,
            ))
        };
        assert_eq!(
            check(
                client_data("webauthn.get", &challenge, "https://mail.example.test"),
                data()
            )?,
            Ok(1)
        );
        let other_challenge = super::challenge("login", "another cookie");
        for (client, error) in [
            (
                client_data("webauthn.get", &other_challenge, "https://mail.example.test"),
                WebauthnError::WrongChallenge,
            ),
            (
                client_data(
                    "webauthn.get",
                    &super::challenge("register", "cookie"),
                    "https://mail.example.test",
                ),
                WebauthnError::WrongChallenge,
            ),
            (
                client_data("webauthn.create", &challenge, "https://mail.example.test"),
                WebauthnError::WrongType,
            ),
            (
                client_data("webauthn.get", &challenge, "https://evil.example"),
                WebauthnError::WrongOrigin,
            ),
            (
                client_data("webauthn.get", &challenge, "http://mail.example.test"),
                WebauthnError::WrongOrigin,
            ),
            (
                client_data("webauthn.get", &challenge, "https://mail.example.test:9443"),
                WebauthnError::WrongOrigin,
            ),
            (
                client_data("webauthn.get", &challenge, "https://mail.example.test:"),
                WebauthnError::WrongOrigin,
            ),
            (
                client_data(
                    "webauthn.get",
                    &challenge,
                    "https://mail.example.test.evil.example",
                ),
                WebauthnError::WrongOrigin,
            ),
            (
                format!(
                    r#"{{"type":"webauthn.get","challenge":"{challenge}","origin":"https://mail.example.test","crossOrigin":true}}"#
                ),
                WebauthnError::WrongOrigin,
            ),
            ("not json".to_string(), WebauthnError::Malformed("clientDataJSON")),
        ] {
            assert_eq!(check(client, data())?, Err(error));
        }
        let good = || client_data("webauthn.get", &challenge, "https://mail.example.test");
        // Made for another relying party, without the user's touch, or cut short.
        assert_eq!(
            check(
                good(),
                authenticator.authenticator_data("evil.example", 0x01, 1, false)
            )?,
            Err(WebauthnError::WrongRelyingParty)
        );
        assert_eq!(
            check(good(), authenticator.authenticator_data(RP, 0x04, 1, false))?,
            Err(WebauthnError::UserNotPresent)
        );
        assert!(matches!(
            check(good(), data()[..36].to_vec())?,
            Err(WebauthnError::Malformed(_))
        ));
        // A signature over other data.
        let mut assertion = authenticator.assert(&good(), data())?;
        assertion.authenticator_data[36] ^= 1;
        assert_eq!(
            verify_assertion(&assertion, &authenticator.spki, &expected),
            Err(WebauthnError::BadSignature)
        );
        Ok(())
    }

    #[test]
    fn registrations_must_carry_the_credential_and_a_key_we_accept() -> TestResult {
        let challenge = challenge("register", "cookie");
        let expected = Expected {
            rp_id: RP,
            challenge: &challenge,
            ports: &[8443],
        };
        let authenticator = Authenticator::new(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let client = client_data("webauthn.create", &challenge, "https://mail.example.test");
        let mut response = authenticator.register(&client);
        response.credential_id = b"another id".to_vec();
        assert!(matches!(
            verify_registration(&response, &expected),
            Err(WebauthnError::Malformed(_))
        ));
        let mut response = authenticator.register(&client);
        response.authenticator_data = authenticator.authenticator_data(RP, 0x01, 0, false);
        assert!(matches!(
            verify_registration(&response, &expected),
            Err(WebauthnError::Malformed(_))
        ));
        let p384 = Authenticator::new(&rcgen::PKCS_ECDSA_P384_SHA384)?;
        let mut response = authenticator.register(&client);
        response.public_key = p384.spki.clone();
        assert_eq!(
            verify_registration(&response, &expected),
            Err(WebauthnError::UnsupportedKey)
        );
        let mut response = authenticator.register(&client);
        response.public_key = b"\x30\x03\x02\x01\x00".to_vec();
        assert_eq!(
            verify_registration(&response, &expected),
            Err(WebauthnError::UnsupportedKey)
        );
        // A claimed credential id length past the data.
        let mut response = authenticator.register(&client);
        response.authenticator_data.truncate(37 + 16 + 2 + 3);
        assert!(matches!(
            verify_registration(&response, &expected),
            Err(WebauthnError::Malformed(_))
        ));
        Ok(())
    }
}
