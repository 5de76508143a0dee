//! Built-in intrusion prevention: counts authentication failures per client address, bans an
//! address that fails too often (escalating: each ban within a week doubles the last, up to a
//! cap), refuses banned addresses at accept time before any TLS work, and records every
//! security event in the store.
//!
//! IPv4 addresses are counted one by one; IPv6 addresses by /64, since one host usually holds a
//! whole /64. Bans live in the store so they survive restarts; each server keeps an in-memory
//! copy (refreshed every few seconds, so `sealmail security unban` takes effect while it runs)
//! and checks it on every accepted connection. Trusted networks are never banned.
//!
//! Events go to one writer task through a bounded queue (`EVENT_QUEUE`): it appends them to the
//! event log (rotated past `security.event_log_max_bytes`) and records them in the store, a
//! batch per group commit. A flood that fills the queue loses events, counted on `/metrics`,
//! rather than growing memory and tasks. Events older than `security.event_retention_days`,
//! and bans that ended that long ago, are deleted hourly.

pub mod access;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sealmail_config::SecurityConfig;
use sealmail_identity::{Authenticated, Identity};
use sealmail_metrics as metrics;
use sealmail_store::{Ban, SecurityEvent, Store, StoreError};
use sealmail_types::EmailAddress;
use sealmail_types::clock::now_unix;
use sealmail_types::rate::SlidingWindow;

/// How often a running server rereads the bans (to see `security unban` and, with several
/// nodes on one store, a ban another node made: within this and a query's time, under 3 s).
pub const REFRESH: Duration = Duration::from_secs(1);
/// How far back an earlier ban makes the next one longer.
const REPEAT_WINDOW_SECS: i64 = 7 * 86_400;

/// How a login attempt ended, for SMTP AUTH and IMAP LOGIN/AUTHENTICATE alike.
pub enum LoginOutcome {
    Success(Authenticated),
    /// Wrong credentials (already counted); `banned` when this failure got the client banned.
    Failed {
        banned: bool,
    },
    /// The credentials could not be checked (store or hashing trouble); a temporary failure.
    Unavailable,
}

/// Event kinds, as stored and shown by `sealmail security events`.
pub mod kind {
    pub const AUTH_FAILURE: &str = "auth_failure";
    pub const AUTH_SUCCESS: &str = "auth_success";
    pub const BAN_ADDED: &str = "ban_added";
    pub const BAN_LIFTED: &str = "ban_lifted";
    pub const RATE_LIMITED: &str = "rate_limited";
    pub const RELAY_DENIED: &str = "relay_denied";
    pub const UNKNOWN_RECIPIENT: &str = "unknown_recipient";
    pub const PROTOCOL_ERRORS: &str = "protocol_errors";
    pub const TLS_FAILURE: &str = "tls_failure";
    pub const BAN_EXPIRED: &str = "ban_expired";
    /// A served certificate expires within 14 days and nothing has renewed it.
    pub const CERTIFICATE_EXPIRING: &str = "certificate_expiring";
    /// The daily check of a served domain (`sealmail check`) graded it lower than the last.
    pub const CHECK_GRADE_DROPPED: &str = "check_grade_dropped";
    /// An admin changed something through the admin console (sealmail-web).
    pub const ADMIN_ACTION: &str = "admin_action";
    /// A user changed their own credentials or sessions on the account page (sealmail-web).
    pub const ACCOUNT_CHANGE: &str = "account_change";
    /// A web login's password was right; its second factor is still to come.
    pub const SECOND_FACTOR_PENDING: &str = "second_factor_pending";
}

/// One event as a JSON object (the event log's line format and `security events` output).
pub fn event_json(event: &SecurityEvent) -> String {
    serde_json::json!({
        "at": event.at,
        "kind": event.kind,
        "address": event.address,
        "account": event.account,
        "listener": event.listener,
        "detail": event.detail,
        "node": event.node,
    })
    .to_string()
}

/// The key failures and bans are counted under: the address, or an IPv6 /64 (the same grouping
/// as the connection caps, `sealmail_net::client_key`).
pub fn ban_key(ip: IpAddr) -> String {
    match sealmail_net::client_key(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("{v6}/64"),
    }
}

/// Abuse that counts toward a ban, with its weight: an authentication failure, a relay attempt
/// and a session ended for protocol errors count 4 points; an unknown recipient 2, so that
/// harvesting needs twice as many tries as password guessing; TLS handshake garbage sent after
/// our key share 1 (a quarter of a failed login). A handshake that fails at the client's hello
/// or before it costs us no key exchange and is not abuse at all: health checks and TLS
/// scanners do that. A client that hangs up after our ServerHello, or never finishes, cost us
/// one: scanners do that too (testssl.sh about 40 times a run), so such handshakes count only
/// in tens ([`ABANDONED_PER_POINT`]): 200 within the window ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abuse {
    AuthFailure,
    RelayAttempt,
    UnknownRecipient,
    ProtocolErrors,
    TlsGarbage,
    /// [`ABANDONED_PER_POINT`] TLS handshakes abandoned after our key share.
    TlsAbandoned,
}

/// How many TLS handshakes abandoned after our key share make one point.
pub const ABANDONED_PER_POINT: u32 = 10;

/// Clients tracked for abandoned handshakes before old windows are swept.
const ABANDONED_SWEEP_AT: usize = 4096;

impl Abuse {
    fn points(self) -> usize {
        match self {
            Abuse::TlsGarbage | Abuse::TlsAbandoned => 1,
            Abuse::UnknownRecipient => 2,
            Abuse::AuthFailure | Abuse::RelayAttempt | Abuse::ProtocolErrors => 4,
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Abuse::AuthFailure => kind::AUTH_FAILURE,
            Abuse::RelayAttempt => kind::RELAY_DENIED,
            Abuse::UnknownRecipient => kind::UNKNOWN_RECIPIENT,
            Abuse::ProtocolErrors => kind::PROTOCOL_ERRORS,
            Abuse::TlsGarbage | Abuse::TlsAbandoned => kind::TLS_FAILURE,
        }
    }
}

