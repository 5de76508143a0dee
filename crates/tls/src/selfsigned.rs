//! Self-signed certificates for `sealmail init` and `quickstart`, made with rcgen: an ECDSA
//! P-256 key (written 0600) and a certificate for the given host names.

use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

use sealmail_config::CertificateFiles;

use crate::TlsError;

/// Generates a key and a certificate valid from now for `days`, and writes both.
pub fn generate(names: &[String], files: &CertificateFiles, days: i64) -> Result<(), TlsError> {
    generate_with_validity(names, files, 0, days)
}

/// Generates a certificate valid from `from_days` to `to_days` relative to now (negative values
/// are in the past; tests use them for expired certificates).
pub fn generate_with_validity(
    names: &[String],
    files: &CertificateFiles,
    from_days: i64,
    to_days: i64,
) -> Result<(), TlsError> {
    let generate_error = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let mut params = CertificateParams::new(names.to_vec()).map_err(generate_error)?;
    let mut dn = DistinguishedName::new();
    if let Some(first) = names.first() {
        dn.push(DnType::CommonName, first.clone());
    }
    dn.push(DnType::OrganizationName, "sealmail self-signed");
    params.distinguished_name = dn;
    params.not_before = days_from_now(from_days).into();
    params.not_after = days_from_now(to_days).into();
    let key = KeyPair::generate().map_err(generate_error)?;
    let cert = params.self_signed(&key).map_err(generate_error)?;

    for path in [&files.cert, &files.key] {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
                path: dir.to_path_buf(),
                source,
            })?;
        }
    }
    sealmail_safeio::write_private(&files.key, key.serialize_pem().as_bytes()).map_err(|source| {
        TlsError::Write {
            path: files.key.clone(),
            source,
        }
    })?;
    sealmail_safeio::write_public(&files.cert, cert.pem().as_bytes()).map_err(|source| TlsError::Write {
        path: files.cert.clone(),
        source,
    })?;
    Ok(())
}

fn days_from_now(days: i64) -> SystemTime {
    let offset = Duration::from_secs(days.unsigned_abs() * 86_400);
    if days >= 0 {
        SystemTime::now() + offset
    } else {
        SystemTime::now() - offset
    }
}
