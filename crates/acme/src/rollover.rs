//! DANE-safe key rollover (RFC 7671 section 8.1, "current + next"). Renewals keep `key.pem`,
//! so a published `TLSA 3 1 1` stays valid. To change the key: [`prepare`] makes
//! `next-key.pem`; the operator publishes its TLSA record beside the current one (both hashes:
//! [`current_spki_sha256`], [`next_spki_sha256`]); a renewal switches to it when asked
//! (`Acme::switch_key`) or once the pending key is older than `rollover_wait` (enough for the
//! old TLSA set's TTL to pass). The switch writes `cert.pem` for the new key, then renames
//! `next-key.pem` over `key.pem`; a crash between the two is finished at the next start.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::AcmeError;
use crate::files::{AcmePaths, create_key, io_error, key_spki_sha256, read_leaf};

/// A prepared key waiting to be switched to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingKey {
    /// When `next-key.pem` was written.
    pub since: SystemTime,
    /// Its `TLSA 3 1 1` hash (hex SHA-256 of the SubjectPublicKeyInfo).
    pub spki_sha256: String,
}

/// Creates `next-key.pem`; refuses when one exists already. Returns its `TLSA 3 1 1` hash.
pub fn prepare(data_dir: &Path) -> Result<String, AcmeError> {
    let paths = AcmePaths::new(data_dir);
    paths.create_dir()?;
    if paths.next_key.exists() {
        return Err(AcmeError::Config(format!(
            "a key rollover is pending already ({} exists); let it finish, or remove the file to cancel it",
            paths.next_key.display()
        )));
    }
    let key = create_key(&paths.next_key)?;
    Ok(crate::files::spki_sha256_hex(&crate::files::spki_of(&key)))
}

/// The pending rollover, if any.
pub fn pending(data_dir: &Path) -> Result<Option<PendingKey>, AcmeError> {
    let paths = AcmePaths::new(data_dir);
    let Some(spki_sha256) = key_spki_sha256(&paths.next_key)? else {
        return Ok(None);
    };
    let since = std::fs::metadata(&paths.next_key)
        .and_then(|m| m.modified())
        .map_err(io_error(&paths.next_key))?;
    Ok(Some(PendingKey { since, spki_sha256 }))
}

/// The `TLSA 3 1 1` hash of `key.pem` (the key in service), if it exists.
pub fn current_spki_sha256(data_dir: &Path) -> Result<Option<String>, AcmeError> {
    key_spki_sha256(&AcmePaths::new(data_dir).key)
}

/// The `TLSA 3 1 1` hash of `next-key.pem`, if a rollover is pending.
pub fn next_spki_sha256(data_dir: &Path) -> Result<Option<String>, AcmeError> {
    key_spki_sha256(&AcmePaths::new(data_dir).next_key)
}

/// Whether a renewal now should use the pending key: when asked, or once it has waited
/// `wait` (a key whose time lies in the future has not waited).
pub fn should_switch(since: SystemTime, now: SystemTime, wait: Duration, switch_now: bool) -> bool {
    switch_now || now.duration_since(since).is_ok_and(|age| age >= wait)
}

/// `next-key.pem` becomes `key.pem` (after `cert.pem` was written for it).
pub(crate) fn complete(paths: &AcmePaths) -> Result<(), AcmeError> {
    std::fs::rename(&paths.next_key, &paths.key).map_err(io_error(&paths.key))?;
    sealmail_safeio::sync_dir(&paths.dir).map_err(io_error(&paths.dir))
}

/// Finishes a switch a crash interrupted: when `cert.pem` already holds the certificate for
/// `next-key.pem`'s key, `next-key.pem` becomes `key.pem`, so the pair matches again. Call it
/// before loading `cert.pem` and `key.pem`; it does nothing when no rollover is pending, none
/// was interrupted, or the folder does not exist.
pub fn finish_interrupted(paths: &AcmePaths) -> Result<(), AcmeError> {
    let Some(next) = crate::files::read_key(&paths.next_key)? else {
        return Ok(());
    };
    if let Ok(Some(leaf)) = read_leaf(&paths.cert)
        && leaf.spki == crate::files::spki_of(&next)
    {
        tracing::info!("finishing an interrupted key rollover: next-key.pem becomes key.pem");
        complete(paths)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_when_asked_or_after_the_wait() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let wait = Duration::from_secs(2 * 86_400);
        assert!(!should_switch(t0, t0 + Duration::from_secs(3600), wait, false));
        assert!(should_switch(t0, t0 + Duration::from_secs(3600), wait, true));
        assert!(should_switch(t0, t0 + wait, wait, false));
        assert!(!should_switch(t0 + wait, t0, wait, false), "future mtime");
    }

    #[test]
    fn finishing_an_interrupted_switch() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let paths = AcmePaths::new(&dir.path().join("nothing-here"));
        finish_interrupted(&paths)?;
        assert!(!paths.dir.exists(), "nothing created");

        let paths = AcmePaths::new(dir.path());
        paths.create_dir()?;
        finish_interrupted(&paths)?;
        let key = create_key(&paths.key)?;
        let cert = rcgen::CertificateParams::new(vec!["mail.a.test".to_string()])?.self_signed(&key)?;
        std::fs::write(&paths.cert, cert.pem())?;
        finish_interrupted(&paths)?;
        let next = prepare(dir.path())?;
        // Pending, cert.pem still for key.pem: nothing to finish.
        finish_interrupted(&paths)?;
        assert_eq!(next_spki_sha256(dir.path())?, Some(next.clone()));

        // The crash: cert.pem for the next key written, the rename not done.
        let next_key = crate::files::read_key(&paths.next_key)?.ok_or("no next key")?;
        let cert = rcgen::CertificateParams::new(vec!["mail.a.test".to_string()])?.self_signed(&next_key)?;
        std::fs::write(&paths.cert, cert.pem())?;
        finish_interrupted(&paths)?;
        assert_eq!(current_spki_sha256(dir.path())?, Some(next));
        assert_eq!(pending(dir.path())?, None);
        Ok(())
    }

    #[test]
    fn prepare_refuses_a_second_pending_key() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        assert_eq!(pending(dir.path())?, None);
        let hash = prepare(dir.path())?;
        assert_eq!(hash.len(), 64);
        let p = pending(dir.path())?.ok_or("no pending key")?;
        assert_eq!(p.spki_sha256, hash);
        assert_eq!(next_spki_sha256(dir.path())?, Some(hash));
        let again = prepare(dir.path()).err().ok_or("a second prepare worked")?;
        assert!(again.to_string().contains("pending already"), "{again}");
        assert_eq!(current_spki_sha256(dir.path())?, None);
        Ok(())
    }
}
