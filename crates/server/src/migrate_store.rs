//! `sealmail migrate-store --to postgres://...`: moves a stopped SQLite installation into
//! PostgreSQL (the copy and its checks are the store's, `sealmail_store::copy_sqlite_to_postgres`)
//! and says what to change in the configuration afterwards. On a terminal it draws a progress
//! bar per table; otherwise it prints a line per table.

use std::io::{IsTerminal, Write};
use std::path::Path;

use sealmail_store::{PgOptions, PgTls, Progress};

use crate::cli::{MigrateStoreArgs, usage};
use crate::serve::load_config;

pub async fn run(config_path: &Path, args: MigrateStoreArgs) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    // The data folder's lock: a server still serving this installation (or a restore) would
    // change it under the copy.
    let _lock = crate::serve::lock_data_dir(&config.data_dir)?;
    let tls = PgTls::parse(&args.tls).ok_or_else(|| {
        usage(format!(
            "--tls {:?}: use disable, prefer, require, verify-ca or verify-full",
            args.tls
        ))
    })?;
    let mut target = PgOptions::new(&args.to);
    target.schema = args.schema.clone();
    target.tls = tls;
    target.tls_ca = args.tls_ca.clone();
    if let Some(path) = &args.password_file {
        target.password = Some(read_password(path)?);
    }
    let on_terminal = std::io::stderr().is_terminal();
    let mut current = String::new();
    let mut show = |p: Progress<'_>| {
        let mut err = std::io::stderr().lock();
        if on_terminal {
            let width = 30u64;
            let filled = (p.done * width).checked_div(p.total).unwrap_or(width);
            let _ = write!(
                err,
                "\r{:<18} [{}{}] {}/{}",
                p.table,
                "#".repeat(filled as usize),
                " ".repeat((width - filled.min(width)) as usize),
                p.done,
                p.total
            );
            if p.done == p.total {
                let _ = writeln!(err);
            }
        } else if p.done == p.total && current != p.table {
            current = p.table.to_string();
            let _ = writeln!(err, "{}: {} rows", p.table, p.total);
        }
    };
    let report = sealmail_store::copy_sqlite_to_postgres(&config.data_dir, &target, &mut show).await?;
    let rows: u64 = report.tables.iter().map(|(_, n)| n).sum();
    println!(
        "copied {rows} rows in {} tables to schema {}; every row count matches and {} blobs' SHA-256 were checked in both stores",
        report.tables.len(),
        target.schema.as_deref().unwrap_or(sealmail_store::DEFAULT_SCHEMA),
        report.blobs_verified
    );
    println!(
        "next: set [store] url = {:?}{} in {} and start sealmail; the SQLite file stays as it was",
        args.to,
        args.schema
            .as_deref()
            .map(|s| format!(" and schema = {s:?}"))
            .unwrap_or_default(),
        config_path.display()
    );
    Ok(())
}

/// The first line of a 0600 file that is not reached through another user's link.
fn read_password(path: &Path) -> anyhow::Result<String> {
    if let Some(link) = sealmail_safeio::untrusted_link(path)? {
        return Err(usage(format!(
            "{} is reached through {}, a symbolic link of another user",
            path.display(),
            link.display()
        )));
    }
    sealmail_safeio::check_private(path)
        .map_err(|e| usage(format!("{}: {e:?}; make it mode 0600", path.display())))?;
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path)?);
    let password = text.lines().next().unwrap_or_default().to_string();
    if password.is_empty() {
        return Err(usage(format!("{} is empty", path.display())));
    }
    Ok(password)
}
