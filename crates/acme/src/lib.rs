//! ACME (RFC 8555) certificates for sealmail's own names. This crate owns:
//! - the ACME account (`DATA/acme/account.json`, 0600) and the talk with the CA through
//!   instant-acme over our own HTTPS client (system roots, or `ca_file`'s);
//! - the challenge answers of orders in progress ([`Challenges`]): HTTP-01 bodies for the HTTP
//!   listener and TLS-ALPN-01 (RFC 8737) certificates in the listeners' `CertResolver`;
//! - obtaining and renewing ([`Acme::obtain`], [`Acme::run`]): a CSR from the kept key
//!   (`key.pem`), the chain checked (our key, every name) before it replaces `cert.pem`
//!   atomically, then the reload callback; a failure leaves the served certificate alone;
//! - when to renew ([`schedule`]: the ARI window (RFC 9773) when the CA offers one, else two
//!   thirds of the lifetime; back-off; the 14-day alarm, counted in [`EXPIRY_ALARMS`]);
//! - DANE-safe key rollover ([`rollover`]) and the facts `sealmail cert status` prints
//!   ([`status`]).
//!
//! It owns no listener and no configuration keys: the server builds [`AcmeSettings`], answers
//! `/.well-known/acme-challenge/` with [`Challenges::http_answer`], and offers `acme-tls/1`.

pub mod challenges;
pub mod files;
mod http;
pub mod rollover;
pub mod schedule;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType, Identifier,
    NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use sealmail_config::CertificateFiles;
use sealmail_tls::CertResolver;
use sealmail_types::clock::now_unix;

pub use challenges::Challenges;
pub use files::{AcmePaths, key_spki_sha256, spki_sha256_hex};

use challenges::ChallengeGuard;
use files::{Leaf, create_key, io_error, parse_chain, read_key, read_leaf};

/// How often the alarm rang: a certificate within 14 days of its end that renewal has not
/// replaced (one count per failed attempt in that state). The server may export it.
pub static EXPIRY_ALARMS: AtomicU64 = AtomicU64::new(0);
/// Failed obtain or renewal attempts.
pub static RENEWAL_FAILURES: AtomicU64 = AtomicU64::new(0);

/// The default wait before a prepared key is switched to without being asked: two days, more
/// than the TTL of any sensible TLSA record set.
pub const DEFAULT_ROLLOVER_WAIT: Duration = Duration::from_secs(2 * 86_400);
/// The default limit for one whole order (challenges, finalization, download).
pub const DEFAULT_ORDER_TIMEOUT: Duration = Duration::from_secs(300);
/// At most this many names in one certificate.
pub const MAX_NAMES: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("ACME CA file {path} {detail}")]
    CaFile { path: PathBuf, detail: String },
    #[error("ACME settings: {0}")]
    Config(String),
    #[error("certificate key: {0}")]
    Key(String),
    #[error("ACME {step} failed: {detail}")]
    Server { step: &'static str, detail: String },
    #[error("ACME: {0}")]
    Protocol(String),
    #[error("ACME challenge failed: {0}")]
    Challenge(String),
    /// The order failed because these names' challenges failed (name, why).
    #[error("ACME challenge failed: {detail}")]
    NamesFailed {
        failed: Vec<(String, String)>,
        detail: String,
    },
    #[error("the issued certificate was refused: {0}")]
    Check(String),
    #[error("the ACME order did not finish within {0:?}")]
    Timeout(Duration),
    #[error("the new certificate was written but reloading the listeners failed: {0}")]
    Reload(String),
}

/// An error with its sources, one line (hyper's errors hide the cause in the source).
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn server(step: &'static str) -> impl FnOnce(instant_acme::Error) -> AcmeError {
    move |e| AcmeError::Server {
        step,
        detail: with_sources(&e),
    }
}

/// Which challenge proves control of each name: the configuration's own type (`[acme]
/// challenge`), so the server hands it over as it is.
pub use sealmail_config::AcmeChallenge as Challenge;

#[derive(Debug, Clone)]
pub struct AcmeSettings {
    /// The CA's directory URL.
    pub directory: String,
    /// `mailto:` URIs for the account.
    pub contact: Vec<String>,
    /// PEM roots to trust the ACME server by instead of the system roots.
    pub ca_file: Option<PathBuf>,
    pub challenge: Challenge,
    /// The data folder; the ACME files are in its `acme/`.
    pub data_dir: PathBuf,
    /// How long a prepared key waits before a renewal switches to it unasked.
    pub rollover_wait: Duration,
    /// The limit for one whole order.
    pub order_timeout: Duration,
}

