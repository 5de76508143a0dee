//! The internal client CA: a CA of the server's own (`<data_dir>/client-ca/`) that issues each
//! user a certificate for TLS client authentication and S/MIME (RFC 8551), handed over as PEM
//! files and a password-protected PKCS#12 (RFC 7292) that mail clients import; plus the facts
//! (fingerprint, names, validity) of certificates users register themselves.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use sealmail_types::EmailAddress;

/// The CA certificate in the CA folder (what listeners trust).
pub const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";
/// The CA outlives every certificate it issues; ten years spares the admin a CA rollover, which
/// would mean re-issuing every user's certificate.
const CA_VALIDITY_DAYS: u64 = 3650;
/// Issued certificates start an hour early so a client whose clock lags still accepts them.
const BACKDATE: Duration = Duration::from_secs(3600);
/// Larger than any real certificate (a few KiB), small enough that an upload cannot hurt.
pub const MAX_CERTIFICATE_FILE: usize = 64 * 1024;
/// Thunderbird, Apple Mail and Outlook encrypt S/MIME to RSA keys only (key transport); 3072 bits
/// is NIST's size for use beyond 2030.
const LEAF_KEY_SIZE: rcgen::RsaKeySize = rcgen::RsaKeySize::_3072;
/// PBKDF2 rounds for the PKCS#12: the password carries 140 random bits, so these only need to be
/// what importers expect (OpenSSL writes 2048, Java 10000).
const P12_ITERATIONS: u32 = 10_000;
/// The password: 7 groups of 4 characters from a 32-letter alphabet, 5 bits each = 140 bits.
const PASSWORD_GROUPS: usize = 7;
const PASSWORD_GROUP_LEN: usize = 4;
/// Letters and digits without i, l, o and u, so no two read alike when typed from a screen.
const PASSWORD_ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
// At least 128 bits, 5 a character.
const _: () = assert!(PASSWORD_GROUPS * PASSWORD_GROUP_LEN * 5 >= 128);
/// id-emailAddress (PKCS #9): RFC 8550 section 3 has receivers accept the address there too,
/// and older clients look nowhere else.
const EMAIL_ADDRESS_OID: &[u64] = &[1, 2, 840, 113549, 1, 9, 1];

#[derive(Debug, thiserror::Error)]
pub enum ClientCaError {
    #[error(
        "a client CA already exists in {dir} ({file}); remove the folder first to start over, which invalidates every certificate it issued"
    )]
    Exists { dir: PathBuf, file: PathBuf },
    #[error("{path} does not exist; run `sealmail ca init` to create the client CA")]
    Missing { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{path} is reached through {link}, a symbolic link of another user; replace the link by the file"
    )]
    UntrustedLink { path: PathBuf, link: PathBuf },
    #[error("private key {path} is readable by other users (mode {mode:04o}); run `chmod 600 {path}`")]
    KeyTooOpen { path: PathBuf, mode: u32 },
    #[error("the client CA in {dir} is unusable: {detail}")]
    BadCa { dir: PathBuf, detail: String },
    #[error("{path} exists already; choose another folder or move it away")]
    WouldOverwrite { path: PathBuf },
    #[error("cannot issue a certificate for {address:?}: {detail}")]
    BadAddress { address: String, detail: String },
    #[error("cannot issue a certificate valid for {days} days: {detail}")]
    BadValidity { days: u32, detail: String },
    #[error("not a certificate: {0}")]
    BadCertificate(String),
    #[error("certificate file is {len} bytes; the limit is {MAX_CERTIFICATE_FILE}")]
    TooLarge { len: usize },
    #[error("cannot create a certificate: {0}")]
    Generate(String),
    #[error("cannot write the PKCS#12 file: {0}")]
    Pkcs12(String),
    #[error("no randomness from the operating system: {0}")]
    Random(String),
}

/// The internal client CA, loaded: its certificate and the key that signs what it issues.
/// `<data_dir>/client-ca/` holds ca.pem and ca.key (0600).
pub struct ClientCa {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    not_after: i64,
}

