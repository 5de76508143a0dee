//! `sealmail backup DIR` and `sealmail restore DIR`.
//!
//! A backup is a folder holding a consistent snapshot of the store (SQLite `VACUUM INTO`, safe
//! while the server writes), the configuration file, every certificate and key it names, and a
//! `MANIFEST` of SHA-256 sums written last: a backup without a MANIFEST is incomplete.
//! Restore checks every sum first, needs the server stopped (it takes the data folder's lock),
//! and never destroys what it replaces: the current store is snapshotted to `backups/` and
//! replaced files are kept beside themselves as `*.pre-restore-TIME`.
//!
//! A backup may have been tampered with, and restore runs as root: it writes only into the data
//! folder (the current configuration's; a backup cannot move it), and refuses, before touching
//! anything, certificate or key paths outside it, whether by name, `..` or a symbolic link.

use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, bail};

use sealmail_config::{Config, StoreBackend};
use sealmail_store::{DB_FILE, SqliteStore};

use crate::cli::usage;
use crate::serve::{load_config, lock_data_dir};

const MANIFEST: &str = "MANIFEST";
const CONFIG_NAME: &str = "sealmail.toml";

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    use sha2::Digest;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex::encode(sha2::Sha256::digest(&bytes)))
}

fn cert_names(i: usize) -> (String, String) {
    (format!("tls/{i}/cert.pem"), format!("tls/{i}/key.pem"))
}

fn now() -> u64 {
    sealmail_types::clock::now_unix().max(0) as u64
}

/// `backup` and `restore` copy the SQLite file; a PostgreSQL store is the database's to back up.
fn refuse_postgres(config: &Config, what: &str, tool: &str) -> anyhow::Result<()> {
    if let StoreBackend::Postgres(settings) = &config.store.backend {
        let schema = settings
            .schema
            .as_deref()
            .unwrap_or(sealmail_store::DEFAULT_SCHEMA);
        return Err(usage(format!(
            "the store is in PostgreSQL ({}, schema {schema}); `sealmail {what}` handles only a SQLite store: use {tool} (e.g. `pg_dump --schema={schema} --format=custom`), and copy the configuration, certificates and data folder yourself",
            settings.url
        )));
    }
    Ok(())
}

pub async fn backup(config_path: &Path, dir: &Path) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    refuse_postgres(&config, "backup", "pg_dump")?;
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        return Err(usage(format!(
            "{} is not empty; back up into a new folder",
            dir.display()
        )));
    }
    sealmail_safeio::create_private_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let mut files: Vec<String> = Vec::new();
    SqliteStore::backup_database(&config.data_dir, &dir.join(DB_FILE)).await?;
    files.push(DB_FILE.to_string());

    let copy = |from: &Path, name: &str| -> anyhow::Result<()> {
        let bytes = std::fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
        let to = dir.join(name);
        if let Some(parent) = to.parent() {
            sealmail_safeio::create_private_dir(parent)?;
        }
        // Everything in a backup is private: it holds keys and the whole mail store.
        sealmail_safeio::write_private(&to, &bytes).with_context(|| format!("cannot write {}", to.display()))
    };
    copy(config_path, CONFIG_NAME)?;
    files.push(CONFIG_NAME.to_string());
    for (i, cert) in config.certificates.iter().enumerate() {
        let (cert_name, key_name) = cert_names(i);
        copy(&cert.cert, &cert_name)?;
        copy(&cert.key, &key_name)?;
        files.extend([cert_name, key_name]);
    }

    let mut manifest = String::new();
    for name in &files {
        writeln!(manifest, "{}  {name}", sha256_file(&dir.join(name))?)?;
    }
    sealmail_safeio::write_private(&dir.join(MANIFEST), manifest.as_bytes())?;
    println!("backup written to {} ({} files)", dir.display(), files.len());
    Ok(())
}

