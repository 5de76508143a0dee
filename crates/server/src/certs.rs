//! The certificates the listeners serve: which files (the ACME certificate first, when there is
//! one, then `[[tls.certificate]]`), `sealmail cert status`, and the hourly check that warns when
//! one expires within 14 days.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sealmail_config::{CertificateFiles, Config};
use tokio_util::sync::CancellationToken;

/// How often the served certificates are checked for their end.
const CHECK_EVERY: Duration = Duration::from_secs(3600);
/// The same certificate is warned about at most this often.
const WARN_EVERY: i64 = 86_400;

/// The ACME certificate's files (which may not exist yet).
pub fn acme_files(data_dir: &Path) -> CertificateFiles {
    sealmail_acme::AcmePaths::new(data_dir).certificate_files()
}

/// The files served, in order of preference: the ACME certificate when `[acme]` is on and it
/// has been issued, then the configured ones (the first of all is the default for unknown names).
pub fn served_files(config: &Config) -> Vec<CertificateFiles> {
    let mut files = Vec::new();
    if config.acme.is_some() {
        let acme = acme_files(&config.data_dir);
        if acme.cert.exists() {
            files.push(acme);
        }
    }
    files.extend(config.certificates.iter().cloned());
    files
}

/// The certificates to serve at start, read as root (configured keys may be root's): the
/// configured ones only when `[acme]` is on, since `DATA/acme` belongs to the service user and
/// root must not read what it holds; `spawn_acme` repairs the ACME files and reloads with the
/// ACME certificate first once the server runs as that user, before any connection is served.
pub fn load_served(config: &Config) -> anyhow::Result<sealmail_tls::CertSet> {
    if config.acme.is_some() {
        return Ok(sealmail_tls::CertSet::load(&config.certificates)?);
    }
    Ok(sealmail_tls::CertSet::load(&served_files(config))?)
}

/// Repairs and prepares the ACME files, as the service user (never as root: the folder is
/// the service user's, so root must not read or move what it holds): finishes a key switch a
/// crash interrupted, and seeds the first ACME key from the configured certificate's key when
/// the service user can read it (so the published `TLSA 3 1 1` record stays right when the
/// first ACME certificate comes).
fn prepare_acme_files(config: &Config) {
    let paths = sealmail_acme::AcmePaths::new(&config.data_dir);
    if let Err(error) = sealmail_acme::rollover::finish_interrupted(&paths) {
        tracing::error!(%error, "cannot finish an interrupted ACME key switch");
    }
    if let Some(configured) = config.certificates.first() {
        match sealmail_acme::files::seed_key(&paths, &configured.key) {
            Ok(true) => tracing::info!(
                from = %configured.key.display(),
                "the ACME certificate will keep the configured certificate's key (its TLSA record stays valid)"
            ),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, "cannot seed the ACME key from the configured one; a new key will be made")
            }
        }
    }
}

/// What `cert status` and the expiry watch read of one certificate file (its leaf).
fn facts(file: &Path) -> anyhow::Result<sealmail_acme::CertStatus> {
    sealmail_acme::certificate_status(file, false)?
        .ok_or_else(|| anyhow::anyhow!("{} holds no certificate", file.display()))
}

fn date(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// `sealmail cert status`: every certificate served, its names, issuer, expiry and what renews it.
pub fn status(config: &Config) -> anyhow::Result<()> {
    print!("{}", status_text(config)?);
    Ok(())
}

/// What `cert status` prints (also the admin console's certificates page).
pub fn status_text(config: &Config) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    let now = sealmail_types::clock::now_unix();
    let acme = acme_files(&config.data_dir);
    if config.acme.is_some() && !acme.cert.exists() {
        writeln!(
            out,
            "certificate {} (not issued yet: the server obtains it from [acme] directory at start)",
            acme.cert.display()
        )?;
    }
    for files in served_files(config) {
        let facts = facts(&files.cert)?;
        let left = facts.not_after - now;
        writeln!(out, "certificate {}", files.cert.display())?;
        writeln!(out, "  names: {}", facts.names.join(", "))?;
        writeln!(out, "  issuer: {}", facts.issuer)?;
        writeln!(
            out,
            "  expires: {} ({})",
            date(facts.not_after),
            if left < 0 {
                "EXPIRED".to_string()
            } else {
                format!("{} days", left / 86_400)
            }
        )?;
        let renewal = match &config.acme {
            Some(acme_config) if files == acme => {
                format!("acme ({}), by the server itself", acme_config.challenge.as_str())
            }
            _ => "by hand: replace the files and send SIGHUP".to_string(),
        };
        writeln!(out, "  renewal: {renewal}")?;
        if config.acme.is_some() && files == acme {
            for acme_status in sealmail_acme::status(&config.data_dir)? {
                if let Some(due) = acme_status.next_renewal {
                    writeln!(out, "  next renewal: {}", date(due))?;
                }
                writeln!(out, "  key: TLSA 3 1 1 {}", acme_status.key_spki_sha256)?;
                if let Some(next) = acme_status.next_key_spki_sha256 {
                    writeln!(
                        out,
                        "  next key: TLSA 3 1 1 {next} (switch with `sealmail cert rollover --switch`)"
                    )?;
                }
            }
        }
        if sealmail_acme::schedule::expiry_alarm(now, facts.not_after) {
            writeln!(out, "  WARNING: expires within 14 days")?;
        }
    }
    Ok(out)
}

