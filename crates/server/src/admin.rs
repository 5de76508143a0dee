//! Administration commands: `config check`, `domain`, `user`, `migrate`.

use sealmail_types::clock::now_unix;
use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use sealmail_config::{Role, TlsMode};
use sealmail_identity::{Identity, Password, generate_password};
use sealmail_store::{PgStore, SqliteStore, Store};
use sealmail_types::{Domain, EmailAddress};

use crate::cli::{AdminRole, DkimCommand, DomainCommand, UserCommand, usage};
use crate::serve::{load_config, open_store};

pub fn config_check(config_path: &Path) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    // The certificates are part of a working configuration: load them as `serve` would.
    sealmail_tls::CertSet::load(&config.certificates).map_err(|e| usage(e.to_string()))?;
    println!(
        "{}: OK ({} listener(s), {} certificate(s), data in {})",
        config_path.display(),
        config.listeners.len(),
        config.certificates.len(),
        config.data_dir.display()
    );
    Ok(())
}

fn parse_domain(input: &str) -> anyhow::Result<Domain> {
    Domain::parse(input).map_err(|e| usage(format!("{input:?} is not a valid domain: {e}")))
}

fn parse_address(input: &str) -> anyhow::Result<EmailAddress> {
    EmailAddress::parse(input).map_err(|e| usage(format!("{input:?} is not a valid address: {e}")))
}

async fn store_for(config_path: &Path) -> anyhow::Result<Arc<dyn Store>> {
    let config = load_config(config_path)?;
    open_store(&config).await
}

pub async fn domain(config_path: &Path, command: DomainCommand) -> anyhow::Result<()> {
    let store = store_for(config_path).await?;
    match command {
        DomainCommand::Add { domain } => {
            let domain = parse_domain(&domain)?;
            let config = load_config(config_path)?;
            add_domain(&config, &*store, &domain).await?;
            println!("added domain {domain}");
            let dkim_dir = config.data_dir.join(sealmail_mailauth::signing::DKIM_DIR);
            let selectors = sealmail_mailauth::signing::active_selectors(&dkim_dir, domain.as_str());
            println!(
                "DKIM keys (selectors {}); publish them with: sealmail domain dns {domain}",
                selectors.join(", ")
            );
        }
        DomainCommand::Dns { domain, check } => {
            let domain = parse_domain(&domain)?;
            if !store.domain_exists(&domain).await? {
                return Err(usage(format!(
                    "domain {domain} is not served here; add it first with `sealmail domain add {domain}`"
                )));
            }
            let config = load_config(config_path)?;
            let helo_spf = helo_spf(&config, &*store).await?;
            if check {
                let found = found_records(&config, &domain, helo_spf).await?;
                for (name, kind, status) in &found {
                    println!("{name}\t{kind}\t{status}");
                }
                if found.iter().any(|(_, _, status)| status != "ok") {
                    anyhow::bail!(
                        "some records are missing or differ; publish what `sealmail domain dns {domain}` prints"
                    );
                }
            } else {
                print!("{}", dns_records(&config, &domain, helo_spf)?);
            }
        }
        DomainCommand::List => {
            for domain in store.list_domains().await? {
                println!("{domain}");
            }
        }
        DomainCommand::Remove { domain } => {
            let domain = parse_domain(&domain)?;
            store.remove_domain(&domain).await?;
            println!("removed domain {domain}");
        }
    }
    Ok(())
}

/// Starts serving `domain`, with DKIM keys of its own (signing with them from the next start).
pub(crate) async fn add_domain(
    config: &sealmail_config::Config,
    store: &dyn Store,
    domain: &Domain,
) -> anyhow::Result<()> {
    store.add_domain(domain).await?;
    let dkim_dir = config.data_dir.join(sealmail_mailauth::signing::DKIM_DIR);
    if sealmail_mailauth::signing::active_selectors(&dkim_dir, domain.as_str()).is_empty() {
        new_dkim_keys(&dkim_dir, domain)?;
    }
    Ok(())
}

/// Whether `domain dns` lists the host name's own SPF record: not when the host name is a
/// domain served here, as its own `domain dns` gives it one, and two SPF records at one name
/// are a permerror (RFC 7208 4.5).
pub(crate) async fn helo_spf(config: &sealmail_config::Config, store: &dyn Store) -> anyhow::Result<bool> {
    Ok(match Domain::parse(config.hostname.as_str()) {
        Ok(host) => !store.domain_exists(&host).await?,
        Err(_) => false,
    })
}

