//! The configuration file (`sealmail.toml`): its schema, its secure defaults, and validation.
//!
//! The file is read in two steps. Serde reads it into `Raw*` structs that refuse unknown keys
//! but keep enumerated values as strings; [`Config::from_toml`] then turns them into typed values,
//! so that every mistake is reported in our words: the key, the bad value, and the fix. There is
//! deliberately no way to express a listener without TLS.
//!
//! Every key is declared once, as a `Key` constant with its default (and range, for numbers);
//! validation and the `Default` impls read those, and tests hold both the `Raw*` structs and
//! docs/CONFIG.md, where every key is documented with its default, to them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use sealmail_types::{Domain, EmailAddress};

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
    /// HTTPS (port 443): MTA-STS policies, client autoconfiguration, a setup page, and ACME
    /// TLS-ALPN-01 challenges.
    Https,
    /// Plain HTTP (port 80): ACME HTTP-01 challenges and a redirect to HTTPS, nothing else.
    Http,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Mx => "mx",
            Role::Submission => "submission",
            Role::Imap => "imap",
            Role::Https => "https",
            Role::Http => "http",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a listener starts TLS. Plaintext is representable only for the `http` role, which
/// answers ACME HTTP-01 challenges and redirects everything else to HTTPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsMode {
    /// Plaintext greeting, then the STARTTLS command (RFC 3207, RFC 3501 section 6.2.1).
    StartTls,
    /// TLS from the first byte (RFC 8314).
    Implicit,
    /// No TLS: the `http` role only (validation refuses it anywhere else).
    None,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::StartTls => "starttls",
            TlsMode::Implicit => "implicit",
            TlsMode::None => "none",
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
    /// Whether clients are asked for a certificate (mutual TLS, SASL EXTERNAL).
    pub client_cert: ClientCertMode,
}

/// A listener's `client_cert`: whether the TLS handshake asks the client for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientCertMode {
    /// Not asked for.
    #[default]
    Off,
    /// Asked for; a client without one still connects (and logs in otherwise).
    Optional,
    /// A handshake without a certificate we accept fails.
    Required,
}

impl ClientCertMode {
    pub fn parse(text: &str) -> Option<ClientCertMode> {
        match text {
            "off" => Some(ClientCertMode::Off),
            "optional" => Some(ClientCertMode::Optional),
            "required" => Some(ClientCertMode::Required),
            _ => None,
        }
    }
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
            max_connections: LIMITS_MAX_CONNECTIONS.default_number() as usize,
            max_connections_per_ip: LIMITS_MAX_CONNECTIONS_PER_IP.default_number() as usize,
            max_connections_per_role_percent: LIMITS_MAX_CONNECTIONS_PER_ROLE_PERCENT.default_number() as u8,
            max_connection_rate_per_ip: LIMITS_MAX_CONNECTION_RATE_PER_IP.default_number() as u32,
            tls_handshake_timeout: LIMITS_TLS_HANDSHAKE_TIMEOUT_SECS.default_secs(),
            command_timeout: LIMITS_COMMAND_TIMEOUT_SECS.default_secs(),
            imap_idle_timeout: LIMITS_IMAP_IDLE_TIMEOUT_SECS.default_secs(),
            imap_unauthenticated_timeout: LIMITS_IMAP_UNAUTHENTICATED_TIMEOUT_SECS.default_secs(),
            shutdown_grace: LIMITS_SHUTDOWN_GRACE_SECS.default_secs(),
            mailbox_quota: LIMITS_MAILBOX_QUOTA.default_number() as u64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Where the store lives: SQLite in the data folder, or PostgreSQL.
    pub backend: StoreBackend,
    /// Most writes that one commit (one fsync) may carry (SQLite).
    pub group_commit_max_batch: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Sqlite,
            group_commit_max_batch: STORE_GROUP_COMMIT_MAX_BATCH.default_number() as usize,
        }
    }
}

/// Which database holds the store (`store.url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    /// `sealmail.db` in the data folder: one node.
    Sqlite,
    /// A PostgreSQL database, which several nodes may share (docs/CLUSTER.md).
    Postgres(PgSettings),
}

/// How to reach the PostgreSQL store; the password is not here but in `password_file`, read
/// only when connecting, so that no copy of the configuration carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgSettings {
    /// `postgres://USER@HOST:PORT/DATABASE`, without a password.
    pub url: String,
    /// The schema of sealmail's tables; `None`: `public`.
    pub schema: Option<String>,
    pub password_file: Option<PathBuf>,
    pub tls: StoreTls,
    /// PEM file of the CA that issued the server's certificate.
    pub tls_ca: Option<PathBuf>,
    /// Connections one node opens at most.
    pub max_connections: u32,
}

impl PgSettings {
    /// The password in `password_file`: the file must be private (mode 0600 or stricter), as a
    /// password others can read is no secret; one trailing line break is not part of it.
    pub fn read_password(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        let shown = path.display();
        match sealmail_safeio::check_private(path) {
            Ok(()) => {}
            Err(sealmail_safeio::UnsafeFile::TooOpen { mode }) => {
                return Err(format!(
                    "{} {shown} is readable by other users (mode {mode:04o}); run `chmod 600 {shown}`",
                    STORE_PASSWORD_FILE.name
                ));
            }
            Err(sealmail_safeio::UnsafeFile::Io(e)) => {
                return Err(format!("cannot read {} {shown}: {e}", STORE_PASSWORD_FILE.name));
            }
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {} {shown}: {e}", STORE_PASSWORD_FILE.name))?;
        let password = text
            .strip_suffix('\n')
            .map(|line| line.strip_suffix('\r').unwrap_or(line))
            .unwrap_or(&text);
        if password.is_empty() {
            return Err(format!(
                "{} {shown} is empty; write the password in it",
                STORE_PASSWORD_FILE.name
            ));
        }
        Ok(Some(password.to_string()))
    }
}

/// How the connection to PostgreSQL is protected: libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreTls {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl StoreTls {
    const ALL: [StoreTls; 5] = [
        StoreTls::Disable,
        StoreTls::Prefer,
        StoreTls::Require,
        StoreTls::VerifyCa,
        StoreTls::VerifyFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StoreTls::Disable => "disable",
            StoreTls::Prefer => "prefer",
            StoreTls::Require => "require",
            StoreTls::VerifyCa => "verify-ca",
            StoreTls::VerifyFull => "verify-full",
        }
    }

    pub fn parse(text: &str) -> Option<StoreTls> {
        StoreTls::ALL.into_iter().find(|mode| mode.as_str() == text)
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
            max_message_size: SMTP_MAX_MESSAGE_SIZE.default_number() as usize,
            max_recipients: SMTP_MAX_RECIPIENTS.default_number() as usize,
            max_line_length: SMTP_MAX_LINE_LENGTH.default_number() as usize,
            max_errors: SMTP_MAX_ERRORS.default_number() as u32,
            data_timeout: SMTP_DATA_TIMEOUT_SECS.default_secs(),
            messages_per_hour: SMTP_MESSAGES_PER_HOUR.default_number() as u32,
            recipients_per_hour: SMTP_RECIPIENTS_PER_HOUR.default_number() as u32,
            max_buffered_bytes: SMTP_MAX_BUFFERED_BYTES.default_number() as usize,
        }
    }
}

/// Who the server runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Started as root, switch to this user right after binding the listeners.
    pub user: Option<String>,
    /// The group to switch to (default: the user's primary group).
    pub group: Option<String>,
    /// Keep running as root when no user is set (refused otherwise).
    pub allow_root: bool,
    /// This node's name among the nodes sharing one store (docs/CLUSTER.md): in logs,
    /// `Received` headers, metrics, security events and queue leases.
    pub node_name: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            user: None,
            group: None,
            allow_root: SERVER_ALLOW_ROOT.default_flag(),
            node_name: machine_host_name(),
        }
    }
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
            auth_failures: SECURITY_AUTH_FAILURES.default_number() as u32,
            failure_window: SECURITY_FAILURE_WINDOW_SECS.default_secs(),
            ban: SECURITY_BAN_SECS.default_secs(),
            max_ban: SECURITY_MAX_BAN_SECS.default_secs(),
            trusted: Vec::new(),
            proxies: Vec::new(),
            event_retention: SECURITY_EVENT_RETENTION_DAYS.default_days(),
            event_log_max_bytes: SECURITY_EVENT_LOG_MAX_BYTES.default_number() as u64,
        }
    }
}

/// Password logins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// How long a successful login is remembered so that reconnecting clients skip Argon2;
    /// zero turns the cache off.
    pub login_cache_ttl: Duration,
    /// For accounts with a second factor: accept the account password followed by a current
    /// code (for clients that keep one secret only).
    pub password_with_code: bool,
    /// Offer SCRAM-SHA-256 and SCRAM-SHA-256-PLUS.
    pub scram: bool,
    /// PEM file of CAs whose client certificates are accepted besides the internal client CA's.
    pub client_ca: Option<PathBuf>,
    /// The key TOTP secrets are sealed under; `None`: `mfa.key` in the data folder.
    pub mfa_key_file: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            login_cache_ttl: AUTH_LOGIN_CACHE_TTL_SECS.default_secs(),
            password_with_code: AUTH_PASSWORD_WITH_CODE.default_flag(),
            scram: AUTH_SCRAM.default_flag(),
            client_ca: None,
            mfa_key_file: None,
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
            timeout: DNS_TIMEOUT_SECS.default_secs(),
            attempts: DNS_ATTEMPTS.default_number() as usize,
            cache_size: DNS_CACHE_SIZE.default_number() as u64,
            trust_ad_bit: DNS_TRUST_AD_BIT.default_flag(),
            reverse_lookups: DNS_REVERSE_LOOKUPS.default_flag(),
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
    /// How long a node holds the due recipients it took before another node may take them
    /// (docs/CLUSTER.md): longer than any one attempt can last.
    pub lease: Duration,
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
            smtp_port: DELIVERY_SMTP_PORT.default_number() as u16,
            routes: BTreeMap::new(),
            require_tls: Vec::new(),
            retry_base: DELIVERY_RETRY_BASE_SECS.default_secs(),
            retry_max: DELIVERY_RETRY_MAX_SECS.default_secs(),
            give_up: DELIVERY_GIVE_UP_SECS.default_secs(),
            delay_warning: DELIVERY_DELAY_WARNING_SECS.default_secs(),
            max_connections: DELIVERY_MAX_CONNECTIONS.default_number() as usize,
            max_connections_per_domain: DELIVERY_MAX_CONNECTIONS_PER_DOMAIN.default_number() as usize,
            max_messages_per_connection: DELIVERY_MAX_MESSAGES_PER_CONNECTION.default_number() as usize,
            connect_timeout: DELIVERY_CONNECT_TIMEOUT_SECS.default_secs(),
            command_timeout: DELIVERY_COMMAND_TIMEOUT_SECS.default_secs(),
            mta_sts_port: DELIVERY_MTA_STS_PORT.default_number() as u16,
            trust_anchors: None,
            relay: None,
            lease: DELIVERY_LEASE_SECS.default_secs(),
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
            dmarc_reject: INBOUND_DMARC_REJECT.default_flag(),
            dmarc_quarantine: INBOUND_DMARC_QUARANTINE.default_flag(),
            tempfail_on_dns_error: INBOUND_TEMPFAIL_ON_DNS_ERROR.default_flag(),
            phishing_warnings: INBOUND_PHISHING_WARNINGS.default_flag(),
            phishing_notice_in_body: INBOUND_PHISHING_NOTICE_IN_BODY.default_flag(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// The MTA-STS policy (RFC 8461) the `https` listener serves for every domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtaStsConfig {
    /// `None`: `testing` while the host's certificate is self-signed, `enforce` once a CA issued it.
    pub mode: Option<MtaStsMode>,
    pub max_age: Duration,
    /// MX host names the policy lists besides `hostname` (other nodes of a cluster).
    pub mx: Vec<String>,
}