/// Checks the served certificates every hour; one that expires within 14 days (so renewal, if
/// any, has not replaced it) is logged as an error, counted and recorded as a security event,
/// at most once a day per file.
pub async fn watch_expiry(
    files: impl Fn() -> Vec<CertificateFiles> + Send + 'static,
    guard: Arc<sealmail_guard::Guard>,
    shutdown: CancellationToken,
) {
    let mut warned: HashMap<PathBuf, i64> = HashMap::new();
    loop {
        let now = sealmail_types::clock::now_unix();
        for file in files() {
            let Ok(facts) = facts(&file.cert) else { continue };
            let left = facts.not_after - now;
            let recently = warned.get(&file.cert).is_some_and(|at| now - at < WARN_EVERY);
            if sealmail_acme::schedule::expiry_alarm(now, facts.not_after) && !recently {
                warned.insert(file.cert.clone(), now);
                let detail = format!(
                    "certificate {} for {} expires {} ({} days)",
                    file.cert.display(),
                    facts.names.join(", "),
                    date(facts.not_after),
                    left / 86_400
                );
                tracing::error!(%detail, "CERTIFICATE EXPIRES SOON and has not been renewed");
                guard.certificate_expiring(detail).await;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(CHECK_EVERY) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// `sealmail cert ...`.
pub async fn command(config_path: &Path, command: crate::cli::ServerCertCommand) -> anyhow::Result<()> {
    let config = crate::serve::load_config(config_path)?;
    match command {
        crate::cli::ServerCertCommand::Status => status(&config),
        crate::cli::ServerCertCommand::Rollover { switch } => rollover(&config, switch),
    }
}

/// The marker `cert rollover --switch` leaves for the running server.
pub const SWITCH_REQUEST: &str = "switch-requested";
/// How often the server looks for the marker.
const SWITCH_POLL: Duration = Duration::from_secs(2);

/// The names the ACME certificate covers: the host name, and `mta-sts.D`, `autoconfig.D` and
/// `autodiscover.D` of every served domain (what `domain dns` asks to point at us).
pub fn acme_names(config: &Config, domains: &[String]) -> Vec<String> {
    let mut names = vec![config.hostname.to_string()];
    for domain in domains {
        for site in ["mta-sts", "autoconfig", "autodiscover"] {
            names.push(format!("{site}.{domain}"));
        }
    }
    names
}

fn acme_settings(acme: &sealmail_config::AcmeConfig, data_dir: &Path) -> sealmail_acme::AcmeSettings {
    let mut settings = sealmail_acme::AcmeSettings::new(acme.directory.clone(), data_dir);
    settings.contact = acme.contact.clone();
    settings.ca_file = acme.ca_file.clone();
    settings.challenge = acme.challenge;
    // Zero: only when asked; the crate switches once the wait has passed.
    settings.rollover_wait = if acme.rollover_wait.is_zero() {
        Duration::MAX
    } else {
        acme.rollover_wait
    };
    settings
}

/// Keeps the ACME certificate in service: obtains and renews it (`sealmail_acme::Acme::run`),
/// reloading every listener's certificates after each success, and switches to the next key
/// when `cert rollover --switch` asks.
pub fn spawn_acme(
    config: &Config,
    domains: &[String],
    challenges: Arc<sealmail_acme::Challenges>,
    resolver: Arc<sealmail_tls::CertResolver>,
    shutdown: CancellationToken,
) {
    let Some(acme) = &config.acme else { return };
    let names = acme_names(config, domains);
    prepare_acme_files(config);
    if let Err(error) = resolver.reload(&served_files(config)) {
        // Set aside, so that the renewal loop (which sees no certificate now) orders at once;
        // the configured certificates are served meanwhile.
        let cert = acme_files(&config.data_dir).cert;
        let aside = cert.with_extension("pem.unusable");
        let moved = std::fs::rename(&cert, &aside);
        tracing::error!(%error, set_aside = moved.is_ok(), "the ACME certificate cannot be served; serving the configured certificates and ordering a new one");
    }
    let reload: sealmail_acme::ReloadFn = {
        let config = config.clone();
        Arc::new(move || {
            resolver
                .reload(&served_files(&config))
                .map_err(|e| e.to_string())?;
            tracing::info!("ACME certificate installed; new connections on every listener use it");
            Ok(())
        })
    };
    let settings = acme_settings(acme, &config.data_dir);
    // Clones share one order lock: a switch and a renewal never order at once.
    let renewer = sealmail_acme::Acme::new(settings, challenges, reload);
    let switcher = renewer.clone();
    tokio::spawn(supervise_renewal(renewer, names.clone(), shutdown.clone()));
    let marker = sealmail_acme::AcmePaths::new(&config.data_dir)
        .dir
        .join(SWITCH_REQUEST);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(SWITCH_POLL) => {}
                () = shutdown.cancelled() => return,
            }
            if !marker.exists() {
                continue;
            }
            // Taken away first: a failed switch is asked for again, never retried in a loop.
            let _ = std::fs::remove_file(&marker);
            // In a task of its own, so that a panic in the ACME client ends only this switch.
            let switch = tokio::spawn({
                let (switcher, names) = (switcher.clone(), names.clone());
                async move { switcher.switch_key(&names).await }
            });
            match switch.await {
                Ok(Ok(obtained)) => tracing::info!(
                    key = %obtained.key_spki_sha256,
                    "switched to the next key: the certificate now served has it; remove the old TLSA record"
                ),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "the switch to the next key failed; the current key stays in service")
                }
                Err(error) => {
                    tracing::error!(%error, "the switch to the next key failed; the current key stays in service")
                }
            }
        }
    });
}

