//! Where everything sealmail must not lose lives: domains, accounts, mailboxes, messages, the
//! outbound queue, bans and the security log.
//!
//! Protocol code talks to the [`Store`] trait only (the sum of [`AccountStore`], [`MailStore`],
//! [`QueueStore`], [`SecurityStore`], [`ReportStore`], [`CredentialStore`] and [`WebStore`]),
//! so the backend can change without
//! touching it: [`SqliteStore`], one file, embedded, the default; [`PgStore`], PostgreSQL, for
//! several nodes sharing one installation (docs/CLUSTER.md). Every backend promises:
//! - a write that returned `Ok` is durable (committed: fsynced by SQLite, and by PostgreSQL as
//!   far as its `synchronous_commit` promises);
//! - concurrent writes share commits (group commit), so N writers do not cost N fsyncs;
//! - every message's SHA-256 is recorded when it is stored and checked whenever it is read:
//!   a mismatch is [`StoreError::Integrity`], never corrupted bytes served as good.

mod checks;
mod copy;
mod credentials;
mod mailbox_rules;
mod postgres;
mod rows;
mod sqlite;
mod watchers;
mod web;
mod write;

use async_trait::async_trait;

use sealmail_types::{AccountId, Domain, EmailAddress, MailboxId, MessageId};

pub use copy::{CopyReport, Progress, copy_sqlite_to_postgres};
pub use postgres::{DEFAULT_SCHEMA, PgOptions, PgStore, PgTls};
pub use sqlite::{DB_FILE, Migration, SqliteStore};

/// The mailboxes every account gets, with their RFC 6154 special-use attributes.
pub const DEFAULT_MAILBOXES: &[(&str, Option<&str>)] = &[
    ("INBOX", None),
    ("Sent", Some("\\Sent")),
    ("Drafts", Some("\\Drafts")),
    ("Trash", Some("\\Trash")),
    ("Junk", Some("\\Junk")),
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Duplicate(String),
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("domain {0} is not served here; add it first with `sealmail domain add {0}`")]
    UnknownDomain(Domain),
    #[error("domain {domain} still has {accounts} account(s); remove them first with `sealmail user remove`")]
    DomainInUse { domain: Domain, accounts: i64 },
    #[error(
        "integrity check failed for message {message:?}: stored SHA-256 {expected} but the content hashes to {actual}; the message is not served"
    )]
    Integrity {
        message: MessageId,
        expected: String,
        actual: String,
    },
    #[error(
        "integrity check failed for queued message {id}: stored SHA-256 {expected} but the content hashes to {actual}; it is not sent"
    )]
    QueueIntegrity {
        id: i64,
        expected: String,
        actual: String,
    },
    #[error("{0}")]
    LimitReached(String),
    #[error("{0}")]
    NotAllowed(String),
    #[error("store database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("store migration error: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("store file error on {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the store has schema migration {0}, which this sealmail does not know (a newer version wrote it); upgrade sealmail or restore a backup"
    )]
    NewerSchema(i64),
    #[error("the store's writer has stopped")]
    WriterGone,
}

/// Accounts are a store row that the proof of a login carries; the type lives with the proof.
pub use sealmail_types::proof::Account;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub id: MailboxId,
    pub account: AccountId,
    pub name: String,
    pub special_use: Option<String>,
    pub uid_validity: u32,
    pub uid_next: u32,
    pub subscribed: bool,
    /// RFC 7162 HIGHESTMODSEQ: the mod-sequence of the mailbox's latest change.
    pub highest_modseq: u64,
}

/// What STATUS and SELECT report about a mailbox, read in one consistent snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxStatus {
    pub messages: u32,
    /// Messages no session has seen yet (recent for the next one to select the mailbox).
    pub recent: u32,
    pub unseen: u32,
    pub deleted: u32,
    /// Total octets of the messages.
    pub size: u64,
    pub uid_next: u32,
    pub uid_validity: u32,
    pub highest_modseq: u64,
}

/// Everything that changed in a mailbox after a mod-sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxChanges {
    pub highest_modseq: u64,
    /// Messages added or whose flags changed, in UID order.
    pub changed: Vec<StoredMessage>,
    /// UIDs expunged, in UID order.
    pub expunged: Vec<u32>,
}

/// How STORE changes flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagChange {
    Add,
    Remove,
    Replace,
}

/// A message's flags after a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageFlags {
    pub uid: u32,
    pub flags: Vec<String>,
    pub modseq: u64,
}

/// A STORE: `change` of `flags` on the messages of `mailbox` with these UIDs (missing UIDs are
/// skipped), only on those not modified since `unchanged_since` when given (RFC 7162).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetFlags {
    pub mailbox: MailboxId,
    pub uids: Vec<u32>,
    pub change: FlagChange,
    pub flags: Vec<String>,
    pub unchanged_since: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlagUpdate {
    /// Every message asked for that still exists, with its flags now (changed or not).
    pub messages: Vec<MessageFlags>,
    /// RFC 7162 UNCHANGEDSINCE: UIDs left alone because they changed after the given modseq.
    pub modified: Vec<u32>,
}