impl AcmeSettings {
    /// Settings with the defaults: TLS-ALPN-01, no contact, system roots.
    pub fn new(directory: impl Into<String>, data_dir: impl Into<PathBuf>) -> AcmeSettings {
        AcmeSettings {
            directory: directory.into(),
            contact: Vec::new(),
            ca_file: None,
            challenge: Challenge::TlsAlpn01,
            data_dir: data_dir.into(),
            rollover_wait: DEFAULT_ROLLOVER_WAIT,
            order_timeout: DEFAULT_ORDER_TIMEOUT,
        }
    }
}

/// Called after a new `cert.pem` is in place, to put it into service everywhere.
pub type ReloadFn = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The usual [`ReloadFn`]: load `files` (the server's whole certificate list, ACME's pair
/// included) into `resolver`, which every TLS listener shares.
pub fn resolver_reload(resolver: Arc<CertResolver>, files: Vec<CertificateFiles>) -> ReloadFn {
    Arc::new(move || resolver.reload(&files).map_err(|e| e.to_string()))
}

/// What an order brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Obtained {
    pub names: Vec<String>,
    /// Unix seconds.
    pub not_after: i64,
    /// `TLSA 3 1 1` hash of the certificate's key.
    pub key_spki_sha256: String,
    /// Whether this order switched to the rollover key.
    pub key_switched: bool,
}

/// The account as stored: which directory it belongs to, and instant-acme's credentials.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// The ACME client of one data folder. Clones share one order lock: two orders (say the
/// renewal loop's and a key switch asked for from another task) never run at once, so they
/// cannot overwrite each other's `cert.pem` or challenge answers.
#[derive(Clone)]
pub struct Acme {
    settings: AcmeSettings,
    paths: AcmePaths,
    challenges: Arc<Challenges>,
    reload: ReloadFn,
    order_lock: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme")
            .field("directory", &self.settings.directory)
            .field("dir", &self.paths.dir)
            .finish_non_exhaustive()
    }
}

/// Lower case, no final dot; refuses wildcards (neither challenge can prove one) and junk.
fn normalize_names(names: &[String]) -> Result<Vec<String>, AcmeError> {
    if names.is_empty() {
        return Err(AcmeError::Config("no names to obtain a certificate for".into()));
    }
    let mut out: Vec<String> = Vec::new();
    for name in names {
        let n = name.trim_end_matches('.').to_ascii_lowercase();
        let ok = !n.is_empty()
            && n.len() <= 253
            && n.contains('.')
            && n.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !ok {
            return Err(AcmeError::Config(format!(
                "{name:?} is not a host name ACME can validate by HTTP-01 or TLS-ALPN-01 (wildcards need DNS-01)"
            )));
        }
        if !out.contains(&n) {
            out.push(n);
        }
    }
    if out.len() > MAX_NAMES {
        let left_out = out.split_off(MAX_NAMES);
        tracing::warn!(
            max = MAX_NAMES,
            left_out = ?left_out,
            "more names than one ACME certificate may hold; these are left out"
        );
    }
    Ok(out)
}

