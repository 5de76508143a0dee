//! Writing files so that a crash never leaves a half-written one and secrets are never exposed,
//! checking that secret files are private, and handing a folder tree to another user without
//! being led out of it.
//!
//! A write goes to a temporary file in the same folder, which is fsynced, renamed over the
//! target, and then the folder is fsynced so that the rename itself survives a power cut.
//! Private files are created with mode 0600 from the start (never chmod-ed after being written).
//!
//! Root runs some of these in folders the service user can write to (the data folder), so
//! nothing here follows a symbolic link planted there: temporary files have random names and
//! are created with `O_EXCL` (which never opens an existing file or link), a rename replaces a
//! link at the target instead of writing through it, and the ownership walk opens each entry
//! relative to its folder with `O_NOFOLLOW` (`openat`) and changes the opened entry (`fchown`).

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Uid};

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
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".tmp");
    // A random name, created with O_CREAT | O_EXCL: a file or link planted under a name we
    // would pick is never opened. The file is removed if anything below fails.
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .rand_bytes(12)
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(&dir)?;
    // The mode given to open() is filtered by the umask; set it exactly.
    tmp.as_file().set_permissions(fs::Permissions::from_mode(mode))?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    // rename(2) replaces whatever is at `path`, a link included, and never writes through it.
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(&dir)
}

/// Opens `path` for appending, creating it with mode 0600. A symbolic link at `path` is refused
/// (`O_NOFOLLOW`), so a link planted in a folder someone else can write to is never written
/// through.
pub fn open_private_append(path: &Path) -> io::Result<File> {
    let flags = OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::from_raw_mode(0o600))?;
    Ok(File::from(fd))
}

/// Fsyncs a folder so that entries created, renamed or removed in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates a folder (and its parents) readable only by its owner (0700). A symbolic link in the
/// folder's place is refused, not followed (it could make root chmod some other folder).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let fd = open_dir_no_follow(rustix::fs::CWD, dir)?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))?;
    Ok(())
}

/// Opens a folder for reading; a symbolic link (or anything but a folder) in its place is an error.
fn open_dir_no_follow<Fd: AsFd, P: rustix::path::Arg>(at: Fd, path: P) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(at, path, flags, Mode::empty())?)
}

/// ENOTDIR, or ELOOP: what opening a non-folder or a link with `O_DIRECTORY | O_NOFOLLOW` gives.
fn is_not_a_folder(e: &io::Error) -> bool {
    [rustix::io::Errno::NOTDIR, rustix::io::Errno::LOOP]
        .iter()
        .any(|errno| e.raw_os_error() == Some(errno.raw_os_error()))
}

/// How deep `hand_over_tree` goes; deeper folders (made by someone to exhaust file descriptors
/// or the stack) are an error.
const MAX_TREE_DEPTH: usize = 64;

/// Makes the folder `dir` and everything in it owned by `uid`:`gid`, as root does with the data
/// folder before switching to the service user, who may have written anything in it. No
/// symbolic link is followed anywhere (links are left as they are), even if a folder is swapped
/// for a link during the walk: each entry is opened relative to its folder with `O_NOFOLLOW`
/// and changed through that descriptor. A file with more than one hard link, not already
/// owned by `uid`, is left alone (it may be a link to a file elsewhere, such as `/etc/shadow`);
/// the paths left alone are returned so the caller can warn about them.
pub fn hand_over_tree(dir: &Path, uid: u32, gid: u32) -> io::Result<Vec<PathBuf>> {
    let top = open_dir_no_follow(rustix::fs::CWD, dir)?;
    let mut left_alone = Vec::new();
    hand_over_dir(
        &top,
        dir,
        Uid::from_raw(uid),
        Gid::from_raw(gid),
        0,
        &mut left_alone,
    )?;
    Ok(left_alone)
}