pub struct Guard {
    config: SecurityConfig,
    store: Arc<dyn Store>,
    /// Ban key -> until (unix seconds).
    bans: RwLock<HashMap<String, i64>>,
    /// Ban key -> times of recent failures.
    failures: Mutex<HashMap<String, VecDeque<i64>>>,
    /// Ban key -> (start of its window, TLS handshakes abandoned in it).
    abandoned: Mutex<HashMap<String, (i64, u32)>>,
    /// (what, account) -> times of recent uses, for hourly rate limits.
    usage: SlidingWindow<(&'static str, String)>,
    /// Account (see [`throttle_key`]) -> recent failed logins and the earliest time its next
    /// login may be answered; the least recently used is forgotten past `ACCOUNTS_TRACKED`.
    accounts: Mutex<lru::LruCache<String, AccountThrottle>>,
    /// The first throttling delay (1 s; tests shorten it).
    throttle_unit: Duration,
    /// The longest a login may be queued (`MAX_QUEUED_WAIT`; tests shorten it).
    max_queued_wait: Duration,
    /// The writer of security events (see the module comment).
    events: tokio::sync::mpsc::Sender<ToWriter>,
    /// `server.node_name`, recorded with every event.
    node: Option<String>,
}

#[derive(Default)]
struct AccountThrottle {
    failures: VecDeque<i64>,
    next_slot: Option<tokio::time::Instant>,
    /// Clients (an address, an IPv6 /64) that logged in to this account lately, most recent
    /// last: their logins do not wait in the account's queue, so guesses from elsewhere
    /// filling it cannot keep the owner out.
    known_clients: VecDeque<IpAddr>,
}

/// Clients remembered per account for skipping its login queue.
const KNOWN_CLIENTS: usize = 8;

/// Events waiting for the writer at most; past it new ones are dropped and counted.
const EVENT_QUEUE: usize = 4096;
/// Events the writer takes at once: they share one group commit in the store.
const EVENT_BATCH: usize = 256;
/// How often events and bans past their retention are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// What the event writer is asked to do.
enum ToWriter {
    Event(SecurityEvent),
    /// Append events to this log from now on.
    Log(EventLog),
    /// Answer once everything sent before is written.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The event log file (one JSON object per line), rotated to `PATH.1` when it would pass `max` bytes.
struct EventLog {
    file: std::fs::File,
    path: PathBuf,
    size: u64,
    max: u64,
}

impl EventLog {
    fn open(path: &Path, max: u64) -> std::io::Result<EventLog> {
        let file = sealmail_safeio::open_private_append(path)?;
        let size = file.metadata()?.len();
        Ok(EventLog {
            file,
            path: path.to_path_buf(),
            size,
            max,
        })
    }

    fn append(&mut self, line: &str) {
        use std::io::Write;
        let len = line.len() as u64 + 1;
        if self.size > 0
            && self.size + len > self.max
            && let Err(e) = self.rotate()
        {
            tracing::error!(error = %e, path = %self.path.display(), "could not rotate the security event log");
        }
        match writeln!(self.file, "{line}") {
            Ok(()) => self.size += len,
            Err(e) => tracing::error!(error = %e, "could not write the security event log"),
        }
    }