impl std::fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCa")
            .field("fingerprint", &fingerprint(&self.cert_der))
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl ClientCa {
    /// Makes a new CA in `dir` (created 0700): an ECDSA P-256 key, CN "sealmail client CA
    /// <hostname>", valid ten years, allowed to sign end-entity certificates only (path length
    /// 0). Refuses if a CA (either file) exists there already: replacing it would orphan every
    /// certificate it issued.
    pub fn init(dir: &Path, hostname: &str) -> Result<ClientCa, ClientCaError> {
        for name in [CA_CERT_FILE, CA_KEY_FILE] {
            let file = dir.join(name);
            if exists(&file)? {
                return Err(ClientCaError::Exists {
                    dir: dir.to_path_buf(),
                    file,
                });
            }
        }
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("sealmail client CA {hostname}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial()?);
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + Duration::from_secs(CA_VALIDITY_DAYS * 86_400)).into();
        let key = KeyPair::generate().map_err(generate_error)?;
        let cert = params.self_signed(&key).map_err(generate_error)?;

        sealmail_safeio::create_private_dir(dir).map_err(|source| ClientCaError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let key_path = dir.join(CA_KEY_FILE);
        let key_pem = Zeroizing::new(key.serialize_pem());
        sealmail_safeio::write_private(&key_path, key_pem.as_bytes()).map_err(|source| {
            ClientCaError::Io {
                path: key_path,
                source,
            }
        })?;
        let cert_path = dir.join(CA_CERT_FILE);
        sealmail_safeio::write_public(&cert_path, cert.pem().as_bytes()).map_err(|source| {
            ClientCaError::Io {
                path: cert_path,
                source,
            }
        })?;
        ClientCa::from_parts(dir, cert.der().clone(), key)
    }

    /// Loads the CA from `dir`, refusing a key that group or others may read.
    pub fn load(dir: &Path) -> Result<ClientCa, ClientCaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = read(&cert_path)?;
        let key_pem = Zeroizing::new(read(&key_path)?);
        match sealmail_safeio::check_private(&key_path) {
            Ok(()) => {}
            Err(sealmail_safeio::UnsafeFile::TooOpen { mode }) => {
                return Err(ClientCaError::KeyTooOpen { path: key_path, mode });
            }
            Err(sealmail_safeio::UnsafeFile::Io(source)) => {
                return Err(ClientCaError::Io {
                    path: key_path,
                    source,
                });
            }
        }
        let bad = |detail: String| ClientCaError::BadCa {
            dir: dir.to_path_buf(),
            detail,
        };
        let cert_der = CertificateDer::from_pem_slice(&cert_pem)
            .map_err(|e| bad(format!("{}: {e}", cert_path.display())))?;
        let key_text = std::str::from_utf8(&key_pem)
            .map_err(|_| bad(format!("{} is not PEM text", key_path.display())))?;
        let key = KeyPair::from_pem(key_text).map_err(|e| bad(format!("{}: {e}", key_path.display())))?;
        ClientCa::from_parts(dir, cert_der, key)
    }

    fn from_parts(
        dir: &Path,
        cert_der: CertificateDer<'static>,
        key: KeyPair,
    ) -> Result<ClientCa, ClientCaError> {
        use x509_parser::prelude::*;
        let bad = |detail: String| ClientCaError::BadCa {
            dir: dir.to_path_buf(),
            detail,
        };
        let (_, parsed) = X509Certificate::from_der(&cert_der).map_err(|e| bad(e.to_string()))?;
        // A key swapped for another would sign certificates that chain to nothing.
        if *parsed.public_key().subject_public_key.data != *rcgen::PublicKeyData::der_bytes(&key) {
            return Err(bad(format!("{CA_KEY_FILE} does not belong to {CA_CERT_FILE}")));
        }
        if !parsed.is_ca() {
            return Err(bad(format!("{CA_CERT_FILE} is not a CA certificate")));
        }
        let not_after = parsed.validity().not_after.timestamp();
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| bad(e.to_string()))?;
        let cert_pem = pem_of(&cert_der);
        Ok(ClientCa {
            cert_der,
            cert_pem,
            issuer,
            not_after,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Issues a certificate for `address`, valid from an hour ago for `days` days (at most until
    /// the CA itself expires), for TLS client authentication and S/MIME signing and encryption.
    pub fn issue(&self, address: &str, days: u32) -> Result<IssuedCertificate, ClientCaError> {
        let now = SystemTime::now();
        let not_after = now + Duration::from_secs(u64::from(days) * 86_400);
        let bad_validity = |detail: &str| ClientCaError::BadValidity {
            days,
            detail: detail.to_string(),
        };
        if days == 0 {
            return Err(bad_validity("give at least one day"));
        }
        if unix_seconds(not_after) > self.not_after {
            return Err(bad_validity(&format!(
                "the client CA expires earlier, at unix time {}",
                self.not_after
            )));
        }
        self.issue_between(address, now - BACKDATE, not_after)
    }

    pub(crate) fn issue_between(
        &self,
        address: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedCertificate, ClientCaError> {
        let address = leaf_address(address)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, address.clone());
        let ia5 = |s: &str| {
            rcgen::string::Ia5String::try_from(s.to_string()).map_err(|e| ClientCaError::BadAddress {
                address: s.to_string(),
                detail: e.to_string(),
            })
        };
        dn.push(
            DnType::CustomDnType(EMAIL_ADDRESS_OID.to_vec()),
            DnValue::Ia5String(ia5(&address)?),
        );
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::Rfc822Name(ia5(&address)?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::EmailProtection,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        params.not_before = not_before.into();
        params.not_after = not_after.into();

        let key =
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, LEAF_KEY_SIZE).map_err(generate_error)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate_error)?;
        let key_pem = Zeroizing::new(key.serialize_pem());
        let key_der = Zeroizing::new(key.serialize_der());
        let p12_password = new_password()?;
        let p12 = pkcs12(&address, &key_der, cert.der(), &self.cert_der, &p12_password)?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem,
            p12,
            p12_password,
            fingerprint: fingerprint(cert.der()),
            not_after: unix_seconds(not_after),
        })
    }
}