impl Default for MtaStsConfig {
    fn default() -> Self {
        MtaStsConfig {
            mode: None,
            max_age: MTA_STS_MAX_AGE_SECS.default_secs(),
            mx: Vec::new(),
        }
    }
}

/// The web pages (`[web]`): the account pages and the admin console on the `https` listeners.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebConfig {
    /// The bind address of the one `https` listener that serves the admin console; `None`:
    /// every `https` listener does.
    pub admin_listener: Option<SocketAddr>,
}

/// The server's check of its own domains (`[check]`): `sealmail check` of every served domain,
/// graded and recorded once per `interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckConfig {
    pub daily: bool,
    pub interval: Duration,
    /// `NAME=PORT,...` over the standard ports (25, 465, 587, 993, 143, 443), in the syntax of
    /// `sealmail check --port`; `None`: the standard ports.
    pub ports: Option<String>,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            daily: CHECK_DAILY.default_flag(),
            interval: CHECK_INTERVAL_SECS.default_secs(),
            ports: None,
        }
    }
}

/// The names `check.ports` may give, as `sealmail check --port` takes them.
pub const CHECK_PORT_NAMES: [&str; 6] = ["smtp", "submissions", "submission", "imaps", "imap", "https"];

/// An MTA-STS policy mode (RFC 8461 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtaStsMode {
    Enforce,
    Testing,
    None,
}

impl MtaStsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MtaStsMode::Enforce => "enforce",
            MtaStsMode::Testing => "testing",
            MtaStsMode::None => "none",
        }
    }
}

/// How the ACME server checks that we hold a name (RFC 8737, RFC 8555 8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// RFC 8737: the CA connects to the `https` listener offering ALPN `acme-tls/1`.
    TlsAlpn01,
    /// RFC 8555 8.3: the CA fetches `http://NAME/.well-known/acme-challenge/TOKEN` from the
    /// `http` listener (port 80).
    Http01,
}

impl AcmeChallenge {
    /// The name `[acme] challenge` gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
            AcmeChallenge::Http01 => "http-01",
        }
    }
}

/// `[acme]`: certificates from a CA by themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// The ACME directory URL (https).
    pub directory: String,
    /// `mailto:` addresses the CA may write to.
    pub contact: Vec<String>,
    /// PEM roots trusted for the ACME server instead of the system's.
    pub ca_file: Option<PathBuf>,
    pub challenge: AcmeChallenge,
    /// A next key made by `cert rollover` is switched to by itself after this long; zero: only
    /// when asked (`cert rollover --switch`).
    pub rollover_wait: Duration,
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
    pub mta_sts: MtaStsConfig,
    pub web: WebConfig,
    pub check: CheckConfig,
    /// Off when `None` (no `[acme] directory`).
    pub acme: Option<AcmeConfig>,
    pub log_format: LogFormat,
}

// The keys of the file. Each is declared here and nowhere else: its dotted name, what it holds,
// its default and, for numbers, the values allowed; the doc line says what it is for. Validation
// and the `Default` impls above read these declarations; the `Raw*` structs below only give serde
// the same names, which a test holds to `KEYS`, and another test holds docs/CONFIG.md to them.

/// A key of the file; `name` is dotted as in messages (`limits.max_connections`), and keys of
/// the arrays of tables are named after the array (`listener.role`). `T` says what it holds and
/// so which reads it has: reading a key as something it was not declared as does not compile.
struct Key<T> {
    name: &'static str,
    kind: T,
}

/// A string the file must give.
struct Required;

/// A string; left out, the setting is off.
struct Optional;

/// A string, `default` when left out.
struct Text {
    default: &'static str,
}

/// A flag, `default` when left out.
struct Flag {
    default: bool,
}

/// A whole number from `min` to `max`: a count, a size, or a duration in the unit the key's
/// name ends with (`_secs`, `_days`).
struct Number {
    default: i64,
    min: i64,
    max: i64,
}

/// A list of strings, empty when left out.
struct List;

/// A table of strings, empty when left out.
struct Table;

const DAY: i64 = 86_400;
const YEAR: i64 = 365 * DAY;
const KIB: i64 = 1024;
const MIB: i64 = 1024 * KIB;
const GIB: i64 = 1024 * MIB;

impl Key<Required> {
    const fn required(name: &'static str) -> Self {
        Key { name, kind: Required }
    }
}

impl Key<Optional> {
    const fn optional(name: &'static str) -> Self {
        Key { name, kind: Optional }
    }
}

impl Key<List> {
    const fn list(name: &'static str) -> Self {
        Key { name, kind: List }
    }
}

impl Key<Table> {
    const fn table(name: &'static str) -> Self {
        Key { name, kind: Table }
    }
}

impl Key<Text> {
    const fn text(name: &'static str, default: &'static str) -> Self {
        Key {
            name,
            kind: Text { default },
        }
    }

    fn read_text<'a>(&self, value: Option<&'a str>) -> &'a str {
        value.unwrap_or(self.kind.default)
    }
}

impl Key<Flag> {
    const fn flag(name: &'static str, default: bool) -> Self {
        Key {
            name,
            kind: Flag { default },
        }
    }

    fn default_flag(&self) -> bool {
        self.kind.default
    }

    fn read_flag(&self, value: Option<bool>) -> bool {
        value.unwrap_or(self.kind.default)
    }
}

impl Key<Number> {
    const fn number(name: &'static str, default: i64, range: RangeInclusive<i64>) -> Self {
        let (min, max) = (*range.start(), *range.end());
        Key {
            name,
            kind: Number { default, min, max },
        }
    }

    fn default_number(&self) -> i64 {
        self.kind.default
    }

    fn default_secs(&self) -> Duration {
        Duration::from_secs(self.kind.default as u64)
    }

    fn default_days(&self) -> Duration {
        Duration::from_secs(self.kind.default as u64 * DAY as u64)
    }

    /// The number the file gives, else the default; one out of range is reported, with the
    /// range and the default, and replaced by the default so that checking can go on.
    fn read_number(&self, value: Option<i64>, problems: &mut Vec<String>) -> i64 {
        let Number { default, min, max } = self.kind;
        match value {
            None => default,
            Some(v) if (min..=max).contains(&v) => v,
            Some(v) => {
                problems.push(format!(
                    "{} = {v} is out of range; use a number from {min} to {max} (default {default})",
                    self.name
                ));
                default
            }
        }
    }

    fn read_secs(&self, value: Option<i64>, problems: &mut Vec<String>) -> Duration {
        Duration::from_secs(self.read_number(value, problems) as u64)
    }

    fn read_days(&self, value: Option<i64>, problems: &mut Vec<String>) -> Duration {
        Duration::from_secs(self.read_number(value, problems) as u64 * DAY as u64)
    }
}

// Top level.
/// The server's fully qualified host name: greetings, and certificates made by `init`.
const HOSTNAME: Key<Required> = Key::required("hostname");
/// The folder of the store, the snapshots and the lock file.
const DATA_DIR: Key<Text> = Key::text("data_dir", ".");

// [[tls.certificate]]: at least one.
/// PEM certificate chain, leaf first.
const CERTIFICATE_CERT: Key<Required> = Key::required("tls.certificate.cert");
/// PEM private key; must not be readable by group or others.
const CERTIFICATE_KEY: Key<Required> = Key::required("tls.certificate.key");

// [[listener]]: at least one.
/// What the listener serves: "mx", "submission" or "imap".
const LISTENER_ROLE: Key<Required> = Key::required("listener.role");
/// IP address and port.
const LISTENER_BIND: Key<Required> = Key::required("listener.bind");
/// "starttls" or "implicit"; there is no plaintext mode.
const LISTENER_TLS: Key<Required> = Key::required("listener.tls");
/// When not empty, only clients in these networks may connect.
const LISTENER_ALLOW: Key<List> = Key::list("listener.allow");
/// Clients in these networks are refused; deny wins over allow.
const LISTENER_DENY: Key<List> = Key::list("listener.deny");
/// Connections from `security.proxies` start with a PROXY protocol header.
const LISTENER_PROXY_PROTOCOL: Key<Flag> = Key::flag("listener.proxy_protocol", false);
/// "off", "optional" or "required": whether the handshake asks for a client certificate.
const LISTENER_CLIENT_CERT: Key<Text> = Key::text("listener.client_cert", "off");

// [limits]
/// Connections open at once, all listeners together.
const LIMITS_MAX_CONNECTIONS: Key<Number> = Key::number("limits.max_connections", 2048, 1..=1_000_000);
/// Connections open at once from one IPv4 address or IPv6 /64.
const LIMITS_MAX_CONNECTIONS_PER_IP: Key<Number> =
    Key::number("limits.max_connections_per_ip", 32, 1..=1_000_000);
/// The share of `max_connections`, in percent, that the listeners of one role may hold.
const LIMITS_MAX_CONNECTIONS_PER_ROLE_PERCENT: Key<Number> =
    Key::number("limits.max_connections_per_role_percent", 50, 1..=100);
