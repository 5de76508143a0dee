//! Outbound delivery: drains the store's queue. A scheduler picks the recipients that are due,
//! groups them by destination domain and sends each group over as few connections as it can
//! (several messages per connection, a few connections per domain). For each domain it finds
//! the hosts (static route or MX) and the TLS policy the domain asks for:
//!
//! DANE (validated TLSA records) > MTA-STS `enforce` > `[delivery] require_tls` > opportunistic.
//!
//! A required protection is never skipped: a host that cannot meet it is not used, and when no
//! host can, the recipients wait for the next attempt and finally bounce with the reason.
//! REQUIRETLS messages (RFC 8689) go only over TLS to a verified server that offers REQUIRETLS,
//! and bounce at once otherwise. Outcomes are recorded per recipient; a message leaves the queue
//! when every recipient has a final one, so a crash repeats at most the attempt in progress.

pub mod client;
pub mod mta_sts;
pub mod route;
pub mod tls_rpt;
pub mod verify;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use sealmail_config::DeliveryConfig;
use sealmail_dns::Dns;
use sealmail_dsn as dsn;
use sealmail_store::{DueMessage, DueRecipient, QueueLease, RecipientOutcome, Store, TlsResult};
use sealmail_types::EmailAddress;
use sealmail_types::line::ProtocolLine;
use sealmail_types::xtext;

use client::{ClientError, Reply, SmtpClient};
use mta_sts::{MtaSts, StsMode};
use route::{Dane, Host, RouteError};
use tls_rpt::{Outcome, PolicyType, ResultType};
use verify::{CertCheck, Mode, PeerVerifier};

/// Due recipients taken per scheduler pass.
const BATCH: i64 = 2000;
/// Due recipients taken per pass when other nodes share the queue: a node takes a share it
/// starts on at once and comes back for more (every pass, a few times a second), so the nodes
/// split a large queue between them rather than the first to look leasing all of it.
const SHARED_BATCH: i64 = 100;
/// How often the scheduler looks at the queue (it is woken at once for mail submitted to this
/// process; this bounds the delay for `queue retry`/`flush` from the command line, which is
/// another process, and for retries coming due). One indexed query each time.
const IDLE_WAIT: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("cannot read trust anchors from {path}: {reason}")]
    TrustAnchors { path: String, reason: String },
    #[error("cannot set up outbound TLS: {0}")]
    Tls(String),
    #[error("cannot read the relay password from {path}: {reason}")]
    RelayPassword { path: String, reason: String },
}

/// The smarthost credentials: the password file must be private (0600) and non-empty; its
/// first line is the password.
fn relay_credentials(
    config: &DeliveryConfig,
) -> Result<Option<(String, zeroize::Zeroizing<String>)>, DeliveryError> {
    let Some(relay) = &config.relay else {
        return Ok(None);
    };
    let (Some(username), Some(path)) = (&relay.username, &relay.password_file) else {
        return Ok(None);
    };
    let error = |reason: String| DeliveryError::RelayPassword {
        path: path.display().to_string(),
        reason,
    };
    if let Some(link) = sealmail_safeio::untrusted_link(path).map_err(|e| error(e.to_string()))? {
        return Err(error(format!(
            "it is reached through {}, a symbolic link of another user; replace the link by the file",
            link.display()
        )));
    }
    sealmail_safeio::check_private(path).map_err(|e| error(format!("{e:?}; make it mode 0600")))?;
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?);
    let password = text.lines().next().unwrap_or_default().to_string();
    if password.is_empty() {
        return Err(error("the file is empty".into()));
    }
    Ok(Some((username.clone(), zeroize::Zeroizing::new(password))))
}

/// The delivery engine; clones share everything.
#[derive(Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    dns: Dns,
    config: DeliveryConfig,
    hostname: String,
    /// `server.node_name`: the holder of this node's queue leases.
    node: String,
    provider: Arc<CryptoProvider>,
    pkix: Arc<WebPkiServerVerifier>,
    mta_sts: MtaSts,
    wake: Notify,
    /// Recipient rows being delivered now. The store's lease keeps other nodes (and this one)
    /// from taking them again; this keeps this node from starting a second attempt when a
    /// lease ran out while the first is still under way.
    in_flight: Mutex<HashSet<i64>>,
    connections: Semaphore,
    per_domain: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// The smarthost's user name and password (`[delivery] relay_username`/`_password_file`).
    relay_credentials: Option<(String, zeroize::Zeroizing<String>)>,
}

/// The recipients one `deliver_domain` works on, taken out of `in_flight` when it ends.
struct InFlight {
    delivery: Delivery,
    keys: Vec<i64>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut in_flight = self
            .delivery
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for key in &self.keys {
            in_flight.remove(key);
        }
    }
}

/// A queued message's recipients at one domain, with what became of each.
struct Job {
    message: Arc<DueMessage>,
    recipients: Vec<DueRecipient>,
    outcomes: HashMap<i64, Attempt>,
}

/// One recipient's result in this attempt.
#[derive(Debug, Clone)]
enum Attempt {
    /// Accepted by `host`, which said `text`; `dsn_passed_on`: it offers DSN and got the
    /// recipient's NOTIFY, so any success notice is its to send (RFC 3461 5.2.2).
    Delivered {
        text: String,
        host: String,
        dsn_passed_on: bool,
    },
    Deferred(String),
    /// Permanent, with its RFC 3463 status, the diagnostic and the host that said so.
    Failed {
        status: String,
        text: String,
        host: Option<String>,
    },
}

/// Why a host is not tried in this attempt. The text is the recipients' deferral reason
/// when no other host answers, and the TLS report's detail.
#[derive(Debug, thiserror::Error)]
enum HostRefused {
    /// DANE may apply and cannot be known: the host must wait (RFC 7672 2.2.1).
    #[error("{0}")]
    TlsaLookup(String),
    /// MTA-STS `enforce` allows only the hosts its policy lists.
    #[error("MX host {host} is not listed in {domain}'s MTA-STS policy")]
    NotInStsPolicy { host: String, domain: String },
}