/// The password `user add` and `user passwd` set: read from standard input, or generated here.
struct NewPassword {
    password: Password,
    generated: bool,
}

impl NewPassword {
    fn read_or_generate(from_stdin: bool) -> anyhow::Result<NewPassword> {
        Ok(match from_stdin {
            true => NewPassword {
                password: password_from_stdin()?,
                generated: false,
            },
            false => NewPassword {
                password: generate_password()?,
                generated: true,
            },
        })
    }

    /// Prints a generated password (once, after the change it is for succeeded): nobody else
    /// knows it. One read from standard input is never echoed.
    fn show_if_generated(&self, label: &str) {
        if self.generated {
            println!("{label} (shown once): {}", self.password.expose());
        }
    }
}

/// Reads one line from standard input as a password (the line ending is not part of it).
fn password_from_stdin() -> anyhow::Result<Password> {
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let trimmed = line.trim_end_matches(['\r', '\n']).to_string();
    if trimmed.is_empty() {
        return Err(usage("no password on standard input"));
    }
    Ok(Password::new(trimmed))
}

pub async fn user(config_path: &Path, command: UserCommand) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let store: Arc<dyn Store> = open_store(&config).await?;
    let identity = Identity::new(store.clone())?.with_policy(crate::credentials::auth_policy(&config));
    match command {
        UserCommand::Add {
            address,
            password_stdin,
            admin,
        } => {
            let address = parse_address(&address)?;
            let password = NewPassword::read_or_generate(password_stdin)?;
            identity.add_user(&address, &password.password).await?;
            println!("added user {address}");
            if admin {
                store.set_admin(&address, true).await.with_context(|| {
                    format!("user {address} was added, but not as an admin; run `sealmail user admin {address} on`")
                })?;
                println!("{address} is now an admin");
            }
            password.show_if_generated("password");
        }
        UserCommand::List => {
            let admins: BTreeSet<EmailAddress> = store.admins().await?.into_iter().collect();
            for account in store.list_accounts().await? {
                if admins.contains(&account.address) {
                    println!("{} admin", account.address);
                } else {
                    println!("{}", account.address);
                }
            }
        }
        UserCommand::Admin { address, role } => {
            let address = parse_address(&address)?;
            let admin = role == AdminRole::On;
            store.set_admin(&address, admin).await?;
            if admin {
                println!("{address} is now an admin");
            } else {
                println!("{address} is no longer an admin");
            }
        }
        UserCommand::Remove { address } => {
            let address = parse_address(&address)?;
            store.remove_account(&address).await?;
            println!("removed user {address} and all their mail");
        }
        UserCommand::Mfa(command) => return crate::credentials::mfa(config_path, command).await,
        UserCommand::AppPassword(command) => {
            return crate::credentials::app_password(config_path, command).await;
        }
        UserCommand::Cert(command) => return crate::credentials::cert(config_path, command).await,
        UserCommand::Passwd {
            address,
            password_stdin,
        } => {
            let address = parse_address(&address)?;
            let password = NewPassword::read_or_generate(password_stdin)?;
            identity.set_password(&address, &password.password).await?;
            println!("password changed for {address}");
            // Like IMAP and SMTP sessions (schema 9), the browsers signed in with the old
            // password are signed out.
            if let Some(account) = store.account(&address).await? {
                let ended = store.end_web_sessions(account.id, None).await?;
                if ended > 0 {
                    println!("ended {ended} web session(s) of {address}");
                }
            }
            password.show_if_generated("new password");
        }
    }
    Ok(())
}

pub async fn migrate(config_path: &Path, dry_run: bool) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let (pending, before_migrating) = match crate::serve::StoreLocation::of(&config)? {
        crate::serve::StoreLocation::Sqlite { data_dir, .. } => (
            SqliteStore::pending_migrations(&data_dir).await?,
            "a snapshot is written to backups/ before migrations run",
        ),
        crate::serve::StoreLocation::Postgres(options) => (
            PgStore::pending_migrations(&options).await?,
            "take a pg_dump of the database before migrating; it is the way back",
        ),
    };
    if pending.is_empty() {
        println!("the store is up to date");
        return Ok(());
    }
    let verb = if dry_run { "would apply" } else { "applying" };
    for m in &pending {
        println!("{verb} migration {} {}", m.version, m.description);
    }
    if dry_run {
        println!("(dry run: nothing changed; {before_migrating})");
        return Ok(());
    }
    let _lock = crate::serve::lock_data_dir(&config.data_dir)?;
    open_store(&config).await?;
    println!("the store is up to date");
    Ok(())
}