/// New connections one IPv4 address or IPv6 /64 may open per minute.
const LIMITS_MAX_CONNECTION_RATE_PER_IP: Key<Number> =
    Key::number("limits.max_connection_rate_per_ip", 600, 1..=10_000_000);
/// Time a client has to complete a TLS handshake.
const LIMITS_TLS_HANDSHAKE_TIMEOUT_SECS: Key<Number> =
    Key::number("limits.tls_handshake_timeout_secs", 30, 1..=DAY);
/// Time an IMAP client may stay silent (RFC 9051 5.4: at least 30 minutes).
const LIMITS_IMAP_IDLE_TIMEOUT_SECS: Key<Number> =
    Key::number("limits.imap_idle_timeout_secs", 1800, 1..=DAY);
/// Time an IMAP client that has not logged in has for each command, the wait included.
const LIMITS_IMAP_UNAUTHENTICATED_TIMEOUT_SECS: Key<Number> =
    Key::number("limits.imap_unauthenticated_timeout_secs", 60, 1..=DAY);
/// Time a client has to send each command line (RFC 5321 4.5.3.2.7: at least 5 minutes).
const LIMITS_COMMAND_TIMEOUT_SECS: Key<Number> = Key::number("limits.command_timeout_secs", 300, 1..=DAY);
/// Octets one account's messages may take in all; 0 means no limit.
const LIMITS_MAILBOX_QUOTA: Key<Number> = Key::number("limits.mailbox_quota", 2 * GIB, 0..=(1 << 50));
/// On SIGTERM or SIGINT, time sessions get to finish before they are closed.
const LIMITS_SHUTDOWN_GRACE_SECS: Key<Number> = Key::number("limits.shutdown_grace_secs", 30, 1..=DAY);

// [smtp]
/// Largest message accepted, in octets (SMTP SIZE, IMAP APPENDLIMIT).
const SMTP_MAX_MESSAGE_SIZE: Key<Number> = Key::number("smtp.max_message_size", 50 * MIB, KIB..=GIB);
/// Recipients per message (RFC 5321 4.5.3.1.8 asks for at least 100).
const SMTP_MAX_RECIPIENTS: Key<Number> = Key::number("smtp.max_recipients", 100, 1..=100_000);
/// Longest command line, CRLF included (RFC 5321 4.5.3.1.4: 512).
const SMTP_MAX_LINE_LENGTH: Key<Number> = Key::number("smtp.max_line_length", 512, 512..=65_536);
/// Error replies after which the session is closed.
const SMTP_MAX_ERRORS: Key<Number> = Key::number("smtp.max_errors", 10, 1..=1000);
/// Time for the whole DATA or BDAT transfer of one message (RFC 5321 4.5.3.2.6: 10 minutes).
const SMTP_DATA_TIMEOUT_SECS: Key<Number> = Key::number("smtp.data_timeout_secs", 600, 1..=DAY);
/// Messages one authenticated account may start per hour.
const SMTP_MESSAGES_PER_HOUR: Key<Number> = Key::number("smtp.messages_per_hour", 500, 1..=10_000_000);
/// Message data all sessions together may hold in memory while receiving it.
const SMTP_MAX_BUFFERED_BYTES: Key<Number> =
    Key::number("smtp.max_buffered_bytes", 512 * MIB, KIB..=1024 * GIB);
/// Recipients one authenticated account may address per hour.
const SMTP_RECIPIENTS_PER_HOUR: Key<Number> = Key::number("smtp.recipients_per_hour", 2000, 1..=10_000_000);

// [auth]
/// How long a successful password login is remembered; 0 turns the cache off.
const AUTH_LOGIN_CACHE_TTL_SECS: Key<Number> = Key::number("auth.login_cache_ttl_secs", 300, 0..=DAY);
/// Accept "password" + current TOTP code from accounts with a second factor.
const AUTH_PASSWORD_WITH_CODE: Key<Flag> = Key::flag("auth.password_with_code", false);
/// Offer SCRAM-SHA-256(-PLUS).
const AUTH_SCRAM: Key<Flag> = Key::flag("auth.scram", true);
/// PEM CAs whose client certificates are accepted (besides the internal client CA).
const AUTH_CLIENT_CA: Key<Optional> = Key::optional("auth.client_ca");
/// The key file TOTP secrets are sealed under (0600); default `mfa.key` in the data folder.
const AUTH_MFA_KEY_FILE: Key<Optional> = Key::optional("auth.mfa_key_file");

// [dns]
/// Servers to ask; empty means the system's (/etc/resolv.conf).
const DNS_NAMESERVERS: Key<List> = Key::list("dns.nameservers");
/// How long one query waits for an answer.
const DNS_TIMEOUT_SECS: Key<Number> = Key::number("dns.timeout_secs", 5, 1..=60);
/// Tries per server before a lookup is a temporary error.
const DNS_ATTEMPTS: Key<Number> = Key::number("dns.attempts", 2, 1..=10);
/// Records kept in the cache; 0 turns it off.
const DNS_CACHE_SIZE: Key<Number> = Key::number("dns.cache_size", 4096, 0..=10_000_000);
/// Trust the AD bit: the nameservers validate DNSSEC (needed for DANE).
const DNS_TRUST_AD_BIT: Key<Flag> = Key::flag("dns.trust_ad_bit", false);
/// Look clients' addresses up by PTR (informational only).
const DNS_REVERSE_LOOKUPS: Key<Flag> = Key::flag("dns.reverse_lookups", false);

// [delivery]
/// The port of MX hosts.
const DELIVERY_SMTP_PORT: Key<Number> = Key::number("delivery.smtp_port", 25, 1..=65_535);
/// "DOMAIN" = "HOST:PORT" used instead of the MX lookup.
const DELIVERY_ROUTES: Key<Table> = Key::table("delivery.routes");
/// Destination domains that always need TLS with a verified certificate.
const DELIVERY_REQUIRE_TLS: Key<List> = Key::list("delivery.require_tls");
/// The first retry's delay; each further one doubles.
const DELIVERY_RETRY_BASE_SECS: Key<Number> = Key::number("delivery.retry_base_secs", 60, 1..=YEAR);
/// The longest delay between two attempts.
const DELIVERY_RETRY_MAX_SECS: Key<Number> = Key::number("delivery.retry_max_secs", 3600, 1..=YEAR);
/// A recipient still undelivered this long after the message was queued bounces.
const DELIVERY_GIVE_UP_SECS: Key<Number> = Key::number("delivery.give_up_secs", 5 * DAY, 1..=YEAR);
/// A recipient still undelivered this long gets the sender one "delayed" notice; 0: never.
const DELIVERY_DELAY_WARNING_SECS: Key<Number> =
    Key::number("delivery.delay_warning_secs", 4 * 3600, 0..=YEAR);
/// Outbound connections at once.
const DELIVERY_MAX_CONNECTIONS: Key<Number> = Key::number("delivery.max_connections", 64, 1..=100_000);
/// Outbound connections at once to one destination domain.
const DELIVERY_MAX_CONNECTIONS_PER_DOMAIN: Key<Number> =
    Key::number("delivery.max_connections_per_domain", 4, 1..=100_000);
/// Messages sent over one connection before it is closed.
const DELIVERY_MAX_MESSAGES_PER_CONNECTION: Key<Number> =
    Key::number("delivery.max_messages_per_connection", 100, 1..=100_000);
/// How long a TCP connection may take.
const DELIVERY_CONNECT_TIMEOUT_SECS: Key<Number> = Key::number("delivery.connect_timeout_secs", 30, 1..=YEAR);
/// How long any one reply may take (RFC 5321 4.5.3.2).
const DELIVERY_COMMAND_TIMEOUT_SECS: Key<Number> =
    Key::number("delivery.command_timeout_secs", 300, 1..=YEAR);
/// How long a node holds the queue recipients it took (an attempt's connect, every command
/// and the data all fit well within it with the default timeouts).
const DELIVERY_LEASE_SECS: Key<Number> = Key::number("delivery.lease_secs", 1800, 5..=YEAR);
/// The port MTA-STS policies are fetched from.
const DELIVERY_MTA_STS_PORT: Key<Number> = Key::number("delivery.mta_sts_port", 443, 1..=65_535);
/// PEM file of extra certificate authorities for MX hosts and MTA-STS.
const DELIVERY_TRUST_ANCHORS: Key<Optional> = Key::optional("delivery.trust_anchors");
/// "HOST:PORT" of a smarthost that takes all outbound mail.
const DELIVERY_RELAY: Key<Optional> = Key::optional("delivery.relay");
/// How the smarthost's TLS starts: "starttls" or "implicit".
const DELIVERY_RELAY_TLS: Key<Text> = Key::text("delivery.relay_tls", "starttls");
/// AUTH PLAIN user name at the smarthost.
const DELIVERY_RELAY_USERNAME: Key<Optional> = Key::optional("delivery.relay_username");
/// File holding that password (mode 0600).
const DELIVERY_RELAY_PASSWORD_FILE: Key<Optional> = Key::optional("delivery.relay_password_file");

// [inbound]
/// Refuse mail that fails DMARC under p=reject.
const INBOUND_DMARC_REJECT: Key<Flag> = Key::flag("inbound.dmarc_reject", true);
/// Deliver mail that fails DMARC under p=quarantine to Junk.
const INBOUND_DMARC_QUARANTINE: Key<Flag> = Key::flag("inbound.dmarc_quarantine", true);
/// Mark mail that may be phishing with a header and the $Phishing keyword.
const INBOUND_PHISHING_WARNINGS: Key<Flag> = Key::flag("inbound.phishing_warnings", true);
/// Also put the warning at the top of the message text (alters the message).
const INBOUND_PHISHING_NOTICE_IN_BODY: Key<Flag> = Key::flag("inbound.phishing_notice_in_body", false);
/// Answer 451 when a DNS failure could change the verdict.
const INBOUND_TEMPFAIL_ON_DNS_ERROR: Key<Flag> = Key::flag("inbound.tempfail_on_dns_error", true);