impl Acme {
    pub fn new(settings: AcmeSettings, challenges: Arc<Challenges>, reload: ReloadFn) -> Acme {
        let paths = AcmePaths::new(&settings.data_dir);
        Acme {
            settings,
            paths,
            challenges,
            reload,
            order_lock: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    pub fn paths(&self) -> &AcmePaths {
        &self.paths
    }

    /// Obtains (or renews) a certificate for all `names` with the kept key, switching to a
    /// pending rollover key only once it has waited `rollover_wait`. On failure `cert.pem` is
    /// untouched and the error says why (also logged).
    pub async fn obtain(&self, names: &[String]) -> Result<Obtained, AcmeError> {
        self.obtain_logged(names, false).await
    }

    /// As [`Self::obtain`], switching to the pending rollover key now (refused without one).
    pub async fn switch_key(&self, names: &[String]) -> Result<Obtained, AcmeError> {
        self.obtain_logged(names, true).await
    }

    async fn obtain_logged(&self, names: &[String], switch_now: bool) -> Result<Obtained, AcmeError> {
        // One order at a time across all clones; held until this one has ended (the time
        // limit below counts from when the lock is held).
        let _order = self.order_lock.lock().await;
        if switch_now && !self.paths.next_key.exists() {
            return Err(AcmeError::Config(
                "no key rollover is pending; prepare one first".into(),
            ));
        }
        let limit = self.settings.order_timeout;
        let result = match tokio::time::timeout(limit, self.order(names, switch_now)).await {
            Ok(result) => result,
            Err(_) => Err(AcmeError::Timeout(limit)),
        };
        match &result {
            Ok(got) => tracing::info!(
                names = ?got.names,
                not_after = got.not_after,
                key_spki_sha256 = %got.key_spki_sha256,
                key_switched = got.key_switched,
                "ACME certificate obtained"
            ),
            Err(e) => {
                RENEWAL_FAILURES.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(names = ?names, error = %e, "ACME certificate not obtained; the certificate in service stays");
            }
        }
        result
    }

    /// Obtains a certificate for `names`; when the order fails only because some names'
    /// challenges failed, orders again at once without those (always keeping the first name,
    /// the host name), saying which were dropped and why.
    async fn obtain_dropping_failed(&self, names: &[String]) -> Result<Obtained, AcmeError> {
        let mut wanted = names.to_vec();
        loop {
            let failed = match self.obtain(&wanted).await {
                Err(AcmeError::NamesFailed { failed, detail }) => (failed, detail),
                other => return other,
            };
            let (failed, detail) = failed;
            let rest = names_without(&wanted, &failed);
            let Some(rest) = rest else {
                return Err(AcmeError::NamesFailed { failed, detail });
            };
            for (name, why) in &failed {
                tracing::warn!(
                    name = %name,
                    reason = %why,
                    "ACME: this name's challenge failed; ordering the certificate without it (the next renewal tries it again)"
                );
            }
            wanted = rest;
        }
    }

    /// The account for the configured directory: the stored one, or a new one (then stored).
    async fn account(&self) -> Result<Account, AcmeError> {
        let http = || -> Result<Box<http::AcmeHttp>, AcmeError> {
            Ok(Box::new(http::AcmeHttp::new(self.settings.ca_file.as_deref())?))
        };
        match std::fs::read(&self.paths.account) {
            Ok(bytes) => {
                let stored: StoredAccount = serde_json::from_slice(&bytes).map_err(|e| {
                    AcmeError::Config(format!("{} cannot be read: {e}", self.paths.account.display()))
                })?;
                if stored.directory == self.settings.directory {
                    return Account::builder_with_http(http()?)
                        .from_credentials(stored.credentials)
                        .await
                        .map_err(server("account load"));
                }
                tracing::info!(directory = %self.settings.directory, "the ACME directory changed; creating an account there");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&self.paths.account)(e)),
        }
        let contact: Vec<&str> = self.settings.contact.iter().map(String::as_str).collect();
        let (account, credentials) = Account::builder_with_http(http()?)
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.settings.directory.clone(),
                None,
            )
            .await
            .map_err(server("account creation"))?;
        let stored = StoredAccount {
            directory: self.settings.directory.clone(),
            credentials,
        };
        let json = serde_json::to_vec(&stored).map_err(|e| AcmeError::Config(e.to_string()))?;
        sealmail_safeio::write_private(&self.paths.account, &json).map_err(io_error(&self.paths.account))?;
        Ok(account)
    }

