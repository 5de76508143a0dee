//! DKIM signing of mail from our domains (RFC 6376), with two signatures per message: Ed25519
//! (RFC 8463) and RSA-2048, so receivers that know only RSA still verify one.
//!
//! Keys live in `DATA/dkim/DOMAIN/SELECTOR.pem` (PKCS#8, mode 0600), made by `sealmail domain
//! add` (or imported there by hand). `DATA/dkim/DOMAIN/active` lists the selectors that sign;
//! every key in the folder is published by `sealmail domain dns`, so a rotated-out key stays
//! verifiable until its file is removed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{DkimSigner, Done};
use rcgen::{KeyPair, PKCS_ED25519, PKCS_RSA_SHA256, PublicKeyData, RsaKeySize};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// The folder inside the data folder that holds the keys.
pub const DKIM_DIR: &str = "dkim";

/// RFC 6376 5.4.1's recommended header fields; From is listed twice so that a second From
/// added later breaks the signature (over-signing).
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Resent-Date",
    "Resent-From",
    "Resent-To",
    "Resent-Cc",
    "In-Reply-To",
    "References",
    "List-Id",
    "List-Help",
    "List-Unsubscribe",
    "List-Subscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("DKIM key file {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("cannot generate a DKIM key: {0}")]
    Generate(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Ed25519,
    Rsa,
}

impl KeyKind {
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::Ed25519 => "ed25519",
            KeyKind::Rsa => "rsa",
        }
    }
}

/// A key as stored: its selector, kind, the private key (PKCS#8 DER) and the public key as the
/// DNS record's `p=` carries it.
pub struct StoredKey {
    pub selector: String,
    pub kind: KeyKind,
    pkcs8: zeroize::Zeroizing<Vec<u8>>,
    pub public: Vec<u8>,
}

impl StoredKey {
    /// The TXT record for `SELECTOR._domainkey.DOMAIN`.
    pub fn txt_record(&self) -> String {
        format!(
            "v=DKIM1; k={}; p={}",
            self.kind.name(),
            base64::engine::general_purpose::STANDARD.encode(&self.public)
        )
    }
}

fn domain_dir(dkim_dir: &Path, domain: &str) -> PathBuf {
    dkim_dir.join(domain)
}

fn read_key(path: &Path) -> Result<StoredKey, DkimError> {
    let error = |reason: String| DkimError::Key {
        path: path.to_path_buf(),
        reason,
    };
    match sealmail_safeio::check_private(path) {
        Ok(()) => {}
        Err(sealmail_safeio::UnsafeFile::TooOpen { mode }) => {
            return Err(error(format!(
                "readable by other users (mode {mode:04o}); run `chmod 600 {}`",
                path.display()
            )));
        }
        Err(sealmail_safeio::UnsafeFile::Io(e)) => return Err(error(e.to_string())),
    }
    let pem = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    let key = KeyPair::from_pem(&pem).map_err(|e| error(format!("not a PKCS#8 PEM private key ({e})")))?;
    let kind = if key.algorithm() == &PKCS_ED25519 {
        KeyKind::Ed25519
    } else if key.algorithm() == &PKCS_RSA_SHA256 {
        KeyKind::Rsa
    } else {
        return Err(error("only Ed25519 and RSA keys are used for DKIM".into()));
    };
    let public = match kind {
        KeyKind::Ed25519 => key.public_key_raw().to_vec(),
        KeyKind::Rsa => key.subject_public_key_info(),
    };
    let selector = path
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| is_selector(s))
        .ok_or_else(|| {
            error("the file name is not a selector (letters, digits and hyphens, 1 to 63 of them)".into())
        })?
        .to_string();
    Ok(StoredKey {
        selector,
        kind,
        pkcs8: zeroize::Zeroizing::new(key.serialize_der()),
        public,
    })
}

/// A selector that can go into a DKIM-Signature `s=` tag and a DNS label as it is.
fn is_selector(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Every key of a domain (what `domain dns` publishes), by selector.
pub fn published_keys(dkim_dir: &Path, domain: &str) -> Result<Vec<StoredKey>, DkimError> {
    let dir = domain_dir(dkim_dir, domain);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut keys = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) == Some("pem") {
            keys.push(read_key(&path)?);
        }
    }
    keys.sort_by(|a, b| a.selector.cmp(&b.selector));
    Ok(keys)
}

