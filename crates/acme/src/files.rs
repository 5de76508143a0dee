//! The files under `DATA/acme/`: the account (`account.json`, 0600), the certificate key
//! (`key.pem`, ECDSA P-256, 0600), the chain (`cert.pem`, leaf first), the key of a pending
//! rollover (`next-key.pem`, 0600) and the renewal time the loop chose (`next-renewal`).

use std::path::{Path, PathBuf};

use rcgen::KeyPair;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

use sealmail_config::CertificateFiles;

use crate::AcmeError;

/// Where the ACME state of one data folder lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmePaths {
    /// `DATA/acme`
    pub dir: PathBuf,
    /// The account's credentials (its private key included): `account.json`, 0600.
    pub account: PathBuf,
    /// The certificate's key: `key.pem`, 0600; kept across renewals (DANE `3 1 1`).
    pub key: PathBuf,
    /// The chain, leaf first: `cert.pem`.
    pub cert: PathBuf,
    /// The key a rollover will switch to: `next-key.pem`, 0600.
    pub next_key: PathBuf,
    /// Unix seconds of the next renewal the loop chose: `next-renewal`.
    pub next_renewal: PathBuf,
    /// The names the last order left out because their challenges failed, one a line.
    pub dropped: PathBuf,
}

impl AcmePaths {
    pub fn new(data_dir: &Path) -> AcmePaths {
        let dir = data_dir.join("acme");
        AcmePaths {
            account: dir.join("account.json"),
            key: dir.join("key.pem"),
            cert: dir.join("cert.pem"),
            next_key: dir.join("next-key.pem"),
            next_renewal: dir.join("next-renewal"),
            dropped: dir.join("dropped"),
            dir,
        }
    }

    /// The pair the TLS listeners load (add it to their certificate list).
    pub fn certificate_files(&self) -> CertificateFiles {
        CertificateFiles {
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }

    pub(crate) fn create_dir(&self) -> Result<(), AcmeError> {
        sealmail_safeio::create_private_dir(&self.dir).map_err(|source| AcmeError::Io {
            path: self.dir.clone(),
            source,
        })
    }
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> AcmeError + '_ {
    move |source| AcmeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a private key file written by us: must be private, PKCS#8 PEM.
pub(crate) fn read_key(path: &Path) -> Result<Option<KeyPair>, AcmeError> {
    let pem = match std::fs::read_to_string(path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path)(e)),
    };
    match sealmail_safeio::check_private(path) {
        Ok(()) => {}
        Err(sealmail_safeio::UnsafeFile::TooOpen { mode }) => {
            return Err(AcmeError::Key(format!(
                "{} is readable by other users (mode {mode:04o}); run `chmod 600 {}`",
                path.display(),
                path.display()
            )));
        }
        Err(sealmail_safeio::UnsafeFile::Io(e)) => return Err(io_error(path)(e)),
    }
    parse_key(pem.as_bytes())
        .map(Some)
        .map_err(|e| AcmeError::Key(format!("{} cannot be used as a key: {e}", path.display())))
}

/// A PEM private key (PKCS#8, SEC1 or PKCS#1) as a key rcgen signs with.
fn parse_key(pem: &[u8]) -> Result<KeyPair, String> {
    use rustls_pki_types::PrivateKeyDer;
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| e.to_string())?;
    KeyPair::try_from(&der).map_err(|e| e.to_string())
}

/// Why `key` cannot be the key of an ACME certificate, if it cannot: CAs take ECDSA P-256
/// and P-384 and RSA of at least 2048 bits (Let's Encrypt refuses Ed25519 and P-521), and a
/// CSR must be signed with it.
fn unusable_for_acme(key: &KeyPair) -> Option<String> {
    use x509_parser::prelude::FromDer;
    use x509_parser::public_key::PublicKey;
    use x509_parser::x509::SubjectPublicKeyInfo;
    let alg = key.algorithm();
    if alg == &rcgen::PKCS_RSA_SHA256 {
        let spki = spki_of(key);
        let bits = match SubjectPublicKeyInfo::from_der(&spki) {
            Ok((_, info)) => match info.parsed() {
                Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
                _ => 0,
            },
            Err(_) => 0,
        };
        if bits < 2048 {
            return Some(format!("an RSA key of {bits} bits (2048 at least)"));
        }
    } else if alg != &rcgen::PKCS_ECDSA_P256_SHA256 && alg != &rcgen::PKCS_ECDSA_P384_SHA384 {
        return Some(format!(
            "a {alg:?} key (ACME CAs take ECDSA P-256 or P-384, or RSA)"
        ));
    }
    let csr = rcgen::CertificateParams::new(vec!["seed.invalid".to_string()])
        .and_then(|params| params.serialize_request(key));
    csr.err().map(|e| format!("a key that cannot sign a CSR: {e}"))
}