/// Files root made in `DATA/acme` go to the owner of the data folder (the service user the
/// server switched to), or the running server could not read the next key or take the marker.
fn give_to_data_owner(config: &Config) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(());
    }
    let owner = std::fs::metadata(&config.data_dir)?;
    if owner.uid() == 0 {
        return Ok(());
    }
    let left_alone = sealmail_safeio::hand_over_tree(
        &sealmail_acme::AcmePaths::new(&config.data_dir).dir,
        owner.uid(),
        owner.gid(),
    )?;
    for path in left_alone {
        tracing::warn!(path = %path.display(), "left alone: not handed to the data folder's owner");
    }
    Ok(())
}

/// Runs the renewal loop, starting it again a minute after it panicked: nothing an ACME
/// server says may end renewal for good.
async fn supervise_renewal(acme: sealmail_acme::Acme, names: Vec<String>, shutdown: CancellationToken) {
    loop {
        let run = tokio::spawn(acme.clone().run(names.clone(), shutdown.clone()));
        match run.await {
            Ok(()) => return,
            Err(error) => {
                tracing::error!(%error, "the ACME renewal loop failed; starting it again in a minute");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// `sealmail cert rollover [--switch]`.
fn rollover(config: &Config, switch: bool) -> anyhow::Result<()> {
    if config.acme.is_none() {
        anyhow::bail!(
            "cert rollover needs [acme]: certificates made elsewhere change keys when you replace them"
        );
    }
    let dir = sealmail_acme::AcmePaths::new(&config.data_dir).dir;
    let pending = sealmail_acme::rollover::pending(&config.data_dir)?;
    if switch {
        let Some(pending) = pending else {
            anyhow::bail!("no next key is prepared; run `sealmail cert rollover` first");
        };
        sealmail_safeio::write_private(&dir.join(SWITCH_REQUEST), b"")?;
        give_to_data_owner(config)?;
        println!(
            "asked the running server to switch to the next key (TLSA 3 1 1 {}); it orders a certificate for it within seconds",
            pending.spki_sha256
        );
        return Ok(());
    }
    let next = sealmail_acme::rollover::prepare(&config.data_dir)?;
    give_to_data_owner(config)?;
    let host = &config.hostname;
    println!("next key prepared; publish its TLSA record next to the current one:");
    println!("_25._tcp.{host}.\tIN\tTLSA\t3 1 1 {next}");
    println!(
        "then, once the record's TTL has passed everywhere, run `sealmail cert rollover --switch`{}",
        if config.acme.as_ref().is_some_and(|a| !a.rollover_wait.is_zero()) {
            " (or wait for acme.rollover_wait_days)"
        } else {
            ""
        }
    );
    Ok(())
}
