//! Client certificates for mutual TLS (RFC 8446 sections 4.3.2 and 4.4.2; RFC 5246 section
//! 7.4.4): which certificates a listener accepts, and the rustls verifier that asks for them.
//!
//! A certificate is accepted when it chains to a trusted CA (the internal client CA,
//! [`crate::client_ca`], or the admin's own) or when its fingerprint is registered to an
//! account; never when its fingerprint is revoked, never outside its validity period. Either
//! way the client signs the handshake with the certificate's key, so a copied certificate alone
//! proves nothing.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::client_ca::fingerprint;
use crate::{CertResolver, TlsError, restricted_provider};

/// Whether a listener asks for client certificates (the listener key `client_cert`).
pub use sealmail_config::ClientCertMode;

/// How an accepted certificate was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptedBy {
    /// It chains to one of the trusted CAs; its addresses name the account.
    TrustedIssuer,
    /// Its fingerprint is registered to an account, which the store names.
    RegisteredFingerprint,
}

/// Why a certificate was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CertRefused {
    #[error("the certificate {fingerprint} is revoked")]
    Revoked { fingerprint: String },
    #[error("the certificate has expired")]
    Expired,
    #[error("the certificate is not valid yet")]
    NotYetValid,
    #[error("the certificate neither chains to a trusted client CA nor has a registered fingerprint: {0}")]
    Untrusted(rustls::Error),
    #[error("the certificate cannot be parsed: {0}")]
    Unparsable(String),
}

impl CertRefused {
    /// The error rustls turns into the alert the client sees (RFC 8446 section 6.2).
    fn into_rustls(self) -> rustls::Error {
        match self {
            CertRefused::Revoked { .. } => CertificateError::Revoked.into(),
            CertRefused::Expired => CertificateError::Expired.into(),
            CertRefused::NotYetValid => CertificateError::NotValidYet.into(),
            CertRefused::Untrusted(e) => e,
            CertRefused::Unparsable(_) => CertificateError::BadEncoding.into(),
        }
    }
}

/// The fingerprints the store knows, swapped in whole.
#[derive(Debug, Default)]
struct Known {
    registered: HashSet<String>,
    revoked: HashSet<String>,
}

/// Which client certificates are acceptable: one that chains to one of the anchors (the
/// internal CA and the admin's `[auth] client_ca` file), or a leaf whose fingerprint is
/// registered to an account; never a revoked fingerprint; never outside its validity period.
/// The registered and revoked sets are swapped in while the server runs (the server refreshes
/// them from the store); handshakes in flight finish with the sets they started with.
pub struct ClientCertTrust {
    /// rustls' WebPKI verifier over the anchors; `None` when there are none.
    chain: Option<Arc<dyn ClientCertVerifier>>,
    hints: Vec<DistinguishedName>,
    algorithms: WebPkiSupportedAlgorithms,
    known: ArcSwap<Known>,
}

impl std::fmt::Debug for ClientCertTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let known = self.known.load();
        f.debug_struct("ClientCertTrust")
            .field("anchors", &self.hints.len())
            .field("registered", &known.registered.len())
            .field("revoked", &known.revoked.len())
            .finish_non_exhaustive()
    }
}

