//! Least privilege: started as root (to bind ports below 1024), sealmail switches to an
//! unprivileged user right after binding, and refuses to keep running as root unless the
//! configuration says `[server] allow_root = true`.
//!
//! Before switching, the data folder is handed to that user (it must keep writing the store);
//! everything else root could read (certificates elsewhere, say) was read at start-up. A
//! certificate reload (SIGHUP) after the switch needs the files readable by the user. The user
//! could have planted links in the data folder since the last run, so the hand-over never
//! follows one (`sealmail_safeio::hand_over_tree`).

use std::path::Path;

use anyhow::{Context, bail};
use nix::unistd::{Gid, Group, Uid, User, getuid, setgid, setgroups, setuid};

use sealmail_config::Config;

pub fn drop_privileges(config: &Config) -> anyhow::Result<()> {
    if !Uid::effective().is_root() {
        return Ok(());
    }
    let Some(name) = &config.server.user else {
        if config.server.allow_root {
            tracing::warn!(
                "running as root because [server] allow_root = true; set [server] user to drop privileges"
            );
            return Ok(());
        }
        bail!(
            "sealmail is running as root and no user to switch to is configured; set [server] user = \"sealmail\" \
             (an unprivileged account) or, to keep root, [server] allow_root = true"
        );
    };
    let user = User::from_name(name)
        .context("cannot look up [server] user")?
        .with_context(|| format!("[server] user = {name:?} does not exist; create it or name another"))?;
    let gid = match &config.server.group {
        None => user.gid,
        Some(group) => {
            Group::from_name(group)
                .context("cannot look up [server] group")?
                .with_context(|| format!("[server] group = {group:?} does not exist"))?
                .gid
        }
    };
    if user.uid.is_root() {
        bail!("[server] user = {name:?} is root; name an unprivileged account");
    }
    hand_over(&config.data_dir, user.uid, gid)?;
    setgroups(&[gid]).context("setgroups")?;
    setgid(gid).context("setgid")?;
    setuid(user.uid).context("setuid")?;
    if getuid().is_root() || Uid::effective().is_root() {
        bail!("could not leave root");
    }
    tracing::info!(user = %name, uid = user.uid.as_raw(), gid = gid.as_raw(), "dropped privileges");
    Ok(())
}

/// Makes `dir` and everything in it owned by uid:gid, following no symbolic link inside it.
/// The configured path itself is root's choice (it may be a link to the real folder), so it
/// is resolved first; from there on nothing the service user wrote can lead the walk outside.
fn hand_over(dir: &Path, uid: Uid, gid: Gid) -> anyhow::Result<()> {
    let real = std::fs::canonicalize(dir).with_context(|| format!("cannot find {}", dir.display()))?;
    let left_alone = sealmail_safeio::hand_over_tree(&real, uid.as_raw(), gid.as_raw())
        .with_context(|| format!("cannot hand {} to the server user", dir.display()))?;
    for path in left_alone {
        tracing::warn!(
            path = %path.display(),
            "not handed to the server user: a file with several hard links (it may be a link to a file elsewhere); remove it if sealmail does not need it"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// The walk runs as root; these tests can only show anything when they do too.
    fn as_root() -> bool {
        Uid::effective().is_root()
    }

    #[test]
    fn the_hand_over_does_not_follow_links_out_of_the_data_folder() -> anyhow::Result<()> {
        if !as_root() {
            anyhow::bail!("this test needs root: the hand-over changes owners (CI runs as root)");
        }
        let root = tempfile::tempdir()?;
        let outside = root.path().join("etc");
        std::fs::create_dir(&outside)?;
        std::fs::write(outside.join("shadow"), "root:secret")?;
        let data = root.path().join("data");
        std::fs::create_dir_all(data.join("dkim"))?;
        std::fs::write(data.join("dkim/key.pem"), "key")?;
        // What the service user could plant: links to a folder and to a file outside, and a
        // hard link to a file outside (possible where fs.protected_hardlinks is off).
        std::os::unix::fs::symlink(&outside, data.join("backups"))?;
        std::os::unix::fs::symlink(outside.join("shadow"), data.join("dkim/link.pem"))?;
        std::fs::hard_link(outside.join("shadow"), data.join("hard.pem"))?;

        let service = Uid::from_raw(65534);
        hand_over(&data, service, Gid::from_raw(65534))?;

        assert_eq!(std::fs::metadata(data.join("dkim/key.pem"))?.uid(), 65534);
        assert_eq!(std::fs::metadata(&data)?.uid(), 65534);
        assert_eq!(
            std::fs::metadata(&outside)?.uid(),
            0,
            "a link to a folder was followed"
        );
        assert_eq!(
            std::fs::metadata(outside.join("shadow"))?.uid(),
            0,
            "a link or hard link to a file outside was followed"
        );
        Ok(())
    }
}
