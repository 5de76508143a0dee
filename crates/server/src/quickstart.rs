//! `sealmail init` (a new configuration for a real server) and `sealmail quickstart` (a complete
//! test installation on 127.0.0.1 in one command).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use sealmail_config::{CertificateFiles, Config};
use sealmail_identity::{Identity, generate_password};
use sealmail_store::Store;
use sealmail_types::{Domain, EmailAddress};

use crate::cli::{InitArgs, LogFormatArg, QuickstartArgs, init_logging, usage};
use crate::serve::open_store;

/// The credentials file quickstart writes (0600, one `ADDRESS PASSWORD` per line).
pub const CREDENTIALS_FILE: &str = "quickstart-credentials.txt";
const CONFIG_FILE: &str = "sealmail.toml";
const CERT_DAYS: i64 = 825;

/// Listener roles, TLS modes and ports: the quickstart's, before --port-offset.
const QUICKSTART_LISTENERS: &[(&str, &str, u16)] = &[
    ("mx", "starttls", 2525),
    ("submission", "implicit", 2465),
    ("submission", "starttls", 2587),
    ("imap", "starttls", 2143),
    ("imap", "implicit", 2993),
    ("https", "implicit", 2443),
];
/// The standard ports `init` configures (RFC 5321, RFC 8314, RFC 9051).
const STANDARD_LISTENERS: &[(&str, &str, u16)] = &[
    ("mx", "starttls", 25),
    ("submission", "implicit", 465),
    ("submission", "starttls", 587),
    ("imap", "starttls", 143),
    ("imap", "implicit", 993),
    ("https", "implicit", 443),
];

/// The `[acme]` section the arguments ask for (empty without `--acme-directory`), and whether
/// it needs the `http` listener.
fn acme_section(args: &crate::cli::AcmeArgs) -> anyhow::Result<(String, bool)> {
    let Some(directory) = &args.acme_directory else {
        return Ok((String::new(), false));
    };
    let http = match args.acme_challenge.as_str() {
        "tls-alpn-01" => false,
        "http-01" => true,
        other => {
            return Err(usage(format!(
                "--acme-challenge {other:?}: use \"tls-alpn-01\" or \"http-01\""
            )));
        }
    };
    let mut text = format!("\n[acme]\ndirectory = {directory:?}\n");
    if !args.acme_contact.is_empty() {
        writeln!(text, "contact = {:?}", args.acme_contact)?;
    }
    writeln!(text, "challenge = {:?}", args.acme_challenge)?;
    if let Some(ca_file) = &args.acme_ca_file {
        writeln!(text, "ca_file = {:?}", absolute(ca_file)?)?;
    }
    Ok((text, http))
}

/// The text of a new configuration file. Paths are written as given (relative paths are
/// relative to the configuration file's folder).
fn config_text(
    hostname: &Domain,
    data_dir: &str,
    cert: &str,
    key: &str,
    bind: IpAddr,
    ports: &[(&str, &str, u16)],
    offset: u16,
) -> anyhow::Result<String> {
    let mut text = String::new();
    writeln!(
        text,
        "# sealmail configuration; every key is described in docs/CONFIG.md"
    )?;
    writeln!(text, "hostname = {:?}", hostname.as_str())?;
    writeln!(text, "data_dir = {data_dir:?}")?;
    writeln!(text, "\n[[tls.certificate]]\ncert = {cert:?}\nkey = {key:?}")?;
    for (role, tls, port) in ports {
        let port = port
            .checked_add(offset)
            .ok_or_else(|| usage(format!("--port-offset {offset} pushes port {port} past 65535")))?;
        let bind = SocketAddr::new(bind, port);
        writeln!(
            text,
            "\n[[listener]]\nrole = {role:?}\nbind = \"{bind}\"\ntls = {tls:?}"
        )?;
    }
    Ok(text)
}

