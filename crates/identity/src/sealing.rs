//! Secrets the store keeps but must not be able to give away (TOTP secrets), sealed with
//! AES-256-GCM under a key that lives in a file outside the store.
//!
//! A stolen database, or a backup of it, then holds no usable second factor without the key
//! file too. The key file holds 32 random bytes written as 64 lower-case hex digits and a
//! newline (so an administrator can back it up or compare it as text), mode 0600; it is refused
//! when group or others have any access to it, when it is a symbolic link, and when it holds
//! anything else. Losing it makes every sealed secret unreadable: enrolments must be redone.
//!
//! Sealed form: version byte (1) || 96-bit random nonce || ciphertext || 128-bit tag. NIST
//! SP 800-38D allows 2^32 seals with random nonces under one key; a seal happens once per
//! enrolment, far below that. The caller's `context` (the account id) is the associated data,
//! so a sealed secret copied into another account's row does not open there.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use rustix::fs::{Mode, OFlags};
use zeroize::Zeroizing;

use sealmail_safeio::UnsafeFile;

pub const KEY_LEN: usize = 32;
/// The first byte of everything sealed, so that another algorithm can be added later.
const VERSION: u8 = 1;
const TAG_LEN: usize = 16;
/// Longest key file read: 64 hex digits and some white space.
const MAX_KEY_FILE: u64 = 128;

#[derive(Debug, thiserror::Error)]
pub enum SealingError {
    #[error("the sealing key file {0} does not exist")]
    Missing(PathBuf),
    #[error("the sealing key file {path} is open to group or others (mode {mode:o}): chmod 600 it")]
    NotPrivate { path: PathBuf, mode: u32 },
    #[error("the sealing key file {0} is a symbolic link; give its real path")]
    Symlink(PathBuf),
    #[error("the sealing key file {0} is not a regular file")]
    NotAFile(PathBuf),
    #[error("the sealing key file {0} does not hold exactly {KEY_LEN} bytes as hex")]
    BadKeyFile(PathBuf),
    #[error("the sealing key file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the operating system gave no random numbers: {0}")]
    Random(String),
    #[error("sealing failed")]
    Seal,
    /// Too short, an unknown version, the wrong key or context, or altered: all look the same
    /// on purpose.
    #[error("the sealed secret does not open with this key and context")]
    Open,
}

/// The key secrets are sealed under; wiped when dropped, never shown by `Debug`.
pub struct SealingKey {
    key: Zeroizing<[u8; KEY_LEN]>,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(<redacted>)")
    }
}

