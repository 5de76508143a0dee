//! The command line (clap derive) and logging set-up.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// A command-line or configuration mistake: exits with status 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

#[derive(Parser)]
#[command(name = "sealmail", version, about = "A mail server that is secure by default")]
pub struct Cli {
    /// Configuration file [default: ./sealmail.toml, or $SEALMAIL_CONFIG]
    #[arg(long, global = true, env = "SEALMAIL_CONFIG")]
    pub config: Option<PathBuf>,

    /// Log format on standard error [default: log.format from the config, else human]
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormatArg>,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    pub fn config_path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| PathBuf::from("sealmail.toml"))
    }
}

#[derive(Clone, Copy, Default, ValueEnum)]
pub enum LogFormatArg {
    #[default]
    Human,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create a self-contained test installation in ./sealmail-data (first run) and serve it on 127.0.0.1
    Quickstart(QuickstartArgs),
    /// Write a new configuration, a self-signed certificate (unless given) and an empty store
    Init(InitArgs),
    /// Run the server with the configuration file
    Serve,
    /// Validate the configuration file
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage the domains sealmail receives mail for
    #[command(subcommand)]
    Domain(DomainCommand),
    /// Manage user accounts
    #[command(subcommand)]
    User(UserCommand),
    /// DKIM signing keys
    #[command(subcommand)]
    Dkim(DkimCommand),
    /// The internal client certificate authority (mutual TLS, S/MIME)
    #[command(subcommand)]
    Ca(CaCommand),
    /// The server's certificates: status, and DANE-safe key rollover (docs/WEB.md)
    #[command(subcommand)]
    Cert(ServerCertCommand),
    /// Intrusion prevention: bans and the security event log
    #[command(subcommand)]
    Security(SecurityCommand),
    /// Inspect the outbound queue
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Print the day's TLS reports (RFC 8460 JSON), one per recipient domain with a policy;
    /// with --send, queue them to the domains' report addresses instead (once per day and
    /// domain; the server also does this every day on its own)
    TlsReport {
        /// The UTC day, YYYY-MM-DD (default: yesterday)
        #[arg(long)]
        day: Option<String>,
        /// Queue the reports to each domain's `_smtp._tls` rua mailto: addresses
        #[arg(long)]
        send: bool,
    },
    /// Bring the store's schema up to date (a snapshot is taken first)
    Migrate {
        /// Only list the migrations that would run
        #[arg(long)]
        dry_run: bool,
    },
    /// Copy this (stopped) SQLite installation into an empty PostgreSQL schema and check the
    /// copy: row counts and every message's SHA-256 (docs/CLUSTER.md)
    MigrateStore(MigrateStoreArgs),
    /// Grade a domain's email security by pillar and say how to fix each finding (any domain,
    /// ours or not; docs/CHECK-JSON.md)
    Check(CheckArgs),
    /// Write a consistent copy of store, keys and configuration to DIR (safe while serving)
    Backup { dir: PathBuf },
    /// Restore a backup made by `sealmail backup` (stop the server first)
    Restore { dir: PathBuf },
}

#[derive(clap::Args)]
pub struct CheckArgs {
    /// The domain to check
    pub domain: String,
    /// `text` (grouped by pillar, coloured on a terminal) or `json` (docs/CHECK-JSON.md)
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub format: String,
    /// Exit with status 1 when the grade is below this one (A, B, C, D or F)
    #[arg(long, value_name = "GRADE")]
    pub fail_under: Option<String>,
    /// DNS server to ask (IP or IP:PORT; repeatable); default: `[dns] nameservers` of the
    /// configuration if there is one, else the system's
    #[arg(long, value_name = "ADDR")]
    pub nameserver: Vec<String>,
    /// DKIM selector whose key to check (repeatable)
    #[arg(long, value_name = "SELECTOR")]
    pub dkim_selector: Vec<String>,
    /// A message sent from the domain (as received, headers and body): its DKIM signatures
    /// are looked at and their selectors' keys checked
    #[arg(long, value_name = "FILE")]
    pub message: Option<PathBuf>,
    /// Ports of a test installation, `NAME=PORT[,NAME=PORT...]` with the names smtp (25),
    /// submissions (465), submission (587), imaps (993), imap (143) and https (443)
    #[arg(long, value_name = "NAME=PORT,...")]
    pub port: Option<String>,
    /// A host whose submission and IMAP ports to check too (repeatable); the MX hosts' SMTP
    /// port and the servers of the domain's SRV records are always checked
    #[arg(long, value_name = "HOST")]
    pub host: Vec<String>,
    /// Trust the certificate authorities in this PEM file besides the system's
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Also try attacks on the servers: open relaying, SMTP smuggling, STARTTLS command
    /// injection, passwords in plaintext. Only for servers you run: needs --i-run-this-server
    #[arg(long)]
    pub active: bool,
    /// Confirms that the servers --active probes are yours to probe
    #[arg(long)]
    pub i_run_this_server: bool,
}