/// Writes a configuration and, unless given, a self-signed certificate. Refuses to overwrite.
fn write_config(config_path: &Path, text: &str) -> anyhow::Result<()> {
    if config_path.exists() {
        return Err(usage(format!(
            "{} already exists; sealmail never overwrites a configuration (remove it or pass another --config)",
            config_path.display()
        )));
    }
    if let Some(dir) = config_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // The configuration names key files and may later hold secrets: keep it private.
    sealmail_safeio::write_private(config_path, text.as_bytes())
        .with_context(|| format!("cannot write {}", config_path.display()))
}

fn generate_certificate(hostname: &Domain, files: &CertificateFiles) -> anyhow::Result<()> {
    sealmail_tls::selfsigned::generate(&[hostname.to_string()], files, CERT_DAYS)?;
    Ok(())
}

pub async fn init(config_path: &Path, args: InitArgs) -> anyhow::Result<()> {
    let hostname =
        Domain::parse(&args.hostname).map_err(|e| usage(format!("--hostname {:?}: {e}", args.hostname)))?;
    let data_dir = args.data_dir.to_string_lossy().into_owned();
    let (cert, key, generate) = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => (absolute(cert)?, absolute(key)?, false),
        _ => (
            format!("{data_dir}/tls/cert.pem"),
            format!("{data_dir}/tls/key.pem"),
            true,
        ),
    };
    let (acme, http) = acme_section(&args.acme)?;
    let mut listeners = STANDARD_LISTENERS.to_vec();
    if http {
        listeners.push(("http", "none", 80));
    }
    let text = config_text(&hostname, &data_dir, &cert, &key, args.bind, &listeners, 0)?
        + &store_section(args.store_url.as_deref(), args.store_schema.as_deref(), false)?
        + &acme;
    write_config(config_path, &text)?;
    let config = Config::load(config_path).map_err(|e| usage(e.to_string()))?;
    sealmail_safeio::create_private_dir(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    if generate {
        generate_certificate(&hostname, &config.certificates[0])?;
        println!(
            "created a self-signed certificate for {hostname}: {}",
            config.certificates[0].cert.display()
        );
    } else {
        sealmail_tls::CertSet::load(&config.certificates).map_err(|e| usage(e.to_string()))?;
    }
    open_store(&config).await?;
    println!(
        "wrote {}; next: `sealmail domain add DOMAIN`, `sealmail user add ADDRESS`, `sealmail serve`",
        config_path.display()
    );
    Ok(())
}

/// The `[store]` section for `--store-url` and `--store-schema`; none for the SQLite default.
/// A local test installation (`quickstart`) talks to a PostgreSQL server on this machine,
/// often without TLS: it asks for TLS when offered, which the store allows on loopback only.
fn store_section(url: Option<&str>, schema: Option<&str>, local_test: bool) -> anyhow::Result<String> {
    let Some(url) = url else {
        return Ok(String::new());
    };
    let mut text = format!("\n[store]\nurl = {url:?}\n");
    if let Some(schema) = schema {
        writeln!(text, "schema = {schema:?}")?;
    }
    if local_test && (url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        writeln!(text, "tls = \"prefer\"")?;
    }
    Ok(text)
}

fn absolute(path: &Path) -> anyhow::Result<String> {
    let path = std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))?;
    Ok(path.to_string_lossy().into_owned())
}

pub async fn quickstart(args: QuickstartArgs, log_format: Option<LogFormatArg>) -> anyhow::Result<()> {
    init_logging(log_format.unwrap_or_default());
    let domain =
        Domain::parse(&args.domain).map_err(|e| usage(format!("--domain {:?}: {e}", args.domain)))?;
    let config_path = args.data_dir.join(CONFIG_FILE);
    if config_path.exists() {
        println!(
            "sealmail quickstart: reusing {} (credentials are in {})",
            args.data_dir.display(),
            args.data_dir.join(CREDENTIALS_FILE).display()
        );
    } else {
        create(&args, &domain, &config_path).await?;
    }
    let config = Config::load(&config_path).map_err(|e| usage(e.to_string()))?;
    let listening: Vec<String> = config
        .listeners
        .iter()
        .map(|l| format!("{} {} ({})", l.role, l.bind, l.tls.as_str()))
        .collect();
    println!("listening: {}", listening.join(", "));
    crate::serve::run(config).await
}