/// A COPY (flags and internal date kept) of the messages of `from` with these UIDs to `to`;
/// with `remove_source` it is a MOVE, done in the same commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyMessages {
    pub from: MailboxId,
    pub uids: Vec<u32>,
    pub to: MailboxId,
    pub remove_source: bool,
}

/// An MTA-STS policy as fetched for `domain` (RFC 8461 5.1: kept across restarts until it
/// expires): its id from the TXT record, its text, and its expiry in Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredStsPolicy {
    pub domain: String,
    pub policy_id: String,
    pub body: String,
    pub expires_at: i64,
}

/// The last daily check of a served domain (`sealmail check`, run by the server itself).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DomainCheck {
    pub domain: String,
    /// Unix seconds.
    pub checked_at: i64,
    /// The letter grade, `A` to `F`.
    pub grade: String,
    /// 0 to 100.
    pub score: i64,
    /// The whole report as JSON (docs/CHECK-JSON.md).
    pub report: String,
    /// The node that made the check (`server.node_name`).
    pub node: String,
}

/// Result of COPY or MOVE: the destination's UIDVALIDITY and (source UID, new UID) pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub uid_validity: u32,
    pub uids: Vec<(u32, u32)>,
}

/// Most mailboxes one account may have (a bound on what a client can make us store).
pub const MAX_MAILBOXES_PER_ACCOUNT: i64 = 1000;
/// Subscribed names one account may keep (they outlive deleted mailboxes).
pub const MAX_SUBSCRIPTIONS_PER_ACCOUNT: i64 = 2000;

/// A message to store into one or more mailboxes, all or nothing.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub content: Vec<u8>,
    pub mailboxes: Vec<MailboxId>,
    /// Unix seconds.
    pub internal_date: i64,
    pub flags: Vec<String>,
}

/// A message as one mailbox holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: MessageId,
    pub mailbox: MailboxId,
    pub uid: u32,
    pub size: u64,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
    pub internal_date: i64,
    pub flags: Vec<String>,
    /// RFC 7162 mod-sequence of the message's last change.
    pub modseq: u64,
}

/// A message accepted over SMTP: a copy for local mailboxes and/or a copy queued for remote
/// recipients, stored together in one commit or not at all.
#[derive(Debug, Clone, Default)]
pub struct AcceptedMessage {
    pub local: Option<LocalCopy>,
    pub outbound: Option<OutboundCopy>,
}

#[derive(Debug, Clone)]
pub struct LocalCopy {
    pub content: Vec<u8>,
    pub mailboxes: Vec<MailboxId>,
    /// Flags every copy starts with (a keyword such as `$Phishing`).
    pub flags: Vec<String>,
    /// Unix seconds.
    pub internal_date: i64,
}

#[derive(Debug, Clone)]
pub struct OutboundCopy {
    pub content: Vec<u8>,
    /// Envelope sender; empty for the null sender.
    pub sender: String,
    pub recipients: Vec<QueueRecipient>,
    /// RFC 3461 ENVID and RET.
    pub dsn_envid: Option<String>,
    pub dsn_ret: Option<String>,
    /// RFC 8689 REQUIRETLS.
    pub require_tls: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRecipient {
    pub address: EmailAddress,
    /// RFC 3461 NOTIFY (e.g. "SUCCESS,FAILURE") and ORCPT, as received.
    pub dsn_notify: Option<String>,
    pub dsn_orcpt: Option<String>,
}

/// Where an accepted message went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub stored: Vec<StoredMessage>,
    pub queue_id: Option<i64>,
}

/// A queued message, as `sealmail queue list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    pub id: i64,
    pub sender: String,
    pub size: u64,
    pub created_at: i64,
    pub require_tls: bool,
    pub recipients: Vec<QueueRecipientState>,
}

/// A queued message with those of its recipients that are due for an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueMessage {
    pub id: i64,
    /// Envelope sender; empty for the null sender.
    pub sender: String,
    pub created_at: i64,
    pub require_tls: bool,
    pub dsn_envid: Option<String>,
    pub dsn_ret: Option<String>,
    pub recipients: Vec<DueRecipient>,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DueRecipient {
    /// The recipient's row, for [`Store::record_outcomes`].
    pub id: i64,
    pub address: String,
    /// Lower-case domain of `address`.
    pub domain: String,
    pub attempts: i64,
    pub dsn_notify: Option<String>,
    pub dsn_orcpt: Option<String>,
    /// The sender has had the "delayed" notice for this recipient.
    pub delay_warned: bool,
}

/// The result of one delivery attempt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientOutcome {
    /// The receiving server accepted it; what it said.
    Delivered(String),
    /// Try again at `next_attempt_at` (Unix seconds); why this attempt failed; whether the
    /// sender has now had the "delayed" notice (once set, it stays set).
    Deferred {
        error: String,
        next_attempt_at: i64,
        delay_warned: bool,
    },
    /// Given up: a permanent failure or expiry; why.
    Failed(String),
}