#[derive(Subcommand)]
pub enum ServerCertCommand {
    /// Every certificate served: names, issuer, expiry, and what renews it
    Status,
    /// Make the next ACME key (its TLSA record is printed to publish beside the current one);
    /// with --switch, have the running server move to it
    Rollover {
        /// Switch to the prepared key now (the server orders a certificate for it)
        #[arg(long)]
        switch: bool,
    },
}

#[derive(Args)]
pub struct QuickstartArgs {
    /// Folder for configuration, certificate, store and credentials
    #[arg(long, default_value = "sealmail-data")]
    pub data_dir: PathBuf,
    /// Added to every listener port (2525, 2465, 2587, 2143, 2993, 2443; 2080 with --acme-challenge http-01)
    #[arg(long, default_value_t = 0)]
    pub port_offset: u16,
    /// Mail domain; users are alice@DOMAIN and bob@DOMAIN, the certificate is for mail.DOMAIN
    #[arg(long, default_value = "example.test")]
    pub domain: String,
    /// DNS server to use instead of the system's (written to [dns] nameservers on creation),
    /// e.g. 127.0.0.1:5353
    #[arg(long)]
    pub nameserver: Option<std::net::SocketAddr>,
    /// Store URL written to [store] url, e.g. postgres://sealmail@127.0.0.1:5432/mail
    /// (default: SQLite in the data folder); a password goes in [store] password_file
    #[arg(long)]
    pub store_url: Option<String>,
    /// PostgreSQL schema written to [store] schema (with --store-url)
    #[arg(long, requires = "store_url")]
    pub store_schema: Option<String>,
    #[command(flatten)]
    pub acme: AcmeArgs,
}