/// A certificate the client CA issued, with everything handed to its user.
pub struct IssuedCertificate {
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
    /// PKCS#12 with the key, the certificate and the CA certificate, the key's friendly name the
    /// address, encrypted (PBES2, PBKDF2-HMAC-SHA256, AES-256-CBC; MAC HMAC-SHA256) with
    /// `p12_password`.
    pub p12: Vec<u8>,
    /// Random, 140 bits, letters and digits in groups joined by '-' so it can be typed.
    pub p12_password: Zeroizing<String>,
    /// See [`fingerprint`].
    pub fingerprint: String,
    /// Unix seconds.
    pub not_after: i64,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("fingerprint", &self.fingerprint)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Lower-case hex SHA-256 of the DER certificate: what `openssl x509 -fingerprint -sha256`
/// shows, without the colons, lower-cased.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Facts about a certificate a user registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFacts {
    pub fingerprint: String,
    /// RFC 4514 form, as x509-parser prints it.
    pub subject: String,
    /// rfc822Name entries of the subjectAltName, then emailAddress attributes of the subject,
    /// each once.
    pub emails: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

/// The facts of the first certificate in a PEM file, or of a DER certificate.
pub fn certificate_facts(bytes: &[u8]) -> Result<CertificateFacts, ClientCaError> {
    if bytes.len() > MAX_CERTIFICATE_FILE {
        return Err(ClientCaError::TooLarge { len: bytes.len() });
    }
    let trimmed = bytes.trim_ascii_start();
    if trimmed.starts_with(b"-----BEGIN") {
        let der = CertificateDer::pem_slice_iter(bytes)
            .next()
            .ok_or_else(|| {
                ClientCaError::BadCertificate(
                    "no -----BEGIN CERTIFICATE----- block in the PEM text".to_string(),
                )
            })?
            .map_err(|e| ClientCaError::BadCertificate(e.to_string()))?;
        certificate_facts_der(&der)
    } else {
        certificate_facts_der(bytes)
    }
}

pub fn certificate_facts_der(der: &[u8]) -> Result<CertificateFacts, ClientCaError> {
    use x509_parser::prelude::*;
    if der.len() > MAX_CERTIFICATE_FILE {
        return Err(ClientCaError::TooLarge { len: der.len() });
    }
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| ClientCaError::BadCertificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ClientCaError::BadCertificate(format!(
            "{} bytes follow the certificate",
            rest.len()
        )));
    }
    let mut emails: Vec<String> = Vec::new();
    let mut add = |email: &str| {
        if !emails.iter().any(|e| e.eq_ignore_ascii_case(email)) {
            emails.push(email.to_string());
        }
    };
    let san = cert
        .subject_alternative_name()
        .map_err(|e| ClientCaError::BadCertificate(e.to_string()))?;
    if let Some(san) = san {
        for name in &san.value.general_names {
            if let GeneralName::RFC822Name(email) = name {
                add(email);
            }
        }
    }
    for attr in cert.subject().iter_email() {
        if let Ok(email) = attr.as_str() {
            add(email);
        }
    }
    Ok(CertificateFacts {
        fingerprint: fingerprint(der),
        subject: cert.subject().to_string(),
        emails,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Writes what `sealmail ca issue` hands over: cert.pem, key.pem (0600) and cert.p12 (0600) in
/// `dir`, created 0700 if missing (an existing folder keeps its mode: it may be the admin's
/// home). Refuses to overwrite any of the three, so an earlier user's key is never lost.
pub fn write_issued(dir: &Path, issued: &IssuedCertificate) -> Result<(), ClientCaError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ClientCaError::Io { path, source }
    };
    if !exists(dir)? {
        sealmail_safeio::create_private_dir(dir).map_err(io(dir))?;
    }
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let p12 = dir.join("cert.p12");
    for path in [&cert, &key, &p12] {
        if exists(path)? {
            return Err(ClientCaError::WouldOverwrite { path: path.clone() });
        }
    }
    sealmail_safeio::write_private(&key, issued.key_pem.as_bytes()).map_err(io(&key))?;
    sealmail_safeio::write_private(&p12, &issued.p12).map_err(io(&p12))?;
    sealmail_safeio::write_public(&cert, issued.cert_pem.as_bytes()).map_err(io(&cert))?;
    Ok(())
}