pub async fn queue(config_path: &Path, command: crate::cli::QueueCommand) -> anyhow::Result<()> {
    use crate::cli::QueueCommand;
    let store = store_for(config_path).await?;
    match command {
        QueueCommand::List => {
            let queue = store.queue().await?;
            if queue.is_empty() {
                println!("the queue is empty");
            }
            for entry in queue {
                print_queue_entry(&entry);
            }
        }
        QueueCommand::Show { id } => {
            let entry = store.queue_entry(id).await?.ok_or_else(|| {
                usage(format!(
                    "no queued message {id}; `sealmail queue list` shows the queue"
                ))
            })?;
            print_queue_entry(&entry);
            if entry.require_tls {
                println!("  REQUIRETLS: only over verified TLS to servers that support REQUIRETLS");
            }
            let content = store.queued_content(id).await?;
            let end = content
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|p| p + 2)
                .unwrap_or(content.len());
            println!("header:");
            print!("{}", String::from_utf8_lossy(&content[..end]));
        }
        QueueCommand::Retry { id } => {
            let pending = store.retry_queued(Some(id)).await?;
            if pending == 0 {
                return Err(usage(format!("no pending recipient in queued message {id}")));
            }
            println!("{pending} recipient(s) of message {id} will be tried again now");
        }
        QueueCommand::Flush => {
            let pending = store.retry_queued(None).await?;
            println!("{pending} pending recipient(s) will be tried again now");
        }
        QueueCommand::Delete { id } => {
            if !store.delete_queued(id).await? {
                return Err(usage(format!("no queued message {id}")));
            }
            println!("deleted queued message {id}");
        }
    }
    Ok(())
}

/// RFC 8460 reports for one UTC day, built from the results delivery counted: one JSON
/// document per recipient domain that had an MTA-STS or DANE policy (or a policy failure),
/// printed, or with `send` queued to the domains' report addresses.
pub async fn tls_report(config_path: &Path, day: Option<String>, send: bool) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let store = open_store(&config).await?;
    let day = match day {
        Some(day) => {
            let format = time::macros::format_description!("[year]-[month]-[day]");
            time::Date::parse(&day, &format)
                .map_err(|_| usage(format!("--day {day:?} is not a date like 2026-11-28")))?
                .to_string()
        }
        None => sealmail_delivery::tls_rpt::yesterday(),
    };
    let hostname = config.hostname.to_string();
    if !send {
        for report in sealmail_delivery::tls_rpt::reports(&*store, &day, &hostname).await? {
            println!("{}", report.json);
        }
        return Ok(());
    }
    let (domains, signer) = crate::serve::load_signer(&config, &*store).await?;
    let (from, sign) = crate::serve::tls_report_sender(&domains, &signer, &hostname)?;
    let dns = sealmail_dns::Dns::new(&config.dns)?;
    let files = sealmail_delivery::DeliveryFiles::load(&config.delivery)?;
    let delivery = sealmail_delivery::Delivery::new(
        store.clone(),
        dns,
        &config.delivery,
        &hostname,
        &config.server.node_name,
        files,
    )?;
    let sent = delivery.send_tls_reports_of(&day, &from, &*sign).await?;
    for (domain, to) in &sent.queued {
        println!("{domain}: queued to {}", to.join(", "));
    }
    for (domain, url) in &sent.posted {
        println!("{domain}: posted to {url}");
    }
    for domain in &sent.no_address {
        println!("{domain}: publishes no report address");
    }
    for domain in &sent.already_sent {
        println!("{domain}: sent before");
    }
    for (domain, error) in &sent.failed {
        println!("{domain}: not sent: {error}");
    }
    Ok(())
}