/// One TLS outcome of a delivery attempt, counted per day for TLS-RPT (RFC 8460).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TlsResult {
    pub policy_domain: String,
    /// `sts`, `tlsa` or `no-policy-found`.
    pub policy_type: String,
    pub mx_host: String,
    /// `success` or an RFC 8460 4.3 result type such as `certificate-host-mismatch`.
    pub result_type: String,
    pub detail: String,
}

/// A day's count of one [`TlsResult`].
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TlsResultCount {
    /// UTC date, YYYY-MM-DD.
    pub day: String,
    #[sqlx(flatten)]
    pub result: TlsResult,
    pub count: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct QueueRecipientState {
    pub address: String,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    pub dsn_notify: Option<String>,
    pub dsn_orcpt: Option<String>,
}

/// Where mail for an address goes, from one lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    /// The domain is not served here.
    NotLocal,
    /// The domain is ours but has no such user.
    UnknownUser,
    Local {
        account: AccountId,
        inbox: MailboxId,
    },
}

/// A ban of a client address.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Ban {
    pub id: i64,
    /// An IP address, or an IPv6 network in CIDR form.
    pub address: String,
    pub created_at: i64,
    pub until: i64,
    pub level: i64,
    pub reason: String,
}

/// One entry of the security event log.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct SecurityEvent {
    pub at: i64,
    pub kind: String,
    pub address: Option<String>,
    pub account: Option<String>,
    pub listener: Option<String>,
    pub detail: Option<String>,
    /// The node (`server.node_name`) that saw it.
    pub node: Option<String>,
}

/// Who takes due queue recipients, and until when (see [`QueueStore::due_messages`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueLease {
    /// The node's name (`server.node_name`).
    pub holder: String,
    /// Unix seconds.
    pub until: i64,
}

/// What [`Store::prune`] removes: every row of these kinds older than its cut-off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Expunge tombstones made before this (Unix seconds).
    pub tombstones_before: i64,
    /// TLS results and sent-report records of days before this (`YYYY-MM-DD`).
    pub tls_days_before: String,
    /// MTA-STS policies whose `max_age` ended before this (Unix seconds).
    pub sts_policies_expired_before: i64,
    /// Revocations of client certificates that expired before this (Unix seconds): an expired
    /// certificate is refused anyway.
    pub revoked_certs_expired_before: i64,
    /// Web sessions that expired before this (Unix seconds): a lookup ignores them already.
    pub web_sessions_expired_before: i64,
    /// Daily checks of domains last checked (and claimed) before this (Unix seconds).
    pub domain_checks_before: i64,
}

impl Retention {
    /// Expunge tombstones: a day. IMAP sessions learn of another session's expunges from them
    /// at their next command, and a session idle for 30 minutes is logged out (RFC 3501 5.4),
    /// so a day is far more than any session can need; QRESYNC (which could ask later) is
    /// not offered.
    pub const TOMBSTONE_SECS: i64 = 24 * 3600;
    /// TLS results: 31 days (a report covers yesterday; the rest is for `sealmail tls-report`).
    pub const TLS_RESULT_DAYS: i64 = 31;
    /// Daily checks: 30 days. A served domain is checked every day, so only the row of a
    /// domain no longer served (or of a server whose daily check is off) gets this old.
    pub const DOMAIN_CHECK_DAYS: i64 = 30;

    /// The defaults above, at `now` (Unix seconds).
    pub fn at(now: i64) -> Retention {
        let cut = time::OffsetDateTime::from_unix_timestamp(now - Self::TLS_RESULT_DAYS * 86_400)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let tls_days_before = format!("{:04}-{:02}-{:02}", cut.year(), u8::from(cut.month()), cut.day());
        Retention {
            tombstones_before: now - Self::TOMBSTONE_SECS,
            tls_days_before,
            sts_policies_expired_before: now,
            revoked_certs_expired_before: now,
            web_sessions_expired_before: now,
            domain_checks_before: now - Self::DOMAIN_CHECK_DAYS * 86_400,
        }
    }
}

/// How many rows [`Store::prune`] removed, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub tombstones: u64,
    pub tls_results: u64,
    pub tls_reports_sent: u64,
    pub sts_policies: u64,
    pub revoked_certs: u64,
    pub web_sessions: u64,
    pub domain_checks: u64,
}

/// Counters that show how writes were batched into commits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    pub writes: u64,
    pub commits: u64,
}