/// Reads the manifest and checks every file against it.
fn verified_manifest(dir: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(dir.join(MANIFEST)).with_context(|| {
        format!(
            "{} has no {MANIFEST}; it is not a complete sealmail backup",
            dir.display()
        )
    })?;
    let mut names = Vec::new();
    for line in text.lines() {
        let Some((sum, name)) = line.split_once("  ") else {
            bail!("{MANIFEST} line {line:?} is malformed");
        };
        if name.contains("..") || name.starts_with('/') {
            bail!("{MANIFEST} names {name:?}, which is outside the backup");
        }
        let actual = sha256_file(&dir.join(name))?;
        if actual != sum {
            bail!(
                "{name} in the backup is damaged: its SHA-256 is {actual}, the manifest says {sum}; nothing was restored"
            );
        }
        names.push(name.to_string());
    }
    Ok(names)
}

/// Replaces `target` with `bytes`, keeping a differing old file as `target.pre-restore-TIME`.
fn replace_keeping_old(target: &Path, bytes: &[u8], stamp: u64) -> anyhow::Result<()> {
    if let Ok(old) = std::fs::read(target) {
        if old == bytes {
            return Ok(());
        }
        let mut aside = target.as_os_str().to_owned();
        aside.push(format!(".pre-restore-{stamp}"));
        sealmail_safeio::write_private(Path::new(&aside), &old)?;
    }
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    sealmail_safeio::write_private(target, bytes)
        .with_context(|| format!("cannot write {}", target.display()))
}

/// The data folder a restore may write into: the one the current configuration names (a
/// backup cannot move it elsewhere), or on a machine with no configuration yet the backup's,
/// which must then be new or empty (so a crafted backup cannot aim at a folder like `/root/.ssh`).
fn check_restore_data_dir(config_path: &Path, backup_data_dir: &Path) -> anyhow::Result<()> {
    if config_path.exists() {
        let current = load_config(config_path).context(
            "the current configuration does not load; fix it, or move it away to restore as on a new machine",
        )?;
        if same_path(&current.data_dir, backup_data_dir) {
            return Ok(());
        }
        bail!(
            "the backup's configuration names the data folder {}, but {} names {}; restore writes only into the current data folder: set data_dir in the backup's sealmail.toml to it",
            backup_data_dir.display(),
            config_path.display(),
            current.data_dir.display()
        );
    }
    let empty = match std::fs::read_dir(backup_data_dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot read {}", backup_data_dir.display())));
        }
    };
    if !empty {
        bail!(
            "the backup's configuration names the data folder {}, which is not empty and no configuration at {} names it; restore into a new folder, or put the configuration naming it there first",
            backup_data_dir.display(),
            config_path.display()
        );
    }
    Ok(())
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Refuses a file restore would write outside the data folder `data_dir`: a path with `..`, one
/// whose deepest existing folder is outside it once links are resolved, or one that is itself a
/// symbolic link (restore would read through it).
fn check_inside_data_dir(data_dir: &Path, key: &str, target: &Path) -> anyhow::Result<()> {
    let outside = || {
        anyhow::anyhow!(
            "the backup's configuration has {key} = {}, outside the data folder {}; restore writes only into the data folder: \
             put the file there in the backup's sealmail.toml (and MANIFEST), or copy it from the backup by hand",
            target.display(),
            data_dir.display()
        )
    };
    if target.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(outside());
    }
    let target =
        &std::path::absolute(target).with_context(|| format!("cannot resolve {}", target.display()))?;
    let data_dir =
        std::fs::canonicalize(data_dir).with_context(|| format!("cannot find {}", data_dir.display()))?;
    let mut existing: &Path = target;
    loop {
        match std::fs::symlink_metadata(existing) {
            Ok(meta) if existing == target && meta.file_type().is_symlink() => return Err(outside()),
            Ok(_) => break,
            Err(_) => existing = existing.parent().ok_or_else(outside)?,
        }
    }
    let real =
        std::fs::canonicalize(existing).with_context(|| format!("cannot resolve {}", existing.display()))?;
    if !real.starts_with(&data_dir) {
        return Err(outside());
    }
    Ok(())
}