    /// Renames the log to `PATH.1` (replacing the previous one) and begins a new one.
    fn rotate(&mut self) -> std::io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, &old)?;
        self.file = sealmail_safeio::open_private_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// The one writer of security events: appends each to the log (once it is open) and records it
/// in the store, a batch at a time so that a batch shares one group commit. Ends when the guard
/// is dropped.
async fn write_events(store: Arc<dyn Store>, mut queue: tokio::sync::mpsc::Receiver<ToWriter>) {
    let mut log: Option<EventLog> = None;
    let mut batch = Vec::with_capacity(EVENT_BATCH);
    while queue.recv_many(&mut batch, EVENT_BATCH).await > 0 {
        let mut commits = tokio::task::JoinSet::new();
        let mut flushes = Vec::new();
        for item in batch.drain(..) {
            match item {
                ToWriter::Event(event) => {
                    if let Some(log) = &mut log {
                        log.append(&event_json(&event));
                    }
                    let store = store.clone();
                    commits.spawn(async move { store.record_event(event).await });
                }
                ToWriter::Log(opened) => log = Some(opened),
                ToWriter::Flush(done) => flushes.push(done),
            }
        }
        while let Some(committed) = commits.join_next().await {
            match committed {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "could not record a security event"),
                Err(e) => tracing::error!(error = %e, "security event task failed"),
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Failed logins on one account (from anywhere) before its logins are slowed down.
pub const THROTTLE_AFTER: usize = 3;
/// The longest wait a login for a throttled account gets.
pub const MAX_THROTTLE: Duration = Duration::from_secs(8);
/// The longest a login may be queued behind the account's earlier ones: one that would wait
/// longer is refused at once (a temporary failure), so thousands of parallel guesses cannot
/// push the owner's next login hours away.
pub const MAX_QUEUED_WAIT: Duration = MAX_THROTTLE;
/// (allowance, account) pairs whose hourly use is tracked before those quiet for an hour are
/// forgotten; only logged-in accounts have an allowance, so this is a bound on accounts.
const USAGE_TRACKED: usize = 100_000;

/// Accounts whose failures are remembered at most. Past it the least recently used is forgotten,
/// so a flood of made-up names cannot wipe the record of an account under attack: every guess
/// at that account makes it recently used again.
const ACCOUNTS_TRACKED: NonZeroUsize = match NonZeroUsize::new(100_000) {
    Some(n) => n,
    None => NonZeroUsize::MIN,
};
/// Failures kept per account: enough to reach the longest delay, bounded against floods.
const FAILURES_KEPT: usize = THROTTLE_AFTER + 8;
/// The one bucket shared by every user name that is not an address (no account can have one).
const NOT_AN_ADDRESS: &str = "<not an address>";

/// The account a login names, the way `Identity` reads it: `ALICE@Example.TEST.` and
/// `alice@example.test` are one account (case, a trailing dot, IDNA), so every spelling counts
/// against one throttle.
pub fn throttle_key(username: &str) -> String {
    match EmailAddress::parse(username) {
        Ok(address) => address.to_string(),
        Err(_) => NOT_AN_ADDRESS.to_string(),
    }
}

/// A login refused without being checked: the account's queue is full.
#[derive(Debug, PartialEq, Eq)]
pub struct QueueFull;

impl Guard {
    /// Builds the guard and loads the bans in force.
    pub async fn load(config: SecurityConfig, store: Arc<dyn Store>) -> Result<Arc<Guard>, StoreError> {
        Guard::load_for_node(config, store, None).await
    }

    /// [`Guard::load`] for the node named `node` (`server.node_name`): its events carry the name.
    pub async fn load_for_node(
        config: SecurityConfig,
        store: Arc<dyn Store>,
        node: Option<String>,
    ) -> Result<Arc<Guard>, StoreError> {
        let (events, queue) = tokio::sync::mpsc::channel(EVENT_QUEUE);
        tokio::spawn(write_events(store.clone(), queue));
        let guard = Arc::new(Guard {
            config,
            store,
            events,
            bans: RwLock::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            abandoned: Mutex::new(HashMap::new()),
            usage: SlidingWindow::new(Duration::from_secs(3600), USAGE_TRACKED),
            accounts: Mutex::new(lru::LruCache::new(ACCOUNTS_TRACKED)),
            throttle_unit: Duration::from_secs(1),
            max_queued_wait: MAX_QUEUED_WAIT,
            node,
        });
        guard.refresh().await?;
        Ok(guard)
    }

    /// Appends every event from now on to `path` as a JSON line (created 0600), rotated past
    /// `security.event_log_max_bytes`. The file is in the data folder, which the service user
    /// can write to: open it after privileges are dropped, and a symbolic link there is refused
    /// rather than followed.
    pub async fn open_event_log(&self, path: &Path) -> Result<(), StoreError> {
        let log = EventLog::open(path, self.config.event_log_max_bytes).map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if self.events.send(ToWriter::Log(log)).await.is_err() {
            tracing::error!("the security event writer is gone");
        }
        Ok(())
    }

    /// Waits until every event recorded so far is in the log and the store (at shutdown, in tests).
    pub async fn flush(&self) {
        let (done, written) = tokio::sync::oneshot::channel();
        if self.events.send(ToWriter::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }

    /// Deletes events older than `security.event_retention_days` and bans that ended that long
    /// ago; returns how many rows went.
    pub async fn prune(&self) -> Result<u64, StoreError> {
        let retention = self.config.event_retention.as_secs() as i64;
        self.store.prune_security(now_unix() - retention).await
    }

    /// Rereads the bans in force from the store.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let now = now_unix();
        let active = self.store.active_bans(now).await?;
        let mut map = HashMap::new();
        for ban in active {
            let until = map.entry(ban.address).or_insert(ban.until);
            *until = (*until).max(ban.until);
        }
        let expired: Vec<String> = {
            let mut bans = self.bans.write().unwrap_or_else(|p| p.into_inner());
            let expired = bans
                .iter()
                .filter(|(key, until)| **until <= now && !map.contains_key(*key))
                .map(|(key, _)| key.clone())
                .collect();
            *bans = map;
            expired
        };
        for key in expired {
            self.event(
                kind::BAN_EXPIRED,
                None,
                None,
                None,
                Some(format!("ban of {key} expired")),
            )
            .await;
        }
        Ok(())
    }

    /// Keeps the in-memory bans in step with the store, and prunes what is past its retention
    /// (at once, then hourly), until the guard is dropped.
    pub fn spawn_refresh(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut pruned_at: Option<tokio::time::Instant> = None;
            loop {
                let Some(guard) = weak.upgrade() else { return };
                if pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                    pruned_at = Some(tokio::time::Instant::now());
                    match guard.prune().await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(rows = n, "old security events and ended bans deleted"),
                        Err(e) => tracing::warn!(error = %e, "could not prune security events"),
                    }
                }
                drop(guard);
                tokio::time::sleep(REFRESH).await;
                let Some(guard) = weak.upgrade() else { return };
                if let Err(e) = guard.refresh().await {
                    tracing::warn!(error = %e, "could not reread bans");
                }
            }
        });
    }

    /// Lifts the bans of an address (or IPv6 /64) and records it; returns how many were in force.
    pub async fn unban(&self, ip: IpAddr) -> Result<u64, StoreError> {
        let key = ban_key(ip);
        let lifted = self.store.lift_bans(&key, now_unix()).await?;
        self.bans.write().unwrap_or_else(|p| p.into_inner()).remove(&key);
        self.event(
            kind::BAN_LIFTED,
            Some(ip),
            None,
            None,
            Some(format!("{lifted} ban(s) lifted by an administrator")),
        )
        .await;
        Ok(lifted)
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        // A load balancer is never banned for what its clients do.
        self.config
            .trusted
            .iter()
            .chain(&self.config.proxies)
            .any(|net| net.contains(&ip))
    }

    /// True when connections from `ip` must be refused now. Cheap: a read lock and a lookup.
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        if self.is_trusted(ip) {
            return false;
        }
        let bans = self.bans.read().unwrap_or_else(|p| p.into_inner());
        matches!(bans.get(&ban_key(ip)), Some(until) if *until > now_unix())
    }

