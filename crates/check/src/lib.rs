//! `sealmail check`: grades the email security of any domain and its mail servers, ours or
//! not, in six pillars (encryption, authentication, integrity, confidentiality, server
//! security, protocol support), and gives the fix for every finding.
//!
//! [`report`] owns the findings, the score and grade, and the two outputs (text grouped by
//! pillar, and the versioned JSON of docs/CHECK-JSON.md); [`dns`] the checks of the domain's
//! published records; [`dane`] the TLSA records of each MX host against its certificate;
//! [`servers`] those of its mail servers (reached over the network), with [`tls`] for the raw
//! ClientHellos of TLS versions rustls does not speak; [`active`] the attacks tried, with
//! `--active`, on servers the user runs. Every check is time-bounded: a lookup that fails or
//! times out is a finding of its own, never an error of the whole check.
//! [`check`] runs them all in order; the `sealmail check` command and the server's daily
//! check of its own domains both call it, so they grade alike.

pub mod active;
pub mod dane;
pub mod dns;
pub mod report;
pub mod servers;
pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;

pub use report::{Check, Grade, Pillar, Report, Status};

/// What a check looks at beyond the domain's own records (the options of `sealmail check`).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// DKIM selectors whose keys to check.
    pub dkim_selectors: Vec<String>,
    /// A sample message sent from the domain: its DKIM signatures are verified and their
    /// selectors' keys checked; `None` when no message was given.
    pub message: Option<Arc<[u8]>>,
    /// Hosts whose submission and IMAP ports are checked besides the servers of the domain's
    /// SRV records; the MX hosts' SMTP port always is.
    pub hosts: Vec<String>,
    /// The `--active` probes (open relay, smuggling, STARTTLS injection, plaintext AUTH): only
    /// for servers the user runs, which the caller has made sure of.
    pub active: bool,
    pub ports: servers::Ports,
    /// Certificate authorities trusted besides the system's (PEM).
    pub ca_file: Option<PathBuf>,
}

/// Why no check could be made at all (anything else is a finding of the report).
#[derive(Debug)]
pub enum SetupError {
    /// The trust store could not be read: the system's roots or `ca_file`.
    TrustAnchors(String),
    /// Neither the system nor `ca_file` gave a certificate authority to check against.
    NoTrustAnchors,
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetupError::TrustAnchors(reason) => write!(f, "{reason}"),
            SetupError::NoTrustAnchors => write!(
                f,
                "no certificate authority to check certificates against: the system has none (install ca-certificates) and no --ca-file was given"
            ),
        }
    }
}

impl std::error::Error for SetupError {}

/// Every check of `domain` and of its mail servers, as one graded report dated `checked_at`
/// (Unix seconds).
pub async fn check(
    dns: &sealmail_dns::Dns,
    domain: &str,
    settings: &Settings,
    checked_at: i64,
) -> Result<Report, SetupError> {
    let options = dns::Options {
        dkim_selectors: settings.dkim_selectors.clone(),
        message: settings.message.clone(),
        https_port: Some(settings.ports.https),
        http: Some(dns::https_client(dns, settings.ca_file.as_deref()).map_err(SetupError::TrustAnchors)?),
    };
    let roots = sealmail_delivery::trust_anchors(settings.ca_file.as_deref())
        .map_err(|e| SetupError::TrustAnchors(e.to_string()))?;
    if roots.is_empty() {
        return Err(SetupError::NoTrustAnchors);
    }
    let found = dns::check_domain(dns, domain, &options).await;
    let mut checks = found.checks;
    let mut clients = found.client_servers;
    clients.extend(servers::ClientServer::on_hosts(&settings.hosts, settings.ports));
    checks.extend(
        servers::check_servers(
            dns,
            domain,
            &found.mx_hosts,
            found.mx_validated,
            &clients,
            settings.ports.smtp,
            Arc::new(roots),
        )
        .await,
    );
    if settings.active {
        // Only the MX hosts and the hosts the user named: SRV records may name a provider's
        // servers, which `--i-run-this-server` does not speak for.
        let named = servers::ClientServer::on_hosts(&settings.hosts, settings.ports);
        checks.extend(active::probe_servers(dns, domain, &found.mx_hosts, &named, settings.ports.smtp).await);
    }
    Ok(Report::new(domain, checked_at, checks))
}