pub async fn restore(config_path: &Path, dir: &Path) -> anyhow::Result<()> {
    if let Ok(current) = load_config(config_path) {
        refuse_postgres(&current, "restore", "pg_restore")?;
    }
    let names = verified_manifest(dir)?;
    for required in [DB_FILE, CONFIG_NAME] {
        if !names.iter().any(|n| n == required) {
            bail!("the backup lacks {required}");
        }
    }
    let stamp = now();
    let config_bytes = std::fs::read(dir.join(CONFIG_NAME))?;
    // Check the configuration before touching anything.
    let base = config_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let text = String::from_utf8(config_bytes.clone()).context("the backup's configuration is not UTF-8")?;
    let config: Config = Config::from_toml(&text, &config_path.display().to_string(), base)
        .map_err(|e| usage(e.to_string()))?;

    check_restore_data_dir(config_path, &config.data_dir)?;
    // A configuration in place stays: a backup is data, and one rewritten by whoever could
    // write where it was kept (the service user, if kept under DATA) must not be able to set
    // `[server] allow_root`, a relay password file such as /etc/shadow, or anything else root
    // acts on. The backup's configuration is put beside it for the admin to compare.
    let current = if config_path.exists() {
        Some(load_config(config_path)?)
    } else {
        None
    };
    let config = current.unwrap_or(config);
    if !config.data_dir.exists() {
        sealmail_safeio::create_private_dir(&config.data_dir)?;
    }
    for (i, cert) in config.certificates.iter().enumerate() {
        let (cert_name, key_name) = cert_names(i);
        if names.contains(&cert_name) && names.contains(&key_name) {
            check_inside_data_dir(
                &config.data_dir,
                &format!("tls.certificate[{i}].cert"),
                &cert.cert,
            )?;
            check_inside_data_dir(&config.data_dir, &format!("tls.certificate[{i}].key"), &cert.key)?;
        }
    }
    let _lock = lock_data_dir(&config.data_dir).context("restore needs the server stopped")?;
    if config_path.exists() {
        let mut beside = config_path.as_os_str().to_owned();
        beside.push(format!(".from-backup-{stamp}"));
        let beside = PathBuf::from(beside);
        sealmail_safeio::write_private(&beside, &config_bytes)?;
        println!(
            "the configuration in place was kept; the backup's is in {} (compare them by hand)",
            beside.display()
        );
    } else {
        replace_keeping_old(config_path, &config_bytes, stamp)?;
    }

    let db = config.data_dir.join(DB_FILE);
    if db.exists() {
        let aside_dir = config.data_dir.join("backups");
        sealmail_safeio::create_private_dir(&aside_dir)?;
        let aside = aside_dir.join(format!("pre-restore-{stamp}.db"));
        SqliteStore::backup_database(&config.data_dir, &aside).await?;
        println!("the store being replaced was saved to {}", aside.display());
        for suffix in ["", "-wal", "-shm"] {
            let mut path = db.as_os_str().to_owned();
            path.push(suffix);
            let path = PathBuf::from(path);
            if path.exists() {
                std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
    }
    let db_bytes = std::fs::read(dir.join(DB_FILE))?;
    sealmail_safeio::write_private(&db, &db_bytes)?;

    for (i, cert) in config.certificates.iter().enumerate() {
        let (cert_name, key_name) = cert_names(i);
        if names.contains(&cert_name) && names.contains(&key_name) {
            replace_keeping_old(&cert.cert, &std::fs::read(dir.join(&cert_name))?, stamp)?;
            replace_keeping_old(&cert.key, &std::fs::read(dir.join(&key_name))?, stamp)?;
        }
    }
    // Opening checks the schema (and migrates an older backup, snapshot first).
    SqliteStore::open(&config.data_dir, config.store.group_commit_max_batch).await?;
    println!("restored {} into {}", dir.display(), config.data_dir.display());
    Ok(())
}