impl ClientCertTrust {
    /// A trust over `anchors` (none is allowed: then only registered fingerprints pass), with
    /// no fingerprint registered or revoked yet.
    pub fn new(anchors: Vec<CertificateDer<'static>>) -> Result<Arc<ClientCertTrust>, TlsError> {
        let provider = Arc::new(restricted_provider());
        let mut roots = RootCertStore::empty();
        for anchor in anchors {
            roots
                .add(anchor)
                .map_err(|e| TlsError::ClientAnchors(e.to_string()))?;
        }
        let hints = roots.subjects();
        let chain = if roots.is_empty() {
            None
        } else {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| TlsError::ClientAnchors(e.to_string()))?;
            Some(verifier)
        };
        Ok(Arc::new(ClientCertTrust {
            chain,
            hints,
            algorithms: provider.signature_verification_algorithms,
            known: ArcSwap::from_pointee(Known::default()),
        }))
    }

    /// Every certificate in the PEM files, in order. A missing or unreadable file, or one
    /// without a certificate, is an error naming it: a CA the admin configured and that is
    /// silently left out would lock its users out.
    pub fn load_anchors(pem_files: &[PathBuf]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        use x509_parser::prelude::*;
        let mut anchors = Vec::new();
        for path in pem_files {
            let pem = crate::read_file("client CA", path).map_err(|e| match e {
                TlsError::Missing { path, .. } => TlsError::ClientCaFile {
                    path,
                    detail: "does not exist; check [auth] client_ca in the config, or run `sealmail ca init` for the internal CA".to_string(),
                },
                other => other,
            })?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| TlsError::NoCertificate {
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(TlsError::NoCertificate {
                    path: path.clone(),
                    detail: "the file is empty or holds something else".to_string(),
                });
            }
            for cert in &certs {
                X509Certificate::from_der(cert).map_err(|e| TlsError::BadCertificate {
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
            }
            anchors.extend(certs);
        }
        Ok(anchors)
    }

    /// Replaces the registered and revoked fingerprints ([`fingerprint`] form).
    pub fn set_known(&self, registered: HashSet<String>, revoked: HashSet<String>) {
        self.known.store(Arc::new(Known { registered, revoked }));
    }

    /// The decision the handshake makes, for checking again later (SASL EXTERNAL, or a
    /// long session after a revocation).
    pub fn accepts(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<AcceptedBy, CertRefused> {
        let known = self.known.load();
        // Revocation beats everything, an intermediate's included: it is how an admin stops a
        // lost key at once.
        for cert in std::iter::once(end_entity).chain(intermediates) {
            let fingerprint = fingerprint(cert);
            if known.revoked.contains(&fingerprint) {
                return Err(CertRefused::Revoked { fingerprint });
            }
        }
        if known.registered.contains(&fingerprint(end_entity)) {
            check_validity(end_entity, now)?;
            return Ok(AcceptedBy::RegisteredFingerprint);
        }
        let Some(chain) = &self.chain else {
            return Err(CertRefused::Untrusted(CertificateError::UnknownIssuer.into()));
        };
        match chain.verify_client_cert(end_entity, intermediates, now) {
            Ok(_) => Ok(AcceptedBy::TrustedIssuer),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            )) => Err(CertRefused::Expired),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
            )) => Err(CertRefused::NotYetValid),
            Err(e) => Err(CertRefused::Untrusted(e)),
        }
    }
}

/// WebPKI checks the validity period of chained certificates; a registered one is checked here.
fn check_validity(cert: &CertificateDer<'_>, now: UnixTime) -> Result<(), CertRefused> {
    use x509_parser::prelude::*;
    let (_, parsed) = X509Certificate::from_der(cert).map_err(|e| CertRefused::Unparsable(e.to_string()))?;
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    if now < parsed.validity().not_before.timestamp() {
        return Err(CertRefused::NotYetValid);
    }
    if now > parsed.validity().not_after.timestamp() {
        return Err(CertRefused::Expired);
    }
    Ok(())
}

/// The verifier of one listener mode; the trust is shared by all listeners.
#[derive(Debug)]
struct ModeVerifier {
    trust: Arc<ClientCertTrust>,
    mandatory: bool,
}

impl ClientCertVerifier for ModeVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.trust.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.trust.accepts(end_entity, intermediates, now) {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(refused) => {
                tracing::debug!(fingerprint = %fingerprint(end_entity), "client certificate refused: {refused}");
                Err(refused.into_rustls())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.trust.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.trust.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust.algorithms.supported_schemes()
    }
}

/// A verifier for a listener in `mode`, sharing `trust`; `None` for [`ClientCertMode::Off`].
pub fn client_verifier(
    trust: Arc<ClientCertTrust>,
    mode: ClientCertMode,
) -> Option<Arc<dyn ClientCertVerifier>> {
    let mandatory = match mode {
        ClientCertMode::Off => return None,
        ClientCertMode::Optional => false,
        ClientCertMode::Required => true,
    };
    Some(Arc::new(ModeVerifier { trust, mandatory }))
}