    async fn order(&self, names: &[String], switch_now: bool) -> Result<Obtained, AcmeError> {
        let names = normalize_names(names)?;
        self.paths.create_dir()?;
        rollover::finish_interrupted(&self.paths)?;

        // The key: key.pem (made the first time), or the pending one when it is time.
        let switching = match rollover::pending(&self.settings.data_dir)? {
            Some(p) => rollover::should_switch(
                p.since,
                SystemTime::now(),
                self.settings.rollover_wait,
                switch_now,
            ),
            None => false,
        };
        let key = if switching {
            read_key(&self.paths.next_key)?.ok_or_else(|| AcmeError::Key("next-key.pem vanished".into()))?
        } else {
            match read_key(&self.paths.key)? {
                Some(key) => key,
                None => create_key(&self.paths.key)?,
            }
        };

        let account = self.account().await?;
        let identifiers: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        // RFC 9773 section 5: an order renewing the current certificate names it, when the
        // CA offers ARI. Should the CA refuse that (say, it was replaced already), order anew.
        let replaces = read_leaf(&self.paths.cert)
            .ok()
            .flatten()
            .filter(|leaf| leaf.covers(&names))
            .and_then(|leaf| CertificateIdentifier::try_from(&leaf.der).ok())
            .map(CertificateIdentifier::into_owned);
        let replacing = match replaces {
            Some(id) => match account.new_order(&NewOrder::new(&identifiers).replaces(id)).await {
                Ok(order) => Some(order),
                Err(instant_acme::Error::Unsupported(_)) => None,
                Err(e) => {
                    tracing::debug!(error = %with_sources(&e), "ACME order naming the replaced certificate refused; ordering without");
                    None
                }
            },
            None => None,
        };
        let mut order = match replacing {
            Some(order) => order,
            None => account
                .new_order(&NewOrder::new(&identifiers))
                .await
                .map_err(server("new order"))?,
        };

        let mut guard = ChallengeGuard::new(&self.challenges);
        let kind = match self.settings.challenge {
            Challenge::Http01 => ChallengeType::Http01,
            Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz.map_err(server("authorization fetch"))?;
                let name = authz.identifier().to_string();
                let name_failed = |why: String| AcmeError::NamesFailed {
                    failed: vec![(name.to_ascii_lowercase(), why.clone())],
                    detail: format!("for {name}: {why}"),
                };
                match authz.status {
                    AuthorizationStatus::Valid => continue,
                    AuthorizationStatus::Pending => {}
                    other => return Err(name_failed(format!("the authorization is {other:?}"))),
                }
                let Some(mut challenge) = authz.challenge(kind.clone()) else {
                    return Err(name_failed(format!("the CA offers no {kind:?} challenge")));
                };
                let key_authorization = challenge.key_authorization();
                match self.settings.challenge {
                    Challenge::Http01 => guard.http(&challenge.token, key_authorization.as_str())?,
                    Challenge::TlsAlpn01 => {
                        let digest: [u8; 32] =
                            key_authorization.digest().as_ref().try_into().map_err(|_| {
                                AcmeError::Protocol("a SHA-256 digest is not 32 bytes".into())
                            })?;
                        guard.alpn(&name, &digest)?;
                    }
                }
                challenge.set_ready().await.map_err(server("challenge"))?;
            }
        }

        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(self.settings.order_timeout);
        let status = order.poll_ready(&retry).await;
        let failed = match status {
            Ok(OrderStatus::Ready) => None,
            Ok(other) => Some(format!("the order is {other:?}")),
            Err(e) => Some(with_sources(&e)),
        };
        if let Some(failed) = failed {
            // Say why: each authorization's challenge errors.
            let mut why = vec![failed];
            let mut failed_names: Vec<(String, String)> = Vec::new();
            let mut authorizations = order.authorizations();
            while let Some(Ok(mut authz)) = authorizations.next().await {
                let name = authz.identifier().to_string();
                if let Ok(state) = authz.refresh().await {
                    let mut problems = Vec::new();
                    for c in &state.challenges {
                        if let Some(problem) = &c.error {
                            let problem = problem.to_string();
                            // The order's error often repeats its challenge's.
                            why.retain(|w| w != &problem && !w.ends_with(&problem));
                            why.push(format!("{name}: {problem}"));
                            problems.push(problem);
                        }
                    }
                    if state.status == AuthorizationStatus::Invalid || !problems.is_empty() {
                        let problem = if problems.is_empty() {
                            "the authorization is invalid".to_string()
                        } else {
                            problems.join("; ")
                        };
                        failed_names.push((name.to_ascii_lowercase(), problem));
                    }
                }
            }
            let detail = format!("for {}: {}", names.join(", "), why.join("; "));
            if failed_names.is_empty() {
                return Err(AcmeError::Challenge(detail));
            }
            return Err(AcmeError::NamesFailed {
                failed: failed_names,
                detail,
            });
        }
        drop(guard);

        let mut params =
            rcgen::CertificateParams::new(names.clone()).map_err(|e| AcmeError::Key(e.to_string()))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(|e| AcmeError::Key(format!("cannot make the CSR: {e}")))?;
        order.finalize_csr(csr.der()).await.map_err(server("finalize"))?;
        let chain_pem = order
            .poll_certificate(&retry)
            .await
            .map_err(server("certificate download"))?;