    async fn event(
        &self,
        kind: &str,
        ip: Option<IpAddr>,
        account: Option<&str>,
        listener: Option<&str>,
        detail: Option<String>,
    ) {
        let event = SecurityEvent {
            at: now_unix(),
            kind: kind.to_string(),
            address: ip.map(|ip| ip.to_string()),
            account: account.map(str::to_string),
            listener: listener.map(str::to_string),
            detail,
            node: self.node.clone(),
        };
        tracing::info!(
            target: "security",
            kind = %event.kind,
            address = event.address.as_deref().unwrap_or(""),
            account = event.account.as_deref().unwrap_or(""),
            listener = event.listener.as_deref().unwrap_or(""),
            detail = event.detail.as_deref().unwrap_or(""),
            "security event"
        );
        // The event is a log entry: the session does not wait for its commit, and under a
        // flood it is dropped (and counted) rather than queued without bound. Bans themselves
        // are written before they are acted on.
        match self.events.try_send(ToWriter::Event(event)) {
            Ok(()) => {}
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => metrics::SECURITY_EVENTS_DROPPED.inc(),
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("the security event writer is gone; event not recorded")
            }
        }
    }

    /// Checks credentials the way every protocol must: a login the cache recalls (a correct
    /// password seen lately) goes straight through; anything else first waits out the account's
    /// throttle (when it is under attack; a full queue is a temporary failure), then is
    /// verified; the outcome is counted and logged.
    pub async fn login(&self, identity: &Identity, attempt: access::LoginAttempt<'_>) -> LoginOutcome {
        let access::LoginAttempt {
            tls,
            client: ip,
            listener,
            protocol,
            credentials,
        } = attempt;
        let result = match identity.recalled_login(tls, credentials, protocol, ip).await {
            Ok(Some(recalled)) => Ok(Some(recalled)),
            _ => {
                if self.wait_for_turn(&credentials.username, ip).await.is_err() {
                    return LoginOutcome::Unavailable;
                }
                identity.authenticate(tls, credentials, protocol, ip).await
            }
        };
        let context = access::LoginContext {
            tls,
            client: ip,
            listener,
        };
        self.settle(context, result, &credentials.username, None).await
    }

    /// Before a login from `ip` to the account `username` names is checked: waits out the
    /// account's throttle when it is under attack, unless `ip` logged in to it lately. A full
    /// queue refuses the login (a temporary failure), and still counts against the address, so
    /// that a client hammering a throttled account is banned instead of holding its queue for
    /// free.
    pub async fn wait_for_turn(&self, username: &str, ip: IpAddr) -> Result<(), QueueFull> {
        if self.known_client(username, ip) {
            return Ok(());
        }
        let waited = self.throttle_login(username).await;
        if waited.is_err() {
            metrics::RATE_LIMITED.inc();
            tracing::info!(%ip, "login refused: the account's login queue is full");
            let shown: String = username.chars().filter(|c| !c.is_control()).take(100).collect();
            self.score(ip, Abuse::AuthFailure, Some(&shown)).await;
        }
        waited
    }

    /// Counts and logs how a login ended, whatever the mechanism: a success names the credential
    /// used (account password, app password NAME, certificate FINGERPRINT, SCRAM); a failure
    /// counts toward a ban like a wrong password.
    pub(crate) async fn settle(
        &self,
        context: access::LoginContext<'_>,
        result: Result<Option<Authenticated>, sealmail_identity::IdentityError>,
        username: &str,
        detail: Option<String>,
    ) -> LoginOutcome {
        let access::LoginContext {
            client: ip, listener, ..
        } = context;
        match result {
            Ok(Some(authenticated)) => {
                let user = authenticated.account.address.to_string();
                let used = authenticated.credential.to_string();
                self.remember_client(&user, ip);
                metrics::AUTH_SUCCESSES.inc();
                self.event(
                    kind::AUTH_SUCCESS,
                    Some(ip),
                    Some(&user),
                    Some(listener),
                    Some(used),
                )
                .await;
                LoginOutcome::Success(authenticated)
            }
            Ok(None) => {
                let banned = self.auth_failed_with(ip, username, listener, detail).await;
                LoginOutcome::Failed {
                    banned: banned.is_some(),
                }
            }
            Err(e) => {
                tracing::error!(%ip, error = %e, "authentication could not be checked");
                LoginOutcome::Unavailable
            }
        }
    }

    /// Whether `ip` logged in to the account `username` names lately.
    fn known_client(&self, username: &str, ip: IpAddr) -> bool {
        let client = sealmail_net::client_key(ip);
        let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        accounts
            .get(&throttle_key(username))
            .is_some_and(|entry| entry.known_clients.contains(&client))
    }

    fn remember_client(&self, account: &str, ip: IpAddr) {
        let client = sealmail_net::client_key(ip);
        let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let known = &mut accounts
            .get_or_insert_mut(throttle_key(account), AccountThrottle::default)
            .known_clients;
        known.retain(|c| *c != client);
        known.push_back(client);
        while known.len() > KNOWN_CLIENTS {
            known.pop_front();
        }
    }

    /// A login succeeded with `credential` (what it used, e.g. `password+totp`), from a
    /// protocol that checks credentials itself (the web pages).
    pub async fn login_succeeded(&self, ip: IpAddr, account: &str, listener: &str, credential: &str) {
        self.remember_client(account, ip);
        metrics::AUTH_SUCCESSES.inc();
        self.event(
            kind::AUTH_SUCCESS,
            Some(ip),
            Some(account),
            Some(listener),
            Some(credential.to_string()),
        )
        .await;
    }

    /// Records a change made on the web pages: `kind` is [`kind::ADMIN_ACTION`] or
    /// [`kind::ACCOUNT_CHANGE`], `account` who made it, `detail` what was done.
    pub async fn change_made(&self, kind: &'static str, ip: IpAddr, account: &str, detail: String) {
        self.event(kind, Some(ip), Some(account), Some("https"), Some(detail))
            .await;
    }

    /// Records that a served certificate expires soon (`detail` names it and when).
    pub async fn certificate_expiring(&self, detail: String) {
        metrics::CERTIFICATE_EXPIRY_WARNINGS.inc();
        self.event(kind::CERTIFICATE_EXPIRING, None, None, None, Some(detail))
            .await;
    }

    /// Records that the daily check of a served domain graded it lower than the check before
    /// (`detail` names the domain, both grades and the failing checks).
    pub async fn check_grade_dropped(&self, detail: String) {
        self.event(kind::CHECK_GRADE_DROPPED, None, None, None, Some(detail))
            .await;
    }

    pub async fn auth_succeeded(&self, ip: IpAddr, account: &str, listener: &str) {
        self.remember_client(account, ip);
        metrics::AUTH_SUCCESSES.inc();
        self.event(kind::AUTH_SUCCESS, Some(ip), Some(account), Some(listener), None)
            .await;
    }

    /// Records a TLS handshake abandoned after our key share (a hang-up, a timeout, an alert);
    /// every [`ABANDONED_PER_POINT`]th within the window scores a point.
    pub async fn tls_abandoned(&self, ip: IpAddr, listener: &str) -> Option<Ban> {
        if self.is_trusted(ip) {
            return None;
        }
        let now = now_unix();
        let window = self.config.failure_window.as_secs() as i64;
        let count = {
            let mut abandoned = self.abandoned.lock().unwrap_or_else(|p| p.into_inner());
            // Swept when the map doubles, so many clients cost amortized O(1) each.
            if abandoned.len() >= ABANDONED_SWEEP_AT && abandoned.len().is_power_of_two() {
                abandoned.retain(|_, (start, _)| now - *start < window);
            }
            let entry = abandoned.entry(ban_key(ip)).or_insert((now, 0));
            if now - entry.0 >= window {
                *entry = (now, 0);
            }
            entry.1 += 1;
            entry.1
        };
        if count % ABANDONED_PER_POINT != 0 {
            return None;
        }
        let detail = format!("{count} TLS handshakes abandoned after our key share");
        self.abuse(ip, Abuse::TlsAbandoned, listener, &detail).await
    }

    /// Records a failed authentication; returns the ban it caused, if any. The username is
    /// recorded as given (never the password).
    pub async fn auth_failed(&self, ip: IpAddr, username: &str, listener: &str) -> Option<Ban> {
        self.auth_failed_with(ip, username, listener, None).await
    }

    /// [`Guard::auth_failed`] with what went wrong, for the event (e.g. a SCRAM channel
    /// binding mismatch).
    pub async fn auth_failed_with(
        &self,
        ip: IpAddr,
        username: &str,
        listener: &str,
        detail: Option<String>,
    ) -> Option<Ban> {
        metrics::AUTH_FAILURES.inc();
        let shown: String = username.chars().filter(|c| !c.is_control()).take(100).collect();
        self.event(kind::AUTH_FAILURE, Some(ip), Some(&shown), Some(listener), detail)
            .await;
        self.account_failed(username);
        self.score(ip, Abuse::AuthFailure, Some(&shown)).await
    }

    /// Waits before a login attempt on `account` may be checked. Guessing spread over many
    /// addresses is not stopped by address bans, and locking the account would let an attacker
    /// lock the real user out; instead, after `THROTTLE_AFTER` recent failures the account's
    /// logins are answered one at a time, each after a delay that doubles with every further
    /// failure (1 s, 2 s, 4 s, up to `MAX_THROTTLE`). Parallel guesses queue behind each other,
    /// up to `MAX_QUEUED_WAIT` ahead: a login that would wait longer is refused at once.
    pub async fn throttle_login(&self, username: &str) -> Result<(), QueueFull> {
        let key = throttle_key(username);
        let wait_until = {
            let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
            let Some(entry) = accounts.get_mut(&key) else {
                return Ok(());
            };
            let now = now_unix();
            let window = self.config.failure_window.as_secs() as i64;
            while entry.failures.front().is_some_and(|t| now - t >= window) {
                entry.failures.pop_front();
            }
            let excess = entry.failures.len().saturating_sub(THROTTLE_AFTER - 1);
            if excess == 0 {
                return Ok(());
            }
            let delay = (self.throttle_unit * (1u32 << (excess - 1).min(10))).min(MAX_THROTTLE);
            let now = tokio::time::Instant::now();
            let start = entry.next_slot.map_or(now, |slot| slot.max(now));
            let slot = start + delay;
            if slot.duration_since(now) > self.max_queued_wait {
                return Err(QueueFull);
            }
            entry.next_slot = Some(slot);
            slot
        };
        tokio::time::sleep_until(wait_until).await;
        Ok(())
    }

    fn account_failed(&self, username: &str) {
        let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let failures = &mut accounts
            .get_or_insert_mut(throttle_key(username), AccountThrottle::default)
            .failures;
        failures.push_back(now_unix());
        while failures.len() > FAILURES_KEPT {
            failures.pop_front();
        }
    }

    /// Records other abuse (a relay attempt, an unknown recipient, a session ended for
    /// protocol errors); returns the ban it caused, if any.
    pub async fn abuse(&self, ip: IpAddr, abuse: Abuse, listener: &str, detail: &str) -> Option<Ban> {
        metrics::ABUSE_EVENTS.inc();
        self.event(
            abuse.kind(),
            Some(ip),
            None,
            Some(listener),
            Some(detail.to_string()),
        )
        .await;
        self.score(ip, abuse, None).await
    }

    /// Adds the abuse's points to the address's recent score; bans at the threshold
    /// (`auth_failures` authentication failures, or the same number of points otherwise).
    /// `account` is the login that failed, if one did: the ban's event names it, so the
    /// account's owner sees the ban among the account's events.
    async fn score(&self, ip: IpAddr, abuse: Abuse, account: Option<&str>) -> Option<Ban> {
        if self.is_trusted(ip) {
            return None;
        }
        let key = ban_key(ip);
        let now = now_unix();
        let window = self.config.failure_window.as_secs() as i64;
        // Several nodes on one store count together, so guesses spread over them add up.
        let shared = match self.store.shared_by_nodes() {
            false => None,
            true => match self
                .store
                .add_abuse_points(&key, now, abuse.points() as i64, now - window + 1)
                .await
            {
                Ok(points) => Some(points.max(0) as usize),
                Err(e) => {
                    tracing::warn!(error = %e, "could not count abuse in the store; counting on this node");
                    None
                }
            },
        };
        let count = shared.unwrap_or_else(|| {
            let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            failures.retain(|_, times| times.back().is_some_and(|t| now - t < window));
            let times = failures.entry(key.clone()).or_default();
            times.extend(std::iter::repeat_n(now, abuse.points()));
            while times.front().is_some_and(|t| now - t >= window) {
                times.pop_front();
            }
            times.len()
        });
        let threshold = self.config.auth_failures as usize * Abuse::AuthFailure.points();
        if count < threshold {
            return None;
        }
        let count = count / Abuse::AuthFailure.points();
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        self.ban(
            &key,
            ip,
            now,
            &format!(
                "{count} authentication failures within {:?}",
                self.config.failure_window
            ),
            account,
        )
        .await
    }

    async fn ban(&self, key: &str, ip: IpAddr, now: i64, reason: &str, account: Option<&str>) -> Option<Ban> {
        let previous = self
            .store
            .last_ban_level(key, now - REPEAT_WINDOW_SECS)
            .await
            .unwrap_or(0);
        let level = previous + 1;
        let base = self.config.ban.as_secs() as i64;
        let length = base
            .saturating_mul(1i64 << (level - 1).clamp(0, 30))
            .min(self.config.max_ban.as_secs() as i64);
        let until = now + length;
        match self.store.add_ban(key, until, level, reason).await {
            Ok(ban) => {
                metrics::BANS.inc();
                self.bans
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key.to_string(), until);
                let detail = format!("{reason}; banned for {length} s (level {level})");
                self.event(kind::BAN_ADDED, Some(ip), account, None, Some(detail))
                    .await;
                Some(ban)
            }
            Err(e) => {
                tracing::error!(error = %e, address = key, "could not record a ban");
                None
            }
        }
    }
}

