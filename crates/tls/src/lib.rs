//! TLS for every listener: one rustls server configuration, built on the aws-lc-rs provider.
//!
//! - Versions: TLS 1.3 and TLS 1.2 only (RFC 8996 deprecates 1.0 and 1.1).
//! - Cipher suites: forward-secret AEAD only, listed in [`ALLOWED_CIPHER_SUITES`] and docs/SECURITY.md.
//! - Certificates: one or more chain+key pairs from PEM files; the one whose names match the
//!   client's SNI is served, else the first ([`CertResolver`]). [`CertResolver::reload`] swaps the
//!   whole set atomically: handshakes that start afterwards see the new certificates, sessions in
//!   flight keep theirs.
//! - Loading fails with a message that names the file and the fix for a missing, unreadable,
//!   unparsable or mismatched certificate or key, and for a private key readable by others.
//! - ACME TLS-ALPN-01 (RFC 8737): a handshake offering ALPN [`ACME_TLS_ALPN`] is answered only
//!   with the challenge certificate set for its SNI name ([`CertResolver::set_alpn_challenge`],
//!   made by [`alpn_challenge_key`]), never with a real certificate; without one it fails.
//! - Client certificates (mutual TLS): [`client_auth`] decides which are accepted, [`client_ca`]
//!   is the server's own CA that issues them; [`channel`] computes channel bindings.
//! - [`signed_data`] signs content (Apple configuration profiles) with a served certificate.

pub mod channel;
pub mod client_auth;
pub mod client_ca;
pub mod selfsigned;
pub mod signed_data;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs as provider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SupportedCipherSuite};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use sealmail_config::CertificateFiles;

/// The only cipher suites sealmail negotiates: ECDHE (forward secrecy) with an AEAD.
/// TLS 1.3 suites are all forward-secret AEAD by construction (RFC 8446).
pub const ALLOWED_CIPHER_SUITES: &[SupportedCipherSuite] = &[
    provider::cipher_suite::TLS13_AES_256_GCM_SHA384,
    provider::cipher_suite::TLS13_AES_128_GCM_SHA256,
    provider::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    provider::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    provider::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    provider::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    provider::cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    provider::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    provider::cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "{what} file {path} does not exist; check [[tls.certificate]] in the config or run `sealmail init`"
    )]
    Missing { what: &'static str, path: PathBuf },
    #[error("{what} file {path} cannot be read: {source}; make it readable by the user sealmail runs as")]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("private key {path} is readable by other users (mode {mode:04o}); run `chmod 600 {path}`")]
    KeyTooOpen { path: PathBuf, mode: u32 },
    #[error(
        "{what} file {path} is reached through {link}, a symbolic link of another user; sealmail reads it as root only through links root owns: replace the link by the file"
    )]
    UntrustedLink {
        what: &'static str,
        path: PathBuf,
        link: PathBuf,
    },
    #[error("certificate file {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----); {detail}")]
    NoCertificate { path: PathBuf, detail: String },
    #[error("certificate file {path} cannot be parsed: {detail}")]
    BadCertificate { path: PathBuf, detail: String },
    #[error("private key file {path} holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {detail}")]
    BadKey { path: PathBuf, detail: String },
    #[error(
        "private key {key} does not belong to certificate {cert}; give the key that was issued with this certificate"
    )]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("no certificate is configured; add [[tls.certificate]] to the config")]
    NoCertificates,
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot create a certificate: {0}")]
    Generate(String),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("client CA file {path} {detail}")]
    ClientCaFile { path: PathBuf, detail: String },
    #[error("the client CA certificates cannot be used: {0}")]
    ClientAnchors(String),
}

/// The crypto provider restricted to [`ALLOWED_CIPHER_SUITES`].
pub fn restricted_provider() -> CryptoProvider {
    CryptoProvider {
        cipher_suites: ALLOWED_CIPHER_SUITES.to_vec(),
        ..provider::default_provider()
    }
}