/// Domains and accounts: who is served here and how they log in.
#[async_trait]
pub trait AccountStore: Send + Sync {
    async fn add_domain(&self, domain: &Domain) -> Result<(), StoreError>;
    /// Refuses while the domain still has accounts.
    async fn remove_domain(&self, domain: &Domain) -> Result<(), StoreError>;
    async fn list_domains(&self) -> Result<Vec<Domain>, StoreError>;
    async fn domain_exists(&self, domain: &Domain) -> Result<bool, StoreError>;
    /// Whether `address` is a local user, and its INBOX, in one lookup (SMTP RCPT).
    async fn resolve_recipient(&self, address: &EmailAddress) -> Result<Recipient, StoreError>;
    /// Creates the account and its [`DEFAULT_MAILBOXES`]; the domain must exist.
    async fn add_account(&self, address: &EmailAddress, password_hash: &str)
    -> Result<AccountId, StoreError>;
    async fn set_password_hash(&self, address: &EmailAddress, password_hash: &str) -> Result<(), StoreError>;
    /// Removes the account with its mailboxes and messages.
    async fn remove_account(&self, address: &EmailAddress) -> Result<(), StoreError>;
    async fn account(&self, address: &EmailAddress) -> Result<Option<Account>, StoreError>;
    /// The account with this id as stored now; `None` once it was removed.
    async fn account_by_id(&self, id: AccountId) -> Result<Option<Account>, StoreError>;
    /// A number that grows whenever any account's password changes or an account is removed,
    /// whichever process did it: one cheap read tells a server whether its logged-in sessions
    /// need to re-check their credentials.
    async fn credentials_generation(&self) -> Result<i64, StoreError>;
    async fn list_accounts(&self) -> Result<Vec<Account>, StoreError>;
    /// Octets of every message in the account's mailboxes (a message in two mailboxes counts
    /// twice, as IMAP QUOTA's STORAGE does), for `limits.mailbox_quota`.
    async fn account_usage(&self, account: AccountId) -> Result<u64, StoreError>;
}

/// Mailboxes and messages: what SMTP accepts and IMAP serves.
#[async_trait]
pub trait MailStore: Send + Sync {
    async fn mailboxes(&self, account: AccountId) -> Result<Vec<Mailbox>, StoreError>;
    async fn mailbox(&self, account: AccountId, name: &str) -> Result<Option<Mailbox>, StoreError>;
    /// Stores a message durably in every listed mailbox, or in none.
    async fn store_message(&self, message: NewMessage) -> Result<Vec<StoredMessage>, StoreError>;
    /// Stores an accepted message's local copy and queues its outbound copy, atomically.
    async fn accept_message(&self, message: AcceptedMessage) -> Result<Accepted, StoreError>;
    async fn messages(&self, mailbox: MailboxId) -> Result<Vec<StoredMessage>, StoreError>;
    /// A new mailbox; `name` must not exist yet (any case for INBOX).
    async fn create_mailbox(&self, account: AccountId, name: &str) -> Result<Mailbox, StoreError>;
    /// Deletes the mailbox and its messages (not INBOX; its children stay).
    async fn delete_mailbox(&self, account: AccountId, name: &str) -> Result<(), StoreError>;
    /// Renames the mailbox and every mailbox below it in the hierarchy (not INBOX).
    async fn rename_mailbox(&self, account: AccountId, from: &str, to: &str) -> Result<(), StoreError>;
    async fn set_subscribed(
        &self,
        account: AccountId,
        name: &str,
        subscribed: bool,
    ) -> Result<(), StoreError>;
    async fn mailbox_status(&self, mailbox: MailboxId) -> Result<MailboxStatus, StoreError>;
    /// The names the account subscribed to, including those of mailboxes deleted since.
    async fn subscriptions(&self, account: AccountId) -> Result<Vec<String>, StoreError>;
    /// IMAP `\Recent` (RFC 3501 2.3.2): the messages with UIDs above the mailbox's mark are
    /// recent for the first session to learn of them. With `claim`, raises the mark to `up_to`
    /// (a read-write session takes them); without, only reads it (EXAMINE). Returns the mark
    /// as it was: this session's recent messages are the UIDs above it, up to `up_to`. One
    /// write, so two sessions never both get a message as recent.
    async fn claim_recent(&self, mailbox: MailboxId, up_to: u32, claim: bool) -> Result<u32, StoreError>;
    /// What changed after `modseq` (new messages, flag changes, expunges), in one snapshot.
    /// From 0 it is every message, without expunges (nothing was seen before them).
    async fn changes_since(&self, mailbox: MailboxId, modseq: u64) -> Result<MailboxChanges, StoreError>;
    /// Changes the flags of messages (see [`SetFlags`]).
    async fn update_flags(&self, request: SetFlags) -> Result<FlagUpdate, StoreError>;
    /// Removes the messages flagged `\Deleted` (only those among `uids` when given); returns
    /// the UIDs removed.
    async fn expunge(&self, mailbox: MailboxId, uids: Option<Vec<u32>>) -> Result<Vec<u32>, StoreError>;
    /// Copies or moves messages (see [`CopyMessages`]).
    async fn copy_messages(&self, request: CopyMessages) -> Result<Copied, StoreError>;
    /// A receiver that wakes after every committed change to the mailbox (new mail from SMTP,
    /// another session's flags or expunges). It carries no data: ask [`Store::changes_since`].
    fn watch_mailbox(&self, mailbox: MailboxId) -> tokio::sync::watch::Receiver<()>;
    /// Several messages' bytes in one query (FETCH of many messages), each checked like
    /// [`Store::read_message`]; in the order asked, with a result per message.
    async fn read_messages(
        &self,
        messages: &[MessageId],
    ) -> Result<Vec<Result<Vec<u8>, StoreError>>, StoreError>;
    /// The message's bytes, after checking them against the SHA-256 recorded when it was stored.
    async fn read_message(&self, message: MessageId) -> Result<Vec<u8>, StoreError>;
}