// [security]
/// Failed logins from one IPv4 address or IPv6 /64 within the window that ban it.
const SECURITY_AUTH_FAILURES: Key<Number> = Key::number("security.auth_failures", 5, 1..=10_000);
/// The sliding window those failures are counted in.
const SECURITY_FAILURE_WINDOW_SECS: Key<Number> = Key::number("security.failure_window_secs", 600, 1..=YEAR);
/// Length of a first ban; each further ban within a week doubles it.
const SECURITY_BAN_SECS: Key<Number> = Key::number("security.ban_secs", 900, 1..=YEAR);
/// The longest a ban can grow.
const SECURITY_MAX_BAN_SECS: Key<Number> = Key::number("security.max_ban_secs", DAY, 1..=YEAR);
/// Networks never banned.
const SECURITY_TRUSTED: Key<List> = Key::list("security.trusted");
/// Load balancers whose PROXY protocol headers are believed.
const SECURITY_PROXIES: Key<List> = Key::list("security.proxies");
/// How long security events and ended bans are kept; at least a week, since ban escalation
/// looks a week back.
const SECURITY_EVENT_RETENTION_DAYS: Key<Number> = Key::number("security.event_retention_days", 90, 7..=3650);
/// Size past which security-events.jsonl is rotated.
const SECURITY_EVENT_LOG_MAX_BYTES: Key<Number> =
    Key::number("security.event_log_max_bytes", 64 * MIB, 4 * KIB..=1024 * GIB);

// [server]
/// Started as root, switch to this user right after binding the listeners.
const SERVER_USER: Key<Optional> = Key::optional("server.user");
/// The group to switch to; left out, the user's primary group.
const SERVER_GROUP: Key<Optional> = Key::optional("server.group");
/// Keep running as root when no user is set.
const SERVER_ALLOW_ROOT: Key<Flag> = Key::flag("server.allow_root", false);
/// This node's name; left out, the machine's host name.
const SERVER_NODE_NAME: Key<Optional> = Key::optional("server.node_name");

/// The machine's host name (the kernel's), or "sealmail" when it cannot be read or is not a
/// valid node name (it goes into headers and logs).
fn machine_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| valid_node_name(name))
        .unwrap_or_else(|| "sealmail".to_string())
}

/// A node name is shown in headers and logs and keys queue leases: printable ASCII words.
fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

// [metrics]
/// Address of the Prometheus endpoint; left out, there is none.
const METRICS_BIND: Key<Optional> = Key::optional("metrics.bind");
/// Let `bind` name an address other than loopback.
const METRICS_ALLOW_REMOTE: Key<Flag> = Key::flag("metrics.allow_remote", false);

// [mta_sts]
/// "enforce", "testing" or "none"; left out: testing until the certificate is CA-issued.
const MTA_STS_MODE: Key<Optional> = Key::optional("mta_sts.mode");
/// How long senders may cache the policy.
const MTA_STS_MAX_AGE_SECS: Key<Number> = Key::number("mta_sts.max_age_secs", 7 * DAY, DAY..=31_557_600);
/// MX host names listed besides `hostname`.
const MTA_STS_MX: Key<List> = Key::list("mta_sts.mx");

// [web]
/// The `bind` of the `https` listener that alone serves the admin console (e.g. one on
/// loopback or a management network); left out, every `https` listener serves it.
const WEB_ADMIN_LISTENER: Key<Optional> = Key::optional("web.admin_listener");

// [check]
/// Check every served domain (`sealmail check`) once per interval, and record the grade.
const CHECK_DAILY: Key<Flag> = Key::flag("check.daily", true);
/// How often each domain is checked (a day; shorter for tests).
const CHECK_INTERVAL_SECS: Key<Number> = Key::number("check.interval_secs", DAY, 1..=7 * DAY);
/// `NAME=PORT,...` the check connects to instead of the standard ports.
const CHECK_PORTS: Key<Optional> = Key::optional("check.ports");

// [acme]
/// ACME directory URL; left out, no ACME.
const ACME_DIRECTORY: Key<Optional> = Key::optional("acme.directory");
/// Contact addresses for the CA.
const ACME_CONTACT: Key<List> = Key::list("acme.contact");
/// PEM roots trusted for the ACME server.
const ACME_CA_FILE: Key<Optional> = Key::optional("acme.ca_file");
/// "tls-alpn-01" or "http-01".
const ACME_CHALLENGE: Key<Text> = Key::text("acme.challenge", "tls-alpn-01");
/// Days after which a prepared next key is switched to by itself; 0: only when asked.
const ACME_ROLLOVER_WAIT_DAYS: Key<Number> = Key::number("acme.rollover_wait_days", 0, 0..=365);

// [store]
/// Most writes one commit (one fsync) may carry.
const STORE_GROUP_COMMIT_MAX_BATCH: Key<Number> =
    Key::number("store.group_commit_max_batch", 256, 1..=100_000);

/// Where the store is: left out, SQLite in the data folder; or "postgres://USER@HOST/DB".
const STORE_URL: Key<Optional> = Key::optional("store.url");
/// The PostgreSQL schema of sealmail's tables; left out, "public".
const STORE_SCHEMA: Key<Optional> = Key::optional("store.schema");
/// File holding the PostgreSQL password (mode 0600); never in the URL.
const STORE_PASSWORD_FILE: Key<Optional> = Key::optional("store.password_file");
/// PostgreSQL connection protection, as libpq's sslmode.
const STORE_TLS: Key<Text> = Key::text("store.tls", "verify-full");
/// PEM file of the CA that issued the PostgreSQL server's certificate.
const STORE_TLS_CA: Key<Optional> = Key::optional("store.tls_ca");
/// PostgreSQL connections one node opens at most.
const STORE_MAX_CONNECTIONS: Key<Number> = Key::number("store.max_connections", 16, 2..=10_000);

// [log]
/// "human" or "json" (JSON lines).
const LOG_FORMAT: Key<Text> = Key::text("log.format", "human");