/// Why a connection ended before every job had an answer: the next address or host is tried.
/// The text is logged, and is the recipients' deferral reason after the host and address.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    TlsSetup(rustls::Error),
    #[error("{host} is not a valid TLS name: {error}")]
    TlsName {
        host: String,
        error: rustls_pki_types::InvalidDnsNameError,
    },
    /// The handshake failed; the detail is the certificate check's when it got that far.
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Client(ClientError),
    #[error("greeting: {}", .0.summary())]
    Greeting(Reply),
    #[error("EHLO: {}", .0.summary())]
    Ehlo(Reply),
    #[error("EHLO after STARTTLS: {}", .0.summary())]
    EhloAfterStarttls(Reply),
    /// TLS was required (DANE, MTA-STS, `require_tls`, the smarthost); the host name is told.
    #[error("{0} does not offer STARTTLS")]
    NoStarttls(String),
    #[error("the relay refused our credentials: {}", .0.summary())]
    RelayRefused(Reply),
}

/// What TLS a host must give.
struct HostPolicy {
    mode: Mode,
    /// No plaintext, no unverified certificate unless `mode` says unauthenticated is enough.
    tls_required: bool,
    /// What TLS-RPT counts the host's sessions under.
    policy_type: PolicyType,
    /// TLS from the first byte (a port 465 smarthost).
    implicit_tls: bool,
    /// Authenticate with `[delivery] relay_username` (the smarthost).
    relay_auth: bool,
    /// The host's name is known to be the destination's (RFC 8689 4.2.1): configured (static
    /// route, smarthost), from a DNSSEC-validated MX answer, or listed in the domain's MTA-STS
    /// policy. A certificate valid for a name an attacker put in a forged MX answer proves
    /// nothing, so REQUIRETLS needs this as well as a verified certificate.
    name_authenticated: bool,
}

/// An attempt with its texts cut to a length the queue and DSNs keep: they can come from a
/// remote server (a malformed reply line is quoted in the error).
fn bounded(attempt: &Attempt) -> Attempt {
    // Control characters are blanked too: a certificate name in a TLS error, or a host name
    // from DNS, can hold them, and these texts are shown by `queue show` and in logs.
    let cut = |text: &String| -> String {
        text.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(1000)
            .collect()
    };
    match attempt {
        Attempt::Delivered {
            text,
            host,
            dsn_passed_on,
        } => Attempt::Delivered {
            text: cut(text),
            host: host.clone(),
            dsn_passed_on: *dsn_passed_on,
        },
        Attempt::Deferred(text) => Attempt::Deferred(cut(text)),
        Attempt::Failed { status, text, host } => Attempt::Failed {
            status: status.clone(),
            text: cut(text),
            host: host.clone(),
        },
    }
}

impl HostPolicy {
    /// A destination's MX host (not the smarthost).
    fn mx(mode: Mode, tls_required: bool, policy_type: PolicyType, name_authenticated: bool) -> HostPolicy {
        HostPolicy {
            mode,
            tls_required,
            policy_type,
            implicit_tls: false,
            relay_auth: false,
            name_authenticated,
        }
    }
}

pub(crate) use sealmail_types::clock::now_unix;