impl Guard {
    /// Takes the units of an hourly allowance; returns false, records a `rate_limited` event
    /// and takes nothing when that would exceed its limit.
    pub async fn take_hourly(&self, usage: access::HourlyUse<'_>) -> bool {
        let access::HourlyUse {
            what,
            account,
            count,
            per_hour,
            client,
            listener,
        } = usage;
        let allowed = match self.store.shared_by_nodes() {
            false => self.usage.take((what, account.to_string()), count, per_hour),
            // Several nodes on one store: the allowance is spent in the store, once for all.
            true => {
                let key = format!("{what}:{account}");
                let taken = self
                    .store
                    .take_hourly_use(&key, now_unix(), count as i64, per_hour as i64)
                    .await;
                taken.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "could not spend an hourly allowance in the store; refused");
                    false
                })
            }
        };
        if !allowed {
            metrics::RATE_LIMITED.inc();
            let detail = format!("{what} per hour limit of {per_hour} reached");
            self.event(
                kind::RATE_LIMITED,
                Some(client),
                Some(account),
                Some(listener),
                Some(detail),
            )
            .await;
        }
        allowed
    }
}

impl sealmail_net::AcceptFilter for Guard {
    fn refuse(&self, ip: IpAddr) -> bool {
        self.is_banned(ip)
    }