impl SealingKey {
    /// Reads the key file at `path`. When it does not exist and `create` is true, makes it
    /// first (0600, a new random key; its folder must exist), without ever replacing a key file
    /// that appears meanwhile.
    pub fn load(path: &Path, create: bool) -> Result<SealingKey, SealingError> {
        let io_error = |source| SealingError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                create_key_file(path).map_err(io_error)?;
                fs::symlink_metadata(path).map_err(io_error)?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SealingError::Missing(path.to_path_buf()));
            }
            Err(e) => return Err(io_error(e)),
        };
        if meta.file_type().is_symlink() {
            return Err(SealingError::Symlink(path.to_path_buf()));
        }
        if !meta.is_file() {
            return Err(SealingError::NotAFile(path.to_path_buf()));
        }
        match sealmail_safeio::check_private(path) {
            Ok(()) => {}
            Err(UnsafeFile::TooOpen { mode }) => {
                return Err(SealingError::NotPrivate {
                    path: path.to_path_buf(),
                    mode,
                });
            }
            Err(UnsafeFile::Io(e)) => return Err(io_error(e)),
        }
        // O_NOFOLLOW, and the same file as checked above: a link or another file swapped in
        // after the checks is not read.
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY;
        let file = match rustix::fs::open(path, flags, Mode::empty()) {
            Ok(fd) => fs::File::from(fd),
            Err(rustix::io::Errno::LOOP) => return Err(SealingError::Symlink(path.to_path_buf())),
            Err(e) => return Err(io_error(e.into())),
        };
        let opened = file.metadata().map_err(io_error)?;
        if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
            return Err(io_error(io::Error::other(
                "the file changed while it was being checked",
            )));
        }
        let mut text = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE as usize + 1));
        file.take(MAX_KEY_FILE + 1)
            .read_to_end(&mut text)
            .map_err(io_error)?;
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        hex::decode_to_slice(text.trim_ascii(), key.as_mut_slice())
            .map_err(|_| SealingError::BadKeyFile(path.to_path_buf()))?;
        Ok(SealingKey { key })
    }

    fn aead(&self) -> Result<LessSafeKey, SealingError> {
        let unbound = UnboundKey::new(&AES_256_GCM, self.key.as_slice()).map_err(|_| SealingError::Seal)?;
        Ok(LessSafeKey::new(unbound))
    }

    /// A secret for another purpose, derived from this key (HMAC-SHA-256 of `label`), so that
    /// every node holding the key file derives the same one.
    pub fn derive(&self, label: &[u8]) -> [u8; 32] {
        use hmac::Mac;
        match <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(self.key.as_ref()) {
            Ok(mut mac) => {
                mac.update(label);
                mac.finalize().into_bytes().into()
            }
            // HMAC takes keys of any length; this arm is never reached.
            Err(_) => [0u8; 32],
        }
    }

    /// `plaintext` sealed with a new random nonce, `context` bound as associated data.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Result<Vec<u8>, SealingError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| SealingError::Random(e.to_string()))?;
        // Sized up front: the plaintext is copied in and encrypted in place, and no
        // reallocation may leave a copy of it behind.
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + TAG_LEN);
        sealed.push(VERSION);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(plaintext);
        let tag = self
            .aead()?
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut sealed[1 + NONCE_LEN..],
            )
            .map_err(|_| SealingError::Seal)?;
        sealed.extend_from_slice(tag.as_ref());
        Ok(sealed)
    }

    /// The plaintext of something [`SealingKey::seal`] made under this key with this `context`.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealingError> {
        let Some((&VERSION, rest)) = sealed.split_first() else {
            return Err(SealingError::Open);
        };
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(SealingError::Open);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealingError::Open)?;
        let mut buffer = Zeroizing::new(ciphertext.to_vec());
        let len = self
            .aead()?
            .open_in_place(nonce, Aad::from(context), buffer.as_mut_slice())
            .map_err(|_| SealingError::Open)?
            .len();
        buffer.truncate(len);
        Ok(buffer)
    }
}