/// `[acme]` written by `init` and `quickstart` (docs/WEB.md).
#[derive(Args, Debug, Clone)]
pub struct AcmeArgs {
    /// ACME directory URL written to [acme] directory, e.g.
    /// https://acme-v02.api.letsencrypt.org/directory (default: no ACME)
    #[arg(long)]
    pub acme_directory: Option<String>,
    /// Contact address for the CA (repeatable), written to [acme] contact
    #[arg(long, requires = "acme_directory")]
    pub acme_contact: Vec<String>,
    /// "tls-alpn-01" (on the https listener) or "http-01" (adds the http listener: port 80,
    /// or 2080 plus the offset for quickstart)
    #[arg(long, requires = "acme_directory", default_value = "tls-alpn-01")]
    pub acme_challenge: String,
    /// PEM roots trusted for the ACME server, written to [acme] ca_file
    #[arg(long, requires = "acme_directory")]
    pub acme_ca_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct MigrateStoreArgs {
    /// The PostgreSQL to copy into: postgres://USER@HOST:PORT/DATABASE (no password here)
    #[arg(long)]
    pub to: String,
    /// The schema to copy into (created if missing; must have no rows) [default: public]
    #[arg(long)]
    pub schema: Option<String>,
    /// File holding the PostgreSQL password (mode 0600)
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// TLS to PostgreSQL: disable, prefer, require, verify-ca or verify-full (required off
    /// loopback)
    #[arg(long, default_value = "verify-full")]
    pub tls: String,
    /// PEM file of the CA that issued the PostgreSQL server's certificate
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
}

#[derive(Args)]
pub struct InitArgs {
    /// Host name clients and other servers use to reach this server
    #[arg(long)]
    pub hostname: String,
    /// Folder for the store and generated keys, relative to the configuration file
    #[arg(long, default_value = "sealmail-data")]
    pub data_dir: PathBuf,
    /// Existing PEM certificate chain (with --key); without it a self-signed one is made
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Existing PEM private key (mode 0600) for --cert
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// IP address the standard listeners bind to (ports 25, 465, 587, 143, 993)
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: std::net::IpAddr,
    /// Store URL written to [store] url, e.g. postgres://sealmail@127.0.0.1:5432/mail
    /// (default: SQLite in the data folder); a password goes in [store] password_file
    #[arg(long)]
    pub store_url: Option<String>,
    /// PostgreSQL schema written to [store] schema (with --store-url)
    #[arg(long, requires = "store_url")]
    pub store_schema: Option<String>,
    #[command(flatten)]
    pub acme: AcmeArgs,
}

#[derive(Subcommand)]
pub enum SecurityCommand {
    /// Bans and what caused them
    #[command(subcommand)]
    Bans(BansCommand),
    /// Lift the bans of an IP address (IPv6: its /64)
    Unban { ip: std::net::IpAddr },
    /// Print security events as JSON lines
    Events {
        /// Only events newer than this: a unix time, or an age like 30m, 12h, 7d [default: 24h]
        #[arg(long, default_value = "24h")]
        since: String,
    },
}

#[derive(Subcommand)]
pub enum BansCommand {
    /// List the bans in force, each with the events that caused it
    List,
}

#[derive(Subcommand)]
pub enum QueueCommand {
    /// List queued messages with their recipients and state
    List,
    /// Show one queued message: envelope, each recipient's state and last error, and its header
    Show { id: i64 },
    /// Try the message's pending recipients again now (a running server picks it up within
    /// seconds)
    Retry { id: i64 },
    /// Remove the message from the queue without delivering it (no bounce is sent)
    Delete { id: i64 },
    /// Try every pending recipient of every queued message again now
    Flush,
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Check the configuration file and print every problem found
    Check,
}

#[derive(Subcommand)]
pub enum DomainCommand {
    /// Start receiving mail for DOMAIN
    Add { domain: String },
    /// Print, in zone-file syntax, every DNS record DOMAIN should publish (MX, SPF, DKIM,
    /// DMARC, MTA-STS, TLS-RPT, DANE TLSA)
    Dns {
        domain: String,
        /// Ask DNS instead and report, per record, ok, missing or differs (exit 1 unless all ok)
        #[arg(long)]
        check: bool,
    },
    /// List the domains
    List,
    /// Stop receiving mail for DOMAIN (it must have no users)
    Remove { domain: String },
}

#[derive(Subcommand)]
pub enum DkimCommand {
    /// Make new keys (new selectors) for DOMAIN and sign with them from the next start; the
    /// old keys stay published by `domain dns` until their files are removed
    Rotate { domain: String },
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user; prints a generated password unless --password-stdin is given
    Add {
        address: String,
        /// Read the password from the first line of standard input
        #[arg(long)]
        password_stdin: bool,
        /// Give the new user the admin role (the web admin console)
        #[arg(long)]
        admin: bool,
    },
    /// List users; admins are marked `admin`
    List,
    /// Grant (on) or take (off) the admin role: who may use the web admin console
    Admin { address: String, role: AdminRole },
    /// Delete a user with all their mail
    Remove { address: String },
    /// Set a new password; prints a generated one unless --password-stdin is given
    Passwd {
        address: String,
        /// Read the password from the first line of standard input
        #[arg(long)]
        password_stdin: bool,
    },
    /// TOTP second factor (RFC 6238)
    #[command(subcommand)]
    Mfa(MfaCommand),
    /// Passwords per device or program, scoped and revocable
    #[command(subcommand, name = "app-password")]
    AppPassword(AppPasswordCommand),
    /// Client certificates registered to a user (mutual TLS, SASL EXTERNAL)
    #[command(subcommand)]
    Cert(CertCommand),
}

/// `user admin ADDRESS on|off`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AdminRole {
    On,
    Off,
}