/// The outbound queue: what delivery sends, shared by every node.
#[async_trait]
pub trait QueueStore: Send + Sync {
    /// The outbound queue, oldest first.
    async fn queue(&self) -> Result<Vec<QueueEntry>, StoreError>;
    async fn queue_entry(&self, id: i64) -> Result<Option<QueueEntry>, StoreError>;
    /// Takes the pending recipients due at `now` that no node holds a lease on (at most
    /// `limit`), leases them to `lease.holder` until `lease.until`, and returns them by message,
    /// oldest first. Until the lease ends or [`QueueStore::record_outcomes`] ends it, no other
    /// call returns them: with several nodes, each recipient is attempted by one at a time.
    async fn due_messages(
        &self,
        now: i64,
        limit: i64,
        lease: &QueueLease,
    ) -> Result<Vec<DueMessage>, StoreError>;
    /// Ends every lease `holder` has (a node starting again holds nothing in flight); how many.
    async fn release_leases(&self, holder: &str) -> Result<u64, StoreError>;
    /// Extends `holder`'s leases of these recipients (still pending) to `until`, while their
    /// attempt runs; how many it still held.
    async fn renew_leases(&self, holder: &str, recipients: &[i64], until: i64) -> Result<u64, StoreError>;
    /// Makes this process the node `name` for as long as it runs: on PostgreSQL, refuses a name
    /// another running node holds (queue leases are named after nodes, so two nodes of one name
    /// would take each other's work); on SQLite, whose file one process owns, ends every lease
    /// an earlier run left.
    async fn register_node(&self, name: &str) -> Result<(), StoreError>;
    /// When the next pending recipient is due, if any is pending.
    async fn next_attempt_at(&self) -> Result<Option<i64>, StoreError>;
    /// A queued message's content, checked against its SHA-256.
    async fn queued_content(&self, id: i64) -> Result<Vec<u8>, StoreError>;
    /// Records attempt outcomes (recipient row id, outcome) of one queued message; once no
    /// recipient is pending the message leaves the queue, in the same commit.
    async fn record_outcomes(
        &self,
        id: i64,
        outcomes: Vec<(i64, RecipientOutcome)>,
    ) -> Result<(), StoreError>;
    /// Makes every pending recipient of the message (of every message for `None`) due now;
    /// how many there were.
    async fn retry_queued(&self, id: Option<i64>) -> Result<u64, StoreError>;
    /// Removes a message from the queue without delivering it; whether it was there.
    async fn delete_queued(&self, id: i64) -> Result<bool, StoreError>;
}

/// Intrusion prevention: bans, abuse counts, hourly allowances and the security event log,
/// seen by every node that shares the store.
#[async_trait]
pub trait SecurityStore: Send + Sync {
    /// Records a ban; returns it with its id.
    async fn add_ban(&self, address: &str, until: i64, level: i64, reason: &str) -> Result<Ban, StoreError>;
    /// Bans still in force at `now`.
    async fn active_bans(&self, now: i64) -> Result<Vec<Ban>, StoreError>;
    /// The highest level of any ban of `address` created after `since` (for escalation).
    async fn last_ban_level(&self, address: &str, since: i64) -> Result<i64, StoreError>;
    /// Lifts every ban of `address`; returns how many were in force.
    async fn lift_bans(&self, address: &str, now: i64) -> Result<u64, StoreError>;
    async fn record_event(&self, event: SecurityEvent) -> Result<(), StoreError>;
    /// Deletes security events from before `before` and bans (lifted or not) that ended before
    /// it; returns how many rows went.
    async fn prune_security(&self, before: i64) -> Result<u64, StoreError>;
    /// Adds `points` of abuse for `key` at `at`, forgets the key's points from before `since`,
    /// and returns the key's points since then (those of every node sharing the store).
    async fn add_abuse_points(&self, key: &str, at: i64, points: i64, since: i64) -> Result<i64, StoreError>;
    /// Spends `amount` of the hourly allowance `key` if what was spent in the hour before `at`
    /// plus `amount` stays within `per_hour`; whether it was spent. Atomic across nodes.
    async fn take_hourly_use(
        &self,
        key: &str,
        at: i64,
        amount: i64,
        per_hour: i64,
    ) -> Result<bool, StoreError>;
    /// Whether other nodes may share this store (PostgreSQL): then abuse counts and hourly
    /// allowances must be kept in it rather than in each node's memory.
    fn shared_by_nodes(&self) -> bool;
    /// Events at or after `since`, oldest first; `address` narrows them to one client.
    async fn events(&self, since: i64, address: Option<&str>) -> Result<Vec<SecurityEvent>, StoreError>;
    /// The newest events (at most `limit`, newest first) that match `filter`: what a page can
    /// show without reading an attack's worth of rows.
    async fn recent_events(&self, filter: &EventFilter, limit: u32)
    -> Result<Vec<SecurityEvent>, StoreError>;
}