/// Writes a new key file at `path` unless one exists by then. The key is written in full to a
/// private temporary file first, then hard-linked into place: link(2) never replaces an
/// existing name, so two servers starting together keep one key between them.
fn create_key_file(path: &Path) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    getrandom::fill(key.as_mut_slice()).map_err(|e| io::Error::other(e.to_string()))?;
    let mut text = Zeroizing::new([0u8; 2 * KEY_LEN + 1]);
    hex::encode_to_slice(key.as_slice(), &mut text[..2 * KEY_LEN])
        .map_err(|e| io::Error::other(e.to_string()))?;
    text[2 * KEY_LEN] = b'\n';

    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|e| io::Error::other(e.to_string()))?;
    let mut temporary_name = std::ffi::OsString::from(".");
    temporary_name.push(name);
    temporary_name.push(format!(".new-{}", hex::encode(random)));
    let temporary = path.with_file_name(temporary_name);
    sealmail_safeio::write_private(&temporary, text.as_slice())?;
    let linked = fs::hard_link(&temporary, path);
    let removed = fs::remove_file(&temporary);
    match linked {
        Ok(()) => {}
        // Someone else made it first; theirs is the key.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    removed?;
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    sealmail_safeio::sync_dir(folder)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn key_at(dir: &Path, name: &str) -> Result<SealingKey, SealingError> {
        SealingKey::load(&dir.join(name), true)
    }

    #[test]
    fn a_sealed_secret_opens_with_its_key_and_context() -> TestResult {
        let dir = tempfile::tempdir()?;
        let key = key_at(dir.path(), "sealing.key")?;
        let secret = b"12345678901234567890";
        let sealed = key.seal(secret, b"account 7")?;
        assert_eq!(sealed.len(), 1 + NONCE_LEN + secret.len() + TAG_LEN);
        assert_eq!(sealed[0], VERSION);
        assert!(!sealed.windows(secret.len()).any(|w| w == secret));
        assert_eq!(key.open(&sealed, b"account 7")?.as_slice(), secret);
        // A new nonce each time.
        assert_ne!(sealed, key.seal(secret, b"account 7")?);
        assert_eq!(key.open(&key.seal(b"", b"")?, b"")?.as_slice(), b"");
        Ok(())
    }

    #[test]
    fn another_context_a_flipped_bit_or_another_key_do_not_open() -> TestResult {
        let dir = tempfile::tempdir()?;
        let key = key_at(dir.path(), "one.key")?;
        let other = key_at(dir.path(), "two.key")?;
        let sealed = key.seal(b"secret", b"account 7")?;
        assert!(matches!(key.open(&sealed, b"account 8"), Err(SealingError::Open)));
        assert!(matches!(
            other.open(&sealed, b"account 7"),
            Err(SealingError::Open)
        ));
        for i in 0..sealed.len() {
            let mut altered = sealed.clone();
            altered[i] ^= 0x01;
            assert!(
                matches!(key.open(&altered, b"account 7"), Err(SealingError::Open)),
                "byte {i}"
            );
        }
        for cut in [0, 1, 1 + NONCE_LEN, 1 + NONCE_LEN + TAG_LEN - 1, sealed.len() - 1] {
            assert!(matches!(
                key.open(&sealed[..cut], b"account 7"),
                Err(SealingError::Open)
            ));
        }
        Ok(())
    }

    #[test]
    fn a_created_key_file_is_private_and_loads_as_the_same_key() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("sealing.key");
        assert!(matches!(
            SealingKey::load(&path, false),
            Err(SealingError::Missing(_))
        ));
        let first = SealingKey::load(&path, true)?;
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        let text = fs::read_to_string(&path)?;
        assert_eq!(text.len(), 2 * KEY_LEN + 1);
        assert!(text.trim_end().bytes().all(|b| b.is_ascii_hexdigit()));
        // Nothing else is left in the folder.
        assert_eq!(fs::read_dir(dir.path())?.count(), 1);
        // Loading again, creating or not, reads the same key and does not replace it.
        let second = SealingKey::load(&path, false)?;
        let third = SealingKey::load(&path, true)?;
        assert_eq!(fs::read_to_string(&path)?, text);
        let sealed = first.seal(b"secret", b"ctx")?;
        assert_eq!(second.open(&sealed, b"ctx")?.as_slice(), b"secret");
        assert_eq!(third.open(&sealed, b"ctx")?.as_slice(), b"secret");
        assert_eq!(format!("{first:?}"), "SealingKey(<redacted>)");
        Ok(())
    }

    #[test]
    fn key_files_open_to_others_are_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("sealing.key");
        SealingKey::load(&path, true)?;
        for mode in [0o644, 0o640, 0o604, 0o660] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
            let refused = SealingKey::load(&path, true);
            assert!(
                matches!(refused, Err(SealingError::NotPrivate { mode: m, .. }) if m == mode),
                "{mode:o}: {refused:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn a_link_to_a_key_file_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let real = dir.path().join("real.key");
        SealingKey::load(&real, true)?;
        let link = dir.path().join("sealing.key");
        std::os::unix::fs::symlink(&real, &link)?;
        assert!(matches!(
            SealingKey::load(&link, true),
            Err(SealingError::Symlink(_))
        ));
        // A dangling link is not replaced by a new key either.
        let dangling = dir.path().join("dangling.key");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling)?;
        assert!(matches!(
            SealingKey::load(&dangling, true),
            Err(SealingError::Symlink(_))
        ));
        assert!(!dir.path().join("nowhere").exists());
        Ok(())
    }

    #[test]
    fn key_files_of_the_wrong_shape_are_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("sealing.key");
        for contents in [
            "".to_string(),
            "00".repeat(KEY_LEN - 1),
            "00".repeat(KEY_LEN + 1),
            "zz".repeat(KEY_LEN),
            "00".repeat(1000),
        ] {
            sealmail_safeio::write_private(&path, contents.as_bytes())?;
            assert!(
                matches!(SealingKey::load(&path, true), Err(SealingError::BadKeyFile(_))),
                "{} bytes",
                contents.len()
            );
        }
        // Upper-case hex and surrounding white space are fine.
        sealmail_safeio::write_private(&path, format!("  {}\r\n", "AB".repeat(KEY_LEN)).as_bytes())?;
        SealingKey::load(&path, false)?;
        let folder = dir.path().join("folder.key");
        fs::create_dir(&folder)?;
        assert!(matches!(
            SealingKey::load(&folder, true),
            Err(SealingError::NotAFile(_))
        ));
        Ok(())
    }
}