async fn create(args: &QuickstartArgs, domain: &Domain, config_path: &Path) -> anyhow::Result<()> {
    let hostname =
        Domain::parse(&format!("mail.{domain}")).map_err(|e| usage(format!("--domain {domain}: {e}")))?;
    sealmail_safeio::create_private_dir(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let (acme, http) = acme_section(&args.acme)?;
    let mut listeners = QUICKSTART_LISTENERS.to_vec();
    if http {
        listeners.push(("http", "none", 2080));
    }
    let text = config_text(
        &hostname,
        ".",
        "tls/cert.pem",
        "tls/key.pem",
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        &listeners,
        args.port_offset,
    )? + quickstart_server_section()
        + QUICKSTART_CHECK_SECTION
        + &acme
        + &store_section(args.store_url.as_deref(), args.store_schema.as_deref(), true)?
        + &args
            .nameserver
            .map(|addr| format!("\n[dns]\nnameservers = [\"{addr}\"]\n"))
            .unwrap_or_default();
    write_config(config_path, &text)?;
    let config = Config::load(config_path).map_err(|e| usage(e.to_string()))?;
    // A local test installation: clients on this machine may connect by name or by address.
    let names = [
        hostname.to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ];
    sealmail_tls::selfsigned::generate(&names, &config.certificates[0], CERT_DAYS)?;

    let store: Arc<dyn Store> = open_store(&config).await?;
    store.add_domain(domain).await?;
    // As `domain add` does: keys so that mail from the domain is DKIM-signed.
    let now = time::OffsetDateTime::now_utc();
    let period = format!("{:04}{:02}", now.year(), u8::from(now.month()));
    sealmail_mailauth::signing::generate(
        &config.data_dir.join(sealmail_mailauth::signing::DKIM_DIR),
        domain.as_str(),
        &period,
    )?;
    let identity = Identity::new(store.clone())?;
    let mut credentials = zeroize::Zeroizing::new(String::new());
    for user in ["alice", "bob"] {
        let address = EmailAddress::parse(&format!("{user}@{domain}")).map_err(|e| usage(e.to_string()))?;
        let password = generate_password()?;
        identity.add_user(&address, &password).await?;
        writeln!(credentials, "{address} {}", password.expose())?;
    }
    let credentials_path: PathBuf = args.data_dir.join(CREDENTIALS_FILE);
    sealmail_safeio::write_private(&credentials_path, credentials.as_bytes())
        .with_context(|| format!("cannot write {}", credentials_path.display()))?;

    println!("sealmail quickstart: created {}", args.data_dir.display());
    println!(
        "  domain {domain}, self-signed certificate for {hostname} in {}",
        config.certificates[0].cert.display()
    );
    println!(
        "  users (passwords shown once; kept in {}):",
        credentials_path.display()
    );
    for line in credentials.lines() {
        println!("    {line}");
    }
    Ok(())
}

/// The `[server]` section for a quickstart started as root: a local test installation keeps
/// running as whoever started it, and says so in its configuration.
/// A local test installation's domain is published nowhere (its ports are offset, its
/// certificate self-signed): a daily check would only record an F, so quickstart turns it off.
const QUICKSTART_CHECK_SECTION: &str = "\n# A local test installation: its domain is not published, so nothing to check daily.\n[check]\ndaily = false\n";

fn quickstart_server_section() -> &'static str {
    if nix::unistd::Uid::effective().is_root() {
        "\n# quickstart was run as root; a real installation sets user = \"an unprivileged account\" instead.\n[server]\nallow_root = true\n"
    } else {
        ""
    }
}