fn print_queue_entry(entry: &sealmail_store::QueueEntry) {
    let sender = if entry.sender.is_empty() {
        "<>"
    } else {
        entry.sender.as_str()
    };
    println!(
        "{} {} bytes from {} queued at {}",
        entry.id,
        entry.size,
        sender,
        rfc3339(entry.created_at)
    );
    for rcpt in &entry.recipients {
        let error = rcpt
            .last_error
            .as_ref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        let next = if rcpt.status == "pending" {
            format!(" next={}", rfc3339(rcpt.next_attempt_at))
        } else {
            String::new()
        };
        println!(
            "  {} {} attempts={}{next}{error}",
            rcpt.address, rcpt.status, rcpt.attempts
        );
    }
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// "1700000000" (unix time) or an age: "90s", "30m", "12h", "7d".
fn parse_since(text: &str) -> anyhow::Result<i64> {
    if let Ok(unix) = text.parse::<i64>() {
        return Ok(unix);
    }
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(usage(format!(
                "--since {text:?}: use a unix time or an age like 30m, 12h, 7d"
            )));
        }
    };
    let n: i64 = number.parse().map_err(|_| {
        usage(format!(
            "--since {text:?}: use a unix time or an age like 30m, 12h, 7d"
        ))
    })?;
    Ok(now_unix() - n.saturating_mul(seconds))
}

pub async fn security(config_path: &Path, command: crate::cli::SecurityCommand) -> anyhow::Result<()> {
    use crate::cli::{BansCommand, SecurityCommand};
    let config = load_config(config_path)?;
    let store: Arc<dyn Store> = open_store(&config).await?;
    match command {
        SecurityCommand::Bans(BansCommand::List) => {
            let bans = store.active_bans(now_unix()).await?;
            if bans.is_empty() {
                println!("no bans in force");
            }
            for ban in bans {
                println!(
                    "{} banned until {} (level {}, {} s left): {}",
                    ban.address,
                    ban.until,
                    ban.level,
                    ban.until - now_unix(),
                    ban.reason
                );
                // Every ban is explainable: the events from its address in the window before it.
                let since = ban.created_at - config.security.failure_window.as_secs() as i64;
                for event in store.events(since, None).await? {
                    let from_it = event
                        .address
                        .as_deref()
                        .and_then(|a| a.parse::<std::net::IpAddr>().ok())
                        .is_some_and(|ip| sealmail_guard::ban_key(ip) == ban.address);
                    if from_it && event.at <= ban.created_at {
                        println!("  {}", sealmail_guard::event_json(&event));
                    }
                }
            }
        }
        SecurityCommand::Unban { ip } => {
            let guard = sealmail_guard::Guard::load(config.security.clone(), store).await?;
            let lifted = guard.unban(ip).await?;
            println!("lifted {lifted} ban(s) of {}", sealmail_guard::ban_key(ip));
        }
        SecurityCommand::Events { since } => {
            for event in store.events(parse_since(&since)?, None).await? {
                println!("{}", sealmail_guard::event_json(&event));
            }
        }
    }
    Ok(())
}

/// One record a domain should publish.
struct Published {
    name: String,
    kind: &'static str,
    /// MX: "PREF HOST."; TXT: the text; TLSA: "3 1 1 HEX"; SRV: "PRIORITY WEIGHT PORT HOST.".
    value: String,
}