/// A certificate chain with its key, and the names it may be served for.
#[derive(Debug)]
pub struct LoadedCertificate {
    pub key: Arc<CertifiedKey>,
    /// Lower-case DNS names from the subjectAltName (or the CN when there is none).
    pub names: Vec<String>,
    /// Seconds since the Unix epoch after which the leaf certificate is no longer valid.
    pub not_after: i64,
}

impl LoadedCertificate {
    pub fn is_expired(&self) -> bool {
        self.not_after < sealmail_types::clock::now_unix()
    }
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    match sealmail_safeio::untrusted_link(path) {
        Ok(None) => {}
        Ok(Some(link)) => {
            return Err(TlsError::UntrustedLink {
                what,
                path: path.to_path_buf(),
                link,
            });
        }
        Err(source) => {
            return Err(TlsError::Unreadable {
                what,
                path: path.to_path_buf(),
                source,
            });
        }
    }
    std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => TlsError::Missing {
            what,
            path: path.to_path_buf(),
        },
        _ => TlsError::Unreadable {
            what,
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Loads one certificate chain and its private key, checking the key's permissions, that the
/// two belong together, and warning loudly when the certificate has expired.
pub fn load_certificate(files: &CertificateFiles) -> Result<LoadedCertificate, TlsError> {
    let cert_pem = read_file("certificate", &files.cert)?;
    let key_pem = read_file("private key", &files.key)?;
    match sealmail_safeio::check_private(&files.key) {
        Ok(()) => {}
        Err(sealmail_safeio::UnsafeFile::TooOpen { mode }) => {
            return Err(TlsError::KeyTooOpen {
                path: files.key.clone(),
                mode,
            });
        }
        Err(sealmail_safeio::UnsafeFile::Io(source)) => {
            return Err(TlsError::Unreadable {
                what: "private key",
                path: files.key.clone(),
                source,
            });
        }
    }

    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::NoCertificate {
            path: files.cert.clone(),
            detail: e.to_string(),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate {
            path: files.cert.clone(),
            detail: "the file is empty or holds something else".to_string(),
        });
    };
    let (names, not_after) = leaf_names_and_expiry(leaf).map_err(|detail| TlsError::BadCertificate {
        path: files.cert.clone(),
        detail,
    })?;

    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::BadKey {
        path: files.key.clone(),
        detail: e.to_string(),
    })?;
    let provider = restricted_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::BadKey {
            path: files.key.clone(),
            detail: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    if certified.keys_match().is_err() {
        return Err(TlsError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        });
    }
    let loaded = LoadedCertificate {
        key: Arc::new(certified),
        names,
        not_after,
    };
    if loaded.is_expired() {
        tracing::warn!(
            certificate = %files.cert.display(),
            "CERTIFICATE EXPIRED: {} expired at unix time {}; clients that verify certificates will refuse to connect. Renew it and send SIGHUP to reload.",
            files.cert.display(),
            loaded.not_after
        );
    }
    Ok(loaded)
}

/// The DER SubjectPublicKeyInfo of the first (leaf) certificate in a PEM file: what a DANE
/// `3 1 x` TLSA record hashes.
pub fn leaf_spki(cert_file: &Path) -> Result<Vec<u8>, TlsError> {
    use x509_parser::prelude::*;
    let bad = |detail: String| TlsError::BadCertificate {
        path: cert_file.to_path_buf(),
        detail,
    };
    let leaf = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("no certificate in the file".into()))?
        .map_err(|e| bad(e.to_string()))?;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).map_err(|e| bad(e.to_string()))?;
    Ok(cert.public_key().raw.to_vec())
}

fn leaf_names_and_expiry(leaf: &CertificateDer<'_>) -> Result<(Vec<String>, i64), String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(cn) = cn.as_str() {
                names.push(cn.to_ascii_lowercase());
            }
        }
    }
    Ok((names, cert.validity().not_after.timestamp()))
}

