//! Writing files so that a crash never leaves a half-written one and secrets are never exposed,
//! and checking that secret files are private.
//!
//! A write goes to a temporary file in the same folder, which is fsynced, renamed over the
//! target, and then the folder is fsynced so that the rename itself survives a power cut.
//! Private files are created with mode 0600 from the start (never chmod-ed after being written).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Writes `contents` to `path` atomically with mode 0600.
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    write_atomic(path, contents, 0o600)
}

/// Writes `contents` to `path` atomically with mode 0644.
pub fn write_public(path: &Path, contents: &[u8]) -> io::Result<()> {
    write_atomic(path, contents, 0o644)
}

fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_of(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The mode given to open() is filtered by the umask; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(&dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Fsyncs a folder so that entries created, renamed or removed in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates a folder (and its parents) readable only by its owner (0700).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Why a secret file is not safe to use.
#[derive(Debug)]
pub enum UnsafeFile {
    /// Group or others may read or write it; `mode` holds the permission bits found.
    TooOpen {
        mode: u32,
    },
    Io(io::Error),
}

/// Checks that a secret file (a private key, a credential file) or a private folder (the data
/// folder) gives no access to group or others.
pub fn check_private(path: &Path) -> Result<(), UnsafeFile> {
    let meta = fs::metadata(path).map_err(UnsafeFile::Io)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(UnsafeFile::TooOpen { mode });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_0600_and_replaced_atomically() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("key.pem");
        write_private(&path, b"first")?;
        write_private(&path, b"second")?;
        assert_eq!(fs::read(&path)?, b"second");
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        assert!(check_private(&path).is_ok());
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path())?.count(), 1);
        Ok(())
    }

    #[test]
    fn open_files_are_reported_with_their_mode() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("key.pem");
        write_public(&path, b"x")?;
        assert!(matches!(
            check_private(&path),
            Err(UnsafeFile::TooOpen { mode: 0o644 })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640))?;
        assert!(matches!(
            check_private(&path),
            Err(UnsafeFile::TooOpen { mode: 0o640 })
        ));
        Ok(())
    }
}
