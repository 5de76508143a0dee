//! Least privilege: started as root (to bind ports below 1024), sealmail switches to an
//! unprivileged user right after binding, and refuses to keep running as root unless the
//! configuration says `[server] allow_root = true`.
//!
//! Before switching, the data folder is handed to that user (it must keep writing the store);
//! everything else root could read (certificates elsewhere, say) was read at start-up. A
//! certificate reload (SIGHUP) after the switch needs the files readable by the user.

use std::path::Path;

use anyhow::{Context, bail};
use nix::unistd::{Gid, Group, Uid, User, chown, getuid, setgid, setgroups, setuid};

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

/// Makes `dir` and everything in it owned by uid:gid (no symbolic links followed).
fn hand_over(dir: &Path, uid: Uid, gid: Gid) -> anyhow::Result<()> {
    chown(dir, Some(uid), Some(gid))
        .with_context(|| format!("cannot hand {} to the server user", dir.display()))?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            continue;
        }
        if kind.is_dir() {
            hand_over(&entry.path(), uid, gid)?;
        } else {
            chown(&entry.path(), Some(uid), Some(gid))
                .with_context(|| format!("cannot hand {} to the server user", entry.path().display()))?;
        }
    }
    Ok(())
}