/// Which events [`SecurityStore::recent_events`] returns; `None` matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// At or after this (Unix seconds).
    pub since: i64,
    pub kind: Option<String>,
    /// The client's IP address, as recorded.
    pub address: Option<String>,
    /// The account, as recorded (an address, or the user name a failed login gave).
    pub account: Option<String>,
    /// At or before this (Unix seconds).
    pub until: Option<i64>,
}

/// What delivery keeps for reports and policies: TLS results (RFC 8460), MTA-STS policies,
/// and the clean-up of what has outlived its use.
#[async_trait]
pub trait ReportStore: Send + Sync {
    async fn record_tls_result(&self, result: TlsResult) -> Result<(), StoreError>;
    /// The MTA-STS policy last fetched for `domain`.
    async fn mta_sts_policy(&self, domain: &str) -> Result<Option<StoredStsPolicy>, StoreError>;
    /// Keeps `policy` as the one last fetched for its domain (replacing the one before).
    async fn save_mta_sts_policy(&self, policy: StoredStsPolicy) -> Result<(), StoreError>;
    /// Every counted TLS result, by day.
    async fn tls_results(&self) -> Result<Vec<TlsResultCount>, StoreError>;
    /// Claims the TLS report of `day` for `domain`: true the first time only, so a report is
    /// sent once however many times (or nodes) ask.
    async fn claim_tls_report(&self, day: &str, domain: &str) -> Result<bool, StoreError>;
    /// Claims the next daily check of `domain` for `node` until `until`: true when its last
    /// check finished at or before `due_before` (or there is none) and no other node's claim
    /// holds past `now`, so of the nodes that ask at once one wins. [`ReportStore::record_domain_check`]
    /// ends the claim; a node that never records holds it only until `until`.
    async fn claim_domain_check(
        &self,
        domain: &str,
        node: &str,
        due_before: i64,
        now: i64,
        until: i64,
    ) -> Result<bool, StoreError>;
    /// Keeps `check` as its domain's last (replacing the one before) and ends the claim.
    async fn record_domain_check(&self, check: DomainCheck) -> Result<(), StoreError>;
    /// The last finished check of every domain, by domain.
    async fn domain_checks(&self) -> Result<Vec<DomainCheck>, StoreError>;
    /// Removes what has outlived its use (see [`Retention`]), in one commit.
    async fn prune(&self, retention: Retention) -> Result<Pruned, StoreError>;
}

/// An app password as the store keeps it (the password itself only as its Argon2id hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPassword {
    pub id: i64,
    pub account: AccountId,
    pub name: String,
    /// The password's first group, in clear: narrows a login to one hash to check.
    pub lookup: String,
    pub password_hash: String,
    /// Comma-separated protocols it may be used on (`imap`, `smtp`).
    pub scopes: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub last_used_from: Option<String>,
}

/// A new app password for [`CredentialStore::add_app_password`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAppPassword {
    pub account: AccountId,
    pub name: String,
    pub lookup: String,
    pub password_hash: String,
    pub scopes: String,
    pub expires_at: Option<i64>,
}

/// An account's TOTP second factor: pending until confirmed with a code, then active.
#[derive(Clone, PartialEq, Eq)]
pub struct Mfa {
    /// The TOTP secret, sealed under the server's key file (never stored in clear).
    pub sealed_secret: Vec<u8>,
    pub active: bool,
    /// The last TOTP time step accepted: a later code must be of a later step.
    pub last_step: i64,
    pub created_at: i64,
    pub activated_at: Option<i64>,
    /// One-time recovery codes not used yet.
    pub recovery_codes_left: u32,
}

impl std::fmt::Debug for Mfa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mfa")
            .field("active", &self.active)
            .field("last_step", &self.last_step)
            .field("recovery_codes_left", &self.recovery_codes_left)
            .finish_non_exhaustive()
    }
}

/// A client certificate registered to an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// Lower-case hex SHA-256 of the certificate's DER encoding.
    pub fingerprint: String,
    pub account: AccountId,
    pub subject: String,
    pub not_after: i64,
    /// Issued by the internal client CA (`sealmail ca issue`), not added from a file.
    pub issued_here: bool,
    pub added_at: i64,
}