/// The address as it goes into the certificate: normalised like every address the server
/// stores, so the certificate matches the account. rfc822Name is an IA5String: a UTF-8 local
/// part would need RFC 8398's SmtpUTF8Mailbox, which mail clients do not read yet.
fn leaf_address(address: &str) -> Result<String, ClientCaError> {
    let parsed = EmailAddress::parse(address).map_err(|e| ClientCaError::BadAddress {
        address: address.to_string(),
        detail: e.to_string(),
    })?;
    let normalised = parsed.to_string();
    if !normalised.is_ascii() {
        return Err(ClientCaError::BadAddress {
            address: address.to_string(),
            detail: "the address is not ASCII; certificates name ASCII addresses only".to_string(),
        });
    }
    Ok(normalised)
}

fn pkcs12(
    address: &str,
    key_pkcs8: &[u8],
    cert: &[u8],
    ca: &[u8],
    password: &str,
) -> Result<Vec<u8>, ClientCaError> {
    use p12_keystore::{
        Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, PrivateKey, PrivateKeyChain,
    };
    let p12_error = |e: p12_keystore::error::Error| ClientCaError::Pkcs12(e.to_string());
    let key = PrivateKey::from_der(key_pkcs8).map_err(p12_error)?;
    let chain = [
        Certificate::from_der(cert).map_err(p12_error)?,
        Certificate::from_der(ca).map_err(p12_error)?,
    ];
    // localKeyId pairs the key with its certificate; importers only compare it.
    let local_key_id = Sha256::digest(cert).to_vec();
    let mut store = KeyStore::new();
    store.add_entry(
        address,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id, key, chain)),
    );
    store
        .writer(password)
        .encryption_algorithm(EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
        .encryption_iterations(P12_ITERATIONS)
        .mac_algorithm(MacAlgorithm::HmacSha256)
        .mac_iterations(P12_ITERATIONS)
        .write()
        .map_err(p12_error)
}