fn hand_over_dir(
    dir: &OwnedFd,
    path: &Path,
    uid: Uid,
    gid: Gid,
    depth: usize,
    left_alone: &mut Vec<PathBuf>,
) -> io::Result<()> {
    if depth > MAX_TREE_DEPTH {
        return Err(io::Error::other(format!(
            "{} is more than {MAX_TREE_DEPTH} folders deep",
            path.display()
        )));
    }
    rustix::fs::fchown(dir, Some(uid), Some(gid))?;
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let entry_path = path.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
        match open_dir_no_follow(dir, name) {
            Ok(sub) => {
                hand_over_dir(&sub, &entry_path, uid, gid, depth + 1, left_alone)?;
                continue;
            }
            // Not a folder (a file, or a link to anything): handled below, as itself.
            Err(e) if is_not_a_folder(&e) => {}
            // Gone since it was listed.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        // O_PATH opens the entry itself (a link stays a link) without reading it.
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let file = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
            Ok(file) => file,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        let stat = rustix::fs::fstat(&file)?;
        if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink {
            continue;
        }
        if stat.st_nlink > 1 && stat.st_uid != uid.as_raw() {
            left_alone.push(entry_path);
            continue;
        }
        rustix::fs::chownat(&file, c"", Some(uid), Some(gid), AtFlags::EMPTY_PATH)?;
    }
    Ok(())
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

/// The first symbolic link on the way to `path` (itself included) that belongs to neither
/// root nor the user we run as, if any. Read as root, a file reached through a link someone
/// else owns is a file of their choosing (a link planted in the data folder, which the service
/// user owns, could point at another service's private key); links root made, like certbot's
/// `live/` ones, are fine.
pub fn untrusted_link(path: &Path) -> io::Result<Option<PathBuf>> {
    use std::os::unix::fs::MetadataExt;
    let absolute = std::path::absolute(path)?;
    let me = rustix::process::geteuid().as_raw();
    let mut so_far = PathBuf::new();
    for component in absolute.components() {
        so_far.push(component);
        match fs::symlink_metadata(&so_far) {
            Ok(meta) if meta.file_type().is_symlink() && meta.uid() != 0 && meta.uid() != me => {
                return Ok(Some(so_far));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(None)
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
    fn links_of_other_users_are_not_trusted() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let target = dir.path().join("secret");
        fs::write(&target, b"x")?;
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link)?;
        // Our own link is trusted.
        assert_eq!(untrusted_link(&link)?, None);
        assert_eq!(untrusted_link(&target)?, None);
        if rustix::process::geteuid().is_root() {
            // A link belonging to another user is not.
            rustix::fs::chownat(
                rustix::fs::CWD,
                &link,
                Some(Uid::from_raw(65534)),
                None,
                AtFlags::SYMLINK_NOFOLLOW,
            )?;
            assert_eq!(untrusted_link(&link)?, Some(link.clone()));
            assert_eq!(untrusted_link(&link.join("below"))?, Some(link));
        }
        Ok(())
    }

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
    fn a_write_never_goes_through_a_planted_link() -> io::Result<()> {
        let root = tempfile::tempdir()?;
        let outside = root.path().join("passwd");
        fs::write(&outside, b"root:x:0:0")?;
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o644))?;
        let dir = root.path().join("data");
        fs::create_dir(&dir)?;
        // Links where the service user would expect the temporary file (the name this module
        // once chose: ".NAME.tmpPID") and at the target itself.
        let key = dir.join("key.pem");
        let predictable = dir.join(format!(".key.pem.tmp{}", std::process::id()));
        std::os::unix::fs::symlink(&outside, &predictable)?;
        let cert = dir.join("cert.pem");
        std::os::unix::fs::symlink(&outside, &cert)?;

        write_private(&key, b"new key")?;
        write_public(&cert, b"new cert")?;

        assert_eq!(fs::read(&outside)?, b"root:x:0:0", "a write went through a link");
        assert_eq!(
            fs::metadata(&outside)?.permissions().mode() & 0o777,
            0o644,
            "a chmod went through a link"
        );
        for (path, contents) in [(&key, &b"new key"[..]), (&cert, &b"new cert"[..])] {
            let meta = fs::symlink_metadata(path)?;
            assert!(meta.is_file(), "{} is not a plain file", path.display());
            assert_eq!(fs::read(path)?, contents);
        }
        Ok(())
    }

    #[test]
    fn the_hand_over_refuses_a_folder_swapped_for_a_link() -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir()?;
        if fs::metadata(root.path())?.uid() != 0 {
            return Err(io::Error::other(
                "this test needs root: the hand-over changes owners (CI runs as root)",
            ));
        }
        // What the walk meets when a folder it listed is replaced by a link before it gets
        // there: each folder is opened with O_NOFOLLOW, so the link is not followed.
        let outside = root.path().join("etc");
        fs::create_dir(&outside)?;
        fs::write(outside.join("shadow"), "root:secret")?;
        let swapped = root.path().join("queue");
        std::os::unix::fs::symlink(&outside, &swapped)?;
        assert!(hand_over_tree(&swapped, 65534, 65534).is_err());
        assert_eq!(fs::metadata(&outside)?.uid(), 0);
        assert_eq!(fs::metadata(outside.join("shadow"))?.uid(), 0);
        Ok(())
    }

    #[test]
    fn appending_refuses_a_link() -> io::Result<()> {
        let root = tempfile::tempdir()?;
        let outside = root.path().join("passwd");
        fs::write(&outside, b"root:x:0:0")?;
        let log = root.path().join("events.jsonl");
        std::os::unix::fs::symlink(&outside, &log)?;
        assert!(open_private_append(&log).is_err());
        let real = root.path().join("real.jsonl");
        writeln!(open_private_append(&real)?, "one")?;
        writeln!(open_private_append(&real)?, "two")?;
        assert_eq!(fs::read_to_string(&real)?, "one\ntwo\n");
        assert_eq!(fs::metadata(&real)?.permissions().mode() & 0o777, 0o600);
        Ok(())
    }

    #[test]
    fn a_private_folder_in_place_of_a_link_is_refused() -> io::Result<()> {
        let root = tempfile::tempdir()?;
        let outside = root.path().join("etc");
        fs::create_dir(&outside)?;
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o755))?;
        let link = root.path().join("backups");
        std::os::unix::fs::symlink(&outside, &link)?;
        assert!(create_private_dir(&link).is_err());
        assert_eq!(
            fs::metadata(&outside)?.permissions().mode() & 0o777,
            0o755,
            "chmod followed a link"
        );
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