/// [`crate::server_config`], asking for client certificates through `verifier` when given.
pub fn server_config_with_clients(
    resolver: Arc<CertResolver>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(Arc::new(restricted_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let asks = verifier.is_some();
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    if asks {
        // A resumed session keeps the certificate of its first handshake without checking it
        // again: a certificate revoked (or expired) since would pass for the ticket's lifetime.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_ca::ClientCa;
    use crate::{CertSet, selfsigned};
    use rustls::pki_types::{PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, ServerConnection};
    use sealmail_config::CertificateFiles;
    use std::time::{Duration, SystemTime};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// The server's certificate and a client that trusts it.
    struct Server {
        _dir: tempfile::TempDir,
        resolver: Arc<CertResolver>,
        roots: Arc<RootCertStore>,
    }

    fn server() -> Result<Server, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let files = CertificateFiles {
            cert: dir.path().join("server.pem"),
            key: dir.path().join("server.key"),
        };
        selfsigned::generate(&["mail.test".to_string()], &files, 30)?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&files.cert)? {
            roots.add(cert?)?;
        }
        Ok(Server {
            resolver: CertResolver::new(CertSet::load(&[files])?),
            roots: Arc::new(roots),
            _dir: dir,
        })
    }

    struct Identity {
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    }

    fn identity(cert_pem: &str, key_pem: &str) -> Result<Identity, Box<dyn std::error::Error>> {
        Ok(Identity {
            chain: vec![CertificateDer::from_pem_slice(cert_pem.as_bytes())?],
            key: PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?,
        })
    }

    fn self_signed(from: SystemTime, to: SystemTime) -> Result<Identity, Box<dyn std::error::Error>> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::default();
        params.not_before = from.into();
        params.not_after = to.into();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.self_signed(&key)?;
        identity(&cert.pem(), &key.serialize_pem())
    }

    fn client(
        server: &Server,
        identity: Option<&Identity>,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> Result<Arc<ClientConfig>, Box<dyn std::error::Error>> {
        let builder = ClientConfig::builder_with_provider(Arc::new(restricted_provider()))
            .with_protocol_versions(&[version])?
            .with_root_certificates(server.roots.clone());
        let config = match identity {
            Some(id) => builder.with_client_auth_cert(id.chain.clone(), id.key.clone_key())?,
            None => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }

    /// Runs a handshake through memory; the server's verdict, and the certificate it was shown.
    fn handshake(
        server: &Server,
        verifier: Option<Arc<dyn ClientCertVerifier>>,
        client: Arc<ClientConfig>,
    ) -> Result<Option<CertificateDer<'static>>, rustls::Error> {
        let config = server_config_with_clients(server.resolver.clone(), verifier)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let name = ServerName::try_from("mail.test").map_err(|e| rustls::Error::General(e.to_string()))?;
        let mut client = ClientConnection::new(client, name)?;
        let mut server = ServerConnection::new(config)?;
        let io = |e: std::io::Error| rustls::Error::General(e.to_string());
        for _ in 0..16 {
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).map_err(io)?;
            }
            let mut flight = &buf[..];
            while !flight.is_empty() {
                server.read_tls(&mut flight).map_err(io)?;
                server.process_new_packets()?;
            }
            let mut buf = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut buf).map_err(io)?;
            }
            let mut flight = &buf[..];
            while !flight.is_empty() {
                client.read_tls(&mut flight).map_err(io)?;
                client.process_new_packets()?;
            }
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(server
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.clone().into_owned()));
            }
        }
        Err(rustls::Error::General("the handshake did not finish".to_string()))
    }

    fn set(fingerprints: &[&str]) -> HashSet<String> {
        fingerprints.iter().map(|f| f.to_string()).collect()
    }

    fn now() -> UnixTime {
        UnixTime::now()
    }

    #[test]
    fn a_certificate_of_the_internal_ca_is_accepted_over_tls13_and_tls12() -> TestResult {
        let dir = tempfile::tempdir()?;
        let ca = ClientCa::init(&dir.path().join("client-ca"), "mail.test")?;
        let issued = ca.issue("alice@example.org", 30)?;
        let alice = identity(&issued.cert_pem, &issued.key_pem)?;
        let server = server()?;
        let trust = ClientCertTrust::new(vec![ca.cert_der().clone()])?;
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            for mode in [ClientCertMode::Optional, ClientCertMode::Required] {
                let seen = handshake(
                    &server,
                    client_verifier(trust.clone(), mode),
                    client(&server, Some(&alice), version)?,
                )?;
                let seen = seen.ok_or("the server saw no certificate")?;
                assert_eq!(fingerprint(&seen), issued.fingerprint);
                assert_eq!(trust.accepts(&seen, &[], now()), Ok(AcceptedBy::TrustedIssuer));
            }
        }
        Ok(())
    }

    #[test]
    fn the_verifier_names_the_trusted_cas_to_the_client() -> TestResult {
        let dir = tempfile::tempdir()?;
        let ca = ClientCa::init(dir.path(), "mail.test")?;
        let trust = ClientCertTrust::new(vec![ca.cert_der().clone()])?;
        let verifier = client_verifier(trust.clone(), ClientCertMode::Optional).ok_or("no verifier")?;
        assert!(verifier.offer_client_auth());
        assert!(!verifier.client_auth_mandatory());
        assert_eq!(verifier.root_hint_subjects().len(), 1);
        let required = client_verifier(trust.clone(), ClientCertMode::Required).ok_or("no verifier")?;
        assert!(required.client_auth_mandatory());
        assert!(client_verifier(trust, ClientCertMode::Off).is_none());
        Ok(())
    }

    #[test]
    fn a_certificate_of_another_ca_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let ours = ClientCa::init(&dir.path().join("ours"), "mail.test")?;
        let server = server()?;
        let trust = ClientCertTrust::new(vec![ours.cert_der().clone()])?;
        // Another server's CA, and one with our CA's very name (another install for the same
        // host name), which webpki matches by name and then refuses by signature.
        for (name, host, expected) in [
            ("theirs", "mail.other.test", CertificateError::UnknownIssuer),
            ("twin", "mail.test", CertificateError::BadSignature),
        ] {
            let theirs = ClientCa::init(&dir.path().join(name), host)?;
            let issued = theirs.issue("alice@example.org", 30)?;
            let mallory = identity(&issued.cert_pem, &issued.key_pem)?;
            let result = handshake(
                &server,
                client_verifier(trust.clone(), ClientCertMode::Optional),
                client(&server, Some(&mallory), &rustls::version::TLS13)?,
            );
            assert_eq!(
                result,
                Err(rustls::Error::InvalidCertificate(expected.clone())),
                "{name}"
            );
            assert_eq!(
                trust.accepts(&mallory.chain[0], &[], now()),
                Err(CertRefused::Untrusted(expected.into()))
            );
        }
        Ok(())
    }

    #[test]
    fn an_expired_certificate_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let ca = ClientCa::init(dir.path(), "mail.test")?;
        let day = Duration::from_secs(86_400);
        let past = SystemTime::now() - 30 * day;
        let issued = ca.issue_between("alice@example.org", past, past + 10 * day)?;
        let alice = identity(&issued.cert_pem, &issued.key_pem)?;
        let server = server()?;
        let trust = ClientCertTrust::new(vec![ca.cert_der().clone()])?;
        let result = handshake(
            &server,
            client_verifier(trust.clone(), ClientCertMode::Required),
            client(&server, Some(&alice), &rustls::version::TLS13)?,
        );
        assert!(
            matches!(
                result,
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. }
                ))
            ),
            "{result:?}"
        );
        assert_eq!(
            trust.accepts(&alice.chain[0], &[], now()),
            Err(CertRefused::Expired)
        );
        Ok(())
    }

    #[test]
    fn a_revoked_fingerprint_is_refused_even_when_registered() -> TestResult {
        let dir = tempfile::tempdir()?;
        let ca = ClientCa::init(dir.path(), "mail.test")?;
        let issued = ca.issue("alice@example.org", 30)?;
        let alice = identity(&issued.cert_pem, &issued.key_pem)?;
        let server = server()?;
        let trust = ClientCertTrust::new(vec![ca.cert_der().clone()])?;
        trust.set_known(set(&[&issued.fingerprint]), set(&[&issued.fingerprint]));
        let result = handshake(
            &server,
            client_verifier(trust.clone(), ClientCertMode::Optional),
            client(&server, Some(&alice), &rustls::version::TLS13)?,
        );
        assert!(
            matches!(
                result,
                Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
            ),
            "{result:?}"
        );
        // Revoking the CA itself (as an intermediate the client sent) stops it too.
        trust.set_known(HashSet::new(), set(&[&fingerprint(ca.cert_der())]));
        assert!(matches!(
            trust.accepts(&alice.chain[0], &[ca.cert_der().clone()], now()),
            Err(CertRefused::Revoked { .. })
        ));
        trust.set_known(HashSet::new(), HashSet::new());
        assert_eq!(
            trust.accepts(&alice.chain[0], &[], now()),
            Ok(AcceptedBy::TrustedIssuer)
        );
        Ok(())
    }

    #[test]
    fn a_registered_self_signed_certificate_is_accepted_until_unregistered() -> TestResult {
        let hour = Duration::from_secs(3600);
        let bob = self_signed(SystemTime::now() - hour, SystemTime::now() + 24 * hour)?;
        let bob_fingerprint = fingerprint(&bob.chain[0]);
        let server = server()?;
        // No anchors at all: only registered fingerprints can pass.
        let trust = ClientCertTrust::new(Vec::new())?;
        let config = || client(&server, Some(&bob), &rustls::version::TLS13);
        let verifier = || client_verifier(trust.clone(), ClientCertMode::Required);

        assert!(handshake(&server, verifier(), config()?).is_err());
        trust.set_known(set(&[&bob_fingerprint]), HashSet::new());
        let seen = handshake(&server, verifier(), config()?)?.ok_or("no certificate seen")?;
        assert_eq!(fingerprint(&seen), bob_fingerprint);
        assert_eq!(
            trust.accepts(&seen, &[], now()),
            Ok(AcceptedBy::RegisteredFingerprint)
        );
        // Over TLS 1.2 as well, where the client signs differently.
        handshake(
            &server,
            verifier(),
            client(&server, Some(&bob), &rustls::version::TLS12)?,
        )?;
        trust.set_known(HashSet::new(), HashSet::new());
        let result = handshake(&server, verifier(), config()?);
        assert!(
            matches!(
                result,
                Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))
            ),
            "{result:?}"
        );
        Ok(())
    }

    #[test]
    fn a_registered_certificate_outside_its_validity_is_refused() -> TestResult {
        let day = Duration::from_secs(86_400);
        let old = self_signed(SystemTime::now() - 30 * day, SystemTime::now() - day)?;
        let early = self_signed(SystemTime::now() + day, SystemTime::now() + 30 * day)?;
        let trust = ClientCertTrust::new(Vec::new())?;
        trust.set_known(
            set(&[&fingerprint(&old.chain[0]), &fingerprint(&early.chain[0])]),
            HashSet::new(),
        );
        assert_eq!(
            trust.accepts(&old.chain[0], &[], now()),
            Err(CertRefused::Expired)
        );
        assert_eq!(
            trust.accepts(&early.chain[0], &[], now()),
            Err(CertRefused::NotYetValid)
        );
        Ok(())
    }

    #[test]
    fn a_registered_certificate_without_its_key_fails_the_handshake() -> TestResult {
        let hour = Duration::from_secs(3600);
        let bob = self_signed(SystemTime::now() - hour, SystemTime::now() + hour)?;
        let mallory = self_signed(SystemTime::now() - hour, SystemTime::now() + hour)?;
        // Bob's public certificate, Mallory's key: the CertificateVerify signature fails.
        let stolen = Identity {
            chain: bob.chain.clone(),
            key: mallory.key.clone_key(),
        };
        let server = server()?;
        let trust = ClientCertTrust::new(Vec::new())?;
        trust.set_known(set(&[&fingerprint(&bob.chain[0])]), HashSet::new());
        // rustls' own client refuses a key that does not match; a forger's client would not.
        let provider = Arc::new(restricted_provider());
        let forged = rustls::sign::CertifiedKey::new(
            stolen.chain.clone(),
            provider.key_provider.load_private_key(stolen.key.clone_key())?,
        );
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let config = ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[version])?
                .with_root_certificates(server.roots.clone())
                .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(forged.clone())));
            let result = handshake(
                &server,
                client_verifier(trust.clone(), ClientCertMode::Required),
                Arc::new(config),
            );
            assert_eq!(
                result,
                Err(rustls::Error::InvalidCertificate(CertificateError::BadSignature)),
                "{version:?}"
            );
        }
        // The same client with Bob's own key gets in.
        handshake(
            &server,
            client_verifier(trust.clone(), ClientCertMode::Required),
            client(&server, Some(&bob), &rustls::version::TLS13)?,
        )?;
        Ok(())
    }

    #[test]
    fn required_refuses_a_client_without_a_certificate_and_optional_lets_it_in() -> TestResult {
        let dir = tempfile::tempdir()?;
        let ca = ClientCa::init(dir.path(), "mail.test")?;
        let server = server()?;
        let trust = ClientCertTrust::new(vec![ca.cert_der().clone()])?;
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let result = handshake(
                &server,
                client_verifier(trust.clone(), ClientCertMode::Required),
                client(&server, None, version)?,
            );
            assert!(
                matches!(result, Err(rustls::Error::NoCertificatesPresented)),
                "{result:?}"
            );
            let seen = handshake(
                &server,
                client_verifier(trust.clone(), ClientCertMode::Optional),
                client(&server, None, version)?,
            )?;
            assert!(seen.is_none());
            let off = handshake(&server, None, client(&server, None, version)?)?;
            assert!(off.is_none());
        }
        Ok(())
    }

    #[test]
    fn modes_parse_from_the_config_words() {
        assert_eq!(ClientCertMode::parse("off"), Some(ClientCertMode::Off));
        assert_eq!(ClientCertMode::parse("optional"), Some(ClientCertMode::Optional));
        assert_eq!(ClientCertMode::parse("required"), Some(ClientCertMode::Required));
        assert_eq!(ClientCertMode::parse("yes"), None);
        assert_eq!(ClientCertMode::default(), ClientCertMode::Off);
    }

    #[test]
    fn anchors_load_from_pem_files_and_errors_name_the_file() -> TestResult {
        let dir = tempfile::tempdir()?;
        let one = ClientCa::init(&dir.path().join("one"), "mail.test")?;
        let two = ClientCa::init(&dir.path().join("two"), "mail.test")?;
        let both = dir.path().join("both.pem");
        std::fs::write(&both, format!("{}{}", one.cert_pem(), two.cert_pem()))?;
        let anchors = ClientCertTrust::load_anchors(&[dir.path().join("one/ca.pem"), both.clone()])?;
        assert_eq!(anchors.len(), 3);
        assert_eq!(ClientCertTrust::new(anchors)?.hints.len(), 3);

        let missing = dir.path().join("nothere.pem");
        let err = ClientCertTrust::load_anchors(&[both.clone(), missing.clone()])
            .err()
            .ok_or("loaded a missing file")?
            .to_string();
        assert!(
            err.contains(&missing.display().to_string()) && err.contains("[auth] client_ca"),
            "{err}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here")?;
        let err = ClientCertTrust::load_anchors(std::slice::from_ref(&empty))
            .err()
            .ok_or("loaded a file without a certificate")?
            .to_string();
        assert!(err.contains(&empty.display().to_string()), "{err}");
        Ok(())
    }
}
