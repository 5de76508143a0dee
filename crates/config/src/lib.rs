//! The configuration file (`sealmail.toml`): its schema, its secure defaults, and validation.
//!
//! The file is read in two steps. Serde reads it into `Raw*` structs that refuse unknown keys
//! but keep enumerated values as strings; [`Config::from_toml`] then turns them into typed values,
//! so that every mistake is reported in our words: the key, the bad value, and the fix. There is
//! deliberately no way to express a listener without TLS.
//! Every key is documented, with its default, in docs/CONFIG.md.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use sealmail_types::Domain;

/// Errors found in a configuration file; each message names the key, the value and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}; create it with `sealmail init` or pass --config PATH")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Receives mail from other servers (port 25).
    Mx,
    /// Accepts mail from our own authenticated users (ports 465 and 587).
    Submission,
    /// Lets our users read their mail (ports 143 and 993).
    Imap,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Mx => "mx",
            Role::Submission => "submission",
            Role::Imap => "imap",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a listener starts TLS. Plaintext is not representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsMode {
    /// Plaintext greeting, then the STARTTLS command (RFC 3207, RFC 3501 section 6.2.1).
    StartTls,
    /// TLS from the first byte (RFC 8314).
    Implicit,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::StartTls => "starttls",
            TlsMode::Implicit => "implicit",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub role: Role,
    pub bind: SocketAddr,
    pub tls: TlsMode,
    /// When not empty, only clients in these networks may connect.
    pub allow: Vec<IpNet>,
    /// Clients in these networks are refused; deny wins over allow.
    pub deny: Vec<IpNet>,
    /// Connections from `security.proxies` start with a PROXY protocol header (v1 or v2).
    pub proxy_protocol: bool,
}

impl Listener {
    /// Whether a client at `ip` may connect to this listener.
    pub fn permits(&self, ip: std::net::IpAddr) -> bool {
        if self.deny.iter().any(|net| net.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&ip))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1); must not be readable by group or others.
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    /// Connections one client may hold at once: an IPv4 address, or an IPv6 /64.
    pub max_connections_per_ip: usize,
    /// The share of `max_connections`, in percent, that the listeners of one role (mx,
    /// submission, imap) may hold together, so that a flood on one role leaves room for the others.
    pub max_connections_per_role_percent: u8,
    /// New connections one IP address (IPv6: one /64) may open per minute.
    pub max_connection_rate_per_ip: u32,
    pub tls_handshake_timeout: Duration,
    pub command_timeout: Duration,
    /// IMAP sessions idle longer than this are logged out (RFC 9051 5.4: at least 30 minutes).
    pub imap_idle_timeout: Duration,
    /// IMAP clients that have not logged in are logged out when a command (the wait for it
    /// included) takes longer than this: they cannot hold a connection for the 30 minutes a
    /// logged-in client may idle. A value above `imap_idle_timeout` is cut to it (existing
    /// configurations with a short idle timeout keep working).
    pub imap_unauthenticated_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Octets one account's messages may take in all (0: no limit). A full account refuses
    /// new mail (`552 5.2.2`, IMAP `NO [OVERQUOTA]`) and reports its use over IMAP QUOTA.
    pub mailbox_quota: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 2048,
            max_connections_per_ip: 32,
            max_connections_per_role_percent: 50,
            max_connection_rate_per_ip: 600,
            tls_handshake_timeout: Duration::from_secs(30),
            // RFC 5321 section 4.5.3.2.7: the server timeout SHOULD be at least 5 minutes.
            command_timeout: Duration::from_secs(300),
            imap_idle_timeout: Duration::from_secs(1800),
            imap_unauthenticated_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            mailbox_quota: 2 * 1024 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Most writes that one commit (one fsync) may carry.
    pub group_commit_max_batch: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            group_commit_max_batch: 256,
        }
    }
}

/// SMTP limits (RFC 5321 section 4.5.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpConfig {
    /// Largest message accepted, in octets; advertised with SIZE (RFC 1870).
    pub max_message_size: usize,
    /// Recipients per message (RFC 5321 4.5.3.1.8 asks for at least 100).
    pub max_recipients: usize,
    /// Longest command line, CRLF included (RFC 5321 4.5.3.1.4: 512).
    pub max_line_length: usize,
    /// Bad commands after which the session is closed with 421.
    pub max_errors: u32,
    /// Time allowed for the whole DATA or BDAT transfer of one message.
    pub data_timeout: Duration,
    /// Messages one authenticated account may start per hour (a stolen password must not
    /// turn the server into a spam cannon).
    pub messages_per_hour: u32,
    /// Recipients one authenticated account may address per hour.
    pub recipients_per_hour: u32,
    /// Message bodies all sessions together may hold in memory while receiving them.
    pub max_buffered_bytes: usize,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 100,
            max_line_length: 512,
            max_errors: 10,
            // RFC 5321 4.5.3.2.6: 10 minutes for the data termination.
            data_timeout: Duration::from_secs(600),
            messages_per_hour: 500,
            recipients_per_hour: 2000,
            max_buffered_bytes: 512 * 1024 * 1024,
        }
    }
}

/// Who the server runs as.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerConfig {
    /// Started as root, switch to this user right after binding the listeners.
    pub user: Option<String>,
    /// The group to switch to (default: the user's primary group).
    pub group: Option<String>,
    /// Keep running as root when no user is set (refused otherwise).
    pub allow_root: bool,
}

/// Intrusion prevention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityConfig {
    /// Authentication failures from one IP (IPv6: one /64) within `failure_window` that ban it.
    pub auth_failures: u32,
    pub failure_window: Duration,
    /// Length of a first ban; each further ban within a week doubles it, up to `max_ban`.
    pub ban: Duration,
    pub max_ban: Duration,
    /// Networks never banned (e.g. the office, a monitoring host).
    pub trusted: Vec<IpNet>,
    /// Load balancers whose PROXY protocol headers are believed; never banned themselves.
    pub proxies: Vec<IpNet>,
    /// How long security events, and bans that ended, are kept in the store.
    pub event_retention: Duration,
    /// Size past which `security-events.jsonl` is rotated to `security-events.jsonl.1`.
    pub event_log_max_bytes: u64,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            auth_failures: 5,
            failure_window: Duration::from_secs(600),
            ban: Duration::from_secs(900),
            max_ban: Duration::from_secs(86_400),
            trusted: Vec::new(),
            proxies: Vec::new(),
            event_retention: Duration::from_secs(90 * 86_400),
            event_log_max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Password logins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// How long a successful login is remembered so that reconnecting clients skip Argon2;
    /// zero turns the cache off.
    pub login_cache_ttl: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            login_cache_ttl: Duration::from_secs(300),
        }
    }
}