        let leaf = check_chain(chain_pem.as_bytes(), &crate::files::spki_of(&key), &names)?;
        sealmail_safeio::write_public(&self.paths.cert, chain_pem.as_bytes())
            .map_err(io_error(&self.paths.cert))?;
        if switching {
            rollover::complete(&self.paths)?;
        }
        (self.reload)().map_err(AcmeError::Reload)?;
        Ok(Obtained {
            names,
            not_after: leaf.not_after,
            key_spki_sha256: spki_sha256_hex(&leaf.spki),
            key_switched: switching,
        })
    }

    /// The certificate in `cert.pem` if it serves `names` with `key.pem` and has not expired.
    fn valid_leaf(&self, names: &[String]) -> Option<Leaf> {
        let leaf = read_leaf(&self.paths.cert).ok()??;
        let key = read_key(&self.paths.key).ok()??;
        let fits =
            leaf.spki == crate::files::spki_of(&key) && leaf.covers(names) && leaf.not_after > now_unix();
        fits.then_some(leaf)
    }

    /// The ARI window for `leaf`, when the CA offers renewal information.
    async fn ari_window(&self, leaf: &Leaf) -> Option<schedule::AriWindow> {
        let id = CertificateIdentifier::try_from(&leaf.der).ok()?;
        let account = self.account().await.ok()?;
        match account.renewal_info(&id).await {
            Ok((info, _retry_after)) => Some(schedule::AriWindow {
                start: info.suggested_window.start.unix_timestamp(),
                end: info.suggested_window.end.unix_timestamp(),
            }),
            Err(instant_acme::Error::Unsupported(_)) => None,
            Err(e) => {
                tracing::debug!(error = %with_sources(&e), "ACME renewal information unavailable; renewing at two thirds of the lifetime");
                None
            }
        }
    }

    /// When the certificate for `names` should be renewed (unix seconds): now when there is
    /// no valid one or a pending rollover key has waited long enough.
    async fn due(&self, names: &[String], jitter: f64) -> i64 {
        let now = now_unix();
        let Some(leaf) = self.valid_leaf(names) else {
            return now;
        };
        if let Ok(Some(p)) = rollover::pending(&self.settings.data_dir)
            && rollover::should_switch(p.since, SystemTime::now(), self.settings.rollover_wait, false)
        {
            return now;
        }
        let ari = self.ari_window(&leaf).await;
        let due = schedule::renewal_due(leaf.not_before, leaf.not_after, ari, jitter);
        let _ = sealmail_safeio::write_public(&self.paths.next_renewal, due.to_string().as_bytes());
        due
    }

    /// The names the certificate in service must hold: `names` less those the last order
    /// dropped for failing (`DATA/acme/dropped`), so that a restart does not order at once for a
    /// name that fails again (the CAs' failed-validation and duplicate limits); the next
    /// scheduled renewal tries them all.
    fn remembered_coverage(&self, names: &[String]) -> Vec<String> {
        let dropped: Vec<String> = std::fs::read_to_string(&self.paths.dropped)
            .map(|text| text.lines().map(str::to_string).collect())
            .unwrap_or_default();
        let covered: Vec<String> = names.iter().filter(|n| !dropped.contains(n)).cloned().collect();
        // Never without the host name (the first).
        if covered.first() == names.first() {
            covered
        } else {
            names.to_vec()
        }
    }

    fn remember_coverage(&self, names: &[String], covered: &[String]) {
        let dropped: Vec<&str> = names
            .iter()
            .filter(|n| !covered.contains(n))
            .map(String::as_str)
            .collect();
        let result = if dropped.is_empty() {
            match std::fs::remove_file(&self.paths.dropped) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        } else {
            sealmail_safeio::write_public(&self.paths.dropped, dropped.join("\n").as_bytes())
        };
        if let Err(error) = result {
            tracing::warn!(%error, "cannot record the names left out of the ACME certificate");
        }
    }

    /// Keeps a certificate for `names` in service until `shutdown`: obtains one at once when
    /// there is none valid, renews at the ARI time or at two thirds of the lifetime, retries
    /// with back-off (1 minute doubling to 6 hours) while the old certificate stays served,
    /// and rings the alarm ([`EXPIRY_ALARMS`], `tracing::error!`) within 14 days of its end.
    /// Names whose challenges fail are left out of that order (never the first, the host
    /// name) and tried again at the next renewal; beyond [`MAX_NAMES`] the first ones are kept.
    /// A certificate due again right after its order is renewed ever less often.
    pub async fn run(self, names: Vec<String>, shutdown: CancellationToken) {
        let names = match normalize_names(&names) {
            Ok(names) => names,
            Err(e) => {
                tracing::error!(error = %e, "ACME renewal not started");
                return;
            }
        };
        // The names the certificate in service has to hold for the loop to leave it be: all,
        // or those left once the failing ones were dropped.
        let mut covered = self.remembered_coverage(&names);
        let mut failures = 0u32;
        // Successful orders since a due time last lay in the future (schedule::gap_after_renewal).
        let mut in_a_row = 0u32;
        // Where in an ARI window to renew, drawn once (RFC 9773 section 4.2).
        let jitter = f64::from(random_u32()) / f64::from(u32::MAX);
        loop {
            let now = now_unix();
            let due = self.due(&covered, jitter).await;
            if due > now {
                in_a_row = 0;
                let wait = schedule::sleep_until(now, due);
                tracing::debug!(due, "next ACME renewal");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => continue,
                }
            }
            let wait = match self.obtain_dropping_failed(&names).await {
                Ok(got) => {
                    // A certificate without some names serves until the next renewal, which
                    // tries them all again.
                    covered = got.names;
                    self.remember_coverage(&names, &covered);
                    failures = 0;
                    in_a_row = in_a_row.saturating_add(1);
                    // Never order twice in a row at once, whatever the CA's window says; a
                    // certificate due again at once is renewed ever less often.
                    let gap = schedule::gap_after_renewal(in_a_row);
                    if in_a_row > 1 {
                        tracing::warn!(
                            renewals_in_a_row = in_a_row,
                            wait_secs = gap.as_secs(),
                            "the new ACME certificate is due for renewal at once again (the CA's renewal window lies in the past?); waiting longer each time"
                        );
                    }
                    gap
                }
                Err(_) => {
                    failures = failures.saturating_add(1);
                    let leaf = read_leaf(&self.paths.cert).ok().flatten();
                    if leaf
                        .as_ref()
                        .is_none_or(|l| schedule::expiry_alarm(now_unix(), l.not_after))
                    {
                        EXPIRY_ALARMS.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            names = ?names,
                            not_after = leaf.as_ref().map(|l| l.not_after),
                            "CERTIFICATE EXPIRING: the certificate for these names ends within 14 days (or is missing) and ACME renewal keeps failing; see the warnings before this"
                        );
                    }
                    schedule::backoff(failures)
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// `wanted` without the `failed` names, when ordering again without them makes sense: the
/// first name (the host name) did not fail, and some but not all others did.
fn names_without(wanted: &[String], failed: &[(String, String)]) -> Option<Vec<String>> {
    let first = wanted.first()?;
    let has_failed = |n: &String| {
        let n = n.trim_end_matches('.').to_ascii_lowercase();
        failed.iter().any(|(f, _)| *f == n)
    };
    if has_failed(first) {
        return None;
    }
    let rest: Vec<String> = wanted.iter().filter(|n| !has_failed(n)).cloned().collect();
    (rest.len() < wanted.len()).then_some(rest)
}

fn random_u32() -> u32 {
    getrandom::u32().unwrap_or(u32::MAX / 2)
}

/// The checks before an issued chain replaces `cert.pem`: it parses, each certificate is
/// signed by the next, its leaf holds our key, names every one of `names`, and is valid now.
fn check_chain(pem: &[u8], our_spki: &[u8], names: &[String]) -> Result<Leaf, AcmeError> {
    let (chain, leaf) = parse_chain(pem).map_err(AcmeError::Check)?;
    // A CA always sends its intermediate: a lone leaf cannot be checked and clients could not
    // build the chain.
    if chain.len() < 2 {
        return Err(AcmeError::Check("the chain holds no issuer certificate".into()));
    }
    files::verify_links(&chain).map_err(AcmeError::Check)?;
    if leaf.spki != our_spki {
        return Err(AcmeError::Check("its key is not ours".into()));
    }
    if !leaf.covers(names) {
        return Err(AcmeError::Check(format!(
            "it names {:?}, not all of {names:?}",
            leaf.names
        )));
    }
    let now = now_unix();
    if leaf.not_after <= now || leaf.not_before > now.saturating_add(3600) {
        return Err(AcmeError::Check(format!(
            "it is not valid now (from {} to {})",
            leaf.not_before, leaf.not_after
        )));
    }
    Ok(leaf)
}

/// One certificate as `sealmail cert status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertStatus {
    pub cert_file: PathBuf,
    pub names: Vec<String>,
    pub issuer: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// `TLSA 3 1 1` hash of the certificate's key.
    pub key_spki_sha256: String,
    /// Whether ACME renews it.
    pub by_acme: bool,
    /// When the renewal loop means to renew it (unix seconds), or the two-thirds point.
    pub next_renewal: Option<i64>,
    /// The `TLSA 3 1 1` hash of a pending rollover key.
    pub next_key_spki_sha256: Option<String>,
}

/// The facts of one certificate file (any, not only ACME's).
pub fn certificate_status(cert_file: &Path, by_acme: bool) -> Result<Option<CertStatus>, AcmeError> {
    let Some(leaf) = read_leaf(cert_file)? else {
        return Ok(None);
    };
    Ok(Some(CertStatus {
        cert_file: cert_file.to_path_buf(),
        key_spki_sha256: spki_sha256_hex(&leaf.spki),
        names: leaf.names,
        issuer: leaf.issuer,
        not_before: leaf.not_before,
        not_after: leaf.not_after,
        by_acme,
        next_renewal: by_acme.then(|| schedule::two_thirds(leaf.not_before, leaf.not_after)),
        next_key_spki_sha256: None,
    }))
}

/// The ACME certificate of `data_dir`, if there is one, with its renewal facts.
pub fn status(data_dir: &Path) -> Result<Vec<CertStatus>, AcmeError> {
    let paths = AcmePaths::new(data_dir);
    let Some(mut status) = certificate_status(&paths.cert, true)? else {
        return Ok(Vec::new());
    };
    if let Ok(text) = std::fs::read_to_string(&paths.next_renewal)
        && let Ok(due) = text.trim().parse::<i64>()
    {
        status.next_renewal = Some(due);
    }
    status.next_key_spki_sha256 = rollover::next_spki_sha256(data_dir)?;
    Ok(vec![status])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_and_wildcards_refused() -> Result<(), AcmeError> {
        assert_eq!(
            normalize_names(&["Mail.Example.ORG.".into(), "mail.example.org".into()])?,
            vec!["mail.example.org"]
        );
        assert!(normalize_names(&[]).is_err());
        assert!(normalize_names(&["*.example.org".into()]).is_err());
        assert!(normalize_names(&["localhost".into()]).is_err());
        assert!(normalize_names(&["a..b".into()]).is_err());
        assert!(normalize_names(&["-a.b".into()]).is_err());
        // Too many: the first MAX_NAMES are kept, the host name first.
        let many: Vec<String> = (0..MAX_NAMES + 5).map(|i| format!("n{i}.a.test")).collect();
        let kept = normalize_names(&many)?;
        assert_eq!(kept.len(), MAX_NAMES);
        assert_eq!(kept.first().map(String::as_str), Some("n0.a.test"));
        assert_eq!(kept.last(), many.get(MAX_NAMES - 1));
        Ok(())
    }

    #[test]
    fn failed_names_are_dropped_but_never_the_first() {
        let wanted: Vec<String> = ["mail.a.test", "mta-sts.a.test", "autoconfig.a.test"]
            .map(String::from)
            .to_vec();
        let failed = |names: &[&str]| -> Vec<(String, String)> {
            names
                .iter()
                .map(|n| (n.to_string(), "no DNS".to_string()))
                .collect()
        };
        assert_eq!(
            names_without(&wanted, &failed(&["mta-sts.a.test"])),
            Some(vec!["mail.a.test".to_string(), "autoconfig.a.test".to_string()])
        );
        assert_eq!(
            names_without(&wanted, &failed(&["mail.a.test"])),
            None,
            "the host name failed"
        );
        assert_eq!(
            names_without(&wanted, &failed(&["mail.a.test", "mta-sts.a.test"])),
            None
        );
        assert_eq!(
            names_without(&wanted, &failed(&["other.a.test"])),
            None,
            "nothing to drop"
        );
        assert_eq!(names_without(&[], &failed(&["x.a.test"])), None);
        assert_eq!(
            names_without(&wanted, &failed(&["mta-sts.a.test", "autoconfig.a.test"])),
            Some(vec!["mail.a.test".to_string()])
        );
    }

    #[test]
    fn an_issued_chain_must_hold_our_key_and_every_name() -> Result<(), Box<dyn std::error::Error>> {
        let key = rcgen::KeyPair::generate()?;
        let other = rcgen::KeyPair::generate()?;
        let names = vec!["mail.a.test".to_string(), "imap.a.test".to_string()];
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "issuer");
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let cert = rcgen::CertificateParams::new(names.clone())?.signed_by(&key, &issuer)?;
        // A lone leaf is refused: no issuer to check it against, nothing for clients either.
        let alone = check_chain(cert.pem().as_bytes(), &files::spki_of(&key), &names)
            .err()
            .ok_or("a lone leaf was accepted")?;
        assert!(alone.to_string().contains("no issuer certificate"), "{alone}");
        let pem = cert.pem() + &ca.pem();
        let leaf = check_chain(pem.as_bytes(), &files::spki_of(&key), &names)?;
        assert_eq!(leaf.names, names);
        let not_ours = check_chain(pem.as_bytes(), &files::spki_of(&other), &names)
            .err()
            .ok_or("another key was accepted")?;
        assert!(not_ours.to_string().contains("not ours"), "{not_ours}");
        let more = vec!["smtp.a.test".to_string()];
        let missing = check_chain(pem.as_bytes(), &files::spki_of(&key), &more)
            .err()
            .ok_or("a missing name was accepted")?;
        assert!(missing.to_string().contains("smtp.a.test"), "{missing}");
        assert!(check_chain(b"junk", &files::spki_of(&key), &names).is_err());
        Ok(())
    }

    /// A CA and an intermediate it signed, as rcgen issuers, with their certificates.
    fn ca_and_intermediate(
        cn: &str,
    ) -> Result<(rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>), Box<dyn std::error::Error>>
    {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let ca = ca_params.self_signed(&ca_key)?;
        Ok((ca, rcgen::Issuer::new(ca_params, ca_key)))
    }

    #[test]
    fn an_issued_chain_must_link_by_signatures() -> Result<(), Box<dyn std::error::Error>> {
        let key = rcgen::KeyPair::generate()?;
        let names = vec!["mail.a.test".to_string()];
        let (intermediate, issuer) = ca_and_intermediate("intermediate")?;
        let leaf = rcgen::CertificateParams::new(names.clone())?.signed_by(&key, &issuer)?;
        let good = format!("{}{}", leaf.pem(), intermediate.pem());
        check_chain(good.as_bytes(), &files::spki_of(&key), &names)?;

        // Another CA of the same name signed the leaf: the link does not verify.
        let (_, impostor) = ca_and_intermediate("intermediate")?;
        let forged = rcgen::CertificateParams::new(names.clone())?.signed_by(&key, &impostor)?;
        let bad = format!("{}{}", forged.pem(), intermediate.pem());
        let e = check_chain(bad.as_bytes(), &files::spki_of(&key), &names)
            .err()
            .ok_or("a leaf the intermediate did not sign was accepted")?;
        assert!(e.to_string().contains("not signed by the next"), "{e}");

        // An intermediate of another name.
        let (other, _) = ca_and_intermediate("someone else")?;
        let wrong = format!("{}{}", leaf.pem(), other.pem());
        let e = check_chain(wrong.as_bytes(), &files::spki_of(&key), &names)
            .err()
            .ok_or("a chain with a foreign intermediate was accepted")?;
        assert!(e.to_string().contains("issued by"), "{e}");
        Ok(())
    }

    #[tokio::test]
    async fn clones_share_one_order_lock() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let acme = Acme::new(
            AcmeSettings::new("https://acme.invalid/dir", dir.path()),
            Challenges::new(None),
            Arc::new(|| Ok(())),
        );
        let other = acme.clone();
        let held = acme.order_lock.lock().await;
        assert!(
            other.order_lock.try_lock().is_err(),
            "a clone ordered beside the first"
        );
        drop(held);
        assert!(other.order_lock.try_lock().is_ok());
        Ok(())
    }

    #[test]
    fn status_of_a_folder_without_acme_is_empty() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        assert!(status(dir.path())?.is_empty());
        Ok(())
    }
}