/// Every record a domain should publish so that others can check its mail, and the MTA-STS
/// policy body to serve.
fn expected_records(
    config: &sealmail_config::Config,
    domain: &Domain,
    helo_spf: bool,
) -> anyhow::Result<(Vec<Published>, String)> {
    let host = &config.hostname;
    let dkim_dir = config.data_dir.join(sealmail_mailauth::signing::DKIM_DIR);
    let record = |name: String, kind, value: String| Published { name, kind, value };
    let mut records = vec![
        record(format!("{domain}."), "MX", format!("10 {host}.")),
        record(format!("{domain}."), "TXT", "v=spf1 mx -all".into()),
    ];
    // The HELO name gets its own SPF record (RFC 7208 2.3), so receivers can give
    // `spf=pass smtp.helo=HOST`, unless the host name is a domain served here (see the caller).
    if helo_spf && !host.as_str().eq_ignore_ascii_case(domain.as_str()) {
        records.push(record(format!("{host}."), "TXT", "v=spf1 a -all".into()));
    }
    // Where mail clients find us (RFC 6186, RFC 8314 5.1): implicit TLS is preferred (priority
    // 0) over STARTTLS (10); only services that have a listener are published.
    for (service, role, tls, priority) in [
        ("_submissions", Role::Submission, TlsMode::Implicit, 0),
        ("_submission", Role::Submission, TlsMode::StartTls, 10),
        ("_imaps", Role::Imap, TlsMode::Implicit, 0),
        ("_imap", Role::Imap, TlsMode::StartTls, 10),
    ] {
        if let Some(listener) = config.listeners.iter().find(|l| l.role == role && l.tls == tls) {
            records.push(record(
                format!("{service}._tcp.{domain}."),
                "SRV",
                format!("{priority} 1 {} {host}.", listener.bind.port()),
            ));
        }
    }
    for key in sealmail_mailauth::signing::published_keys(&dkim_dir, domain.as_str())? {
        records.push(record(
            format!("{}._domainkey.{domain}.", key.selector),
            "TXT",
            key.txt_record(),
        ));
    }
    records.push(record(
        format!("_dmarc.{domain}."),
        "TXT",
        format!("v=DMARC1; p=reject; rua=mailto:postmaster@{domain}"),
    ));
    // MTA-STS (RFC 8461): the policy the https listener serves; its id changes with its text.
    let policy = mta_sts_policy(config)?;
    records.push(record(
        format!("_mta-sts.{domain}."),
        "TXT",
        format!("v=STSv1; id={}", policy.id()),
    ));
    // The names the https listener answers for this domain: the MTA-STS policy, Thunderbird's
    // autoconfig and Microsoft's Autodiscover. A CNAME to our host also covers its AAAA.
    for site in ["mta-sts", "autoconfig", "autodiscover"] {
        records.push(record(format!("{site}.{domain}."), "CNAME", format!("{host}.")));
    }
    records.push(record(
        format!("_smtp._tls.{domain}."),
        "TXT",
        format!("v=TLSRPTv1; rua=mailto:postmaster@{domain}"),
    ));
    // DANE (RFC 7672): 3 1 1 = the SHA-256 of the current certificate's public key.
    if let Some(files) = crate::certs::served_files(config).first() {
        let der = sealmail_tls::leaf_spki(&files.cert)?;
        records.push(record(
            format!("_25._tcp.{host}."),
            "TLSA",
            format!("3 1 1 {}", sealmail_store::sha256_hex(&der)),
        ));
    }
    // During a DANE-safe rollover (RFC 7671 8.1) the next key is published beside the current
    // one, before any certificate carries it.
    if config.acme.is_some()
        && let Some(next) = sealmail_acme::rollover::next_spki_sha256(&config.data_dir)?
    {
        records.push(record(
            format!("_25._tcp.{host}."),
            "TLSA",
            format!("3 1 1 {next}"),
        ));
    }
    Ok((records, policy.text()))
}

/// The MTA-STS policy as the server serves it: the mode follows the certificate served for
/// the host name (the first configured one), unless `[mta_sts] mode` says otherwise.
fn mta_sts_policy(config: &sealmail_config::Config) -> anyhow::Result<sealmail_web::policy::MtaStsPolicy> {
    let set = sealmail_tls::CertSet::load(&crate::certs::served_files(config))?;
    let resolver = sealmail_tls::CertResolver::new(set);
    let serving = resolver.serving(config.hostname.as_str());
    Ok(sealmail_web::policy::MtaStsPolicy::for_certificate(
        &config.mta_sts,
        config.hostname.as_str(),
        &serving,
    ))
}

/// The zone-file lines a domain should publish.
pub(crate) fn dns_records(
    config: &sealmail_config::Config,
    domain: &Domain,
    helo_spf: bool,
) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let (records, policy) = expected_records(config, domain, helo_spf)?;
    let mut out = String::new();
    writeln!(out, "; DNS records for {domain} (sealmail)")?;
    for r in &records {
        let value = if r.kind == "TXT" {
            zone_txt(&r.value)
        } else {
            r.value.clone()
        };
        writeln!(out, "{}\tIN\t{}\t{value}", r.name, r.kind)?;
    }
    if !config.listeners.iter().any(|l| l.role == Role::Https) {
        writeln!(
            out,
            "; No https listener is configured: add one (role = \"https\", port 443) to serve the MTA-STS policy and client autoconfiguration."
        )?;
    }
    writeln!(
        out,
        "; MTA-STS policy, served at https://mta-sts.{domain}/.well-known/mta-sts.txt:"
    )?;
    for line in policy.lines() {
        writeln!(out, ";   {line}")?;
    }
    Ok(out)
}