    fn tls_failed(self: Arc<Self>, ip: IpAddr, listener: &'static str) {
        tokio::spawn(async move {
            self.abuse(ip, Abuse::TlsGarbage, listener, "TLS handshake failed")
                .await;
        });
    }

    fn tls_abandoned(self: Arc<Self>, ip: IpAddr, listener: &'static str) {
        tokio::spawn(async move {
            Guard::tls_abandoned(&self, ip, listener).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealmail_store::SqliteStore;

    #[tokio::test]
    async fn an_account_under_attack_is_slowed_not_locked() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path(), 16).await?);
        let mut guard = Guard::load(SecurityConfig::default(), store).await?;
        const UNIT: Duration = Duration::from_millis(100);
        Arc::get_mut(&mut guard).ok_or("shared")?.throttle_unit = UNIT;
        // Waits are measured in units, rounded, so scheduling noise does not matter.
        let units = |elapsed: Duration| (elapsed.as_secs_f64() / UNIT.as_secs_f64()).round() as u32;
        let waited = |guard: Arc<Guard>| async move {
            let started = tokio::time::Instant::now();
            let turn = guard.throttle_login("alice@example.test").await;
            assert_eq!(turn, Ok(()));
            units(started.elapsed())
        };
        assert_eq!(waited(guard.clone()).await, 0);
        // Failures from many addresses (none reaches the per-address threshold).
        for i in 0..2u8 {
            guard
                .auth_failed(IpAddr::from([192, 0, 2, i]), "alice@example.test", "submission")
                .await;
        }
        assert_eq!(waited(guard.clone()).await, 0, "throttled too early");
        guard
            .auth_failed(IpAddr::from([192, 0, 2, 9]), "Alice@example.test", "submission")
            .await;
        assert_eq!(waited(guard.clone()).await, 1);
        guard
            .auth_failed(IpAddr::from([192, 0, 2, 10]), "alice@example.test", "submission")
            .await;
        assert_eq!(waited(guard.clone()).await, 2);
        // Parallel attempts queue: three at once take 4, 8 and 12 units.
        guard
            .auth_failed(IpAddr::from([192, 0, 2, 11]), "alice@example.test", "submission")
            .await;
        let started = tokio::time::Instant::now();
        let (a, b, c) = tokio::join!(
            guard.throttle_login("alice@example.test"),
            guard.throttle_login("alice@example.test"),
            guard.throttle_login("alice@example.test")
        );
        assert_eq!((a, b, c), (Ok(()), Ok(()), Ok(())));
        assert_eq!(units(started.elapsed()), 12);
        // Another account is not affected.
        let started = tokio::time::Instant::now();
        assert_eq!(guard.throttle_login("bob@example.test").await, Ok(()));
        assert_eq!(units(started.elapsed()), 0);
        Ok(())
    }