/// The resolver every DNS lookup goes through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Servers asked (UDP, then TCP when an answer is truncated); empty means the system's
    /// (/etc/resolv.conf).
    pub nameservers: Vec<SocketAddr>,
    /// How long one query waits for an answer before it is retried or given up.
    pub timeout: Duration,
    /// How many times a query is sent to each server before it is a temporary error.
    pub attempts: usize,
    /// Records kept in the cache.
    pub cache_size: u64,
    /// Whether the nameservers validate DNSSEC and their AD bit may be trusted (for DANE). Only
    /// true for a validating resolver on this host or a link the admin controls.
    pub trust_ad_bit: bool,
    /// Whether clients' addresses are looked up by PTR (off: it costs a query per connection
    /// and proves nothing).
    pub reverse_lookups: bool,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(5),
            attempts: 2,
            cache_size: 4096,
            trust_ad_bit: false,
            reverse_lookups: false,
        }
    }
}

/// Outbound delivery (docs/CONFIG.md `[delivery]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryConfig {
    /// The port MX hosts are reached on (25; tests and unusual networks use others).
    pub smtp_port: u16,
    /// Destination domain (lower case) -> host and port, used instead of the MX lookup; every
    /// TLS policy of the destination still applies, with the route's host as the MX host.
    pub routes: BTreeMap<String, (String, u16)>,
    /// Destination domains (lower case) that must get TLS with a verified certificate.
    pub require_tls: Vec<String>,
    /// First retry delay; each further one doubles, up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// A message still undelivered this long after it was queued is bounced.
    pub give_up: Duration,
    /// A recipient still undelivered this long after the message was queued gets one "delayed"
    /// notice to the sender (RFC 3464); zero: never.
    pub delay_warning: Duration,
    /// Outbound connections at once, in all and per destination domain.
    pub max_connections: usize,
    pub max_connections_per_domain: usize,
    /// Messages sent over one connection before it is closed.
    pub max_messages_per_connection: usize,
    pub connect_timeout: Duration,
    /// How long any one SMTP reply may take (RFC 5321 4.5.3.2 allows minutes).
    pub command_timeout: Duration,
    /// The port MTA-STS policies are fetched from (443; tests use others).
    pub mta_sts_port: u16,
    /// PEM file of extra certificate authorities trusted for MX hosts and MTA-STS, in addition
    /// to the system's.
    pub trust_anchors: Option<PathBuf>,
    /// A smarthost all outbound mail goes through instead of the destinations' MX hosts.
    pub relay: Option<Relay>,
}

/// An authenticated smarthost (`[delivery] relay`): TLS with a verified certificate always.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    pub host: String,
    pub port: u16,
    /// TLS from the first byte (port 465 style) instead of STARTTLS.
    pub implicit_tls: bool,
    /// AUTH PLAIN user name and the file holding the password (mode 0600); no AUTH when `None`.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            smtp_port: 25,
            routes: BTreeMap::new(),
            require_tls: Vec::new(),
            retry_base: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            give_up: Duration::from_secs(5 * 24 * 3600),
            delay_warning: Duration::from_secs(4 * 3600),
            max_connections: 64,
            max_connections_per_domain: 4,
            max_messages_per_connection: 100,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            mta_sts_port: 443,
            trust_anchors: None,
            relay: None,
        }
    }
}

/// What the `mx` role does with sender-authentication results (docs/CONFIG.md `[inbound]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundConfig {
    pub dmarc_reject: bool,
    pub dmarc_quarantine: bool,
    pub tempfail_on_dns_error: bool,
    pub phishing_warnings: bool,
    /// Also put the warning as a line at the top of the message text (alters the message).
    pub phishing_notice_in_body: bool,
}