fn new_password() -> Result<Zeroizing<String>, ClientCaError> {
    let mut random = Zeroizing::new([0u8; PASSWORD_GROUPS * PASSWORD_GROUP_LEN]);
    getrandom::fill(random.as_mut()).map_err(|e| ClientCaError::Random(e.to_string()))?;
    let mut password = Zeroizing::new(String::with_capacity(PASSWORD_GROUPS * (PASSWORD_GROUP_LEN + 1)));
    for (i, byte) in random.iter().enumerate() {
        if i > 0 && i % PASSWORD_GROUP_LEN == 0 {
            password.push('-');
        }
        // 32 divides 256: the low five bits of a uniform byte are uniform.
        password.push(char::from(PASSWORD_ALPHABET[usize::from(byte & 31)]));
    }
    Ok(password)
}

/// 128 random bits: unpredictable serials are what stopped the MD5 collision CA forgeries, and
/// RFC 5280 asks for no more than 20 octets.
fn random_serial() -> Result<SerialNumber, ClientCaError> {
    let mut serial = [0u8; 16];
    getrandom::fill(&mut serial).map_err(|e| ClientCaError::Random(e.to_string()))?;
    // Positive and without a leading zero octet, so every encoder writes the same 16 bytes.
    serial[0] = (serial[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&serial))
}