/// Any key, whatever it holds.
enum AnyKey {
    Required(&'static Key<Required>),
    Optional(&'static Key<Optional>),
    Text(&'static Key<Text>),
    Flag(&'static Key<Flag>),
    Number(&'static Key<Number>),
    List(&'static Key<List>),
    Table(&'static Key<Table>),
}

impl AnyKey {
    const fn name(&self) -> &'static str {
        match *self {
            AnyKey::Required(key) => key.name,
            AnyKey::Optional(key) => key.name,
            AnyKey::Text(key) => key.name,
            AnyKey::Flag(key) => key.name,
            AnyKey::Number(key) => key.name,
            AnyKey::List(key) => key.name,
            AnyKey::Table(key) => key.name,
        }
    }
}

/// Every key, in the order docs/CONFIG.md lists them.
const KEYS: &[AnyKey] = &[
    AnyKey::Required(&HOSTNAME),
    AnyKey::Text(&DATA_DIR),
    AnyKey::Required(&CERTIFICATE_CERT),
    AnyKey::Required(&CERTIFICATE_KEY),
    AnyKey::Required(&LISTENER_ROLE),
    AnyKey::Required(&LISTENER_BIND),
    AnyKey::Required(&LISTENER_TLS),
    AnyKey::List(&LISTENER_ALLOW),
    AnyKey::List(&LISTENER_DENY),
    AnyKey::Flag(&LISTENER_PROXY_PROTOCOL),
    AnyKey::Number(&LIMITS_MAX_CONNECTIONS),
    AnyKey::Number(&LIMITS_MAX_CONNECTIONS_PER_IP),
    AnyKey::Number(&LIMITS_MAX_CONNECTIONS_PER_ROLE_PERCENT),
    AnyKey::Number(&LIMITS_MAX_CONNECTION_RATE_PER_IP),
    AnyKey::Number(&LIMITS_TLS_HANDSHAKE_TIMEOUT_SECS),
    AnyKey::Number(&LIMITS_IMAP_IDLE_TIMEOUT_SECS),
    AnyKey::Number(&LIMITS_IMAP_UNAUTHENTICATED_TIMEOUT_SECS),
    AnyKey::Number(&LIMITS_COMMAND_TIMEOUT_SECS),
    AnyKey::Number(&LIMITS_MAILBOX_QUOTA),
    AnyKey::Number(&LIMITS_SHUTDOWN_GRACE_SECS),
    AnyKey::Number(&SMTP_MAX_MESSAGE_SIZE),
    AnyKey::Number(&SMTP_MAX_RECIPIENTS),
    AnyKey::Number(&SMTP_MAX_LINE_LENGTH),
    AnyKey::Number(&SMTP_MAX_ERRORS),
    AnyKey::Number(&SMTP_DATA_TIMEOUT_SECS),
    AnyKey::Number(&SMTP_MESSAGES_PER_HOUR),
    AnyKey::Number(&SMTP_MAX_BUFFERED_BYTES),
    AnyKey::Number(&SMTP_RECIPIENTS_PER_HOUR),
    AnyKey::Number(&AUTH_LOGIN_CACHE_TTL_SECS),
    AnyKey::Flag(&AUTH_PASSWORD_WITH_CODE),
    AnyKey::Flag(&AUTH_SCRAM),
    AnyKey::Optional(&AUTH_CLIENT_CA),
    AnyKey::Optional(&AUTH_MFA_KEY_FILE),
    AnyKey::Text(&LISTENER_CLIENT_CERT),
    AnyKey::List(&DNS_NAMESERVERS),
    AnyKey::Number(&DNS_TIMEOUT_SECS),
    AnyKey::Number(&DNS_ATTEMPTS),
    AnyKey::Number(&DNS_CACHE_SIZE),
    AnyKey::Flag(&DNS_TRUST_AD_BIT),
    AnyKey::Flag(&DNS_REVERSE_LOOKUPS),
    AnyKey::Number(&DELIVERY_SMTP_PORT),
    AnyKey::Table(&DELIVERY_ROUTES),
    AnyKey::List(&DELIVERY_REQUIRE_TLS),
    AnyKey::Number(&DELIVERY_RETRY_BASE_SECS),
    AnyKey::Number(&DELIVERY_RETRY_MAX_SECS),
    AnyKey::Number(&DELIVERY_GIVE_UP_SECS),
    AnyKey::Number(&DELIVERY_DELAY_WARNING_SECS),
    AnyKey::Number(&DELIVERY_MAX_CONNECTIONS),
    AnyKey::Number(&DELIVERY_MAX_CONNECTIONS_PER_DOMAIN),
    AnyKey::Number(&DELIVERY_MAX_MESSAGES_PER_CONNECTION),
    AnyKey::Number(&DELIVERY_CONNECT_TIMEOUT_SECS),
    AnyKey::Number(&DELIVERY_COMMAND_TIMEOUT_SECS),
    AnyKey::Number(&DELIVERY_MTA_STS_PORT),
    AnyKey::Number(&DELIVERY_LEASE_SECS),
    AnyKey::Optional(&DELIVERY_TRUST_ANCHORS),
    AnyKey::Optional(&DELIVERY_RELAY),
    AnyKey::Text(&DELIVERY_RELAY_TLS),
    AnyKey::Optional(&DELIVERY_RELAY_USERNAME),
    AnyKey::Optional(&DELIVERY_RELAY_PASSWORD_FILE),
    AnyKey::Flag(&INBOUND_DMARC_REJECT),
    AnyKey::Flag(&INBOUND_DMARC_QUARANTINE),
    AnyKey::Flag(&INBOUND_PHISHING_WARNINGS),
    AnyKey::Flag(&INBOUND_PHISHING_NOTICE_IN_BODY),
    AnyKey::Flag(&INBOUND_TEMPFAIL_ON_DNS_ERROR),
    AnyKey::Number(&SECURITY_AUTH_FAILURES),
    AnyKey::Number(&SECURITY_FAILURE_WINDOW_SECS),
    AnyKey::Number(&SECURITY_BAN_SECS),
    AnyKey::Number(&SECURITY_MAX_BAN_SECS),
    AnyKey::List(&SECURITY_TRUSTED),
    AnyKey::List(&SECURITY_PROXIES),
    AnyKey::Number(&SECURITY_EVENT_RETENTION_DAYS),
    AnyKey::Number(&SECURITY_EVENT_LOG_MAX_BYTES),
    AnyKey::Optional(&SERVER_USER),
    AnyKey::Optional(&SERVER_GROUP),
    AnyKey::Flag(&SERVER_ALLOW_ROOT),
    AnyKey::Optional(&SERVER_NODE_NAME),
    AnyKey::Optional(&METRICS_BIND),
    AnyKey::Flag(&METRICS_ALLOW_REMOTE),
    AnyKey::Optional(&MTA_STS_MODE),
    AnyKey::Number(&MTA_STS_MAX_AGE_SECS),
    AnyKey::List(&MTA_STS_MX),
    AnyKey::Optional(&WEB_ADMIN_LISTENER),
    AnyKey::Flag(&CHECK_DAILY),
    AnyKey::Number(&CHECK_INTERVAL_SECS),
    AnyKey::Optional(&CHECK_PORTS),
    AnyKey::Optional(&ACME_DIRECTORY),
    AnyKey::List(&ACME_CONTACT),
    AnyKey::Optional(&ACME_CA_FILE),
    AnyKey::Text(&ACME_CHALLENGE),
    AnyKey::Number(&ACME_ROLLOVER_WAIT_DAYS),
    AnyKey::Optional(&STORE_URL),
    AnyKey::Optional(&STORE_SCHEMA),
    AnyKey::Optional(&STORE_PASSWORD_FILE),
    AnyKey::Text(&STORE_TLS),
    AnyKey::Optional(&STORE_TLS_CA),
    AnyKey::Number(&STORE_MAX_CONNECTIONS),
    AnyKey::Number(&STORE_GROUP_COMMIT_MAX_BATCH),
    AnyKey::Text(&LOG_FORMAT),
];

/// The first key declared with a default outside its range, or under a name already taken.
const fn misdeclared(keys: &[AnyKey]) -> Option<&'static str> {
    let mut i = 0;
    while i < keys.len() {
        if let AnyKey::Number(key) = keys[i]
            && (key.kind.default < key.kind.min || key.kind.default > key.kind.max)
        {
            return Some(key.name);
        }
        let mut j = i + 1;
        while j < keys.len() {
            // Names are lower case: ignoring case also catches a near-duplicate.
            if keys[i].name().eq_ignore_ascii_case(keys[j].name()) {
                return Some(keys[j].name());
            }
            j += 1;
        }
        i += 1;
    }
    None
}

// Evaluated as the crate compiles: a misdeclared key fails the build, with its name, instead of
// giving a `Default` impl a value that validation would refuse. It also keeps `KEYS` in use
// outside the tests.
const _: () = if let Some(name) = misdeclared(KEYS) {
    panic!("{}", name)
};

// Serde reads the file into these, refusing unknown keys; every field is a key declared above, or a
// section. Defaults are not given here but by the declarations.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    hostname: String,
    data_dir: Option<String>,
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
    mta_sts: RawMtaSts,
    #[serde(default)]
    web: RawWeb,
    #[serde(default)]
    check: RawCheck,
    #[serde(default)]
    acme: RawAcme,
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
    allow_root: Option<bool>,
    node_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMtaSts {
    mode: Option<String>,
    max_age_secs: Option<i64>,
    #[serde(default)]
    mx: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWeb {
    admin_listener: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAcme {
    directory: Option<String>,
    #[serde(default)]
    contact: Vec<String>,
    ca_file: Option<String>,
    challenge: Option<String>,
    rollover_wait_days: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    bind: Option<String>,
    allow_remote: Option<bool>,
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
    lease_secs: Option<i64>,
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
    trust_ad_bit: Option<bool>,
    reverse_lookups: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    login_cache_ttl_secs: Option<i64>,
    password_with_code: Option<bool>,
    scram: Option<bool>,
    client_ca: Option<String>,
    mfa_key_file: Option<String>,
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
    proxy_protocol: Option<bool>,
    client_cert: Option<String>,
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
    url: Option<String>,
    schema: Option<String>,
    password_file: Option<String>,
    tls: Option<String>,
    tls_ca: Option<String>,
    max_connections: Option<i64>,
    group_commit_max_batch: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    daily: Option<bool>,
    interval_secs: Option<i64>,
    ports: Option<String>,
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
        let data_dir = resolve(DATA_DIR.read_text(raw.data_dir.as_deref()));

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
            backend: validate_store_backend(&raw.store, &data_dir, &resolve, &mut problems),
            group_commit_max_batch: STORE_GROUP_COMMIT_MAX_BATCH
                .read_number(raw.store.group_commit_max_batch, &mut problems)
                as usize,
        };

        let r = &raw.smtp;
        let p = &mut problems;
        let smtp = SmtpConfig {
            max_message_size: SMTP_MAX_MESSAGE_SIZE.read_number(r.max_message_size, p) as usize,
            max_recipients: SMTP_MAX_RECIPIENTS.read_number(r.max_recipients, p) as usize,
            max_line_length: SMTP_MAX_LINE_LENGTH.read_number(r.max_line_length, p) as usize,
            max_errors: SMTP_MAX_ERRORS.read_number(r.max_errors, p) as u32,
            data_timeout: SMTP_DATA_TIMEOUT_SECS.read_secs(r.data_timeout_secs, p),
            messages_per_hour: SMTP_MESSAGES_PER_HOUR.read_number(r.messages_per_hour, p) as u32,
            recipients_per_hour: SMTP_RECIPIENTS_PER_HOUR.read_number(r.recipients_per_hour, p) as u32,
            max_buffered_bytes: SMTP_MAX_BUFFERED_BYTES.read_number(r.max_buffered_bytes, p) as usize,
        };
        if smtp.max_buffered_bytes < smtp.max_message_size {
            problems.push(format!(
                "smtp.max_buffered_bytes = {} is smaller than smtp.max_message_size = {}; no message of the maximum size could be received, raise it",
                smtp.max_buffered_bytes, smtp.max_message_size
            ));
        }

        let auth = AuthConfig {
            login_cache_ttl: AUTH_LOGIN_CACHE_TTL_SECS
                .read_secs(raw.auth.login_cache_ttl_secs, &mut problems),
            password_with_code: AUTH_PASSWORD_WITH_CODE.read_flag(raw.auth.password_with_code),
            scram: AUTH_SCRAM.read_flag(raw.auth.scram),
            client_ca: raw.auth.client_ca.as_deref().map(resolve),
            mfa_key_file: raw.auth.mfa_key_file.as_deref().map(resolve),
        };

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
            timeout: DNS_TIMEOUT_SECS.read_secs(raw.dns.timeout_secs, &mut problems),
            attempts: DNS_ATTEMPTS.read_number(raw.dns.attempts, &mut problems) as usize,
            cache_size: DNS_CACHE_SIZE.read_number(raw.dns.cache_size, &mut problems) as u64,
            trust_ad_bit: DNS_TRUST_AD_BIT.read_flag(raw.dns.trust_ad_bit),
            reverse_lookups: DNS_REVERSE_LOOKUPS.read_flag(raw.dns.reverse_lookups),
        };
        if dns.trust_ad_bit && dns.nameservers.is_empty() {
            problems.push(
                "dns.trust_ad_bit = true needs dns.nameservers: name the validating resolver you trust, e.g. [\"127.0.0.1\"]".to_string(),
            );
        }
        let delivery = validate_delivery(&raw.delivery, &resolve, &mut problems);

        let r = &raw.security;
        let p = &mut problems;
        let security = SecurityConfig {
            auth_failures: SECURITY_AUTH_FAILURES.read_number(r.auth_failures, p) as u32,
            failure_window: SECURITY_FAILURE_WINDOW_SECS.read_secs(r.failure_window_secs, p),
            ban: SECURITY_BAN_SECS.read_secs(r.ban_secs, p),
            max_ban: SECURITY_MAX_BAN_SECS.read_secs(r.max_ban_secs, p),
            trusted: networks("security.trusted", &r.trusted, p),
            proxies: networks("security.proxies", &r.proxies, p),
            event_retention: SECURITY_EVENT_RETENTION_DAYS.read_days(r.event_retention_days, p),
            event_log_max_bytes: SECURITY_EVENT_LOG_MAX_BYTES.read_number(r.event_log_max_bytes, p) as u64,
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
                Ok(address)
                    if !address.ip().is_loopback()
                        && !METRICS_ALLOW_REMOTE.read_flag(raw.metrics.allow_remote) =>
                {
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

        let mta_sts = validate_mta_sts(&raw.mta_sts, &mut problems);
        let web = validate_web(&raw.web, &listeners, &mut problems);
        let check = validate_check(&raw.check, &mut problems);
        let acme = validate_acme(&raw.acme, &listeners, &resolve, &mut problems);

        let log_format = match LOG_FORMAT.read_text(raw.log.format.as_deref()) {
            "human" => LogFormat::Human,
            "json" => LogFormat::Json,
            other => {
                problems.push(format!(
                    "log.format = {other:?} is not a log format; use \"human\" or \"json\""
                ));
                LogFormat::Human
            }
        };

        let node_name = match raw.server.node_name.as_deref() {
            Some(name) if !valid_node_name(name) => {
                problems.push(format!(
                    "{} = {name:?} is not a node name; use letters, digits, '-', '_' and '.' (at most 64), e.g. \"mail1\"",
                    SERVER_NODE_NAME.name
                ));
                None
            }
            other => other.map(str::to_string),
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
                    dmarc_reject: INBOUND_DMARC_REJECT.read_flag(raw.inbound.dmarc_reject),
                    dmarc_quarantine: INBOUND_DMARC_QUARANTINE.read_flag(raw.inbound.dmarc_quarantine),
                    tempfail_on_dns_error: INBOUND_TEMPFAIL_ON_DNS_ERROR
                        .read_flag(raw.inbound.tempfail_on_dns_error),
                    phishing_warnings: INBOUND_PHISHING_WARNINGS.read_flag(raw.inbound.phishing_warnings),
                    phishing_notice_in_body: INBOUND_PHISHING_NOTICE_IN_BODY
                        .read_flag(raw.inbound.phishing_notice_in_body),
                },
                delivery,
                server: ServerConfig {
                    user: raw.server.user.clone(),
                    group: raw.server.group.clone(),
                    allow_root: SERVER_ALLOW_ROOT.read_flag(raw.server.allow_root),
                    node_name: node_name.unwrap_or_else(machine_host_name),
                },
                metrics_bind,
                mta_sts,
                web,
                check,
                acme,
                log_format,
            }),
            _ => Err(ConfigError::Invalid(problems)),
        }
    }
}

/// The file name of the SQLite store in the data folder.
const SQLITE_FILE: &str = "sealmail.db";

/// `store.url` and the keys that only PostgreSQL reads. A password in the URL is refused: the
/// configuration is copied into backups and shown in support requests, the password file is not.
fn validate_store_backend(
    raw: &RawStore,
    data_dir: &Path,
    resolve: &dyn Fn(&str) -> PathBuf,
    problems: &mut Vec<String>,
) -> StoreBackend {
    let postgres_only = [
        (STORE_SCHEMA.name, raw.schema.is_some()),
        (STORE_PASSWORD_FILE.name, raw.password_file.is_some()),
        (STORE_TLS.name, raw.tls.is_some()),
        (STORE_TLS_CA.name, raw.tls_ca.is_some()),
        (STORE_MAX_CONNECTIONS.name, raw.max_connections.is_some()),
    ];
    let url = match raw.url.as_deref() {
        None => None,
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => Some(url),
        Some(url) => {
            // SQLite is the data folder's file: naming it is allowed, naming another is not.
            let sqlite_path = url.strip_prefix("sqlite://").map(resolve);
            if sqlite_path.as_deref() != Some(data_dir.join(SQLITE_FILE).as_path()) {
                problems.push(format!(
                    "{} = {url:?} is not a store this server can open; leave it out (SQLite in data_dir), \
                     use \"sqlite://DATA_DIR/{SQLITE_FILE}\", or \"postgres://USER@HOST:PORT/DATABASE\"",
                    STORE_URL.name
                ));
            }
            None
        }
    };
    let Some(url) = url else {
        for (name, given) in postgres_only {
            if given {
                problems.push(format!(
                    "{name} is for a PostgreSQL store; set store.url = \"postgres://USER@HOST:PORT/DATABASE\" or remove it"
                ));
            }
        }
        return StoreBackend::Sqlite;
    };
    if url_has_password(url) {
        problems.push(format!(
            "{} holds a password; remove it from the URL and put it in a file named by {} (mode 0600)",
            STORE_URL.name, STORE_PASSWORD_FILE.name
        ));
    }
    let tls_text = STORE_TLS.read_text(raw.tls.as_deref());
    let tls = StoreTls::parse(tls_text).unwrap_or_else(|| {
        let names: Vec<String> = StoreTls::ALL
            .iter()
            .map(|m| format!("{:?}", m.as_str()))
            .collect();
        problems.push(format!(
            "{} = {tls_text:?} is not a TLS mode; use one of {} (default \"verify-full\")",
            STORE_TLS.name,
            names.join(", ")
        ));
        StoreTls::VerifyFull
    });
    StoreBackend::Postgres(PgSettings {
        url: url.to_string(),
        schema: raw.schema.clone(),
        password_file: raw.password_file.as_deref().map(resolve),
        tls,
        tls_ca: raw.tls_ca.as_deref().map(resolve),
        max_connections: STORE_MAX_CONNECTIONS.read_number(raw.max_connections, problems) as u32,
    })
}

/// Whether a PostgreSQL URL carries a password, as `user:secret@` or as a `password=` parameter.
fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let in_user_info = authority
        .rsplit_once('@')
        .is_some_and(|(user_info, _)| user_info.contains(':'));
    let in_query = rest.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .any(|pair| pair.to_ascii_lowercase().starts_with("password="))
    });
    in_user_info || in_query
}

