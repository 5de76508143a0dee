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
    KeyPair::from_pem(&pem)
        .map(Some)
        .map_err(|e| AcmeError::Key(format!("{} cannot be used as a key: {e}", path.display())))
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