    /// A guard whose throttle delays are `unit` long and whose queue reaches `max_queued_wait` ahead.
    async fn throttled_guard(
        dir: &std::path::Path,
        unit: Duration,
        max_queued_wait: Duration,
    ) -> Result<Arc<Guard>, Box<dyn std::error::Error>> {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir, 16).await?);
        let mut guard = Guard::load(SecurityConfig::default(), store).await?;
        let only = Arc::get_mut(&mut guard).ok_or("shared")?;
        only.throttle_unit = unit;
        only.max_queued_wait = max_queued_wait;
        Ok(guard)
    }

    #[test]
    fn every_spelling_of_an_account_is_one_throttle_key() {
        let alice = throttle_key("alice@example.test");
        assert_eq!(alice, "alice@example.test");
        for spelling in ["ALICE@EXAMPLE.TEST.", "Alice@Example.Test", "alice@EXAMPLE.test."] {
            assert_eq!(throttle_key(spelling), alice, "{spelling}");
        }
        assert_eq!(
            throttle_key("bücher@bücher.test"),
            throttle_key("BÜCHER@xn--bcher-kva.test.")
        );
        assert_ne!(throttle_key("bob@example.test"), alice);
        // Names that are not addresses (no account has one) share a bucket.
        assert_eq!(throttle_key("alice"), throttle_key("not an address"));
        assert_ne!(throttle_key("alice"), alice);
    }

    #[tokio::test]
    async fn failures_under_any_spelling_throttle_the_account() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let guard = throttled_guard(dir.path(), Duration::from_secs(1), MAX_QUEUED_WAIT).await?;
        for spelling in ["ALICE@EXAMPLE.TEST.", "Alice@example.test", "alice@EXAMPLE.test."] {
            guard.account_failed(spelling);
        }
        tokio::time::pause();
        let started = tokio::time::Instant::now();
        assert_eq!(guard.throttle_login("alice@example.test").await, Ok(()));
        // Virtual time; tokio's timer adds up to a millisecond.
        assert_eq!(started.elapsed().as_secs(), 1, "alice was not throttled");
        Ok(())
    }

    #[tokio::test]
    async fn parallel_guesses_are_refused_past_the_queue_bound_so_the_owner_waits_little()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        const UNIT: Duration = Duration::from_secs(1);
        let bound = UNIT * 10;
        let guard = throttled_guard(dir.path(), UNIT, bound).await?;
        for _ in 0..5 {
            guard.account_failed("alice@example.test");
        }
        // Virtual time: each wait is measured exactly.
        tokio::time::pause();
        let started = tokio::time::Instant::now();
        let mut guesses = tokio::task::JoinSet::new();
        for _ in 0..2_000 {
            let guard = guard.clone();
            guesses.spawn(async move {
                let turn = guard.throttle_login("alice@example.test").await;
                (turn, started.elapsed())
            });
        }
        let (mut waited, mut refused) = (Vec::new(), 0);
        while let Some(result) = guesses.join_next().await {
            match result? {
                (Ok(()), elapsed) => waited.push(elapsed),
                (Err(QueueFull), elapsed) => {
                    assert_eq!(elapsed, Duration::ZERO, "a refusal was not immediate");
                    refused += 1;
                }
            }
        }
        // Whole seconds: tokio's timer adds up to a millisecond to each.
        let mut waited: Vec<u64> = waited.iter().map(Duration::as_secs).collect();
        waited.sort();
        // 5 failures: 4 units each; two fit within the bound of 10 units, the rest are refused.
        assert_eq!(waited, [4, 8]);
        assert_eq!(refused, 1_998);
        // The owner, arriving behind them, waits at most the bound (or is told to retry).
        let arrived = tokio::time::Instant::now();
        if guard.throttle_login("alice@example.test").await.is_ok() {
            assert!(arrived.elapsed() <= bound);
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_flood_of_made_up_names_does_not_reset_an_account_under_attack()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let guard = throttled_guard(dir.path(), Duration::from_secs(1), MAX_QUEUED_WAIT).await?;
        for _ in 0..THROTTLE_AFTER {
            guard.account_failed("alice@example.test");
        }
        let half = ACCOUNTS_TRACKED.get() * 3 / 5;
        for n in 0..half {
            guard.account_failed(&format!("made-up-{n}@example.test"));
        }
        // The attacker keeps guessing at alice, which keeps her record recent.
        guard.account_failed("alice@example.test");
        for n in half..2 * half {
            guard.account_failed(&format!("made-up-{n}@example.test"));
        }
        let accounts = guard.accounts.lock().unwrap_or_else(|p| p.into_inner());
        assert!(
            accounts.len() <= ACCOUNTS_TRACKED.get(),
            "the table grew past its bound"
        );
        let alice = accounts
            .peek("alice@example.test")
            .ok_or("alice's failures were forgotten")?;
        assert_eq!(alice.failures.len(), THROTTLE_AFTER + 1);
        Ok(())
    }

    #[tokio::test]
    async fn a_flood_of_events_is_bounded_and_the_drops_are_counted() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path(), 16).await?);
        let guard = Guard::load(SecurityConfig::default(), store.clone()).await?;
        guard.flush().await;
        let before = metrics::SECURITY_EVENTS_DROPPED.get();
        // Nothing here yields to the writer (a single-threaded runtime), so the queue fills up.
        for n in 0..EVENT_QUEUE + 10 {
            guard
                .event(kind::RATE_LIMITED, None, None, None, Some(format!("flood {n}")))
                .await;
        }
        assert!(
            metrics::SECURITY_EVENTS_DROPPED.get() - before >= 10,
            "no drops were counted"
        );
        guard.flush().await;
        let stored = store.events(0, None).await?;
        let flood = stored.iter().filter(|e| e.kind == kind::RATE_LIMITED).count();
        assert_eq!(flood, EVENT_QUEUE, "the queue did not hold exactly its bound");
        Ok(())
    }

    #[tokio::test]
    async fn the_event_log_is_rotated_past_its_size() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path(), 16).await?);
        let config = SecurityConfig {
            event_log_max_bytes: 4096,
            ..SecurityConfig::default()
        };
        let guard = Guard::load(config, store).await?;
        let path = dir.path().join("security-events.jsonl");
        guard.open_event_log(&path).await?;
        for n in 0..200 {
            guard
                .auth_succeeded(
                    IpAddr::from([192, 0, 2, 1]),
                    &format!("user{n}@example.test"),
                    "imap",
                )
                .await;
            if n % 50 == 0 {
                guard.flush().await;
            }
        }
        guard.flush().await;
        let rotated = dir.path().join("security-events.jsonl.1");
        for file in [&path, &rotated] {
            let text = std::fs::read_to_string(file)?;
            assert!(text.len() <= 4096, "{} is {} bytes", file.display(), text.len());
            assert!(
                text.lines().all(|l| l.starts_with('{') && l.ends_with('}')),
                "a line was cut"
            );
        }
        assert!(std::fs::read_to_string(&path)?.contains("user199@example.test"));
        Ok(())
    }

    /// Two nodes sharing one PostgreSQL store: guesses spread over both count together, the ban
    /// one makes refuses the address on the other within 3 s, per-account hourly allowances are
    /// spent once for both, and each event names the node that saw it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_sharing_a_store_count_ban_and_limit_together() -> Result<(), Box<dyn std::error::Error>> {
        let schema = sealmail_testkit::postgres::TestSchema::new().await?;
        let mut options = sealmail_store::PgOptions::new(&schema.url);
        options.schema = Some(schema.name.clone());
        let config = SecurityConfig {
            auth_failures: 4,
            ..SecurityConfig::default()
        };
        let store_a: Arc<dyn Store> = Arc::new(sealmail_store::PgStore::open(&options).await?);
        let store_b: Arc<dyn Store> = Arc::new(sealmail_store::PgStore::open(&options).await?);
        let node_a = Guard::load_for_node(config.clone(), store_a.clone(), Some("node-a".into())).await?;
        let node_b = Guard::load_for_node(config, store_b.clone(), Some("node-b".into())).await?;
        node_b.spawn_refresh();
        let attacker: IpAddr = "192.0.2.77".parse()?;

        // Two guesses on each node: four in all, which is the threshold.
        assert!(
            node_a
                .auth_failed(attacker, "alice@example.test", "imap")
                .await
                .is_none()
        );
        assert!(
            node_b
                .auth_failed(attacker, "alice@example.test", "imap")
                .await
                .is_none()
        );
        assert!(
            node_a
                .auth_failed(attacker, "alice@example.test", "imap")
                .await
                .is_none()
        );
        let ban = node_b
            .auth_failed(attacker, "alice@example.test", "imap")
            .await
            .ok_or("four guesses over two nodes made no ban")?;
        assert_eq!(ban.address, "192.0.2.77");
        assert!(node_b.is_banned(attacker));

        // A ban made through node B (another attacker) reaches node A's refresh.
        node_a.spawn_refresh();
        let other: IpAddr = "192.0.2.78".parse()?;
        for _ in 0..4 {
            node_b.auth_failed(other, "bob@example.test", "smtp").await;
        }
        assert!(node_b.is_banned(other));
        let made = std::time::Instant::now();
        while !node_a.is_banned(other) {
            if made.elapsed() > Duration::from_secs(3) {
                return Err("node A did not see node B's ban within 3 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // An hourly allowance of 5 messages: 3 on A and 2 on B use it up; a 6th is refused
        // on either.
        let usage = |count| access::HourlyUse {
            what: "messages",
            account: "carol@example.test",
            count,
            per_hour: 5,
            client: IpAddr::from([192, 0, 2, 1]),
            listener: "submission",
        };
        assert!(node_a.take_hourly(usage(3)).await);
        assert!(node_b.take_hourly(usage(2)).await);
        assert!(!node_a.take_hourly(usage(1)).await);
        assert!(!node_b.take_hourly(usage(1)).await);

        node_a.flush().await;
        node_b.flush().await;
        let events = store_a.events(0, Some("192.0.2.77")).await?;
        let nodes: std::collections::BTreeSet<_> = events.iter().filter_map(|e| e.node.clone()).collect();
        assert_eq!(
            nodes.into_iter().collect::<Vec<_>>(),
            ["node-a", "node-b"],
            "{events:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn events_and_ended_bans_past_their_retention_are_pruned() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path(), 16).await?);
        let guard = Guard::load(SecurityConfig::default(), store.clone()).await?;
        let now = now_unix();
        let day = 86_400;
        let event = |at: i64, detail: &str| SecurityEvent {
            at,
            kind: kind::RATE_LIMITED.to_string(),
            address: None,
            account: None,
            listener: None,
            detail: Some(detail.to_string()),
            node: None,
        };
        store.record_event(event(now - 91 * day, "old")).await?;
        store.record_event(event(now - 89 * day, "recent")).await?;
        store
            .add_ban("192.0.2.1", now - 91 * day, 1, "ended long ago")
            .await?;
        store
            .add_ban("192.0.2.2", now - 89 * day, 1, "ended lately")
            .await?;
        store.add_ban("192.0.2.3", now + day, 1, "in force").await?;

        assert_eq!(guard.prune().await?, 2);
        let details: Vec<_> = store
            .events(0, None)
            .await?
            .into_iter()
            .filter_map(|e| e.detail)
            .collect();
        assert_eq!(details, ["recent"]);
        assert_eq!(
            store.last_ban_level("192.0.2.1", 0).await?,
            0,
            "an old ban was kept"
        );
        assert_eq!(store.last_ban_level("192.0.2.2", 0).await?, 1);
        assert_eq!(store.active_bans(now).await?.len(), 1);
        Ok(())
    }

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap_or(IpAddr::from([0; 4]));
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap_or(IpAddr::from([0; 4]));
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(IpAddr::from([0; 4]));
        assert_eq!(ban_key(a), "2001:db8:1:2::/64");
        assert_eq!(ban_key(a), ban_key(b));
        assert_ne!(ban_key(a), ban_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap_or(IpAddr::from([0; 4]));
        assert_eq!(ban_key(mapped), "192.0.2.7");
    }

    #[tokio::test]
    async fn failures_ban_escalate_spare_trusted_networks_and_survive_a_reload()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path(), 16).await?);
        let config = SecurityConfig {
            auth_failures: 3,
            ban: Duration::from_secs(100),
            max_ban: Duration::from_secs(250),
            trusted: vec!["10.0.0.0/8".parse()?],
            ..SecurityConfig::default()
        };
        let guard = Guard::load(config.clone(), store.clone()).await?;
        let attacker: IpAddr = "192.0.2.7".parse()?;
        let bystander: IpAddr = "192.0.2.8".parse()?;
        let office: IpAddr = "10.1.2.3".parse()?;
        assert!(
            guard
                .auth_failed(attacker, "alice@example.test", "submission")
                .await
                .is_none()
        );
        assert!(
            guard
                .auth_failed(attacker, "alice@example.test", "submission")
                .await
                .is_none()
        );
        let ban = guard
            .auth_failed(attacker, "bob@example.test", "submission")
            .await
            .ok_or("no ban")?;
        assert_eq!((ban.level, ban.until - ban.created_at), (1, 100));
        assert!(guard.is_banned(attacker) && !guard.is_banned(bystander));
        for _ in 0..10 {
            assert!(
                guard
                    .auth_failed(office, "alice@example.test", "imap")
                    .await
                    .is_none()
            );
        }
        assert!(!guard.is_banned(office), "a trusted network was banned");

        // Repeat offenders get longer bans, capped.
        for _ in 0..3 {
            guard.auth_failed(attacker, "x", "submission").await;
        }
        let second = store
            .active_bans(now_unix())
            .await?
            .into_iter()
            .max_by_key(|b| b.level)
            .ok_or("none")?;
        assert_eq!((second.level, second.until - second.created_at), (2, 200));
        for _ in 0..3 {
            guard.auth_failed(attacker, "x", "submission").await;
        }
        let third = store
            .active_bans(now_unix())
            .await?
            .into_iter()
            .max_by_key(|b| b.level)
            .ok_or("none")?;
        assert_eq!((third.level, third.until - third.created_at), (3, 250));

        // A new guard (a restarted server) sees the bans; lifting them clears it.
        let restarted = Guard::load(config, store.clone()).await?;
        assert!(restarted.is_banned(attacker));
        store.lift_bans("192.0.2.7", now_unix()).await?;
        restarted.refresh().await?;
        assert!(!restarted.is_banned(attacker));

        guard.flush().await;
        let events = store.events(0, Some("192.0.2.7")).await?;
        assert_eq!(events.iter().filter(|e| e.kind == kind::AUTH_FAILURE).count(), 9);
        assert_eq!(events.iter().filter(|e| e.kind == kind::BAN_ADDED).count(), 3);
        // Each ban names the account whose failed login caused it (its owner sees the ban).
        let banned_for: Vec<Option<&str>> = events
            .iter()
            .filter(|e| e.kind == kind::BAN_ADDED)
            .map(|e| e.account.as_deref())
            .collect();
        assert_eq!(banned_for, [Some("bob@example.test"), Some("x"), Some("x")]);
        Ok(())
    }
}