#[derive(Subcommand)]
pub enum MfaCommand {
    /// Start an enrolment: prints the otpauth:// URI and a QR code for an authenticator app
    Enable { address: String },
    /// Activate the enrolment with a current code (or the code on standard input); prints 10
    /// one-time recovery codes once
    Confirm { address: String, code: Option<String> },
    /// Remove the second factor and its recovery codes
    Disable { address: String },
    /// Whether the user has a second factor, and how many recovery codes are left
    Status { address: String },
}

#[derive(Subcommand)]
pub enum AppPasswordCommand {
    /// Make an app password; prints it once, alone on the last line
    Add {
        address: String,
        name: String,
        /// Protocols it may be used on: imap, smtp or imap,smtp
        #[arg(long, default_value = "imap,smtp")]
        scope: String,
        /// Validity, e.g. 90d, 12h (default: no expiry)
        #[arg(long)]
        expires: Option<String>,
    },
    /// Name, scope, created, expires and last use (time and address) of each
    List { address: String },
    /// Revoke it: refused at once, and the sessions it opened end
    Revoke { address: String, name: String },
}

#[derive(Subcommand)]
pub enum CertCommand {
    /// Register a certificate (PEM or DER file) to the user
    Add {
        address: String,
        file: std::path::PathBuf,
    },
    /// The user's certificates: fingerprint, subject, expiry
    List { address: String },
    /// Remove and revoke a certificate (by SHA-256 fingerprint)
    Remove { address: String, fingerprint: String },
}

#[derive(Subcommand)]
pub enum CaCommand {
    /// Make the internal client CA (in the data folder's client-ca/, key 0600)
    Init,
    /// Issue a client certificate for ADDRESS: cert.pem, key.pem and a password-protected
    /// cert.p12 (for mail clients; also S/MIME); prints the .p12 password once, alone on the
    /// last line
    Issue {
        address: String,
        /// Where to write the files [default: ./ADDRESS]
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Days of validity
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

/// Sets up tracing on standard error. `RUST_LOG` refines the level (default `info`). Every
/// line names the node (`node=NAME`, or a `node` member in JSON) once [`set_log_node`] was
/// called, so that the logs of a cluster can be merged.
pub fn init_logging(format: LogFormatArg) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormatArg::Human => builder
            .event_format(WithNode {
                inner: tracing_subscriber::fmt::format(),
                json: false,
            })
            .try_init(),
        LogFormatArg::Json => builder
            .json()
            .event_format(WithNode {
                inner: tracing_subscriber::fmt::format().json(),
                json: true,
            })
            .try_init(),
    };
}

/// `server.node_name`, known once the configuration is read (after logging started).
static LOG_NODE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Names this node in every later log line.
pub fn set_log_node(name: &str) {
    let _ = LOG_NODE.set(name.to_string());
}

/// An event format that puts the node's name in front of what `inner` writes.
struct WithNode<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithNode<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some(node) = LOG_NODE.get() else {
            return self.inner.format_event(ctx, writer, event);
        };
        if !self.json {
            write!(writer, "node={node} ")?;
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.inner.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        writer.write_str(&with_json_node(&line, node))
    }
}

/// A JSON log line with a `node` member first.
fn with_json_node(line: &str, node: &str) -> String {
    let name = serde_json::Value::String(node.to_string());
    match line.strip_prefix('{') {
        Some(rest) if rest.starts_with('}') => format!("{{\"node\":{name}{rest}"),
        Some(rest) => format!("{{\"node\":{name},{rest}"),
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::with_json_node;

    #[test]
    fn json_log_lines_get_the_node_first() {
        assert_eq!(
            with_json_node("{\"level\":\"INFO\"}\n", "mail1"),
            "{\"node\":\"mail1\",\"level\":\"INFO\"}\n"
        );
        assert_eq!(with_json_node("{}", "a"), "{\"node\":\"a\"}");
    }
}