/// When `key.pem` does not exist yet, copies the private key at `from` (PEM) there (0600,
/// atomic), so the first ACME certificate keeps the key of the certificate served before and
/// a published `TLSA 3 1 1` record stays valid. Returns whether it seeded: `false` when
/// `key.pem` exists already or the key cannot serve an ACME certificate (logged why; a new
/// key is made at the first order then).
pub fn seed_key(paths: &AcmePaths, from: &Path) -> Result<bool, AcmeError> {
    if std::fs::symlink_metadata(&paths.key).is_ok() {
        return Ok(false);
    }
    let pem = std::fs::read(from).map_err(io_error(from))?;
    let key = match parse_key(&pem) {
        Ok(key) => key,
        Err(e) => {
            tracing::warn!(key = %from.display(), error = %e, "the certificate key cannot be read as a private key; ACME makes a new key (update the TLSA records)");
            return Ok(false);
        }
    };
    if let Some(why) = unusable_for_acme(&key) {
        tracing::warn!(key = %from.display(), "the certificate key is {why}; ACME makes a new key (update the TLSA records)");
        return Ok(false);
    }
    // PKCS#8 as written by us; rcgen keeps other encodings (SEC1, PKCS#1) as they were, so
    // those are copied as PEM blocks of their own kind.
    let out = match rustls_pki_types::PrivateKeyDer::from_pem_slice(&pem) {
        Ok(rustls_pki_types::PrivateKeyDer::Pkcs8(_)) | Err(_) => key.serialize_pem().into_bytes(),
        Ok(_) => pem_of_first_key(&pem).ok_or_else(|| AcmeError::Key("no PEM key block".into()))?,
    };
    paths.create_dir()?;
    sealmail_safeio::write_private(&paths.key, &out).map_err(io_error(&paths.key))?;
    tracing::info!(
        key = %from.display(),
        key_spki_sha256 = %spki_sha256_hex(&spki_of(&key)),
        "ACME keeps the key of the certificate served before (TLSA 3 1 1 stays valid)"
    );
    Ok(true)
}

/// The first `-----BEGIN ... PRIVATE KEY-----` block of a PEM text, nothing else of it.
fn pem_of_first_key(pem: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(pem).ok()?;
    let start = text.find("-----BEGIN ")?;
    let rest = &text[start..];
    let label_end = rest.find("-----\n").or_else(|| rest.find("-----\r"))?;
    let label = rest.get("-----BEGIN ".len()..label_end)?;
    if !label.ends_with("PRIVATE KEY") {
        return None;
    }
    let end_marker = format!("-----END {label}-----");
    let end = rest.find(&end_marker)?.saturating_add(end_marker.len());
    let mut block = rest.get(..end)?.as_bytes().to_vec();
    block.push(b'\n');
    Some(block)
}

/// Creates a new ECDSA P-256 key at `path` (0600, atomic).
pub(crate) fn create_key(path: &Path) -> Result<KeyPair, AcmeError> {
    let key = KeyPair::generate().map_err(|e| AcmeError::Key(e.to_string()))?;
    sealmail_safeio::write_private(path, key.serialize_pem().as_bytes()).map_err(io_error(path))?;
    Ok(key)
}

/// Lower-case hex SHA-256 of a DER SubjectPublicKeyInfo: the data of a `TLSA 3 1 1` record.
pub fn spki_sha256_hex(spki_der: &[u8]) -> String {
    hex::encode(Sha256::digest(spki_der))
}

/// The `TLSA 3 1 1` hash of the key in a PEM key file; `None` when the file does not exist.
pub fn key_spki_sha256(path: &Path) -> Result<Option<String>, AcmeError> {
    Ok(read_key(path)?.map(|key| spki_sha256_hex(&crate::files::spki_of(&key))))
}

/// What the leaf certificate of a chain says.
#[derive(Debug, Clone)]
pub(crate) struct Leaf {
    pub(crate) der: CertificateDer<'static>,
    pub(crate) names: Vec<String>,
    pub(crate) issuer: String,
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
    pub(crate) spki: Vec<u8>,
}