/// Credentials beyond the account password: SCRAM verifiers, app passwords, the TOTP second
/// factor and its recovery codes, client certificates. Every change that can end a login
/// moves [`AccountStore::credentials_generation`].
#[async_trait]
pub trait CredentialStore: Send + Sync {
    /// The account's SCRAM-SHA-256 verifier (RFC 5803 text), if one was made since the last
    /// password change.
    async fn scram_verifier(&self, account: AccountId) -> Result<Option<String>, StoreError>;
    /// Stores the verifier made from the password whose Argon2id hash is `password_hash`; does
    /// nothing (false) when the password changed meanwhile.
    async fn set_scram_verifier(
        &self,
        account: AccountId,
        password_hash: &str,
        verifier: &str,
    ) -> Result<bool, StoreError>;

    /// Refuses a name the account already uses ([`StoreError::Duplicate`]).
    async fn add_app_password(&self, new: NewAppPassword) -> Result<i64, StoreError>;
    async fn app_passwords(&self, account: AccountId) -> Result<Vec<AppPassword>, StoreError>;
    /// The account's app passwords whose first group is `lookup`.
    async fn app_password_candidates(
        &self,
        account: AccountId,
        lookup: &str,
    ) -> Result<Vec<AppPassword>, StoreError>;
    async fn app_password(&self, id: i64) -> Result<Option<AppPassword>, StoreError>;
    /// Deletes it, so every session it opened ends; [`StoreError::NotFound`] if there is none.
    async fn revoke_app_password(&self, account: AccountId, name: &str) -> Result<(), StoreError>;
    /// Records a successful use (time and client address), for `app-password list`.
    async fn note_app_password_use(&self, id: i64, at: i64, from: &str) -> Result<(), StoreError>;

    /// Starts (or restarts) an enrolment with a new sealed secret; refused while MFA is active.
    async fn start_mfa(&self, account: AccountId, sealed_secret: Vec<u8>) -> Result<(), StoreError>;
    /// Activates a pending enrolment whose code of time step `step` was given, replacing the
    /// recovery codes; false when there is no pending enrolment.
    async fn activate_mfa(
        &self,
        account: AccountId,
        step: i64,
        recovery_code_hashes: Vec<String>,
    ) -> Result<bool, StoreError>;
    /// Removes the second factor, its recovery codes and the security keys that stand in for
    /// its code; false when there was no second factor.
    async fn disable_mfa(&self, account: AccountId) -> Result<bool, StoreError>;
    async fn mfa(&self, account: AccountId) -> Result<Option<Mfa>, StoreError>;
    /// Takes TOTP time step `step` for an active factor: true only when it is later than every
    /// step taken before, so a code (and its step) is accepted once, on every node.
    async fn use_totp_step(&self, account: AccountId, step: i64) -> Result<bool, StoreError>;
    /// Uses a recovery code (by hash): true the first time only.
    async fn use_recovery_code(&self, account: AccountId, code_hash: &str) -> Result<bool, StoreError>;

    /// Registers a certificate to an account; a fingerprint registered before or revoked is
    /// refused ([`StoreError::Duplicate`]).
    async fn add_client_cert(&self, cert: ClientCert) -> Result<(), StoreError>;
    async fn client_certs(&self, account: AccountId) -> Result<Vec<ClientCert>, StoreError>;
    async fn client_cert(&self, fingerprint: &str) -> Result<Option<ClientCert>, StoreError>;
    /// Removes the certificate from the account and revokes it for good.
    async fn remove_client_cert(&self, account: AccountId, fingerprint: &str) -> Result<(), StoreError>;
    async fn is_cert_revoked(&self, fingerprint: &str) -> Result<bool, StoreError>;
    /// Every registered fingerprint and every revoked one (what the TLS layer checks handshakes
    /// against).
    async fn known_client_certs(&self) -> Result<KnownClientCerts, StoreError>;
}

/// Fingerprints the TLS layer needs at handshake time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownClientCerts {
    pub registered: Vec<String>,
    pub revoked: Vec<String>,
}

/// A signed-in session of the web pages (sealmail-web). Only the SHA-256 of the cookie is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSession {
    /// Lower-case hex SHA-256 of the cookie's value.
    pub id_hash: String,
    pub account: AccountId,
    /// What the login used, e.g. "password", "password+totp", "password+recovery code".
    pub credential: String,
    pub client_address: String,
    pub user_agent: String,
    /// Unix seconds, as the three below.
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
}

/// Sessions one account keeps at most (see [`WebStore::add_web_session`]): a bound on what
/// logins, or a stolen password, can make us store.
pub const MAX_WEB_SESSIONS: usize = 20;
/// Logins an account may have waiting for their second factor at once (oldest end first).
pub const MAX_PENDING_WEB_SESSIONS: usize = 5;
/// The `credential` of a session whose password was right and whose second factor is still to
/// come: not signed in, and outside the cap of signed-in sessions.
pub const WEB_SESSION_PENDING: &str = "pending second factor";