impl Default for InboundConfig {
    fn default() -> Self {
        InboundConfig {
            dmarc_reject: true,
            dmarc_quarantine: true,
            tempfail_on_dns_error: true,
            phishing_warnings: true,
            phishing_notice_in_body: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// A validated configuration. Relative paths have been resolved against the config file's folder.
#[derive(Debug, Clone)]
pub struct Config {
    pub hostname: Domain,
    pub data_dir: PathBuf,
    pub certificates: Vec<CertificateFiles>,
    pub listeners: Vec<Listener>,
    pub limits: Limits,
    pub store: StoreConfig,
    pub smtp: SmtpConfig,
    pub auth: AuthConfig,
    pub security: SecurityConfig,
    pub dns: DnsConfig,
    pub inbound: InboundConfig,
    pub delivery: DeliveryConfig,
    pub server: ServerConfig,
    /// Where the Prometheus endpoint listens; off when `None`.
    pub metrics_bind: Option<SocketAddr>,
    pub log_format: LogFormat,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    hostname: String,
    #[serde(default = "default_data_dir")]
    data_dir: String,
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    listener: Vec<RawListener>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    smtp: RawSmtp,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    security: RawSecurity,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    inbound: RawInbound,
    #[serde(default)]
    delivery: RawDelivery,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    log: RawLog,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    user: Option<String>,
    group: Option<String>,
    #[serde(default)]
    allow_root: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    bind: Option<String>,
    #[serde(default)]
    allow_remote: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSecurity {
    auth_failures: Option<i64>,
    failure_window_secs: Option<i64>,
    ban_secs: Option<i64>,
    max_ban_secs: Option<i64>,
    #[serde(default)]
    trusted: Vec<String>,
    #[serde(default)]
    proxies: Vec<String>,
    event_retention_days: Option<i64>,
    event_log_max_bytes: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawInbound {
    dmarc_reject: Option<bool>,
    dmarc_quarantine: Option<bool>,
    tempfail_on_dns_error: Option<bool>,
    phishing_warnings: Option<bool>,
    phishing_notice_in_body: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    smtp_port: Option<i64>,
    #[serde(default)]
    routes: BTreeMap<String, String>,
    #[serde(default)]
    require_tls: Vec<String>,
    retry_base_secs: Option<i64>,
    retry_max_secs: Option<i64>,
    give_up_secs: Option<i64>,
    delay_warning_secs: Option<i64>,
    max_connections: Option<i64>,
    max_connections_per_domain: Option<i64>,
    max_messages_per_connection: Option<i64>,
    connect_timeout_secs: Option<i64>,
    command_timeout_secs: Option<i64>,
    mta_sts_port: Option<i64>,
    trust_anchors: Option<String>,
    relay: Option<String>,
    relay_tls: Option<String>,
    relay_username: Option<String>,
    relay_password_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDns {
    #[serde(default)]
    nameservers: Vec<String>,
    timeout_secs: Option<i64>,
    attempts: Option<i64>,
    cache_size: Option<i64>,
    #[serde(default)]
    trust_ad_bit: bool,
    #[serde(default)]
    reverse_lookups: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    login_cache_ttl_secs: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
    max_message_size: Option<i64>,
    max_recipients: Option<i64>,
    max_line_length: Option<i64>,
    max_errors: Option<i64>,
    data_timeout_secs: Option<i64>,
    messages_per_hour: Option<i64>,
    recipients_per_hour: Option<i64>,
    max_buffered_bytes: Option<i64>,
}

fn default_data_dir() -> String {
    ".".to_string()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default)]
    certificate: Vec<RawCertificate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertificate {
    cert: String,
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    role: String,
    bind: String,
    tls: String,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    proxy_protocol: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<i64>,
    max_connections_per_ip: Option<i64>,
    max_connections_per_role_percent: Option<i64>,
    max_connection_rate_per_ip: Option<i64>,
    tls_handshake_timeout_secs: Option<i64>,
    command_timeout_secs: Option<i64>,
    imap_idle_timeout_secs: Option<i64>,
    imap_unauthenticated_timeout_secs: Option<i64>,
    shutdown_grace_secs: Option<i64>,
    mailbox_quota: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    group_commit_max_batch: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml(&text, &path.display().to_string(), base)
    }

    /// Parses and validates config text; `origin` names it in messages and relative paths are
    /// resolved against `base`.
    pub fn from_toml(text: &str, origin: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_string(),
            message: describe_toml_error(&e),
        })?;
        let mut problems = Vec::new();

        let hostname = match Domain::parse(&raw.hostname) {
            Ok(d) => Some(d),
            Err(e) => {
                problems.push(format!(
                    "hostname = {:?} is not a valid host name ({e}); use the fully qualified name clients connect to, e.g. \"mail.example.org\"",
                    raw.hostname
                ));
                None
            }
        };

        let resolve = |p: &str| -> PathBuf {
            match Path::new(p) {
                p if p.is_absolute() => p.to_path_buf(),
                p if p == Path::new(".") => base.to_path_buf(),
                p => base.join(p),
            }
        };
        let data_dir = resolve(&raw.data_dir);

        if raw.tls.certificate.is_empty() {
            problems.push(
                "tls.certificate is empty; add [[tls.certificate]] with cert = \"PATH\" and key = \"PATH\", or run `sealmail init` to create a self-signed one".to_string(),
            );
        }
        let certificates = raw
            .tls
            .certificate
            .iter()
            .map(|c| CertificateFiles {
                cert: resolve(&c.cert),
                key: resolve(&c.key),
            })
            .collect();

        let mut listeners = Vec::new();
        if raw.listener.is_empty() {
            problems.push(
                "no [[listener]] is configured; add one, e.g. role = \"mx\", bind = \"0.0.0.0:25\", tls = \"starttls\"".to_string(),
            );
        }
        for (i, l) in raw.listener.iter().enumerate() {
            match validate_listener(i, l) {
                Ok(listener) => {
                    if let Some(j) = listeners.iter().position(|o: &Listener| o.bind == listener.bind) {
                        problems.push(format!(
                            "listener[{i}].bind = {:?} is already used by listener[{j}]; give each listener its own address and port",
                            l.bind
                        ));
                    }
                    listeners.push(listener);
                }
                Err(message) => problems.push(message),
            }
        }

        let limits = validate_limits(&raw.limits, &mut problems);

        let store = StoreConfig {
            group_commit_max_batch: positive(
                "store.group_commit_max_batch",
                raw.store.group_commit_max_batch,
                StoreConfig::default().group_commit_max_batch as i64,
                1..=100_000,
                &mut problems,
            ) as usize,
        };

        let d = SmtpConfig::default();
        let smtp = SmtpConfig {
            max_message_size: positive(
                "smtp.max_message_size",
                raw.smtp.max_message_size,
                d.max_message_size as i64,
                1024..=1024 * 1024 * 1024,
                &mut problems,
            ) as usize,
            max_recipients: positive(
                "smtp.max_recipients",
                raw.smtp.max_recipients,
                d.max_recipients as i64,
                1..=100_000,
                &mut problems,
            ) as usize,
            max_line_length: positive(
                "smtp.max_line_length",
                raw.smtp.max_line_length,
                d.max_line_length as i64,
                512..=65_536,
                &mut problems,
            ) as usize,
            max_errors: positive(
                "smtp.max_errors",
                raw.smtp.max_errors,
                d.max_errors as i64,
                1..=1000,
                &mut problems,
            ) as u32,
            data_timeout: seconds(
                "smtp.data_timeout_secs",
                raw.smtp.data_timeout_secs,
                d.data_timeout,
                1..=86_400,
                &mut problems,
            ),
            messages_per_hour: positive(
                "smtp.messages_per_hour",
                raw.smtp.messages_per_hour,
                d.messages_per_hour as i64,
                1..=10_000_000,
                &mut problems,
            ) as u32,
            recipients_per_hour: positive(
                "smtp.recipients_per_hour",
                raw.smtp.recipients_per_hour,
                d.recipients_per_hour as i64,
                1..=10_000_000,
                &mut problems,
            ) as u32,
            max_buffered_bytes: positive(
                "smtp.max_buffered_bytes",
                raw.smtp.max_buffered_bytes,
                d.max_buffered_bytes as i64,
                1024..=1024 * 1024 * 1024 * 1024,
                &mut problems,
            ) as usize,
        };
        if smtp.max_buffered_bytes < smtp.max_message_size {
            problems.push(format!(
                "smtp.max_buffered_bytes = {} is smaller than smtp.max_message_size = {}; no message of the maximum size could be received, raise it",
                smtp.max_buffered_bytes, smtp.max_message_size
            ));
        }

        let auth = AuthConfig {
            login_cache_ttl: seconds(
                "auth.login_cache_ttl_secs",
                raw.auth.login_cache_ttl_secs,
                AuthConfig::default().login_cache_ttl,
                0..=86_400,
                &mut problems,
            ),
        };

        let dd = DnsConfig::default();
        let mut nameservers = Vec::new();
        for (i, server) in raw.dns.nameservers.iter().enumerate() {
            // "192.0.2.53" means port 53; "127.0.0.1:5353" and "[::1]:53" name the port.
            let parsed = server.parse::<SocketAddr>().or_else(|_| {
                server
                    .parse::<std::net::IpAddr>()
                    .map(|ip| SocketAddr::new(ip, 53))
            });
            match parsed {
                Ok(addr) => nameservers.push(addr),
                Err(_) => problems.push(format!(
                    "dns.nameservers[{i}] = {server:?} is not an address; use e.g. \"127.0.0.1\", \"127.0.0.1:5353\" or \"[::1]:53\""
                )),
            }
        }
        let dns = DnsConfig {
            nameservers,
            timeout: seconds(
                "dns.timeout_secs",
                raw.dns.timeout_secs,
                dd.timeout,
                1..=60,
                &mut problems,
            ),
            attempts: positive(
                "dns.attempts",
                raw.dns.attempts,
                dd.attempts as i64,
                1..=10,
                &mut problems,
            ) as usize,
            cache_size: positive(
                "dns.cache_size",
                raw.dns.cache_size,
                dd.cache_size as i64,
                0..=10_000_000,
                &mut problems,
            ) as u64,
            trust_ad_bit: raw.dns.trust_ad_bit,
            reverse_lookups: raw.dns.reverse_lookups,
        };
        if dns.trust_ad_bit && dns.nameservers.is_empty() {
            problems.push(
                "dns.trust_ad_bit = true needs dns.nameservers: name the validating resolver you trust, e.g. [\"127.0.0.1\"]".to_string(),
            );
        }
        let delivery = validate_delivery(&raw.delivery, &resolve, &mut problems);

        let d = SecurityConfig::default();
        // Up to a year.
        let secs = |key: &str, value: Option<i64>, default: Duration, problems: &mut Vec<String>| {
            seconds(key, value, default, 1..=31_536_000, problems)
        };
        let security = SecurityConfig {
            auth_failures: positive(
                "security.auth_failures",
                raw.security.auth_failures,
                d.auth_failures as i64,
                1..=10_000,
                &mut problems,
            ) as u32,
            failure_window: secs(
                "security.failure_window_secs",
                raw.security.failure_window_secs,
                d.failure_window,
                &mut problems,
            ),
            ban: secs("security.ban_secs", raw.security.ban_secs, d.ban, &mut problems),
            max_ban: secs(
                "security.max_ban_secs",
                raw.security.max_ban_secs,
                d.max_ban,
                &mut problems,
            ),
            trusted: networks("security.trusted", &raw.security.trusted, &mut problems),
            proxies: networks("security.proxies", &raw.security.proxies, &mut problems),
            // At least a week: ban escalation looks a week back.
            event_retention: Duration::from_secs(
                86_400
                    * positive(
                        "security.event_retention_days",
                        raw.security.event_retention_days,
                        d.event_retention.as_secs() as i64 / 86_400,
                        7..=3650,
                        &mut problems,
                    ) as u64,
            ),
            event_log_max_bytes: positive(
                "security.event_log_max_bytes",
                raw.security.event_log_max_bytes,
                d.event_log_max_bytes as i64,
                4096..=1 << 40,
                &mut problems,
            ) as u64,
        };
        if security.proxies.is_empty()
            && let Some(i) = listeners.iter().position(|l: &Listener| l.proxy_protocol)
        {
            problems.push(format!(
                "listener[{i}].proxy_protocol = true but security.proxies is empty; list the load balancers' addresses in security.proxies"
            ));
        }

        let metrics_bind = match raw.metrics.bind.as_deref() {
            None => None,
            Some(text) => match text.parse::<SocketAddr>() {
                // The endpoint has no authentication: off loopback only when asked for.
                Ok(address) if !address.ip().is_loopback() && !raw.metrics.allow_remote => {
                    problems.push(format!(
                        "metrics.bind = {text:?} is not a loopback address and /metrics has no authentication; \
                         bind it to 127.0.0.1 or [::1] (e.g. \"127.0.0.1:9125\"), or set metrics.allow_remote = true \
                         to expose it (then firewall it to your monitoring hosts)"
                    ));
                    None
                }
                Ok(address) => Some(address),
                Err(_) => {
                    problems.push(format!(
                        "metrics.bind = {text:?} is not an IP address with a port; use e.g. \"127.0.0.1:9125\""
                    ));
                    None
                }
            },
        };

        let log_format = match raw.log.format.as_deref() {
            None | Some("human") => LogFormat::Human,
            Some("json") => LogFormat::Json,
            Some(other) => {
                problems.push(format!(
                    "log.format = {other:?} is not a log format; use \"human\" or \"json\""
                ));
                LogFormat::Human
            }
        };

        match hostname {
            Some(hostname) if problems.is_empty() => Ok(Config {
                hostname,
                data_dir,
                certificates,
                listeners,
                limits,
                store,
                smtp,
                auth,
                security,
                dns,
                inbound: InboundConfig {
                    dmarc_reject: raw.inbound.dmarc_reject.unwrap_or(true),
                    dmarc_quarantine: raw.inbound.dmarc_quarantine.unwrap_or(true),
                    tempfail_on_dns_error: raw.inbound.tempfail_on_dns_error.unwrap_or(true),
                    phishing_warnings: raw.inbound.phishing_warnings.unwrap_or(true),
                    phishing_notice_in_body: raw.inbound.phishing_notice_in_body.unwrap_or(false),
                },
                delivery,
                server: ServerConfig {
                    user: raw.server.user.clone(),
                    group: raw.server.group.clone(),
                    allow_root: raw.server.allow_root,
                },
                metrics_bind,
                log_format,
            }),
            _ => Err(ConfigError::Invalid(problems)),
        }
    }
}

fn validate_listener(i: usize, l: &RawListener) -> Result<Listener, String> {
    let role = match l.role.as_str() {
        "mx" => Role::Mx,
        "submission" => Role::Submission,
        "imap" => Role::Imap,
        other => {
            return Err(format!(
                "listener[{i}].role = {other:?} is not a role; use \"mx\", \"submission\" or \"imap\""
            ));
        }
    };
    let tls = match (role, l.tls.as_str()) {
        (Role::Mx, "starttls") => TlsMode::StartTls,
        (Role::Mx, "implicit") => {
            return Err(format!(
                "listener[{i}].tls = \"implicit\" is not allowed for role \"mx\"; other mail servers connect in plaintext and upgrade, use \"starttls\""
            ));
        }
        (Role::Mx, other) => {
            return Err(format!(
                "listener[{i}].tls = {other:?} is not allowed for role \"mx\"; use \"starttls\""
            ));
        }
        (_, "starttls") => TlsMode::StartTls,
        (_, "implicit") => TlsMode::Implicit,
        (_, other) => {
            return Err(format!(
                "listener[{i}].tls = {other:?} is not allowed for role \"{role}\"; use \"starttls\" or \"implicit\""
            ));
        }
    };
    let bind: SocketAddr = l.bind.parse().map_err(|_| {
        format!(
            "listener[{i}].bind = {:?} is not an IP address with a port; use e.g. \"0.0.0.0:25\", \"127.0.0.1:2525\" or \"[::]:993\"",
            l.bind
        )
    })?;
    let mut problems = Vec::new();
    let allow = networks(&format!("listener[{i}].allow"), &l.allow, &mut problems);
    let deny = networks(&format!("listener[{i}].deny"), &l.deny, &mut problems);
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    Ok(Listener {
        role,
        bind,
        tls,
        allow,
        deny,
        proxy_protocol: l.proxy_protocol,
    })
}

fn validate_limits(raw: &RawLimits, problems: &mut Vec<String>) -> Limits {
    let d = Limits::default();
    // Up to a day.
    let secs = |key: &str, value: Option<i64>, default: Duration, problems: &mut Vec<String>| {
        seconds(key, value, default, 1..=86_400, problems)
    };
    let limits = Limits {
        max_connections: positive(
            "limits.max_connections",
            raw.max_connections,
            d.max_connections as i64,
            1..=1_000_000,
            problems,
        ) as usize,
        max_connections_per_ip: positive(
            "limits.max_connections_per_ip",
            raw.max_connections_per_ip,
            d.max_connections_per_ip as i64,
            1..=1_000_000,
            problems,
        ) as usize,
        max_connections_per_role_percent: positive(
            "limits.max_connections_per_role_percent",
            raw.max_connections_per_role_percent,
            d.max_connections_per_role_percent as i64,
            1..=100,
            problems,
        ) as u8,
        max_connection_rate_per_ip: positive(
            "limits.max_connection_rate_per_ip",
            raw.max_connection_rate_per_ip,
            d.max_connection_rate_per_ip as i64,
            1..=10_000_000,
            problems,
        ) as u32,
        tls_handshake_timeout: secs(
            "limits.tls_handshake_timeout_secs",
            raw.tls_handshake_timeout_secs,
            d.tls_handshake_timeout,
            problems,
        ),
        command_timeout: secs(
            "limits.command_timeout_secs",
            raw.command_timeout_secs,
            d.command_timeout,
            problems,
        ),
        imap_idle_timeout: secs(
            "limits.imap_idle_timeout_secs",
            raw.imap_idle_timeout_secs,
            d.imap_idle_timeout,
            problems,
        ),
        imap_unauthenticated_timeout: secs(
            "limits.imap_unauthenticated_timeout_secs",
            raw.imap_unauthenticated_timeout_secs,
            d.imap_unauthenticated_timeout,
            problems,
        ),
        shutdown_grace: secs(
            "limits.shutdown_grace_secs",
            raw.shutdown_grace_secs,
            d.shutdown_grace,
            problems,
        ),
        mailbox_quota: positive(
            "limits.mailbox_quota",
            raw.mailbox_quota,
            d.mailbox_quota as i64,
            0..=(1 << 50),
            problems,
        ) as u64,
    };
    if limits.max_connections_per_ip > limits.max_connections {
        problems.push(format!(
            "limits.max_connections_per_ip = {} is larger than limits.max_connections = {}; lower it or raise limits.max_connections",
            limits.max_connections_per_ip, limits.max_connections
        ));
    }
    limits
}

/// A duration given in whole seconds, checked like [`positive`].
fn validate_delivery(
    raw: &RawDelivery,
    resolve: &dyn Fn(&str) -> PathBuf,
    problems: &mut Vec<String>,
) -> DeliveryConfig {
    let d = DeliveryConfig::default();
    let port = |key: &str, value: Option<i64>, default: u16, problems: &mut Vec<String>| {
        positive(key, value, default as i64, 1..=65_535, problems) as u16
    };
    let mut routes = BTreeMap::new();
    for (domain, target) in &raw.routes {
        let name = match Domain::parse(domain) {
            Ok(name) => name.as_str().to_string(),
            Err(e) => {
                problems.push(format!(
                    "delivery.routes: {domain:?} is not a domain ({e}); write e.g. \"example.org\" = \"mx.example.org:25\""
                ));
                continue;
            }
        };
        match split_host_port(target) {
            Some(route) => {
                routes.insert(name, route);
            }
            None => problems.push(format!(
                "delivery.routes.{domain:?} = {target:?} is not HOST:PORT; write e.g. \"mx.example.org:25\" or \"[192.0.2.1]:25\""
            )),
        }
    }
    let mut require_tls = Vec::new();
    for (i, domain) in raw.require_tls.iter().enumerate() {
        match Domain::parse(domain) {
            Ok(name) => require_tls.push(name.as_str().to_string()),
            Err(e) => problems.push(format!(
                "delivery.require_tls[{i}] = {domain:?} is not a domain ({e})"
            )),
        }
    }
    let secs = |key: &str, value: Option<i64>, default: Duration, problems: &mut Vec<String>| {
        seconds(key, value, default, 1..=31_536_000, problems)
    };
    let count = |key: &str, value: Option<i64>, default: usize, problems: &mut Vec<String>| {
        positive(key, value, default as i64, 1..=100_000, problems) as usize
    };
    DeliveryConfig {
        smtp_port: port("delivery.smtp_port", raw.smtp_port, d.smtp_port, problems),
        routes,
        require_tls,
        retry_base: secs(
            "delivery.retry_base_secs",
            raw.retry_base_secs,
            d.retry_base,
            problems,
        ),
        retry_max: secs(
            "delivery.retry_max_secs",
            raw.retry_max_secs,
            d.retry_max,
            problems,
        ),
        give_up: secs("delivery.give_up_secs", raw.give_up_secs, d.give_up, problems),
        delay_warning: seconds(
            "delivery.delay_warning_secs",
            raw.delay_warning_secs,
            d.delay_warning,
            0..=31_536_000,
            problems,
        ),
        max_connections: count(
            "delivery.max_connections",
            raw.max_connections,
            d.max_connections,
            problems,
        ),
        max_connections_per_domain: count(
            "delivery.max_connections_per_domain",
            raw.max_connections_per_domain,
            d.max_connections_per_domain,
            problems,
        ),
        max_messages_per_connection: count(
            "delivery.max_messages_per_connection",
            raw.max_messages_per_connection,
            d.max_messages_per_connection,
            problems,
        ),
        connect_timeout: secs(
            "delivery.connect_timeout_secs",
            raw.connect_timeout_secs,
            d.connect_timeout,
            problems,
        ),
        command_timeout: secs(
            "delivery.command_timeout_secs",
            raw.command_timeout_secs,
            d.command_timeout,
            problems,
        ),
        mta_sts_port: port(
            "delivery.mta_sts_port",
            raw.mta_sts_port,
            d.mta_sts_port,
            problems,
        ),
        trust_anchors: raw.trust_anchors.as_deref().map(resolve),
        relay: validate_relay(raw, resolve, problems),
    }
}

fn validate_relay(
    raw: &RawDelivery,
    resolve: &dyn Fn(&str) -> PathBuf,
    problems: &mut Vec<String>,
) -> Option<Relay> {
    let Some(target) = &raw.relay else {
        if raw.relay_tls.is_some() || raw.relay_username.is_some() || raw.relay_password_file.is_some() {
            problems.push(
                "delivery.relay_tls/relay_username/relay_password_file need delivery.relay = \"HOST:PORT\""
                    .into(),
            );
        }
        return None;
    };
    let Some((host, port)) = split_host_port(target) else {
        problems.push(format!(
            "delivery.relay = {target:?} is not HOST:PORT; write e.g. \"smtp.example.net:587\""
        ));
        return None;
    };
    let implicit_tls = match raw.relay_tls.as_deref() {
        None | Some("starttls") => false,
        Some("implicit") => true,
        Some(other) => {
            problems.push(format!(
                "delivery.relay_tls = {other:?} is not allowed; use \"starttls\" or \"implicit\" (TLS is always required)"
            ));
            false
        }
    };
    if raw.relay_username.is_some() != raw.relay_password_file.is_some() {
        problems.push("delivery.relay_username and delivery.relay_password_file go together".into());
    }
    Some(Relay {
        host,
        port,
        implicit_tls,
        username: raw.relay_username.clone(),
        password_file: raw.relay_password_file.as_deref().map(resolve),
    })
}

/// "host:port" or "[address]:port" (an IPv6 address must be bracketed).
fn split_host_port(target: &str) -> Option<(String, u16)> {
    let (host, port) = target.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err() {
        return None;
    }
    if host.parse::<std::net::IpAddr>().is_err() && Domain::parse(host).is_err() {
        return None;
    }
    Some((host.to_ascii_lowercase(), port))
}

fn seconds(
    key: &str,
    value: Option<i64>,
    default: Duration,
    range: std::ops::RangeInclusive<i64>,
    problems: &mut Vec<String>,
) -> Duration {
    Duration::from_secs(positive(key, value, default.as_secs() as i64, range, problems) as u64)
}

fn positive(
    key: &str,
    value: Option<i64>,
    default: i64,
    range: std::ops::RangeInclusive<i64>,
    problems: &mut Vec<String>,
) -> i64 {
    match value {
        None => default,
        Some(v) if range.contains(&v) => v,
        Some(v) => {
            problems.push(format!(
                "{key} = {v} is out of range; use a number from {} to {} (default {default})",
                range.start(),
                range.end()
            ));
            default
        }
    }
}

/// Parses a list of networks ("192.0.2.0/24", "2001:db8::/48") or single addresses.
fn networks(key: &str, items: &[String], problems: &mut Vec<String>) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item.parse::<IpNet>().or_else(|_| item.parse::<std::net::IpAddr>().map(IpNet::from)) {
            Ok(net) => out.push(net),
            Err(_) => problems.push(format!(
                "{key}[{i}] = {item:?} is not an IP address or network; use e.g. \"192.0.2.0/24\" or \"2001:db8::/48\""
            )),
        }
    }
    out
}