impl Leaf {
    /// Whether every one of `wanted` (lower case) is among the certificate's DNS names.
    pub(crate) fn covers(&self, wanted: &[String]) -> bool {
        wanted.iter().all(|w| self.names.iter().any(|n| n == w))
    }
}

/// Parses a PEM chain; its first certificate is the leaf.
pub(crate) fn parse_chain(pem: &[u8]) -> Result<(Vec<CertificateDer<'static>>, Leaf), String> {
    use x509_parser::prelude::*;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let first = chain.first().ok_or("the chain holds no certificate")?.clone();
    let (_, cert) = X509Certificate::from_der(first.as_ref()).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    let leaf = Leaf {
        names,
        issuer: cert.issuer().to_string(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        spki: cert.public_key().raw.to_vec(),
        der: first,
    };
    Ok((chain, leaf))
}

/// Checks that each certificate of `chain` (leaf first) is signed by the next one's key and
/// names it as its issuer. The last one is not checked: the clients trust it, or not.
pub(crate) fn verify_links(chain: &[CertificateDer<'_>]) -> Result<(), String> {
    use x509_parser::prelude::*;
    let parsed = chain
        .iter()
        .map(|der| X509Certificate::from_der(der.as_ref()).map(|(_, cert)| cert))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    for (i, pair) in parsed.windows(2).enumerate() {
        let [cert, issuer] = pair else { continue };
        if cert.issuer() != issuer.subject() {
            return Err(format!(
                "certificate {i} of the chain is issued by {}, but the next one is {}",
                cert.issuer(),
                issuer.subject()
            ));
        }
        cert.verify_signature(Some(issuer.public_key())).map_err(|e| {
            format!(
                "certificate {i} of the chain ({}) is not signed by the next one ({}): {e}",
                cert.subject(),
                issuer.subject()
            )
        })?;
    }
    Ok(())
}

/// The leaf of `cert.pem`, if there is one that parses.
pub(crate) fn read_leaf(path: &Path) -> Result<Option<Leaf>, AcmeError> {
    let pem = match std::fs::read(path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path)(e)),
    };
    parse_chain(&pem)
        .map(|(_, leaf)| Some(leaf))
        .map_err(|detail| AcmeError::Check(format!("{} cannot be parsed: {detail}", path.display())))
}

/// The DER SubjectPublicKeyInfo of a key.
pub(crate) fn spki_of(key: &KeyPair) -> Vec<u8> {
    use rcgen::PublicKeyData;
    key.subject_public_key_info()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_key_copies_a_usable_key_once() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let served = CertificateFiles {
            cert: dir.path().join("served.pem"),
            key: dir.path().join("served.key"),
        };
        sealmail_tls::selfsigned::generate(&["mail.a.test".to_string()], &served, 30)?;
        let paths = AcmePaths::new(&dir.path().join("data"));
        assert!(seed_key(&paths, &served.key)?);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&paths.key)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // The TLSA 3 1 1 hash of key.pem is the served certificate's.
        let leaf = read_leaf(&served.cert)?.ok_or("no served certificate")?;
        assert_eq!(key_spki_sha256(&paths.key)?, Some(spki_sha256_hex(&leaf.spki)));
        // Once key.pem exists it is kept.
        let other = CertificateFiles {
            cert: dir.path().join("other.pem"),
            key: dir.path().join("other.key"),
        };
        sealmail_tls::selfsigned::generate(&["mail.a.test".to_string()], &other, 30)?;
        assert!(!seed_key(&paths, &other.key)?);
        assert_eq!(key_spki_sha256(&paths.key)?, Some(spki_sha256_hex(&leaf.spki)));
        Ok(())
    }

    #[test]
    fn seed_key_refuses_keys_acme_cannot_use() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let paths = AcmePaths::new(dir.path());
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        let ed_file = dir.path().join("ed.key");
        std::fs::write(&ed_file, ed.serialize_pem())?;
        assert!(!seed_key(&paths, &ed_file)?);
        let junk = dir.path().join("junk.key");
        std::fs::write(&junk, "not a key")?;
        assert!(!seed_key(&paths, &junk)?);
        assert!(!paths.key.exists());
        assert!(seed_key(&paths, &dir.path().join("missing.key")).is_err());
        // A P-384 key is taken.
        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)?;
        let p384_file = dir.path().join("p384.key");
        std::fs::write(&p384_file, p384.serialize_pem())?;
        assert!(seed_key(&paths, &p384_file)?);
        assert_eq!(read_key(&paths.key)?.map(|k| spki_of(&k)), Some(spki_of(&p384)));
        Ok(())
    }
}