/// Security keys (WebAuthn credentials) an account may register.
pub const MAX_SECURITY_KEYS: usize = 10;
/// The longest credential id WebAuthn allows, in bytes.
pub(crate) const MAX_CREDENTIAL_ID_LEN: usize = 1023;
/// The longest public key (DER SubjectPublicKeyInfo) the store keeps, in bytes.
pub(crate) const MAX_SECURITY_KEY_PUBLIC_KEY_LEN: usize = 2048;
/// The longest name of a security key, in characters.
pub(crate) const MAX_SECURITY_KEY_NAME_CHARS: usize = 64;

/// A WebAuthn credential (security key or passkey) registered as a second factor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityKey {
    /// Row id; ignored when adding.
    pub id: i64,
    pub account: AccountId,
    /// The credential id the authenticator chose (at most 1023 bytes, WebAuthn).
    pub credential_id: Vec<u8>,
    /// The credential's public key as a DER SubjectPublicKeyInfo.
    pub public_key: Vec<u8>,
    /// The name the user gave it (at most 64 characters).
    pub name: String,
    /// The authenticator's signature counter last seen (0 when it keeps none).
    pub sign_count: u32,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

/// Browser sessions of the web pages, the security keys of their second factor, and who may
/// use the admin console.
#[async_trait]
pub trait WebStore: Send + Sync {
    /// Stores a new session; an account keeps at most `MAX_WEB_SESSIONS` (20) signed-in sessions
    /// and `MAX_PENDING_WEB_SESSIONS` (5) waiting for a second factor: of each kind, the ones
    /// last seen longest ago are ended.
    async fn add_web_session(&self, session: WebSession) -> Result<(), StoreError>;
    /// The session, if it exists and `expires_at > now`.
    async fn web_session(&self, id_hash: &str, now: i64) -> Result<Option<WebSession>, StoreError>;
    /// Notes a request: sets last_seen_at and expires_at (only if the session still exists and is unexpired).
    async fn touch_web_session(&self, id_hash: &str, now: i64, expires_at: i64) -> Result<(), StoreError>;
    /// Ends one session; whether it existed.
    async fn end_web_session(&self, id_hash: &str) -> Result<bool, StoreError>;
    /// Ends every session of the account except `keep` (log out everywhere, a password change); how many ended.
    async fn end_web_sessions(&self, account: AccountId, keep: Option<&str>) -> Result<u64, StoreError>;
    /// The account's unexpired sessions, newest first.
    async fn web_sessions(&self, account: AccountId, now: i64) -> Result<Vec<WebSession>, StoreError>;
    /// Grants or takes the admin role; `StoreError::NotFound` when there is no such account.
    async fn set_admin(&self, address: &EmailAddress, admin: bool) -> Result<(), StoreError>;
    /// Whether the account has the admin role (false for an account that does not exist).
    async fn is_admin(&self, account: AccountId) -> Result<bool, StoreError>;
    /// Addresses of the accounts with the admin role, sorted.
    async fn admins(&self) -> Result<Vec<EmailAddress>, StoreError>;

    /// Registers a security key (its `id` is ignored) and returns its row id; `Ok(None)`, with
    /// nothing stored, when the account has `MAX_SECURITY_KEYS` (10) already or the credential
    /// id is registered already (to any account). The count and the insert are one step, so
    /// concurrent adds never pass the cap. A credential id over 1023 bytes, a public key over
    /// 2048 bytes or a name over 64 characters is refused ([`StoreError::NotAllowed`]), and so
    /// is an account that does not exist ([`StoreError::NotFound`]).
    async fn add_security_key(&self, key: SecurityKey) -> Result<Option<i64>, StoreError>;
    /// The account's security keys, oldest first.
    async fn security_keys(&self, account: AccountId) -> Result<Vec<SecurityKey>, StoreError>;
    /// Records a successful use of the account's key `credential_id` at `at`: sets its
    /// sign_count and last_used_at, only if `sign_count` is above the one stored (or both are
    /// 0, an authenticator that keeps no counter). One atomic update, so of two uses with the
    /// same counter only one is taken (a replay, or a cloned authenticator); whether it was.
    async fn security_key_used(
        &self,
        account: AccountId,
        credential_id: &[u8],
        sign_count: u32,
        at: i64,
    ) -> Result<bool, StoreError>;
    /// Removes the account's key of row id `id` (never another account's); whether it existed.
    async fn remove_security_key(&self, account: AccountId, id: i64) -> Result<bool, StoreError>;
    /// Removes every security key of the account; how many.
    async fn remove_security_keys(&self, account: AccountId) -> Result<u64, StoreError>;
}

/// Everything a server needs of its store, by concern. Backend-only operations (SQLite's
/// snapshots and commit statistics) are the backends' own methods, not part of it.
pub trait Store:
    AccountStore + MailStore + QueueStore + SecurityStore + ReportStore + CredentialStore + WebStore
{
}

impl<
    T: AccountStore + MailStore + QueueStore + SecurityStore + ReportStore + CredentialStore + WebStore + ?Sized,
> Store for T
{
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

pub(crate) use sealmail_types::clock::now_unix;