fn validate_listener(i: usize, l: &RawListener) -> Result<Listener, String> {
    let role = match l.role.as_str() {
        "mx" => Role::Mx,
        "submission" => Role::Submission,
        "imap" => Role::Imap,
        "https" => Role::Https,
        "http" => Role::Http,
        other => {
            return Err(format!(
                "listener[{i}].role = {other:?} is not a role; use \"mx\", \"submission\", \"imap\", \"https\" or \"http\""
            ));
        }
    };
    let tls = match (role, l.tls.as_str()) {
        (Role::Https, "implicit") => TlsMode::Implicit,
        (Role::Https, other) => {
            return Err(format!(
                "listener[{i}].tls = {other:?} is not allowed for role \"https\"; use \"implicit\""
            ));
        }
        (Role::Http, "none") => TlsMode::None,
        (Role::Http, other) => {
            return Err(format!(
                "listener[{i}].tls = {other:?} is not allowed for role \"http\"; use \"none\" (it serves only ACME challenges and redirects to HTTPS)"
            ));
        }
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
    let client_cert_text = LISTENER_CLIENT_CERT.read_text(l.client_cert.as_deref());
    let client_cert = ClientCertMode::parse(client_cert_text).unwrap_or_else(|| {
        problems.push(format!(
            "listener[{i}].client_cert = {client_cert_text:?} is not a mode; use \"off\", \"optional\" or \"required\" (default \"off\")"
        ));
        ClientCertMode::Off
    });
    if matches!(role, Role::Https | Role::Http) && client_cert != ClientCertMode::Off {
        // ACME validators and mail clients looking for their settings have no certificate,
        // and the client-certificate configurations carry no ALPN for TLS-ALPN-01.
        problems.push(format!(
            "listener[{i}].client_cert = {client_cert_text:?} is not allowed for role \"{role}\"; remove it (web listeners never ask for client certificates)"
        ));
    }
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
        proxy_protocol: LISTENER_PROXY_PROTOCOL.read_flag(l.proxy_protocol),
        client_cert,
    })
}

fn validate_web(raw: &RawWeb, listeners: &[Listener], problems: &mut Vec<String>) -> WebConfig {
    let admin_listener = match raw.admin_listener.as_deref() {
        None => None,
        Some(text) => match text.parse::<SocketAddr>() {
            Ok(bind) if listeners.iter().any(|l| l.role == Role::Https && l.bind == bind) => Some(bind),
            Ok(_) => {
                problems.push(format!(
                    "{} = {text:?} is not the bind of an https listener; add [[listener]] role = \"https\", bind = {text:?}, tls = \"implicit\" or name one that exists",
                    WEB_ADMIN_LISTENER.name
                ));
                None
            }
            Err(_) => {
                problems.push(format!(
                    "{} = {text:?} is not an IP address with a port; use e.g. \"127.0.0.1:8443\"",
                    WEB_ADMIN_LISTENER.name
                ));
                None
            }
        },
    };
    WebConfig { admin_listener }
}

fn validate_check(raw: &RawCheck, problems: &mut Vec<String>) -> CheckConfig {
    if let Some(text) = &raw.ports {
        for pair in text.split(',').filter(|p| !p.is_empty()) {
            let valid = pair.split_once('=').is_some_and(|(name, port)| {
                CHECK_PORT_NAMES.contains(&name) && port.parse::<u16>().is_ok_and(|p| p != 0)
            });
            if !valid {
                problems.push(format!(
                    "{} has {pair:?}; give NAME=PORT pairs separated by commas, NAME one of {}, e.g. \"smtp=2525,submissions=2465\"",
                    CHECK_PORTS.name,
                    CHECK_PORT_NAMES.join(", ")
                ));
            }
        }
    }
    CheckConfig {
        daily: CHECK_DAILY.read_flag(raw.daily),
        interval: CHECK_INTERVAL_SECS.read_secs(raw.interval_secs, problems),
        ports: raw.ports.clone().filter(|p| !p.is_empty()),
    }
}

fn validate_mta_sts(raw: &RawMtaSts, problems: &mut Vec<String>) -> MtaStsConfig {
    let mode = match raw.mode.as_deref() {
        None => None,
        Some("enforce") => Some(MtaStsMode::Enforce),
        Some("testing") => Some(MtaStsMode::Testing),
        Some("none") => Some(MtaStsMode::None),
        Some(other) => {
            problems.push(format!(
                "{} = {other:?} is not a mode; use \"enforce\", \"testing\" or \"none\" (left out: \"testing\" until the certificate is from a CA, then \"enforce\")",
                MTA_STS_MODE.name
            ));
            None
        }
    };
    let mut mx = Vec::new();
    for name in &raw.mx {
        // A policy `mx` line is a host name or `*.` and a host name (RFC 8461 3.2).
        let host = name.strip_prefix("*.").unwrap_or(name);
        match Domain::parse(host) {
            Ok(_) if host.contains('.') => mx.push(name.to_ascii_lowercase()),
            _ => problems.push(format!(
                "{} has {name:?}, which is not a host name; list names like \"mx2.example.org\" or \"*.example.org\"",
                MTA_STS_MX.name
            )),
        }
    }
    MtaStsConfig {
        mode,
        max_age: MTA_STS_MAX_AGE_SECS.read_secs(raw.max_age_secs, problems),
        mx,
    }
}