fn generate_error(e: rcgen::Error) -> ClientCaError {
    ClientCaError::Generate(e.to_string())
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// RFC 7468 text: base64 in lines of 64 characters.
fn pem_of(der: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

fn exists(path: &Path) -> Result<bool, ClientCaError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(ClientCaError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ClientCaError> {
    match sealmail_safeio::untrusted_link(path) {
        Ok(None) => {}
        Ok(Some(link)) => {
            return Err(ClientCaError::UntrustedLink {
                path: path.to_path_buf(),
                link,
            });
        }
        Err(source) => {
            return Err(ClientCaError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ClientCaError::Missing {
            path: path.to_path_buf(),
        },
        _ => ClientCaError::Io {
            path: path.to_path_buf(),
            source,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// Runs `openssl` in `dir`; `None` (and a note) where it is not installed, as on a bare
    /// developer machine: these tests check interoperability, not our own code paths.
    fn openssl(dir: &Path, args: &[&str]) -> Result<Option<String>, Box<dyn std::error::Error>> {
        let output = match Command::new("openssl").args(args).current_dir(dir).output() {
            Ok(output) => output,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("openssl is not installed; skipping `openssl {}`", args.join(" "));
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            return Err(format!(
                "openssl {} failed: {}{}",
                args.join(" "),
                stdout,
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        // Some reports (pkcs12 -info) go to stderr.
        Ok(Some(stdout + &String::from_utf8_lossy(&output.stderr)))
    }

    fn mode_of(path: &Path) -> std::io::Result<u32> {
        Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
    }

    /// A CA in `<dir>/client-ca` and a certificate for alice written to `<dir>/alice`.
    fn issue_alice(dir: &Path) -> Result<(ClientCa, IssuedCertificate), Box<dyn std::error::Error>> {
        let ca = ClientCa::init(&dir.join("client-ca"), "mail.example.org")?;
        let issued = ca.issue("Alice@Example.ORG", 365)?;
        write_issued(&dir.join("alice"), &issued)?;
        Ok((ca, issued))
    }

    #[test]
    fn issued_files_have_private_modes() -> TestResult {
        let dir = tempfile::tempdir()?;
        issue_alice(dir.path())?;
        assert_eq!(mode_of(&dir.path().join("client-ca"))?, 0o700);
        assert_eq!(mode_of(&dir.path().join("client-ca/ca.key"))?, 0o600);
        assert_eq!(mode_of(&dir.path().join("alice"))?, 0o700);
        assert_eq!(mode_of(&dir.path().join("alice/key.pem"))?, 0o600);
        assert_eq!(mode_of(&dir.path().join("alice/cert.p12"))?, 0o600);
        Ok(())
    }

    #[test]
    fn the_p12_opens_in_openssl_with_the_password() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (ca, issued) = issue_alice(dir.path())?;
        let alice = dir.path().join("alice");
        let pass = format!("pass:{}", issued.p12_password.as_str());
        let Some(out) = openssl(&alice, &["pkcs12", "-in", "cert.p12", "-passin", &pass, "-nodes"])? else {
            return Ok(());
        };
        assert!(out.contains("friendlyName: alice@example.org"), "{out}");
        assert!(out.contains("-----BEGIN PRIVATE KEY-----"), "{out}");
        let certs: Vec<_> = CertificateDer::pem_slice_iter(out.as_bytes()).collect::<Result<_, _>>()?;
        let fingerprints: Vec<String> = certs.iter().map(|c| fingerprint(c)).collect();
        assert!(fingerprints.contains(&issued.fingerprint), "{out}");
        assert!(fingerprints.contains(&fingerprint(ca.cert_der())), "{out}");
        let Some(info) = openssl(
            &alice,
            &["pkcs12", "-in", "cert.p12", "-passin", &pass, "-info", "-noout"],
        )?
        else {
            return Ok(());
        };
        assert!(info.contains("MAC: sha256"), "{info}");
        for bag in ["PKCS7 Encrypted data", "Shrouded Keybag"] {
            let line = info
                .lines()
                .find(|l| l.starts_with(bag))
                .ok_or_else(|| format!("no {bag} in {info}"))?;
            assert!(
                line.contains("PBES2, PBKDF2, AES-256-CBC") && line.contains("hmacWithSHA256"),
                "{line}"
            );
        }
        // A wrong password does not open it.
        assert!(
            openssl(
                &alice,
                &["pkcs12", "-in", "cert.p12", "-passin", "pass:wrong", "-nodes"]
            )
            .is_err()
        );
        Ok(())
    }

    #[test]
    fn the_certificate_verifies_and_names_its_address_and_purposes() -> TestResult {
        let dir = tempfile::tempdir()?;
        issue_alice(dir.path())?;
        let alice = dir.path().join("alice");
        let ca_pem = dir.path().join("client-ca/ca.pem");
        let ca_pem = ca_pem.to_str().ok_or("path")?;
        for purpose in ["sslclient", "smimesign", "smimeencrypt"] {
            let Some(out) = openssl(
                &alice,
                &["verify", "-purpose", purpose, "-CAfile", ca_pem, "cert.pem"],
            )?
            else {
                return Ok(());
            };
            assert!(out.contains("cert.pem: OK"), "{out}");
        }
        let Some(out) = openssl(
            &alice,
            &[
                "x509",
                "-in",
                "cert.pem",
                "-noout",
                "-ext",
                "extendedKeyUsage,subjectAltName,keyUsage",
            ],
        )?
        else {
            return Ok(());
        };
        assert!(out.contains("E-mail Protection"), "{out}");
        assert!(out.contains("TLS Web Client Authentication"), "{out}");
        assert!(out.contains("email:alice@example.org"), "{out}");
        assert!(out.contains("Digital Signature, Key Encipherment"), "{out}");
        let Some(out) = openssl(&alice, &["x509", "-in", "cert.pem", "-noout", "-text"])? else {
            return Ok(());
        };
        assert!(out.contains("Public-Key: (3072 bit)"), "{out}");
        assert!(out.contains("emailAddress = alice@example.org"), "{out}");
        Ok(())
    }

    #[test]
    fn the_ca_certificate_is_a_ca_for_end_entities_only() -> TestResult {
        let dir = tempfile::tempdir()?;
        issue_alice(dir.path())?;
        let Some(out) = openssl(
            &dir.path().join("client-ca"),
            &["x509", "-in", "ca.pem", "-noout", "-text"],
        )?
        else {
            return Ok(());
        };
        assert!(out.contains("CA:TRUE, pathlen:0"), "{out}");
        assert!(out.contains("Certificate Sign, CRL Sign"), "{out}");
        assert!(out.contains("CN = sealmail client CA mail.example.org"), "{out}");
        Ok(())
    }

    #[test]
    fn smime_signing_and_encryption_work_in_openssl() -> TestResult {
        let dir = tempfile::tempdir()?;
        issue_alice(dir.path())?;
        let alice = dir.path().join("alice");
        let ca_pem = dir.path().join("client-ca/ca.pem");
        let ca_pem = ca_pem.to_str().ok_or("path")?;
        let text = "Subject: test\r\n\r\nhello from sealmail\r\n";
        std::fs::write(alice.join("msg.txt"), text)?;
        let steps: [&[&str]; 4] = [
            &[
                "cms",
                "-sign",
                "-in",
                "msg.txt",
                "-signer",
                "cert.pem",
                "-inkey",
                "key.pem",
                "-out",
                "signed.p7m",
            ],
            &[
                "cms",
                "-verify",
                "-in",
                "signed.p7m",
                "-CAfile",
                ca_pem,
                "-out",
                "verified.txt",
            ],
            &[
                "cms",
                "-encrypt",
                "-aes256",
                "-in",
                "msg.txt",
                "-out",
                "encrypted.p7m",
                "cert.pem",
            ],
            &[
                "cms",
                "-decrypt",
                "-in",
                "encrypted.p7m",
                "-recip",
                "cert.pem",
                "-inkey",
                "key.pem",
                "-out",
                "decrypted.txt",
            ],
        ];
        for step in steps {
            if openssl(&alice, step)?.is_none() {
                return Ok(());
            }
        }
        assert_eq!(std::fs::read_to_string(alice.join("verified.txt"))?, text);
        assert_eq!(std::fs::read_to_string(alice.join("decrypted.txt"))?, text);
        Ok(())
    }

    #[test]
    fn the_fingerprint_is_the_one_openssl_shows() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (_, issued) = issue_alice(dir.path())?;
        let Some(out) = openssl(
            &dir.path().join("alice"),
            &["x509", "-in", "cert.pem", "-noout", "-fingerprint", "-sha256"],
        )?
        else {
            return Ok(());
        };
        let shown = out.trim().rsplit('=').next().ok_or("no fingerprint")?;
        assert_eq!(shown.replace(':', "").to_lowercase(), issued.fingerprint);
        assert_eq!(issued.fingerprint.len(), 64);
        Ok(())
    }

    #[test]
    fn the_password_is_long_random_and_typable() -> TestResult {
        let dir = tempfile::tempdir()?;
        let ca = ClientCa::init(dir.path(), "mail.test")?;
        let a = ca.issue("a@example.org", 1)?;
        let b = ca.issue("b@example.org", 1)?;
        assert_ne!(a.p12_password, b.p12_password);
        let groups: Vec<&str> = a.p12_password.split('-').collect();
        assert_eq!(groups.len(), PASSWORD_GROUPS);
        for group in groups {
            assert_eq!(group.len(), PASSWORD_GROUP_LEN);
            assert!(group.bytes().all(|c| PASSWORD_ALPHABET.contains(&c)), "{group}");
        }
        assert_ne!(a.fingerprint, b.fingerprint);
        Ok(())
    }

    #[test]
    fn init_refuses_an_existing_ca_and_load_finds_it_again() -> TestResult {
        let dir = tempfile::tempdir()?;
        let ca_dir = dir.path().join("client-ca");
        let ca = ClientCa::init(&ca_dir, "mail.test")?;
        let err = ClientCa::init(&ca_dir, "mail.test")
            .err()
            .ok_or("a second CA was made")?;
        assert!(matches!(err, ClientCaError::Exists { .. }), "{err}");

        let loaded = ClientCa::load(&ca_dir)?;
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        assert_eq!(std::fs::read_to_string(ca_dir.join(CA_CERT_FILE))?, ca.cert_pem());
        // What the loaded CA issues chains to the same certificate.
        let issued = loaded.issue("carol@example.org", 10)?;
        let facts = certificate_facts(issued.cert_pem.as_bytes())?;
        assert!(facts.subject.contains("carol@example.org"), "{}", facts.subject);

        std::fs::set_permissions(ca_dir.join(CA_KEY_FILE), std::fs::Permissions::from_mode(0o640))?;
        let err = ClientCa::load(&ca_dir).err().ok_or("loaded an open key")?;
        assert!(err.to_string().contains("chmod 600"), "{err}");

        let err = ClientCa::load(&dir.path().join("none"))
            .err()
            .ok_or("loaded nothing")?;
        assert!(err.to_string().contains("sealmail ca init"), "{err}");
        Ok(())
    }

    #[test]
    fn load_refuses_a_key_of_another_ca() -> TestResult {
        let dir = tempfile::tempdir()?;
        let one = dir.path().join("one");
        let two = dir.path().join("two");
        ClientCa::init(&one, "mail.test")?;
        ClientCa::init(&two, "mail.test")?;
        std::fs::copy(two.join(CA_KEY_FILE), one.join(CA_KEY_FILE))?;
        let err = ClientCa::load(&one).err().ok_or("loaded a foreign key")?;
        assert!(err.to_string().contains("does not belong"), "{err}");
        Ok(())
    }

    #[test]
    fn write_issued_never_overwrites() -> TestResult {
        let dir = tempfile::tempdir()?;
        let ca = ClientCa::init(&dir.path().join("ca"), "mail.test")?;
        let out = dir.path().join("out");
        write_issued(&out, &ca.issue("a@example.org", 1)?)?;
        let before = std::fs::read(out.join("key.pem"))?;
        let err = write_issued(&out, &ca.issue("a@example.org", 1)?)
            .err()
            .ok_or("overwrote")?;
        assert!(matches!(err, ClientCaError::WouldOverwrite { .. }), "{err}");
        assert_eq!(std::fs::read(out.join("key.pem"))?, before);
        // An existing folder keeps its mode.
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared)?;
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755))?;
        write_issued(&shared, &ca.issue("b@example.org", 1)?)?;
        assert_eq!(mode_of(&shared)?, 0o755);
        Ok(())
    }

    #[test]
    fn issue_refuses_bad_addresses_and_validities() -> TestResult {
        let dir = tempfile::tempdir()?;
        let ca = ClientCa::init(dir.path(), "mail.test")?;
        for address in [
            "no-at-sign",
            "@example.org",
            "a b@example.org",
            "jörg@example.org",
        ] {
            let err = ca.issue(address, 1).err().ok_or(address)?;
            assert!(
                matches!(err, ClientCaError::BadAddress { .. }),
                "{address}: {err}"
            );
        }
        assert!(matches!(
            ca.issue("a@example.org", 0),
            Err(ClientCaError::BadValidity { .. })
        ));
        assert!(matches!(
            ca.issue("a@example.org", 3650 * 2),
            Err(ClientCaError::BadValidity { .. })
        ));
        Ok(())
    }

    #[test]
    fn facts_come_from_pem_or_der_and_bad_input_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let ca = ClientCa::init(dir.path(), "mail.test")?;
        let issued = ca.issue("Dave@Example.org", 30)?;
        let facts = certificate_facts(format!("\n{}", issued.cert_pem).as_bytes())?;
        assert_eq!(facts.fingerprint, issued.fingerprint);
        assert_eq!(facts.emails, vec!["dave@example.org".to_string()]);
        assert_eq!(facts.not_after, issued.not_after);
        let now = sealmail_types::clock::now_unix();
        assert!(facts.not_before <= now - 3000 && facts.not_before > now - 4000);
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())?;
        assert_eq!(certificate_facts(&der)?, facts);
        assert_eq!(certificate_facts_der(&der)?, facts);

        let mut trailing = der.to_vec();
        trailing.push(0);
        assert!(certificate_facts_der(&trailing).is_err());
        assert!(certificate_facts(b"not a certificate").is_err());
        assert!(
            certificate_facts(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err()
        );
        assert!(matches!(
            certificate_facts(&vec![b'x'; MAX_CERTIFICATE_FILE + 1]),
            Err(ClientCaError::TooLarge { .. })
        ));
        Ok(())
    }
}