/// The selectors that sign (the `active` file).
pub fn active_selectors(dkim_dir: &Path, domain: &str) -> Vec<String> {
    std::fs::read_to_string(domain_dir(dkim_dir, domain).join("active"))
        .map(|text| {
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Makes a new Ed25519 and a new RSA-2048 key for `domain` under new selectors named after
/// `period` (e.g. "202611": "ed202611", "rsa202611"), and makes them the active ones. Earlier
/// keys stay (and stay published) until their files are removed.
pub fn generate(dkim_dir: &Path, domain: &str, period: &str) -> Result<Vec<String>, DkimError> {
    let dir = domain_dir(dkim_dir, domain);
    sealmail_safeio::create_private_dir(&dir)
        .map_err(|e| DkimError::Generate(format!("{}: {e}", dir.display())))?;
    let mut selectors = Vec::new();
    for (prefix, kind) in [("ed", KeyKind::Ed25519), ("rsa", KeyKind::Rsa)] {
        let mut selector = format!("{prefix}{period}");
        let mut n = 1;
        while dir.join(format!("{selector}.pem")).exists() {
            n += 1;
            selector = format!("{prefix}{period}n{n}");
        }
        let key = match kind {
            KeyKind::Ed25519 => KeyPair::generate_for(&PKCS_ED25519),
            KeyKind::Rsa => KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048),
        }
        .map_err(|e| DkimError::Generate(e.to_string()))?;
        let path = dir.join(format!("{selector}.pem"));
        sealmail_safeio::write_private(&path, key.serialize_pem().as_bytes())
            .map_err(|e| DkimError::Generate(format!("{}: {e}", path.display())))?;
        selectors.push(selector);
    }
    let active = dir.join("active");
    sealmail_safeio::write_private(&active, format!("{}\n", selectors.join("\n")).as_bytes())
        .map_err(|e| DkimError::Generate(format!("{}: {e}", active.display())))?;
    Ok(selectors)
}

/// A signer made once per active key (the keys are parsed at start-up, not per message).
enum ActiveKey {
    Ed25519(DkimSigner<Ed25519Key, Done>),
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
}

/// The active keys of every domain, loaded once at start-up.
#[derive(Default)]
pub struct Signer {
    domains: HashMap<String, Vec<ActiveKey>>,
}

impl Signer {
    /// Loads the active keys of each domain; a domain without keys is not signed for.
    pub fn load(dkim_dir: &Path, domains: &[String]) -> Result<Signer, DkimError> {
        let mut signer = Signer::default();
        for domain in domains {
            let active = active_selectors(dkim_dir, domain);
            let mut keys = Vec::new();
            for stored in published_keys(dkim_dir, domain)? {
                if !active.contains(&stored.selector) {
                    continue;
                }
                let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(stored.pkcs8.to_vec()));
                let key_error = |e: mail_auth::Error| DkimError::Key {
                    path: dkim_dir.join(domain).join(format!("{}.pem", stored.selector)),
                    reason: e.to_string(),
                };
                let active = match stored.kind {
                    KeyKind::Ed25519 => ActiveKey::Ed25519(
                        DkimSigner::from_key(Ed25519Key::from_pkcs8_der(&stored.pkcs8).map_err(key_error)?)
                            .domain(domain)
                            .selector(&stored.selector)
                            .headers(SIGNED_HEADERS.iter().copied()),
                    ),
                    KeyKind::Rsa => ActiveKey::Rsa(
                        DkimSigner::from_key(RsaKey::<Sha256>::from_key_der(der).map_err(key_error)?)
                            .domain(domain)
                            .selector(&stored.selector)
                            .headers(SIGNED_HEADERS.iter().copied()),
                    ),
                };
                // Ed25519 first, whatever the selectors' order.
                match active {
                    ActiveKey::Ed25519(_) => keys.insert(0, active),
                    ActiveKey::Rsa(_) => keys.push(active),
                }
            }
            if !keys.is_empty() {
                signer.domains.insert(domain.to_ascii_lowercase(), keys);
            }
        }
        Ok(signer)
    }

    pub fn signs_for(&self, domain: &str) -> bool {
        self.domains.contains_key(&domain.to_ascii_lowercase())
    }

    /// The DKIM-Signature header fields (Ed25519 first) for `message`, signed as `domain`;
    /// empty when the domain has no keys.
    pub fn sign(&self, domain: &str, message: &[u8]) -> Result<Vec<u8>, DkimError> {
        let Some(keys) = self.domains.get(&domain.to_ascii_lowercase()) else {
            return Ok(Vec::new());
        };
        let mut headers = Vec::new();
        for active in keys {
            let signature = match active {
                ActiveKey::Ed25519(signer) => signer.sign(message),
                ActiveKey::Rsa(signer) => signer.sign(message),
            }
            .map_err(|e| DkimError::Sign(e.to_string()))?;
            headers.extend_from_slice(signature.to_header().as_bytes());
        }
        Ok(headers)
    }
}

/// DKIM signing as a submission session needs it (its unit tests use a fake).
pub trait MessageSigning: Send + Sync {
    /// Whether mail from `domain` is signed here.
    fn signs_for(&self, domain: &str) -> bool;
    /// The DKIM-Signature header fields for `message` (headers and body) as `domain`.
    fn sign(&self, domain: &str, message: &[u8]) -> Result<Vec<u8>, DkimError>;
}

impl MessageSigning for Signer {
    fn signs_for(&self, domain: &str) -> bool {
        Signer::signs_for(self, domain)
    }

    fn sign(&self, domain: &str, message: &[u8]) -> Result<Vec<u8>, DkimError> {
        Signer::sign(self, domain, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_dns_labels() {
        for good in ["ed2026", "rsa-2026-12", "a"] {
            assert!(is_selector(good), "{good}");
        }
        for bad in ["", "-a", "a-", "a.b", "a;b", "a b", "s\r\nx", &"a".repeat(64)] {
            assert!(!is_selector(bad), "{bad:?}");
        }
    }
}