/// The system's certificate authorities plus `extra` (a PEM file).
pub fn trust_anchors(extra: Option<&std::path::Path>) -> Result<RootCertStore, DeliveryError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = extra {
        let error = |reason: String| DeliveryError::TrustAnchors {
            path: path.display().to_string(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| error(e.to_string()))?;
        let mut added = 0;
        for cert in certs {
            roots
                .add(cert.map_err(|e| error(e.to_string()))?)
                .map_err(|e| error(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(error("no certificate in the file".into()));
        }
    }
    Ok(roots)
}

/// What delivery reads from files the configuration names (trust anchors, the relay
/// password): read once at start, before the server drops its privileges, since those files
/// may be readable by root only.
pub struct DeliveryFiles {
    roots: RootCertStore,
    relay_credentials: Option<(String, zeroize::Zeroizing<String>)>,
}

impl DeliveryFiles {
    pub fn load(config: &DeliveryConfig) -> Result<DeliveryFiles, DeliveryError> {
        Ok(DeliveryFiles {
            roots: trust_anchors(config.trust_anchors.as_deref())?,
            relay_credentials: relay_credentials(config)?,
        })
    }
}

impl Delivery {
    pub fn new(
        store: Arc<dyn Store>,
        dns: Dns,
        config: &DeliveryConfig,
        hostname: &str,
        node: &str,
        files: DeliveryFiles,
    ) -> Result<Delivery, DeliveryError> {
        let provider = Arc::new(sealmail_tls::restricted_provider());
        let roots = Arc::new(files.roots);
        let pkix = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| DeliveryError::Tls(e.to_string()))?;
        let https = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| DeliveryError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mta_sts = MtaSts::new(dns.clone(), store.clone(), https, config.mta_sts_port)
            .map_err(|e| DeliveryError::Tls(e.to_string()))?;
        Ok(Delivery {
            inner: Arc::new(Inner {
                store,
                dns,
                config: config.clone(),
                hostname: hostname.to_string(),
                node: node.to_string(),
                provider,
                pkix,
                mta_sts,
                wake: Notify::new(),
                in_flight: Mutex::new(HashSet::new()),
                connections: Semaphore::new(config.max_connections),
                per_domain: Mutex::new(HashMap::new()),
                relay_credentials: files.relay_credentials,
            }),
        })
    }

    /// Asks the scheduler to look at the queue now (after something was queued).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Runs the scheduler until `shutdown`; attempts in progress are abandoned (their
    /// recipients stay pending and are tried again after a restart).
    pub async fn run(self, shutdown: CancellationToken) {
        // Whatever this node leased before it (re)started is no longer in flight.
        match self.inner.store.release_leases(&self.inner.node).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(recipients = n, "queue leases of an earlier run released"),
            Err(e) => tracing::error!(error = %e, "could not release this node's earlier queue leases"),
        }
        let renewing = tokio::spawn(self.clone().renew_leases(shutdown.clone()));
        loop {
            if let Err(e) = self.schedule().await {
                tracing::error!(error = %e, "delivery scheduler could not read the queue");
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    // Leases are left to run out: attempts may still finish during the grace
                    // period, and releasing them now would let another node send them again.
                    renewing.abort();
                    return;
                }
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(IDLE_WAIT) => {}
            }
        }
    }

    /// Sends yesterday's TLS reports (RFC 8460) at start and then every hour until `shutdown`:
    /// each domain's report goes once (the store remembers), soon after midnight UTC.
    pub async fn send_tls_reports(
        self,
        from: EmailAddress,
        sign: Arc<tls_rpt::SignReport>,
        shutdown: CancellationToken,
    ) {
        // The day whose reports all went: the next 23 hourly wake-ups have nothing to do and
        // need not read the day's results or look up report addresses again.
        let mut done: Option<String> = None;
        loop {
            let day = tls_rpt::yesterday();
            if done.as_ref() != Some(&day) {
                match self.send_tls_reports_of(&day, &from, &*sign).await {
                    Ok(sent) => {
                        for (domain, error) in &sent.failed {
                            tracing::warn!(domain, day, error, "TLS report not sent");
                        }
                        if sent.failed.is_empty() {
                            done = Some(day);
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "TLS reports could not be read"),
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            }
        }
    }

    /// Sends the TLS reports of `day` (YYYY-MM-DD) that have not been sent: see [`tls_rpt::send`].
    pub async fn send_tls_reports_of(
        &self,
        day: &str,
        from: &EmailAddress,
        sign: &tls_rpt::SignReport,
    ) -> Result<tls_rpt::Sent, sealmail_store::StoreError> {
        let inner = &self.inner;
        let sent = tls_rpt::send(
            &*inner.store,
            &inner.dns,
            inner.mta_sts.http(),
            &inner.hostname,
            day,
            from,
            sign,
        )
        .await?;
        if !sent.queued.is_empty() {
            self.wake();
        }
        Ok(sent)
    }

    /// Keeps this node's leases of the recipients it is working on from ending while their
    /// attempts run (waiting for a connection slot, a slow server): renewed every third of
    /// `delivery.lease_secs`, so only a node that stopped loses its work to another.
    async fn renew_leases(self, shutdown: CancellationToken) {
        let lease = self.inner.config.lease;
        let every = (lease / 3).max(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let working: Vec<i64> = self
                .inner
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .copied()
                .collect();
            if working.is_empty() {
                continue;
            }
            let until = now_unix().saturating_add(lease.as_secs() as i64);
            if let Err(e) = self
                .inner
                .store
                .renew_leases(&self.inner.node, &working, until)
                .await
            {
                tracing::warn!(error = %e, "could not renew queue leases");
            }
        }
    }

    /// Starts delivery of every due recipient not already in progress.
    async fn schedule(&self) -> Result<(), sealmail_store::StoreError> {
        let now = now_unix();
        let lease = QueueLease {
            holder: self.inner.node.clone(),
            until: now.saturating_add(self.inner.config.lease.as_secs() as i64),
        };
        let batch = match self.inner.store.shared_by_nodes() {
            // Only what this node will start on soon: the rest stays for the other nodes.
            true => {
                let in_flight = self
                    .inner
                    .in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .len();
                SHARED_BATCH.saturating_sub(in_flight as i64)
            }
            false => BATCH,
        };
        if batch == 0 {
            return Ok(());
        }
        let due = self.inner.store.due_messages(now, batch, &lease).await?;
        let mut by_domain: HashMap<String, Vec<Job>> = HashMap::new();
        {
            let mut in_flight = self.inner.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            for message in due {
                let message = Arc::new(message);
                let mut domains: HashMap<String, Vec<DueRecipient>> = HashMap::new();
                for recipient in &message.recipients {
                    if in_flight.insert(recipient.id) {
                        domains
                            .entry(recipient.domain.clone())
                            .or_default()
                            .push(recipient.clone());
                    }
                }
                for (domain, recipients) in domains {
                    by_domain.entry(domain).or_default().push(Job {
                        message: message.clone(),
                        recipients,
                        outcomes: HashMap::new(),
                    });
                }
            }
        }
        for (domain, jobs) in by_domain {
            let this = self.clone();
            tokio::spawn(async move { this.deliver_domain(domain, jobs).await });
        }
        Ok(())
    }

    fn domain_slots(&self, domain: &str) -> Arc<Semaphore> {
        let mut slots = self.inner.per_domain.lock().unwrap_or_else(|p| p.into_inner());
        if slots.len() > 10_000 {
            slots.retain(|_, s| Arc::strong_count(s) > 1);
        }
        slots
            .entry(domain.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.inner.config.max_connections_per_domain)))
            .clone()
    }

    async fn deliver_domain(&self, domain: String, jobs: Vec<Job>) {
        // Removed from `in_flight` when this ends, however it ends (a panic included): a key
        // left behind would be renewed for ever and never retried.
        let _working = InFlight {
            delivery: self.clone(),
            keys: jobs
                .iter()
                .flat_map(|j| j.recipients.iter().map(|r| r.id))
                .collect(),
        };
        let mut finished = Vec::new();
        let hosts = match &self.inner.config.relay {
            Some(relay) => route::relay(&self.inner.dns, relay).await,
            None => route::hosts(&self.inner.dns, &self.inner.config, &domain).await,
        };
        match hosts {
            Err(RouteError::Permanent { status, text }) => {
                for mut job in jobs {
                    for r in &job.recipients {
                        job.outcomes.insert(
                            r.id,
                            Attempt::Failed {
                                status: status.to_string(),
                                text: text.clone(),
                                host: None,
                            },
                        );
                    }
                    finished.push(job);
                }
            }
            Err(RouteError::Temporary(text)) => {
                for mut job in jobs {
                    for r in &job.recipients {
                        job.outcomes.insert(r.id, Attempt::Deferred(text.clone()));
                    }
                    finished.push(job);
                }
            }
            Ok(hosts) => {
                let sts = match self.inner.config.relay {
                    Some(_) => mta_sts::Lookup {
                        policy: None,
                        failure: None,
                    },
                    None => self.inner.mta_sts.lookup(&domain).await,
                };
                if let Some(failure) = &sts.failure {
                    self.tls_result(
                        &domain,
                        PolicyType::Sts,
                        "",
                        Outcome::Failure(failure.result_type()),
                        &failure.to_string(),
                    )
                    .await;
                }
                let hosts = Arc::new(hosts);
                let sts = Arc::new(sts.policy);
                let slots = self.domain_slots(&domain);
                let mut batches = tokio::task::JoinSet::new();
                // Spread the messages over the connections allowed, each carrying several.
                let config = &self.inner.config;
                let per_connection = jobs
                    .len()
                    .div_ceil(config.max_connections_per_domain)
                    .clamp(1, config.max_messages_per_connection);
                let mut jobs = jobs.into_iter().peekable();
                while jobs.peek().is_some() {
                    let batch: Vec<Job> = jobs.by_ref().take(per_connection).collect();
                    let (this, domain, hosts, sts, slots) = (
                        self.clone(),
                        domain.clone(),
                        hosts.clone(),
                        sts.clone(),
                        slots.clone(),
                    );
                    batches.spawn(async move {
                        let _slot = slots.acquire_owned().await;
                        let _connection = this.inner.connections.acquire().await;
                        this.deliver_batch(&domain, &hosts, sts.as_ref().as_deref(), batch)
                            .await
                    });
                }
                while let Some(done) = batches.join_next().await {
                    match done {
                        Ok(jobs) => finished.extend(jobs),
                        Err(e) => tracing::error!(error = %e, domain, "delivery task failed"),
                    }
                }
            }
        }
        // Concurrently, so the store commits the outcomes together (one fsync for many).
        let mut recording = tokio::task::JoinSet::new();
        for job in finished {
            let this = self.clone();
            recording.spawn(async move { this.finish(job).await });
        }
        while recording.join_next().await.is_some() {}
    }

    /// The TLS a host must give, from DANE, MTA-STS and the configuration.
    async fn host_policy(
        &self,
        domain: &str,
        host: &Host,
        sts: Option<&mta_sts::Policy>,
    ) -> Result<HostPolicy, HostRefused> {
        if let Some(relay) = &self.inner.config.relay {
            // The smarthost: always TLS with a certificate valid for its name. The
            // destination's MTA-STS and DANE are the smarthost's to enforce on the next hop.
            return Ok(HostPolicy {
                mode: Mode::Pkix,
                tls_required: true,
                policy_type: PolicyType::NoPolicyFound,
                implicit_tls: relay.implicit_tls,
                relay_auth: relay.username.is_some(),
                name_authenticated: true,
            });
        }
        // RFC 8689 4.2.1: the MX name is authentic when DNSSEC vouched for it (or it was
        // configured), or when the domain's MTA-STS policy, in either mode, lists it.
        // A host named as the recipient domain itself (the implicit MX, RFC 5321 5.1) is that
        // domain whatever DNS said, so its certificate vouches for the right name.
        let name_authenticated = host.name_validated
            || host.name.eq_ignore_ascii_case(domain)
            || sts.is_some_and(|p| p.allows(&host.name));
        match route::dane(&self.inner.dns, host).await {
            Dane::Records(records) => {
                return Ok(HostPolicy::mx(
                    Mode::Dane(records),
                    true,
                    PolicyType::Tlsa,
                    name_authenticated,
                ));
            }
            Dane::Unusable => {
                return Ok(HostPolicy::mx(
                    Mode::Opportunistic,
                    true,
                    PolicyType::Tlsa,
                    name_authenticated,
                ));
            }
            Dane::Failed(reason) => {
                self.tls_result(
                    domain,
                    PolicyType::Tlsa,
                    &host.name,
                    Outcome::Failure(ResultType::DnssecInvalid),
                    &reason,
                )
                .await;
                return Err(HostRefused::TlsaLookup(reason));
            }
            Dane::None => {}
        }
        if let Some(policy) = sts.filter(|p| p.mode == StsMode::Enforce) {
            if !policy.allows(&host.name) {
                let refused = HostRefused::NotInStsPolicy {
                    host: host.name.clone(),
                    domain: domain.to_string(),
                };
                self.tls_result(
                    domain,
                    PolicyType::Sts,
                    &host.name,
                    Outcome::Failure(ResultType::ValidationFailure),
                    &refused.to_string(),
                )
                .await;
                return Err(refused);
            }
            return Ok(HostPolicy::mx(
                Mode::Pkix,
                true,
                PolicyType::Sts,
                name_authenticated,
            ));
        }
        // Under a testing policy sessions are still reported as the policy's (RFC 8461 5).
        let policy_type = if sts.is_some_and(|p| p.mode == StsMode::Testing) {
            PolicyType::Sts
        } else {
            PolicyType::NoPolicyFound
        };
        if self.inner.config.require_tls.iter().any(|d| d == domain) {
            return Ok(HostPolicy::mx(Mode::Pkix, true, policy_type, name_authenticated));
        }
        Ok(HostPolicy::mx(
            Mode::Opportunistic,
            false,
            policy_type,
            name_authenticated,
        ))
    }

    /// Counts one session (or policy fetch) for `domain`'s TLS report.
    async fn tls_result(
        &self,
        domain: &str,
        policy_type: PolicyType,
        host: &str,
        outcome: Outcome,
        detail: &str,
    ) {
        // Through a smarthost the sessions are with it, not with the domain's MX hosts: there
        // is nothing to report to the domain (RFC 8460 is the smarthost's job).
        if self.inner.config.relay.is_some() {
            return;
        }
        // Stored as the RFC 8460 spellings: the rows are text, and go into reports as they are.
        let result = TlsResult {
            policy_domain: domain.to_string(),
            policy_type: policy_type.as_str().to_string(),
            mx_host: host.to_string(),
            result_type: outcome.as_str().to_string(),
            detail: detail
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(500)
                .collect(),
        };
        if let Err(e) = self.inner.store.record_tls_result(result).await {
            tracing::warn!(error = %e, "cannot record a TLS result");
        }
    }

    /// Tries the hosts in order until every job has an answer from a server.
    async fn deliver_batch(
        &self,
        domain: &str,
        hosts: &[Host],
        sts: Option<&mta_sts::Policy>,
        mut jobs: Vec<Job>,
    ) -> Vec<Job> {
        let mut last_error = format!("no host of {domain} could be reached");
        'hosts: for host in hosts {
            let policy = match self.host_policy(domain, host, sts).await {
                Ok(policy) => policy,
                Err(refused) => {
                    last_error = refused.to_string();
                    continue;
                }
            };
            for addr in &host.addrs {
                match self.session(domain, host, *addr, &policy, &mut jobs).await {
                    Ok(()) => break 'hosts,
                    Err(reason) => {
                        tracing::info!(domain, host = %host.name, %addr, reason = %reason, "delivery attempt failed");
                        last_error = format!("{} [{}]: {reason}", host.name, addr.ip());
                    }
                }
                if jobs
                    .iter()
                    .all(|j| j.recipients.iter().all(|r| j.outcomes.contains_key(&r.id)))
                {
                    break 'hosts;
                }
            }
        }
        for job in &mut jobs {
            for r in &job.recipients {
                job.outcomes
                    .entry(r.id)
                    .or_insert_with(|| Attempt::Deferred(last_error.clone()));
            }
        }
        jobs
    }

    /// EHLO with our name; a refusal ends the session with the error `refused` makes of it.
    async fn ehlo(
        &self,
        client: &mut SmtpClient,
        refused: fn(Reply) -> SessionError,
    ) -> Result<(), SessionError> {
        let ehlo = client
            .ehlo(&self.inner.hostname)
            .await
            .map_err(SessionError::Client)?;
        match ehlo.is_positive() {
            true => Ok(()),
            false => Err(refused(ehlo)),
        }
    }

    /// One connection: the TLS the policy asks for, then every job not yet answered. `Err` is a
    /// reason to try the next address or host.
    async fn session(
        &self,
        domain: &str,
        host: &Host,
        addr: std::net::SocketAddr,
        policy: &HostPolicy,
        jobs: &mut [Job],
    ) -> Result<(), SessionError> {
        let config = &self.inner.config;
        let verifier = Arc::new(PeerVerifier::new(
            policy.mode.clone(),
            self.inner.pkix.clone(),
            self.inner.provider.clone(),
        ));
        let tls_config = Arc::new(
            ClientConfig::builder_with_provider(self.inner.provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(SessionError::TlsSetup)?
                .dangerous()
                .with_custom_certificate_verifier(verifier.clone())
                .with_no_client_auth(),
        );
        let name = ServerName::try_from(host.name.clone()).map_err(|error| SessionError::TlsName {
            host: host.name.clone(),
            error,
        })?;
        let tls_failed = |error: ClientError| match verifier.check() {
            Some(CertCheck {
                failure: Some(result_type),
                detail,
            }) => (result_type, detail),
            _ => (ResultType::ValidationFailure, error.to_string()),
        };
        let connected = if policy.implicit_tls {
            SmtpClient::connect_tls(
                addr,
                config.connect_timeout,
                config.command_timeout,
                tls_config.clone(),
                name.clone(),
            )
            .await
        } else {
            SmtpClient::connect(addr, config.connect_timeout, config.command_timeout).await
        };
        let (mut client, greeting) = match connected {
            Ok(connected) => connected,
            Err(error @ ClientError::Tls(_)) => {
                let (_, detail) = tls_failed(error);
                return Err(SessionError::Tls(detail));
            }
            Err(error) => return Err(SessionError::Client(error)),
        };
        if greeting.code != 220 {
            return Err(SessionError::Greeting(greeting));
        }
        self.ehlo(&mut client, SessionError::Ehlo).await?;
        if client.tls.is_none() && client.capabilities.starttls {
            client = match client.starttls(tls_config, name).await {
                Ok(client) => client,
                Err((_, error)) => {
                    let (result_type, detail) = tls_failed(error);
                    if policy.policy_type != PolicyType::NoPolicyFound {
                        self.tls_result(
                            domain,
                            policy.policy_type,
                            &host.name,
                            Outcome::Failure(result_type),
                            &detail,
                        )
                        .await;
                    }
                    return Err(SessionError::Tls(detail));
                }
            };
            self.ehlo(&mut client, SessionError::EhloAfterStarttls).await?;
        }
        let check = verifier.check();
        let verified = client.tls.is_some() && check.as_ref().is_some_and(CertCheck::verified);
        if let Some(tls) = &client.tls {
            tracing::info!(
                domain,
                host = %host.name,
                %addr,
                tls_version = tls.version,
                cipher = tls.cipher,
                verified,
                check = check.as_ref().map(|c| c.detail.as_str()).unwrap_or(""),
                "outbound TLS established"
            );
            // Under an MTA-STS policy in testing mode an unverified certificate is delivered
            // to, but reported as the failure it would be under enforce (RFC 8461 5). Without
            // a policy, a TLS session is a "no-policy-found" success (RFC 8460 4.4).
            match (&check, policy.policy_type) {
                (
                    Some(CertCheck {
                        failure: Some(result_type),
                        detail,
                    }),
                    PolicyType::Sts,
                ) => {
                    self.tls_result(
                        domain,
                        PolicyType::Sts,
                        &host.name,
                        Outcome::Failure(*result_type),
                        detail,
                    )
                    .await;
                }
                _ => {
                    self.tls_result(domain, policy.policy_type, &host.name, Outcome::Success, "")
                        .await;
                }
            }
        } else if policy.tls_required {
            let refused = SessionError::NoStarttls(host.name.clone());
            self.tls_result(
                domain,
                policy.policy_type,
                &host.name,
                Outcome::Failure(ResultType::StarttlsNotSupported),
                &refused.to_string(),
            )
            .await;
            return Err(refused);
        } else {
            tracing::warn!(domain, host = %host.name, %addr, "outbound delivery without TLS: the server does not offer STARTTLS");
        }
        if policy.relay_auth
            && let Some(credentials) = &self.inner.relay_credentials
        {
            // Only here: TLS is up and the certificate verified (the relay policy is PKIX).
            let token = base64::engine::general_purpose::STANDARD.encode(format!(
                "\0{}\0{}",
                credentials.0,
                credentials.1.as_str()
            ));
            let reply = client
                .command(&format!("AUTH PLAIN {token}"), "the AUTH reply")
                .await
                .map_err(SessionError::Client)?;
            if reply.code != 235 {
                return Err(SessionError::RelayRefused(reply));
            }
        }

        let mut result = Ok(());
        for job in jobs.iter_mut() {
            if job.recipients.iter().all(|r| job.outcomes.contains_key(&r.id)) {
                continue;
            }
            let requiretls_ok = verified && policy.name_authenticated;
            if let Err(e) = self
                .transaction(&mut client, host, verified, requiretls_ok, job)
                .await
            {
                result = Err(SessionError::Client(e));
                break;
            }
        }
        if result.is_ok() {
            client.quit().await;
        }
        result
    }

    /// MAIL, RCPT, DATA for one job on an open connection.
    async fn transaction(
        &self,
        client: &mut SmtpClient,
        host: &Host,
        verified: bool,
        requiretls_ok: bool,
        job: &mut Job,
    ) -> Result<(), ClientError> {
        let pending: Vec<DueRecipient> = job
            .recipients
            .iter()
            .filter(|r| !job.outcomes.contains_key(&r.id))
            .cloned()
            .collect();
        let fail_all = |job: &mut Job, status: &str, text: String| {
            for r in &pending {
                job.outcomes.insert(
                    r.id,
                    Attempt::Failed {
                        status: status.to_string(),
                        text: text.clone(),
                        host: Some(host.name.clone()),
                    },
                );
            }
        };
        let caps = client.capabilities.clone();
        if job.message.require_tls {
            // RFC 8689 4.2.1: only over TLS, to a verified server that takes on the requirement.
            let why = if client.tls.is_none() {
                Some("the receiving server offers no TLS")
            } else if !verified {
                Some("the receiving server's certificate could not be verified")
            } else if !requiretls_ok {
                Some(
                    "the MX host name is not authenticated (no DNSSEC-validated MX answer and no MTA-STS policy listing it)",
                )
            } else if !caps.requiretls {
                Some("the receiving server does not support REQUIRETLS")
            } else {
                None
            };
            if let Some(why) = why {
                fail_all(job, "5.7.30", format!("REQUIRETLS: not sent: {why}"));
                return Ok(());
            }
        }
        let content = match self.inner.store.queued_content(job.message.id).await {
            Ok(content) => content,
            Err(e) => {
                for r in &pending {
                    job.outcomes.insert(r.id, Attempt::Deferred(e.to_string()));
                }
                return Ok(());
            }
        };
        if caps.size.is_some_and(|limit| content.len() as u64 > limit) {
            fail_all(
                job,
                "5.3.4",
                format!("the message is larger than {} accepts", host.name),
            );
            return Ok(());
        }
        if let Some(problem) = sealmail_types::line::unsafe_content(&content) {
            // Never repaired on the way out: the signature covers these bytes, and the next
            // hop could split the message where we do not (SMTP smuggling).
            fail_all(
                job,
                "5.6.0",
                format!("the message has {problem} and cannot be sent as it is"),
            );
            return Ok(());
        }
        let eight_bit = content.iter().any(|b| *b >= 0x80);
        let utf8_addresses = !job.message.sender.is_ascii() || pending.iter().any(|r| !r.address.is_ascii());
        if utf8_addresses && !caps.smtputf8 {
            fail_all(
                job,
                "5.6.7",
                format!("{} does not support SMTPUTF8 addresses", host.name),
            );
            return Ok(());
        }
        if eight_bit && !caps.eight_bit_mime && !caps.smtputf8 {
            fail_all(
                job,
                "5.6.3",
                format!("{} does not accept 8-bit content", host.name),
            );
            return Ok(());
        }

        let mut mail = format!("MAIL FROM:<{}>", job.message.sender);
        if eight_bit {
            mail.push_str(" BODY=8BITMIME");
        }
        if utf8_addresses {
            mail.push_str(" SMTPUTF8");
        }
        if caps.size.is_some() {
            mail.push_str(&format!(" SIZE={}", content.len()));
        }
        if job.message.require_tls {
            mail.push_str(" REQUIRETLS");
        }
        if caps.dsn {
            if let Some(ret) = &job.message.dsn_ret {
                mail.push_str(&format!(" RET={ret}"));
            }
            if let Some(envid) = job.message.dsn_envid.as_deref().and_then(outbound_envid) {
                mail.push_str(&format!(" ENVID={envid}"));
            }
        }
        let rcpt_line = |r: &DueRecipient| {
            let mut line = format!("RCPT TO:<{}>", r.address);
            if caps.dsn {
                if let Some(notify) = &r.dsn_notify {
                    line.push_str(&format!(" NOTIFY={notify}"));
                }
                if let Some(orcpt) = r.dsn_orcpt.as_deref().and_then(outbound_orcpt) {
                    line.push_str(&format!(" ORCPT={orcpt}"));
                }
            }
            line
        };

        // RFC 2920: MAIL, every RCPT and DATA in one write when the server pipelines; the
        // server refuses DATA itself when no recipient was accepted.
        let envelope_error = std::iter::once(mail.clone())
            .chain(pending.iter().map(rcpt_line))
            .find_map(|line| ProtocolLine::new(line).err());
        if let Some(error) = envelope_error {
            tracing::error!(queue_id = job.message.id, %error, "a queued envelope is unfit to send");
            fail_all(
                job,
                "5.6.0",
                "the envelope holds a line break and cannot be sent".into(),
            );
            return Ok(());
        }
        let (mail_reply, rcpt_replies, data_reply) = if caps.pipelining {
            let mut batch = vec![mail.clone()];
            batch.extend(pending.iter().map(rcpt_line));
            batch.push("DATA".to_string());
            client.send_commands(&batch).await?;
            let mail_reply = client.read_reply("the MAIL reply").await?;
            let mut replies = Vec::with_capacity(pending.len());
            for _ in &pending {
                replies.push(client.read_reply("a RCPT reply").await?);
            }
            let data_reply = client.read_reply("the DATA reply").await?;
            (mail_reply, replies, Some(data_reply))
        } else {
            let mail_reply = client.command(&mail, "the MAIL reply").await?;
            let mut replies = Vec::new();
            if mail_reply.is_positive() {
                for r in &pending {
                    replies.push(client.command(&rcpt_line(r), "a RCPT reply").await?);
                }
            }
            (mail_reply, replies, None)
        };
        let mut accepted = Vec::new();
        if mail_reply.is_positive() {
            for (r, reply) in pending.iter().zip(&rcpt_replies) {
                if reply.is_positive() {
                    accepted.push(r.clone());
                } else {
                    self.answer_all(job, std::slice::from_ref(r), host, reply, caps.dsn);
                }
            }
        } else {
            self.answer_all(job, &pending, host, &mail_reply, caps.dsn);
        }
        if accepted.is_empty() {
            if data_reply.is_some_and(|d| d.code == 354) {
                // A server that opened DATA without a recipient gets an empty message ended
                // at once; its answer does not matter.
                client.end_empty_data().await?;
            }
            client.command("RSET", "the RSET reply").await?;
            return Ok(());
        }
        let data = match data_reply {
            Some(reply) => reply,
            None => client.command("DATA", "the DATA reply").await?,
        };
        if data.code != 354 {
            self.answer_all(job, &accepted, host, &data, caps.dsn);
            client.command("RSET", "the RSET reply").await?;
            return Ok(());
        }
        let reply = client.send_data(&content).await?;
        self.answer_all(job, &accepted, host, &reply, caps.dsn);
        tracing::info!(
            queue_id = job.message.id,
            host = %host.name,
            recipients = accepted.len(),
            reply = %reply.summary(),
            tls = client.tls.as_ref().map(|t| t.version).unwrap_or("none"),
            cipher = client.tls.as_ref().map(|t| t.cipher).unwrap_or("none"),
            verified,
            "outbound delivery attempt answered"
        );
        Ok(())
    }

    /// The same reply for each of `recipients`; `dsn`: the server offers DSN.
    fn answer_all(&self, job: &mut Job, recipients: &[DueRecipient], host: &Host, reply: &Reply, dsn: bool) {
        let text = reply.summary();
        for r in recipients {
            let attempt = if reply.is_positive() {
                Attempt::Delivered {
                    text: format!("{}: {text}", host.name),
                    host: host.name.clone(),
                    dsn_passed_on: dsn,
                }
            } else if reply.is_permanent() {
                Attempt::Failed {
                    status: reply.enhanced().unwrap_or("5.0.0").to_string(),
                    text: text.clone(),
                    host: Some(host.name.clone()),
                }
            } else {
                Attempt::Deferred(format!("{}: {text}", host.name))
            };
            job.outcomes.insert(r.id, attempt);
        }
    }

    /// Records a job's outcomes: deferrals get their next time (or expire); failures, long
    /// delays and successes at servers without DSN a notice to the sender.
    async fn finish(&self, job: Job) {
        let config = &self.inner.config;
        let now = now_unix();
        let give_up_at = job.message.created_at + config.give_up.as_secs() as i64;
        let mut outcomes = Vec::new();
        let mut notices = Vec::new();
        for r in &job.recipients {
            let Some(attempt) = job.outcomes.get(&r.id) else {
                continue;
            };
            let attempt = &bounded(attempt);
            let notice = |action, status: &str, diagnostic: &str, remote_mta: Option<String>| dsn::Notice {
                address: r.address.clone(),
                orcpt: r.dsn_orcpt.clone(),
                action,
                status: status.to_string(),
                diagnostic: diagnostic.to_string(),
                remote_mta,
                will_retry_until: (action == dsn::Action::Delayed).then_some(give_up_at),
            };
            let outcome = match attempt {
                Attempt::Delivered {
                    text,
                    host,
                    dsn_passed_on,
                } => {
                    tracing::info!(queue_id = job.message.id, to = %r.address, "delivered: {text}");
                    sealmail_metrics::MESSAGES_DELIVERED.inc();
                    if !dsn_passed_on {
                        notices.push(notice(dsn::Action::Relayed, "2.0.0", text, Some(host.clone())));
                    }
                    RecipientOutcome::Delivered(text.clone())
                }
                Attempt::Deferred(text) => {
                    let delay = config
                        .retry_base
                        .as_secs()
                        .saturating_mul(1u64 << r.attempts.clamp(0, 20))
                        .min(config.retry_max.as_secs()) as i64;
                    if now + delay - job.message.created_at > config.give_up.as_secs() as i64 {
                        let text = format!(
                            "gave up after {} attempts over {} hours; last error: {text}",
                            r.attempts + 1,
                            (now - job.message.created_at) / 3600
                        );
                        notices.push(notice(dsn::Action::Failed, "4.4.7", &text, None));
                        sealmail_metrics::MESSAGES_BOUNCED.inc();
                        RecipientOutcome::Failed(text)
                    } else {
                        tracing::info!(queue_id = job.message.id, to = %r.address, retry_in = delay, "deferred: {text}");
                        // One "delayed" notice once the message has waited delay_warning.
                        let warn = !config.delay_warning.is_zero()
                            && !r.delay_warned
                            && now - job.message.created_at >= config.delay_warning.as_secs() as i64;
                        if warn {
                            notices.push(notice(dsn::Action::Delayed, "4.0.0", text, None));
                        }
                        RecipientOutcome::Deferred {
                            error: text.clone(),
                            next_attempt_at: now + delay,
                            delay_warned: r.delay_warned || warn,
                        }
                    }
                }
                Attempt::Failed { status, text, host } => {
                    notices.push(notice(dsn::Action::Failed, status, text, host.clone()));
                    sealmail_metrics::MESSAGES_BOUNCED.inc();
                    RecipientOutcome::Failed(format!("{status} {text}"))
                }
            };
            outcomes.push((r.id, outcome));
        }
        if !notices.is_empty() {
            self.notify_sender(&job, &notices).await;
        }
        if let Err(e) = self.inner.store.record_outcomes(job.message.id, outcomes).await {
            tracing::error!(queue_id = job.message.id, error = %e, "cannot record delivery outcomes");
        }
    }

    /// A DSN to the sender's INBOX with the notices each recipient's NOTIFY asks for, if the
    /// sender is one of our accounts. Nothing else: queued mail comes from authenticated
    /// submission, and a notice to any other address would be backscatter.
    async fn notify_sender(&self, job: &Job, notices: &[dsn::Notice]) {
        let wanted: Vec<dsn::Notice> = notices
            .iter()
            .filter(|n| {
                let notify = job
                    .recipients
                    .iter()
                    .find(|r| r.address == n.address)
                    .and_then(|r| r.dsn_notify.as_deref());
                n.action.wanted_by(notify)
            })
            .cloned()
            .collect();
        if wanted.is_empty() || job.message.sender.is_empty() {
            return;
        }
        let original = self
            .inner
            .store
            .queued_content(job.message.id)
            .await
            .unwrap_or_default();
        let report = dsn::Report {
            hostname: &self.inner.hostname,
            sender: &job.message.sender,
            envid: job.message.dsn_envid.as_deref(),
            ret_full: job.message.dsn_ret.as_deref() == Some("FULL"),
            arrival: job.message.created_at,
            recipients: &wanted,
            original: &original,
        };
        let sender = &job.message.sender;
        match dsn::deliver_to_sender(self.inner.store.as_ref(), &report).await {
            Ok(true) => {
                tracing::info!(queue_id = job.message.id, %sender, recipients = wanted.len(), "DSN delivered to the sender")
            }
            Ok(false) => {
                tracing::info!(queue_id = job.message.id, %sender, "no DSN: the sender is not a local account")
            }
            Err(e) => tracing::error!(queue_id = job.message.id, error = %e, "cannot store a DSN"),
        }
    }
}