fn validate_acme(
    raw: &RawAcme,
    listeners: &[Listener],
    resolve: &dyn Fn(&str) -> PathBuf,
    problems: &mut Vec<String>,
) -> Option<AcmeConfig> {
    let Some(directory) = raw.directory.as_deref() else {
        if raw.ca_file.is_some() || !raw.contact.is_empty() || raw.challenge.is_some() {
            problems.push(format!(
                "[acme] is configured without {}; add the CA's directory URL, e.g. \"https://acme-v02.api.letsencrypt.org/directory\"",
                ACME_DIRECTORY.name
            ));
        }
        return None;
    };
    if !directory.starts_with("https://") {
        problems.push(format!(
            "{} = {directory:?} is not an https URL; use e.g. \"https://acme-v02.api.letsencrypt.org/directory\"",
            ACME_DIRECTORY.name
        ));
    }
    let mut contact = Vec::new();
    for entry in &raw.contact {
        let address = entry.strip_prefix("mailto:").unwrap_or(entry);
        match EmailAddress::parse(address) {
            Ok(_) => contact.push(format!("mailto:{address}")),
            Err(_) => problems.push(format!(
                "{} has {entry:?}, which is not an email address; use e.g. \"mailto:admin@example.org\"",
                ACME_CONTACT.name
            )),
        }
    }
    let challenge = match ACME_CHALLENGE.read_text(raw.challenge.as_deref()) {
        "tls-alpn-01" => AcmeChallenge::TlsAlpn01,
        "http-01" => AcmeChallenge::Http01,
        other => {
            problems.push(format!(
                "{} = {other:?} is not a challenge type; use \"tls-alpn-01\" (on the https listener) or \"http-01\" (on an http listener)",
                ACME_CHALLENGE.name
            ));
            AcmeChallenge::TlsAlpn01
        }
    };
    let (role, port) = match challenge {
        AcmeChallenge::TlsAlpn01 => (Role::Https, 443),
        AcmeChallenge::Http01 => (Role::Http, 80),
    };
    if !listeners.iter().any(|l| l.role == role) {
        problems.push(format!(
            "{} = {:?} needs a listener with role = \"{role}\" (port {port}, where the CA checks it); add one",
            ACME_CHALLENGE.name,
            ACME_CHALLENGE.read_text(raw.challenge.as_deref())
        ));
    }
    Some(AcmeConfig {
        directory: directory.to_string(),
        contact,
        ca_file: raw.ca_file.as_deref().map(resolve),
        challenge,
        rollover_wait: ACME_ROLLOVER_WAIT_DAYS.read_days(raw.rollover_wait_days, problems),
    })
}

fn validate_limits(raw: &RawLimits, problems: &mut Vec<String>) -> Limits {
    let p = &mut *problems;
    let limits = Limits {
        max_connections: LIMITS_MAX_CONNECTIONS.read_number(raw.max_connections, p) as usize,
        max_connections_per_ip: LIMITS_MAX_CONNECTIONS_PER_IP.read_number(raw.max_connections_per_ip, p)
            as usize,
        max_connections_per_role_percent: LIMITS_MAX_CONNECTIONS_PER_ROLE_PERCENT
            .read_number(raw.max_connections_per_role_percent, p)
            as u8,
        max_connection_rate_per_ip: LIMITS_MAX_CONNECTION_RATE_PER_IP
            .read_number(raw.max_connection_rate_per_ip, p) as u32,
        tls_handshake_timeout: LIMITS_TLS_HANDSHAKE_TIMEOUT_SECS.read_secs(raw.tls_handshake_timeout_secs, p),
        command_timeout: LIMITS_COMMAND_TIMEOUT_SECS.read_secs(raw.command_timeout_secs, p),
        imap_idle_timeout: LIMITS_IMAP_IDLE_TIMEOUT_SECS.read_secs(raw.imap_idle_timeout_secs, p),
        imap_unauthenticated_timeout: LIMITS_IMAP_UNAUTHENTICATED_TIMEOUT_SECS
            .read_secs(raw.imap_unauthenticated_timeout_secs, p),
        shutdown_grace: LIMITS_SHUTDOWN_GRACE_SECS.read_secs(raw.shutdown_grace_secs, p),
        mailbox_quota: LIMITS_MAILBOX_QUOTA.read_number(raw.mailbox_quota, p) as u64,
    };
    if limits.max_connections_per_ip > limits.max_connections {
        problems.push(format!(
            "limits.max_connections_per_ip = {} is larger than limits.max_connections = {}; lower it or raise limits.max_connections",
            limits.max_connections_per_ip, limits.max_connections
        ));
    }
    limits
}