/// Asks DNS (through `[dns]`) for every record `domain dns` prints: name, type and `ok`,
/// `missing` or `differs: ...` of each.
pub(crate) async fn found_records(
    config: &sealmail_config::Config,
    domain: &Domain,
    helo_spf: bool,
) -> anyhow::Result<Vec<(String, String, String)>> {
    use sealmail_dns::hickory_resolver::proto::rr::{RData, RecordType};
    let (records, _) = expected_records(config, domain, helo_spf)?;
    let dns = sealmail_dns::Dns::new(&config.dns)?;
    let mut checked = Vec::new();
    for r in &records {
        let kind = match r.kind {
            "MX" => RecordType::MX,
            "TLSA" => RecordType::TLSA,
            "SRV" => RecordType::SRV,
            "CNAME" => RecordType::CNAME,
            _ => RecordType::TXT,
        };
        let found: Vec<String> = match dns.resolver().lookup(r.name.as_str(), kind).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::TXT(txt) => Some(
                        txt.txt_data
                            .iter()
                            .map(|part| String::from_utf8_lossy(part).into_owned())
                            .collect::<String>(),
                    ),
                    RData::MX(mx) => Some(format!(
                        "{} {}",
                        mx.preference,
                        mx.exchange.to_ascii().to_ascii_lowercase()
                    )),
                    RData::CNAME(cname) => Some(cname.0.to_ascii().to_ascii_lowercase()),
                    RData::SRV(srv) => Some(format!(
                        "{} {} {} {}",
                        srv.priority,
                        srv.weight,
                        srv.port,
                        srv.target.to_ascii().to_ascii_lowercase()
                    )),
                    RData::TLSA(tlsa) => Some(format!(
                        "{} {} {} {}",
                        u8::from(tlsa.cert_usage),
                        u8::from(tlsa.selector),
                        u8::from(tlsa.matching),
                        hex::encode(&tlsa.cert_data)
                    )),
                    _ => None,
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        // A name may hold other TXT records (e.g. a site verification next to SPF): compare
        // with those of the same kind only.
        let prefix = r
            .value
            .split(';')
            .next()
            .unwrap_or("")
            .split(' ')
            .next()
            .unwrap_or("");
        let same_kind: Vec<&String> = found
            .iter()
            .filter(|f| r.kind != "TXT" || f.starts_with(prefix))
            .collect();
        let status = if same_kind.iter().any(|f| **f == r.value) {
            "ok".to_string()
        } else if same_kind.is_empty() {
            "missing".to_string()
        } else {
            format!("differs: found {same_kind:?}")
        };
        checked.push((r.name.clone(), r.kind.to_string(), status));
    }
    Ok(checked)
}

/// A TXT value in zone-file syntax: quoted strings of at most 255 bytes each.
fn zone_txt(value: &str) -> String {
    let parts: Vec<String> = value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    if parts.len() == 1 {
        parts.concat()
    } else {
        format!("( {} )", parts.join(" "))
    }
}

/// New DKIM keys for `domain`, named after this month, made the active ones.
fn make_dkim_keys(dkim_dir: &Path, domain: &Domain) -> anyhow::Result<()> {
    let selectors = new_dkim_keys(dkim_dir, domain)?;
    println!(
        "DKIM keys made (selectors {}); publish them with: sealmail domain dns {domain}",
        selectors.join(", ")
    );
    Ok(())
}

/// Makes new DKIM keys for `domain` (selectors named for this month); their selectors.
pub(crate) fn new_dkim_keys(dkim_dir: &Path, domain: &Domain) -> anyhow::Result<Vec<String>> {
    let now = time::OffsetDateTime::now_utc();
    let period = format!("{:04}{:02}", now.year(), u8::from(now.month()));
    Ok(sealmail_mailauth::signing::generate(
        dkim_dir,
        domain.as_str(),
        &period,
    )?)
}

pub fn dkim(config_path: &Path, command: DkimCommand) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let dkim_dir = config.data_dir.join(sealmail_mailauth::signing::DKIM_DIR);
    match command {
        DkimCommand::Rotate { domain } => {
            let domain = parse_domain(&domain)?;
            let old = sealmail_mailauth::signing::active_selectors(&dkim_dir, domain.as_str());
            make_dkim_keys(&dkim_dir, &domain)?;
            println!(
                "Publish the new records now and restart sealmail to sign with them. The old keys ({}) stay published; delete their files from {} once mail signed with them has been delivered (a few days).",
                if old.is_empty() {
                    "none".to_string()
                } else {
                    old.join(", ")
                },
                dkim_dir.join(domain.as_str()).display()
            );
        }
    }
    Ok(())
}