/// The ENVID to send, in xtext. Submission stores it encoded; a row from before that
/// (decoded text) is encoded here, and one that is not printable US-ASCII is not sent at all.
fn outbound_envid(stored: &str) -> Option<String> {
    if xtext::is_xtext(stored) {
        return Some(stored.to_string());
    }
    if !xtext::printable_ascii(stored) {
        tracing::warn!("a queued ENVID is not printable US-ASCII; it is left out");
        return None;
    }
    xtext::encode(stored)
}

/// The ORCPT to send (`rfc822;` and the address in xtext), by the same rule as ENVID.
fn outbound_orcpt(stored: &str) -> Option<String> {
    let (kind, address) = stored.split_once(';')?;
    if !kind.eq_ignore_ascii_case("rfc822") {
        return None;
    }
    outbound_envid(address).map(|address| format!("rfc822;{address}"))
}

/// A resolver asking only the test's DNS fixture, quickly giving up.
#[cfg(test)]
pub(crate) fn test_dns(server: &sealmail_testkit::dns::DnsServer) -> Result<Dns, sealmail_dns::DnsError> {
    Dns::new(&sealmail_config::DnsConfig {
        nameservers: vec![server.addr()],
        timeout: Duration::from_millis(500),
        attempts: 1,
        ..sealmail_config::DnsConfig::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_texts_are_bounded_and_on_one_line() {
        let attempt = bounded(&Attempt::Deferred(format!(
            "TLS: DnsName(\"x\r\nDATA\0\") {}",
            "y".repeat(5000)
        )));
        let Attempt::Deferred(text) = attempt else {
            panic!("kind changed");
        };
        assert_eq!(text.chars().count(), 1000);
        assert!(!text.contains(['\r', '\n', '\0']), "{text}");
    }

    /// These texts are deferral reasons (shown by `queue show`, in DSNs) and TLS report details.
    #[test]
    fn host_and_session_failures_keep_their_texts() {
        let reply = |code, text: &str| Reply {
            code,
            lines: vec![text.to_string()],
        };
        assert_eq!(
            HostRefused::NotInStsPolicy {
                host: "mx.forger.test".into(),
                domain: "b.test".into()
            }
            .to_string(),
            "MX host mx.forger.test is not listed in b.test's MTA-STS policy"
        );
        assert_eq!(
            HostRefused::TlsaLookup("TLSA lookup for _25._tcp.mx.b.test. failed: SERVFAIL".into())
                .to_string(),
            "TLSA lookup for _25._tcp.mx.b.test. failed: SERVFAIL"
        );
        for (error, text) in [
            (
                SessionError::Tls("DANE: no TLSA record matches the certificate chain".into()),
                "TLS: DANE: no TLSA record matches the certificate chain",
            ),
            (
                SessionError::Client(ClientError::Timeout("the EHLO reply")),
                "timed out waiting for the EHLO reply",
            ),
            (
                SessionError::Greeting(reply(554, "go away")),
                "greeting: 554 go away",
            ),
            (SessionError::Ehlo(reply(500, "what")), "EHLO: 500 what"),
            (
                SessionError::EhloAfterStarttls(reply(421, "bye")),
                "EHLO after STARTTLS: 421 bye",
            ),
            (
                SessionError::NoStarttls("mx.strict.test".into()),
                "mx.strict.test does not offer STARTTLS",
            ),
            (
                SessionError::RelayRefused(reply(535, "5.7.8 no")),
                "the relay refused our credentials: 535 5.7.8 no",
            ),
        ] {
            assert_eq!(error.to_string(), text);
        }
    }

    #[test]
    fn dsn_parameters_leave_as_xtext_and_never_with_a_line_break() {
        // Stored by submission: already xtext, sent as it is.
        assert_eq!(outbound_envid("QQ+20314+2B1").as_deref(), Some("QQ+20314+2B1"));
        // A row queued before values were kept encoded: encoded on the way out.
        assert_eq!(outbound_envid("hi there").as_deref(), Some("hi+20there"));
        // A decoded line break in an old row is never sent.
        assert_eq!(outbound_envid("x\r\nRCPT TO:<v@c.test>"), None);
        assert_eq!(outbound_envid("x\0"), None);
        assert_eq!(
            outbound_orcpt("rfc822;carol+2Btag@b.test").as_deref(),
            Some("rfc822;carol+2Btag@b.test")
        );
        assert_eq!(outbound_orcpt("rfc822;a\r\nDATA@b.test"), None);
        assert_eq!(outbound_orcpt("x400;whatever"), None);
        assert_eq!(outbound_orcpt("no type"), None);
    }
}