/// The certificates currently served, indexed by name.
#[derive(Debug)]
pub struct CertSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.org` stored as `example.org`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl CertSet {
    pub fn load(files: &[CertificateFiles]) -> Result<CertSet, TlsError> {
        let mut loaded = Vec::new();
        for f in files {
            loaded.push(load_certificate(f)?);
        }
        CertSet::from_loaded(loaded)
    }

    pub fn from_loaded(loaded: Vec<LoadedCertificate>) -> Result<CertSet, TlsError> {
        let default = loaded.first().ok_or(TlsError::NoCertificates)?.key.clone();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for cert in &loaded {
            for name in &cert.names {
                let target = match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()),
                    None => exact.entry(name.clone()),
                };
                // The first certificate listed for a name wins.
                target.or_insert_with(|| cert.key.clone());
            }
        }
        Ok(CertSet {
            exact,
            wildcard,
            default,
        })
    }

    fn select(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name.map(|n| n.trim_end_matches('.').to_ascii_lowercase()) else {
            return self.default.clone();
        };
        if let Some(key) = self.exact.get(&name) {
            return key.clone();
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(key) = self.wildcard.get(parent)
        {
            return key.clone();
        }
        self.default.clone()
    }
}

/// The ALPN protocol of ACME TLS-ALPN-01 validation (RFC 8737 section 6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// At most this many TLS-ALPN-01 challenge certificates are held at once.
pub const MAX_ALPN_CHALLENGES: usize = 256;

/// The TLS-ALPN-01 challenge certificate for `name` (RFC 8737 section 3): self-signed, a fresh
/// ECDSA P-256 key, the one DNS name in the subjectAltName, and the critical `acmeIdentifier`
/// extension holding `key_authorization_sha256`, the SHA-256 of the key authorization.
pub fn alpn_challenge_key(
    name: &str,
    key_authorization_sha256: &[u8; 32],
) -> Result<Arc<CertifiedKey>, TlsError> {
    let generate_error = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(generate_error)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(
            key_authorization_sha256,
        ));
    let key = rcgen::KeyPair::generate().map_err(generate_error)?;
    let cert = params.self_signed(&key).map_err(generate_error)?;
    let key_der =
        PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| TlsError::Generate(e.to_string()))?;
    let signing_key = restricted_provider().key_provider.load_private_key(key_der)?;
    Ok(Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing_key)))
}

/// Chooses the certificate for each handshake by SNI; reloadable while the server runs.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertSet>,
    /// TLS-ALPN-01 challenge certificates by lower-case name; served only on `acme-tls/1`.
    alpn_challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

fn normalized(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl CertResolver {
    pub fn new(set: CertSet) -> Arc<CertResolver> {
        Arc::new(CertResolver {
            current: ArcSwap::from_pointee(set),
            alpn_challenges: RwLock::new(HashMap::new()),
        })
    }

    /// Serves `key` to `acme-tls/1` handshakes for `name` until [`Self::clear_alpn_challenge`].
    /// Refused (false) when [`MAX_ALPN_CHALLENGES`] other names already have one.
    pub fn set_alpn_challenge(&self, name: &str, key: Arc<CertifiedKey>) -> bool {
        let mut map = self.alpn_challenges.write().unwrap_or_else(|e| e.into_inner());
        let name = normalized(name);
        if !map.contains_key(&name) && map.len() >= MAX_ALPN_CHALLENGES {
            return false;
        }
        map.insert(name, key);
        true
    }

    pub fn clear_alpn_challenge(&self, name: &str) {
        let mut map = self.alpn_challenges.write().unwrap_or_else(|e| e.into_inner());
        map.remove(&normalized(name));
    }

    fn alpn_challenge(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let map = self.alpn_challenges.read().unwrap_or_else(|e| e.into_inner());
        map.get(&normalized(name)).cloned()
    }

    /// Loads the files again and swaps them in; on any error the old set stays in service.
    pub fn reload(&self, files: &[CertificateFiles]) -> Result<(), TlsError> {
        let set = CertSet::load(files)?;
        self.current.store(Arc::new(set));
        Ok(())
    }

    /// The certificate a handshake naming `name` gets now.
    pub fn serving(&self, name: &str) -> Arc<CertifiedKey> {
        self.current.load().select(Some(name))
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = client_hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if acme {
            // RFC 8737 section 3: only the challenge certificate, and only for its name; a
            // validation handshake never gets a real certificate.
            return self.alpn_challenge(client_hello.server_name()?);
        }
        Some(self.current.load().select(client_hello.server_name()))
    }
}

/// The server configuration every listener uses.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<Arc<ServerConfig>, TlsError> {
    let config = ServerConfig::builder_with_provider(Arc::new(restricted_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    Ok(Arc::new(config))
}

pub use sealmail_types::proof::{suite_name, version_name};

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn files_in(dir: &Path, name: &str) -> CertificateFiles {
        CertificateFiles {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        }
    }

    fn error_of(files: &CertificateFiles) -> String {
        match load_certificate(files) {
            Ok(_) => panic!("loaded"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn loading_errors_name_the_file_and_the_fix() -> Result<(), Box<dyn std::error::Error>> {
        let _ = tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default());
        let dir = tempfile::tempdir()?;
        let a = files_in(dir.path(), "a");
        let b = files_in(dir.path(), "b");
        selfsigned::generate(&["mail.a.test".to_string()], &a, 365)?;
        selfsigned::generate(&["mail.b.test".to_string()], &b, 365)?;
        let loaded = load_certificate(&a)?;
        assert_eq!(loaded.names, vec!["mail.a.test"]);
        assert!(!loaded.is_expired());

        let missing = files_in(dir.path(), "nothere");
        assert!(error_of(&missing).contains("does not exist"));

        let mismatched = CertificateFiles {
            cert: a.cert.clone(),
            key: b.key.clone(),
        };
        assert!(
            error_of(&mismatched).contains("does not belong to certificate"),
            "{}",
            error_of(&mismatched)
        );

        std::fs::set_permissions(&a.key, std::fs::Permissions::from_mode(0o644))?;
        let open = error_of(&a);
        assert!(
            open.contains("readable by other users (mode 0644)") && open.contains("chmod 600"),
            "{open}"
        );
        std::fs::set_permissions(&a.key, std::fs::Permissions::from_mode(0o600))?;

        let garbage = files_in(dir.path(), "garbage");
        std::fs::write(&garbage.cert, "not a certificate")?;
        std::fs::copy(&a.key, &garbage.key)?;
        std::fs::set_permissions(&garbage.key, std::fs::Permissions::from_mode(0o600))?;
        assert!(
            error_of(&garbage).contains("holds no PEM certificate"),
            "{}",
            error_of(&garbage)
        );

        let badkey = CertificateFiles {
            cert: a.cert.clone(),
            key: garbage.cert.clone(),
        };
        std::fs::set_permissions(&badkey.key, std::fs::Permissions::from_mode(0o600))?;
        assert!(
            error_of(&badkey).contains("no usable PEM private key"),
            "{}",
            error_of(&badkey)
        );
        Ok(())
    }

    #[test]
    fn expired_certificates_load_but_say_so() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let old = files_in(dir.path(), "old");
        selfsigned::generate_with_validity(&["mail.old.test".to_string()], &old, -30, -1)?;
        assert!(load_certificate(&old)?.is_expired());
        Ok(())
    }

    #[test]
    fn sni_selects_exact_then_wildcard_then_default() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let a = files_in(dir.path(), "a");
        let b = files_in(dir.path(), "b");
        selfsigned::generate(&["mail.a.test".to_string()], &a, 365)?;
        selfsigned::generate(&["*.b.test".to_string()], &b, 365)?;
        let set = CertSet::load(&[a.clone(), b.clone()])?;
        let a_key = load_certificate(&a)?.key;
        let b_key = load_certificate(&b)?.key;
        let same = |x: &Arc<CertifiedKey>, y: &Arc<CertifiedKey>| x.cert == y.cert;
        assert!(same(&set.select(Some("MAIL.A.TEST")), &a_key));
        assert!(same(&set.select(Some("imap.b.test")), &b_key));
        assert!(
            same(&set.select(Some("x.imap.b.test")), &a_key),
            "wildcards cover one label only"
        );
        assert!(same(&set.select(Some("other.test")), &a_key));
        assert!(same(&set.select(None), &a_key));
        Ok(())
    }

    /// Records the leaf certificate the server sent and accepts it (the tests judge it).
    #[derive(Debug, Default)]
    struct Recorder {
        leaf: std::sync::Mutex<Option<Vec<u8>>>,
    }

    impl rustls::client::danger::ServerCertVerifier for Recorder {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &rustls_pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls_pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            if let Ok(mut leaf) = self.leaf.lock() {
                *leaf = Some(end_entity.to_vec());
            }
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            restricted_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    /// One in-memory handshake; the leaf the client saw, or the error.
    fn handshake(
        server: Arc<ServerConfig>,
        name: &str,
        alpn: &[&[u8]],
    ) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
        let recorder = Arc::new(Recorder::default());
        let mut client_config = rustls::ClientConfig::builder_with_provider(Arc::new(restricted_provider()))
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(recorder.clone())
            .with_no_client_auth();
        client_config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let mut client = rustls::ClientConnection::new(
            Arc::new(client_config),
            rustls_pki_types::ServerName::try_from(name.to_string())?,
        )?;
        let mut server = rustls::ServerConnection::new(server)?;
        for _ in 0..20 {
            let mut buf = Vec::new();
            client.write_tls(&mut buf)?;
            server.read_tls(&mut buf.as_slice())?;
            server.process_new_packets()?;
            let mut buf = Vec::new();
            server.write_tls(&mut buf)?;
            client.read_tls(&mut buf.as_slice())?;
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
        }
        let leaf = recorder
            .leaf
            .lock()
            .map_err(|_| "poisoned")?
            .clone()
            .ok_or("no certificate was received")?;
        Ok(leaf)
    }

    #[test]
    fn acme_tls_alpn_gets_only_the_challenge_certificate() -> Result<(), Box<dyn std::error::Error>> {
        use x509_parser::prelude::*;
        let dir = tempfile::tempdir()?;
        let a = files_in(dir.path(), "a");
        selfsigned::generate(&["mail.a.test".to_string()], &a, 365)?;
        let resolver = CertResolver::new(CertSet::load(std::slice::from_ref(&a))?);
        let digest = [7u8; 32];
        assert!(resolver.set_alpn_challenge("Mail.A.Test.", alpn_challenge_key("mail.a.test", &digest)?));
        let mut config = (*server_config(resolver.clone())?).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
        let config = Arc::new(config);

        let leaf = handshake(config.clone(), "mail.a.test", &[ACME_TLS_ALPN])?;
        let (_, cert) = X509Certificate::from_der(&leaf)?;
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .ok_or("no acmeIdentifier extension")?;
        assert!(ext.critical);
        // OCTET STRING, 32 bytes, the digest.
        assert_eq!(ext.value, [&[0x04, 0x20][..], &digest[..]].concat());

        let normal = load_certificate(&a)?.key.cert[0].to_vec();
        assert_eq!(handshake(config.clone(), "mail.a.test", &[])?, normal);
        assert_eq!(handshake(config.clone(), "mail.a.test", &[b"http/1.1"])?, normal);

        assert!(
            handshake(config.clone(), "other.a.test", &[ACME_TLS_ALPN]).is_err(),
            "acme-tls/1 for a name without a challenge fails"
        );
        resolver.clear_alpn_challenge("mail.a.test");
        assert!(handshake(config, "mail.a.test", &[ACME_TLS_ALPN]).is_err());
        Ok(())
    }

    #[test]
    fn only_forward_secret_aead_suites_are_allowed() {
        for suite in ALLOWED_CIPHER_SUITES {
            let name = suite_name(*suite);
            let tls13 = name.starts_with("TLS13_");
            let ecdhe = name.starts_with("TLS_ECDHE_");
            let aead = name.contains("_GCM_") || name.contains("CHACHA20_POLY1305");
            assert!((tls13 || ecdhe) && aead, "{name}");
        }
        assert_eq!(
            restricted_provider().cipher_suites.len(),
            ALLOWED_CIPHER_SUITES.len()
        );
    }
}