fn describe_toml_error(e: &toml::de::Error) -> String {
    // toml's message already names the unknown or missing key and shows the line; we add the fix.
    let message = e.message();
    let hint = if message.contains("unknown field") {
        "; remove the key or check its spelling against docs/CONFIG.md"
    } else if message.contains("missing field") {
        "; add the key (see docs/CONFIG.md)"
    } else {
        ""
    };
    match e.span() {
        Some(span) => format!("{message}{hint} (at byte {})", span.start),
        None => format!("{message}{hint}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "[[tls.certificate]]\ncert = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\n";

    fn listener(role: &str, bind: &str, tls: &str) -> String {
        format!("[[listener]]\nrole = \"{role}\"\nbind = \"{bind}\"\ntls = \"{tls}\"\n")
    }

    fn good() -> String {
        format!(
            "hostname = \"mail.example.test\"\n{CERT}{}{}{}",
            listener("mx", "127.0.0.1:2525", "starttls"),
            listener("submission", "127.0.0.1:2465", "implicit"),
            listener("imap", "127.0.0.1:2993", "implicit"),
        )
    }

    fn error_of(text: &str) -> String {
        match Config::from_toml(text, "test.toml", Path::new("/etc/sealmail")) {
            Ok(_) => panic!("config accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_good_config_loads_with_defaults_and_resolved_paths() {
        let config =
            Config::from_toml(&good(), "test.toml", Path::new("/etc/sealmail")).map_err(|e| e.to_string());
        let config = match config {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(config.hostname.as_str(), "mail.example.test");
        assert_eq!(config.data_dir, Path::new("/etc/sealmail"));
        assert_eq!(config.certificates[0].key, Path::new("/etc/sealmail/tls/key.pem"));
        assert_eq!(config.listeners.len(), 3);
        assert_eq!(config.listeners[1].tls, TlsMode::Implicit);
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.log_format, LogFormat::Human);
    }

    #[test]
    fn metrics_listen_on_loopback_unless_remote_access_is_asked_for() {
        let metrics = |section: &str| {
            Config::from_toml(
                &format!("{}{section}", good()),
                "test.toml",
                Path::new("/etc/sealmail"),
            )
            .map(|c| c.metrics_bind)
            .map_err(|e| e.to_string())
        };
        for bind in ["127.0.0.1:9125", "[::1]:9125"] {
            assert_eq!(
                metrics(&format!("[metrics]\nbind = \"{bind}\"\n")),
                Ok(bind.parse().ok())
            );
        }
        assert!(metrics("[metrics]\nbind = \"192.0.2.1:9125\"\n").is_err());
        assert_eq!(
            metrics("[metrics]\nbind = \"0.0.0.0:9125\"\nallow_remote = true\n"),
            Ok("0.0.0.0:9125".parse().ok())
        );
    }

    #[test]
    fn bad_configs_get_messages_that_name_key_value_and_fix() {
        let head = format!("hostname = \"mail.example.test\"\n{CERT}");
        let table: Vec<(String, &str)> = vec![
            (
                format!(
                    "{head}{}{}{}",
                    listener("mx", "127.0.0.1:25", "starttls"),
                    listener("imap", "127.0.0.1:993", "implicit"),
                    listener("submission", "127.0.0.1:587", "none")
                ),
                "listener[2].tls = \"none\" is not allowed for role \"submission\"; use \"starttls\" or \"implicit\"",
            ),
            (
                format!("{head}{}", listener("imap", "127.0.0.1:143", "plain")),
                "listener[0].tls = \"plain\" is not allowed for role \"imap\"; use \"starttls\" or \"implicit\"",
            ),
            (
                format!("{head}{}", listener("mx", "127.0.0.1:25", "none")),
                "listener[0].tls = \"none\" is not allowed for role \"mx\"; use \"starttls\"",
            ),
            (
                format!("{head}{}", listener("mx", "127.0.0.1:25", "implicit")),
                "listener[0].tls = \"implicit\" is not allowed for role \"mx\"; other mail servers connect in plaintext and upgrade, use \"starttls\"",
            ),
            (
                format!("{head}{}", listener("pop3", "127.0.0.1:110", "starttls")),
                "listener[0].role = \"pop3\" is not a role; use \"mx\", \"submission\" or \"imap\"",
            ),
            (
                format!("{head}{}", listener("mx", "localhost:25", "starttls")),
                "listener[0].bind = \"localhost:25\" is not an IP address with a port; use e.g. \"0.0.0.0:25\", \"127.0.0.1:2525\" or \"[::]:993\"",
            ),
            (
                format!(
                    "{head}{}{}",
                    listener("mx", "127.0.0.1:25", "starttls"),
                    listener("imap", "127.0.0.1:25", "starttls")
                ),
                "listener[1].bind = \"127.0.0.1:25\" is already used by listener[0]; give each listener its own address and port",
            ),
            (
                head.clone(),
                "no [[listener]] is configured; add one, e.g. role = \"mx\", bind = \"0.0.0.0:25\", tls = \"starttls\"",
            ),
            (
                format!(
                    "{head}{}[dns]\nnameservers = [\"dns.example.test\"]\n",
                    listener("mx", "127.0.0.1:25", "starttls")
                ),
                "dns.nameservers[0] = \"dns.example.test\" is not an address; use e.g. \"127.0.0.1\", \"127.0.0.1:5353\" or \"[::1]:53\"",
            ),
            (
                format!(
                    "{head}{}[dns]\ntimeout_secs = 0\n",
                    listener("mx", "127.0.0.1:25", "starttls")
                ),
                "dns.timeout_secs = 0 is out of range; use a number from 1 to 60 (default 5)",
            ),
            (
                format!(
                    "{head}{}[dns]\ntrust_ad_bit = true\n",
                    listener("mx", "127.0.0.1:25", "starttls")
                ),
                "dns.trust_ad_bit = true needs dns.nameservers: name the validating resolver you trust, e.g. [\"127.0.0.1\"]",
            ),
            (
                format!(
                    "{head}{}[delivery]\nrelay = \"smtp.example.test\"\n",
                    listener("mx", "127.0.0.1:25", "starttls")
                ),
                "delivery.relay = \"smtp.example.test\" is not HOST:PORT; write e.g. \"smtp.example.net:587\"",
            ),
            (
                format!(
                    "{head}{}[delivery]\nrelay = \"smtp.example.test:465\"\nrelay_tls = \"none\"\n",
                    listener("mx", "127.0.0.1:25", "starttls")
                ),
                "delivery.relay_tls = \"none\" is not allowed; use \"starttls\" or \"implicit\" (TLS is always required)",
            ),
            (
                format!(
                    "hostname = \"mail.example.test\"\n{}",
                    listener("mx", "127.0.0.1:25", "starttls")
                ),
                "tls.certificate is empty; add [[tls.certificate]] with cert = \"PATH\" and key = \"PATH\", or run `sealmail init` to create a self-signed one",
            ),
            (
                good().replace("mail.example.test", "mail"),
                "hostname = \"mail\" is not a valid host name (domain \"mail\" needs at least two labels (like example.org)); use the fully qualified name clients connect to, e.g. \"mail.example.org\"",
            ),
            (
                format!("{}[limits]\nmax_connections = 0\n", good()),
                "limits.max_connections = 0 is out of range; use a number from 1 to 1000000 (default 2048)",
            ),
            (
                format!(
                    "{}[limits]\nmax_connections = 10\nmax_connections_per_ip = 20\n",
                    good()
                ),
                "limits.max_connections_per_ip = 20 is larger than limits.max_connections = 10; lower it or raise limits.max_connections",
            ),
            (
                format!("{}[metrics]\nbind = \"0.0.0.0:9125\"\n", good()),
                "metrics.bind = \"0.0.0.0:9125\" is not a loopback address and /metrics has no authentication; bind it to 127.0.0.1 or [::1] (e.g. \"127.0.0.1:9125\"), or set metrics.allow_remote = true to expose it (then firewall it to your monitoring hosts)",
            ),
            (
                format!("{}[security]\nevent_retention_days = 1\n", good()),
                "security.event_retention_days = 1 is out of range; use a number from 7 to 3650 (default 90)",
            ),
            (
                format!("{}[limits]\nmax_connections_per_role_percent = 0\n", good()),
                "limits.max_connections_per_role_percent = 0 is out of range; use a number from 1 to 100 (default 50)",
            ),
            (
                format!("{}[limits]\ncommand_timeout_secs = -5\n", good()),
                "limits.command_timeout_secs = -5 is out of range; use a number from 1 to 86400 (default 300)",
            ),
            (
                format!("{}[limits]\nimap_unauthenticated_timeout_secs = 0\n", good()),
                "limits.imap_unauthenticated_timeout_secs = 0 is out of range; use a number from 1 to 86400 (default 60)",
            ),
            (
                format!("{}[limits]\nmailbox_quota = -1\n", good()),
                "limits.mailbox_quota = -1 is out of range; use a number from 0 to 1125899906842624 (default 2147483648)",
            ),
            (
                format!("{}[delivery]\ndelay_warning_secs = -1\n", good()),
                "delivery.delay_warning_secs = -1 is out of range; use a number from 0 to 31536000 (default 14400)",
            ),
            (
                format!("{}[smtp]\nmax_line_length = 100\n", good()),
                "smtp.max_line_length = 100 is out of range; use a number from 512 to 65536 (default 512)",
            ),
            (
                format!(
                    "{head}[[listener]]\nrole = \"imap\"\nbind = \"127.0.0.1:993\"\ntls = \"implicit\"\nallow = [\"10.0.0.0/33\"]\n"
                ),
                "listener[0].allow[0] = \"10.0.0.0/33\" is not an IP address or network; use e.g. \"192.0.2.0/24\" or \"2001:db8::/48\"",
            ),
            (
                format!("{}[security]\ntrusted = [\"office\"]\n", good()),
                "security.trusted[0] = \"office\" is not an IP address or network; use e.g. \"192.0.2.0/24\" or \"2001:db8::/48\"",
            ),
            (
                format!(
                    "{head}[[listener]]\nrole = \"mx\"\nbind = \"127.0.0.1:25\"\ntls = \"starttls\"\nproxy_protocol = true\n"
                ),
                "listener[0].proxy_protocol = true but security.proxies is empty; list the load balancers' addresses in security.proxies",
            ),
            (
                format!("{}[log]\nformat = \"xml\"\n", good()),
                "log.format = \"xml\" is not a log format; use \"human\" or \"json\"",
            ),
        ];
        for (text, expected) in table {
            assert_eq!(error_of(&text), expected, "config:\n{text}");
        }
    }

    #[test]
    fn deny_wins_over_allow_and_an_empty_allow_admits_everyone() {
        let parse = |s: &str| s.parse::<IpNet>().unwrap_or_else(|e| panic!("{e}"));
        let listener = Listener {
            role: Role::Submission,
            bind: SocketAddr::from(([127, 0, 0, 1], 587)),
            tls: TlsMode::StartTls,
            allow: vec![parse("192.0.2.0/24")],
            deny: vec![parse("192.0.2.66/32")],
            proxy_protocol: false,
        };
        assert!(listener.permits("192.0.2.10".parse().unwrap_or(std::net::IpAddr::from([0; 4]))));
        assert!(!listener.permits("192.0.2.66".parse().unwrap_or(std::net::IpAddr::from([0; 4]))));
        assert!(!listener.permits("198.51.100.1".parse().unwrap_or(std::net::IpAddr::from([0; 4]))));
        let open = Listener {
            allow: vec![],
            deny: vec![],
            ..listener
        };
        assert!(open.permits("198.51.100.1".parse().unwrap_or(std::net::IpAddr::from([0; 4]))));
    }

    #[test]
    fn unknown_and_missing_keys_are_refused_by_name() {
        let unknown = error_of(&format!("{}relay_everything = true\n", good()));
        assert!(
            unknown.starts_with("test.toml: unknown field `relay_everything`"),
            "{unknown}"
        );
        assert!(
            unknown.contains("remove the key or check its spelling"),
            "{unknown}"
        );

        let nested = error_of(&good().replace("tls = \"implicit\"", "tls = \"implicit\"\nverify = false"));
        assert!(nested.contains("unknown field `verify`"), "{nested}");

        let missing = error_of(&good().replace("hostname = \"mail.example.test\"\n", ""));
        assert!(missing.contains("missing field `hostname`"), "{missing}");
        assert!(missing.contains("add the key"), "{missing}");
    }

    #[test]
    fn several_problems_are_reported_together() {
        let text = format!(
            "hostname = \"mail.example.test\"\n{CERT}{}{}",
            listener("mx", "127.0.0.1:25", "none"),
            listener("imap", "nowhere", "implicit")
        );
        let message = error_of(&text);
        assert_eq!(message.lines().count(), 2, "{message}");
    }
}