fn validate_delivery(
    raw: &RawDelivery,
    resolve: &dyn Fn(&str) -> PathBuf,
    problems: &mut Vec<String>,
) -> DeliveryConfig {
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
    let p = &mut *problems;
    DeliveryConfig {
        smtp_port: DELIVERY_SMTP_PORT.read_number(raw.smtp_port, p) as u16,
        routes,
        require_tls,
        retry_base: DELIVERY_RETRY_BASE_SECS.read_secs(raw.retry_base_secs, p),
        retry_max: DELIVERY_RETRY_MAX_SECS.read_secs(raw.retry_max_secs, p),
        give_up: DELIVERY_GIVE_UP_SECS.read_secs(raw.give_up_secs, p),
        delay_warning: DELIVERY_DELAY_WARNING_SECS.read_secs(raw.delay_warning_secs, p),
        max_connections: DELIVERY_MAX_CONNECTIONS.read_number(raw.max_connections, p) as usize,
        max_connections_per_domain: DELIVERY_MAX_CONNECTIONS_PER_DOMAIN
            .read_number(raw.max_connections_per_domain, p) as usize,
        max_messages_per_connection: DELIVERY_MAX_MESSAGES_PER_CONNECTION
            .read_number(raw.max_messages_per_connection, p) as usize,
        connect_timeout: DELIVERY_CONNECT_TIMEOUT_SECS.read_secs(raw.connect_timeout_secs, p),
        command_timeout: DELIVERY_COMMAND_TIMEOUT_SECS.read_secs(raw.command_timeout_secs, p),
        mta_sts_port: DELIVERY_MTA_STS_PORT.read_number(raw.mta_sts_port, p) as u16,
        trust_anchors: raw.trust_anchors.as_deref().map(resolve),
        lease: DELIVERY_LEASE_SECS.read_secs(raw.lease_secs, p),
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
    let implicit_tls = match DELIVERY_RELAY_TLS.read_text(raw.relay_tls.as_deref()) {
        "starttls" => false,
        "implicit" => true,
        other => {
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
                format!("{head}{}", listener("https", "127.0.0.1:443", "starttls")),
                "listener[0].tls = \"starttls\" is not allowed for role \"https\"; use \"implicit\"",
            ),
            (
                format!("{head}{}", listener("http", "127.0.0.1:80", "implicit")),
                "listener[0].tls = \"implicit\" is not allowed for role \"http\"; use \"none\" (it serves only ACME challenges and redirects to HTTPS)",
            ),
            (
                format!(
                    "{head}{}[acme]\ndirectory = \"https://acme.example/dir\"\nchallenge = \"http-01\"\n",
                    listener("https", "127.0.0.1:443", "implicit")
                ),
                "acme.challenge = \"http-01\" needs a listener with role = \"http\" (port 80, where the CA checks it); add one",
            ),
            (
                format!(
                    "{head}{}[acme]\ndirectory = \"http://acme.example/dir\"\n",
                    listener("https", "127.0.0.1:443", "implicit")
                ),
                "acme.directory = \"http://acme.example/dir\" is not an https URL; use e.g. \"https://acme-v02.api.letsencrypt.org/directory\"",
            ),
            (
                format!(
                    "{head}{}[acme]\ncontact = [\"mailto:admin@example.test\"]\n",
                    listener("https", "127.0.0.1:443", "implicit")
                ),
                "[acme] is configured without acme.directory; add the CA's directory URL, e.g. \"https://acme-v02.api.letsencrypt.org/directory\"",
            ),
            (
                format!(
                    "{head}{}[web]\nadmin_listener = \"127.0.0.1:8443\"\n",
                    listener("https", "127.0.0.1:443", "implicit")
                ),
                "web.admin_listener = \"127.0.0.1:8443\" is not the bind of an https listener; add [[listener]] role = \"https\", bind = \"127.0.0.1:8443\", tls = \"implicit\" or name one that exists",
            ),
            (
                format!(
                    "{head}{}[web]\nadmin_listener = \"localhost\"\n",
                    listener("https", "127.0.0.1:443", "implicit")
                ),
                "web.admin_listener = \"localhost\" is not an IP address with a port; use e.g. \"127.0.0.1:8443\"",
            ),
            (
                format!(
                    "{head}{}[check]\nports = \"smtp=2525,pop3=110\"\n",
                    listener("https", "127.0.0.1:443", "implicit")
                ),
                "check.ports has \"pop3=110\"; give NAME=PORT pairs separated by commas, NAME one of smtp, submissions, submission, imaps, imap, https, e.g. \"smtp=2525,submissions=2465\"",
            ),
            (
                format!(
                    "{head}{}[check]\ninterval_secs = 0\n",
                    listener("https", "127.0.0.1:443", "implicit")
                ),
                "check.interval_secs = 0 is out of range; use a number from 1 to 604800 (default 86400)",
            ),
            (
                format!(
                    "{head}{}[mta_sts]\nmode = \"strict\"\n",
                    listener("https", "127.0.0.1:443", "implicit")
                ),
                "mta_sts.mode = \"strict\" is not a mode; use \"enforce\", \"testing\" or \"none\" (left out: \"testing\" until the certificate is from a CA, then \"enforce\")",
            ),
            (
                format!(
                    "{head}{}client_cert = \"optional\"\n",
                    listener("https", "127.0.0.1:443", "implicit")
                ),
                "listener[0].client_cert = \"optional\" is not allowed for role \"https\"; remove it (web listeners never ask for client certificates)",
            ),
            (
                format!("{head}{}", listener("pop3", "127.0.0.1:110", "starttls")),
                "listener[0].role = \"pop3\" is not a role; use \"mx\", \"submission\", \"imap\", \"https\" or \"http\"",
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
            client_cert: ClientCertMode::Off,
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

    /// A dotted key name split into its section ("" at the top level) and its name there.
    fn split(name: &str) -> (&str, &str) {
        name.rsplit_once('.').unwrap_or(("", name))
    }

    /// The names serde accepts in the struct `T`: its derived code hands them to the deserializer.
    fn fields_of<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
        use serde::de::{Error, Visitor};
        struct Fields(&'static [&'static str]);
        impl<'de> serde::Deserializer<'de> for &mut Fields {
            type Error = serde::de::value::Error;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
                Err(Error::custom("not a struct"))
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Self::Error> {
                self.0 = fields;
                Err(Error::custom("only the names were wanted"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
                option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
                ignored_any
            }
        }
        let mut fields = Fields(&[]);
        let _ = T::deserialize(&mut fields);
        fields.0
    }

    #[test]
    fn serde_reads_exactly_the_declared_keys() {
        // Each struct serde reads, with the section it reads: its fields must be the keys declared
        // in that section and the sections within it, so that a key cannot be accepted without a
        // declaration (and so a default and a row in docs/CONFIG.md), nor declared but refused.
        let structs: &[(&str, &[&str])] = &[
            ("", fields_of::<RawConfig>()),
            ("tls", fields_of::<RawTls>()),
            ("tls.certificate", fields_of::<RawCertificate>()),
            ("listener", fields_of::<RawListener>()),
            ("limits", fields_of::<RawLimits>()),
            ("smtp", fields_of::<RawSmtp>()),
            ("auth", fields_of::<RawAuth>()),
            ("dns", fields_of::<RawDns>()),
            ("delivery", fields_of::<RawDelivery>()),
            ("inbound", fields_of::<RawInbound>()),
            ("security", fields_of::<RawSecurity>()),
            ("server", fields_of::<RawServer>()),
            ("metrics", fields_of::<RawMetrics>()),
            ("mta_sts", fields_of::<RawMtaSts>()),
            ("web", fields_of::<RawWeb>()),
            ("check", fields_of::<RawCheck>()),
            ("acme", fields_of::<RawAcme>()),
            ("store", fields_of::<RawStore>()),
            ("log", fields_of::<RawLog>()),
        ];
        for (section, fields) in structs {
            assert!(!fields.is_empty(), "no fields found for [{section}]");
            let keys = KEYS.iter().map(|key| split(key.name()));
            let subsections = structs
                .iter()
                .filter(|(s, _)| !s.is_empty())
                .map(|(s, _)| split(s));
            let mut expected: Vec<&str> = keys
                .chain(subsections)
                .filter(|(s, _)| s == section)
                .map(|(_, name)| name)
                .collect();
            let mut fields = fields.to_vec();
            expected.sort_unstable();
            fields.sort_unstable();
            assert_eq!(
                fields, expected,
                "serde's fields and the declared keys of [{section}]"
            );
        }
        for key in KEYS {
            let section = split(key.name()).0;
            assert!(
                structs.iter().any(|(s, _)| *s == section),
                "{} is declared in a section serde does not read",
                key.name()
            );
        }
    }

    /// How docs/CONFIG.md writes a key's default (its default cell may add words after it).
    fn default_in_docs(key: &AnyKey) -> String {
        match *key {
            AnyKey::Required(_) => "required".into(),
            AnyKey::Optional(_) => "none".into(),
            AnyKey::Text(key) => format!("`{:?}`", key.kind.default),
            AnyKey::Flag(key) => format!("`{}`", key.kind.default),
            AnyKey::Number(key) => format!("`{}`", key.kind.default),
            AnyKey::List(_) => "`[]`".into(),
            AnyKey::Table(_) => "`{}`".into(),
        }
    }

    /// The heading of docs/CONFIG.md that documents a section.
    fn heading_of(section: &str) -> String {
        match section {
            "" => "Top level".into(),
            "listener" | "tls.certificate" => format!("`[[{section}]]`"),
            _ => format!("`[{section}]`"),
        }
    }

    #[test]
    fn docs_config_md_lists_every_key_with_its_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/CONFIG.md");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut sections: Vec<&str> = KEYS.iter().map(|key| split(key.name()).0).collect();
        sections.dedup();
        let headings: Vec<(String, &str)> = sections.iter().map(|s| (heading_of(s), *s)).collect();

        // Every key row (a first cell in backticks) with its section, name and default cell.
        let mut rows: Vec<(Option<&str>, &str, &str)> = Vec::new();
        let mut section = None;
        for line in text.lines() {
            if let Some(heading) = line.strip_prefix("## ") {
                section = headings
                    .iter()
                    .find(|(h, _)| heading == h || heading.starts_with(&format!("{h} ")))
                    .map(|(_, s)| *s);
            } else if line.starts_with("| `") {
                let mut cells = line.split('|').skip(1).map(str::trim);
                let name = cells.next().unwrap_or_default().trim_matches('`');
                rows.push((section, name, cells.next().unwrap_or_default()));
            }
        }

        let mut problems = Vec::new();
        for key in KEYS {
            let (section, name) = split(key.name());
            let heading = heading_of(section);
            let default = default_in_docs(key);
            let found: Vec<_> = rows
                .iter()
                .filter(|(s, n, _)| *s == Some(section) && *n == name)
                .collect();
            match found.as_slice() {
                [] => problems.push(format!(
                    "{} has no row under \"## {heading}\"; add `{name}` with its default {default}",
                    key.name()
                )),
                [(_, _, cell)] if !cell.contains(&default) => problems.push(format!(
                    "{}: the default cell {cell:?} does not say {default}, the default in the code",
                    key.name()
                )),
                [_] => {}
                _ => problems.push(format!(
                    "{} has {} rows under \"## {heading}\"",
                    key.name(),
                    found.len()
                )),
            }
        }
        for (section, name, _) in &rows {
            match section {
                None => problems.push(format!(
                    "`{name}` is under a heading that names no section with keys"
                )),
                Some(section) if !KEYS.iter().any(|key| split(key.name()) == (section, name)) => problems
                    .push(format!(
                        "`{name}` under \"## {}\" is not a key sealmail reads; remove it or declare it",
                        heading_of(section)
                    )),
                Some(_) => {}
            }
        }
        assert!(
            problems.is_empty(),
            "docs/CONFIG.md disagrees with the code:\n{}",
            problems.join("\n")
        );
    }

    fn store_of(section: &str) -> Result<StoreConfig, String> {
        Config::from_toml(
            &format!("{}[store]\n{section}", good()),
            "test.toml",
            Path::new("/etc/sealmail"),
        )
        .map(|config| config.store)
        .map_err(|e| e.to_string())
    }

    fn pg_settings_of(section: &str) -> PgSettings {
        match store_of(section) {
            Ok(StoreConfig {
                backend: StoreBackend::Postgres(settings),
                ..
            }) => settings,
            other => panic!("not a PostgreSQL store: {other:?}"),
        }
    }

    #[test]
    fn the_store_is_sqlite_in_the_data_folder_unless_a_url_names_postgres() {
        assert_eq!(store_of(""), Ok(StoreConfig::default()));
        assert_eq!(
            store_of("url = \"sqlite:///etc/sealmail/sealmail.db\"\n").map(|s| s.backend),
            Ok(StoreBackend::Sqlite)
        );
        assert_eq!(
            store_of("url = \"sqlite://sealmail.db\"\n").map(|s| s.backend),
            Ok(StoreBackend::Sqlite)
        );
        let elsewhere = store_of("url = \"sqlite:///tmp/other.db\"\n")
            .err()
            .unwrap_or_default();
        assert!(elsewhere.contains("store.url"), "{elsewhere}");
        let settings = pg_settings_of("url = \"postgres://sealmail@db.example.test/mail\"\n");
        assert_eq!(
            settings,
            PgSettings {
                url: "postgres://sealmail@db.example.test/mail".into(),
                schema: None,
                password_file: None,
                tls: StoreTls::VerifyFull,
                tls_ca: None,
                max_connections: 16,
            }
        );
        let settings = pg_settings_of(
            "url = \"postgresql://sealmail@db/mail\"\nschema = \"node_a\"\npassword_file = \"pg-pass\"\ntls_ca = \"ca.pem\"\nmax_connections = 40\n",
        );
        assert_eq!(settings.schema.as_deref(), Some("node_a"));
        assert_eq!(
            settings.password_file,
            Some(PathBuf::from("/etc/sealmail/pg-pass"))
        );
        assert_eq!(settings.tls_ca, Some(PathBuf::from("/etc/sealmail/ca.pem")));
        assert_eq!(settings.max_connections, 40);
    }

    #[test]
    fn postgres_keys_without_a_postgres_url_are_refused() {
        let error = store_of("schema = \"sealmail\"\n").err().unwrap_or_default();
        assert!(
            error.contains("store.schema is for a PostgreSQL store"),
            "{error}"
        );
    }

    #[test]
    fn a_password_in_the_store_url_is_refused_naming_the_password_file() {
        for url in [
            "postgres://sealmail:secret@db/mail",
            "postgres://db/mail?user=sealmail&password=secret",
        ] {
            let error = store_of(&format!("url = {url:?}\n")).err().unwrap_or_default();
            assert!(error.contains("store.password_file"), "{url}: {error}");
            assert!(!error.contains("secret"), "the password is repeated: {error}");
        }
        // A colon in the host part is a port, not a password.
        assert!(store_of("url = \"postgres://sealmail@db:5432/mail\"\n").is_ok());
    }

    #[test]
    fn store_tls_takes_the_sslmode_values() {
        for mode in StoreTls::ALL {
            let settings = pg_settings_of(&format!(
                "url = \"postgres://u@db/m\"\ntls = {:?}\n",
                mode.as_str()
            ));
            assert_eq!(settings.tls, mode);
        }
        let error = store_of("url = \"postgres://u@db/m\"\ntls = \"on\"\n")
            .err()
            .unwrap_or_default();
        assert!(error.contains("store.tls = \"on\""), "{error}");
        assert!(error.contains("verify-full"), "{error}");
    }

    #[test]
    fn the_store_password_file_must_be_private() -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("pg-pass");
        std::fs::write(&path, "s3cret\n")?;
        let settings = PgSettings {
            password_file: Some(path.clone()),
            ..pg_settings_of("url = \"postgres://u@db/m\"\n")
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640))?;
        let refusal = settings.read_password().err().unwrap_or_default();
        assert!(refusal.contains("chmod 600"), "{refusal}");
        assert!(!refusal.contains("s3cret"), "{refusal}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        assert_eq!(settings.read_password(), Ok(Some("s3cret".to_string())));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400))?;
        assert_eq!(settings.read_password(), Ok(Some("s3cret".to_string())));
        Ok(())
    }
}
