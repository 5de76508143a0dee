//! The PostgreSQL backend, for installations where several sealmail nodes share one store
//! (docs/CLUSTER.md). PostgreSQL is the distributed part: its replication, failover and backups
//! are the admin's; sealmail keeps no state of its own beside it.
//!
//! Every write runs in its own transaction from a pool, and `Ok` is returned only after COMMIT
//! returned: durable as far as the server's `synchronous_commit` promises (`on`, the default;
//! `off` breaks the promise, docs/CLUSTER.md). Group commit is PostgreSQL's own: concurrent
//! commits share one WAL flush, so sessions waiting together cost one fsync, without a single
//! writer that would serialise the nodes' writes.
//!
//! Several nodes at once: a mailbox's UIDs and mod-sequences are taken by updating its row, and
//! every write that changes a mailbox's messages locks that row first, so the changes of one
//! mailbox are serial across nodes and commit in the order of their UIDs. Queue recipients are
//! taken with `FOR UPDATE SKIP LOCKED` and a lease. A committed mailbox change is announced with
//! NOTIFY; each node has one LISTEN connection that wakes its own IDLE sessions. A transaction
//! that loses a deadlock or a serialisation race is run again (up to [`RETRIES`] times).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions, PgSslMode};

use sealmail_types::{AccountId, Domain, EmailAddress, MailboxId, MessageId};

mod checks;
mod credentials;
mod mailboxes;
mod queue;
mod web;

use crate::rows::{AccountRow, MailboxRow, mailbox_columns};
use crate::watchers::Watchers;
use crate::write::{WriteDone, WriteOp, done_as, unexpected};

use crate::{Accepted, AcceptedMessage, Ban, EventFilter, Migration, QueueEntry, Recipient, SecurityEvent};
use crate::{
    Account, DEFAULT_MAILBOXES, Mailbox, NewMessage, StoreError, StoredMessage, now_unix, sha256_hex,
};
use crate::{AccountStore, MailStore, QueueLease, QueueStore, ReportStore, SecurityStore};
use crate::{Copied, CopyMessages, FlagUpdate, MailboxChanges, MailboxStatus, SetFlags};
use crate::{
    DomainCheck, DueMessage, Pruned, RecipientOutcome, Retention, StoredStsPolicy, TlsResult, TlsResultCount,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How often a transaction that lost a deadlock or serialisation race is tried again.
const RETRIES: u32 = 5;
/// The schema used when the configuration names none.
pub const DEFAULT_SCHEMA: &str = "public";

/// How the connection to PostgreSQL is protected (libpq's `sslmode` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgTls {
    /// No TLS (only allowed to a server on loopback or a Unix socket).
    Disable,
    /// TLS when the server offers it, unverified (loopback only, like `Disable`).
    Prefer,
    /// TLS, certificate not verified (loopback only).
    Require,
    /// TLS with a certificate from a trusted CA, whatever its name: loopback only, since the
    /// trusted CAs include the public ones (sqlx adds `tls_ca` to the WebPKI roots), and any
    /// name would do.
    VerifyCa,
    /// TLS with a certificate for the host name connected to, from `tls_ca` or a public CA.
    VerifyFull,
}

impl PgTls {
    pub fn parse(text: &str) -> Option<PgTls> {
        Some(match text {
            "disable" => PgTls::Disable,
            "prefer" => PgTls::Prefer,
            "require" => PgTls::Require,
            "verify-ca" => PgTls::VerifyCa,
            "verify-full" => PgTls::VerifyFull,
            _ => return None,
        })
    }

    /// Proves the server to a client on another machine: only a certificate for its name does.
    fn proves_remote_server(self) -> bool {
        self == PgTls::VerifyFull
    }
}

/// Where the store is and how to reach it (`[store]` in the configuration).
#[derive(Clone)]
pub struct PgOptions {
    /// `postgres://user@host:port/database`, without a password.
    pub url: String,
    /// The schema sealmail's tables live in (created if missing); `None`: `public`.
    pub schema: Option<String>,
    /// The password, read from `store.password_file`.
    pub password: Option<String>,
    pub tls: PgTls,
    /// PEM file of the CA that issued the server's certificate (for `verify-ca`/`verify-full`).
    pub tls_ca: Option<PathBuf>,
    /// Connections this node opens at most for its work (two more: one listens for changes,
    /// one holds the node's name).
    pub max_connections: u32,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &self.url)
            .field("schema", &self.schema)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("tls_ca", &self.tls_ca)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl PgOptions {
    /// Options for `url` with the defaults: schema `public`, no password, TLS verified when
    /// the server is not on this machine.
    pub fn new(url: &str) -> PgOptions {
        PgOptions {
            url: url.to_string(),
            schema: None,
            password: None,
            tls: PgTls::VerifyFull,
            tls_ca: None,
            max_connections: 16,
        }
    }

    fn schema(&self) -> &str {
        self.schema.as_deref().unwrap_or(DEFAULT_SCHEMA)
    }

    /// The connection options, refusing what would weaken the store: a password in the URL
    /// (it would end up in logs and `ps`), an unverified connection to another machine, a
    /// schema name that is not a plain identifier.
    fn connect_options(&self) -> Result<PgConnectOptions, StoreError> {
        let refuse = |why: String| Err(StoreError::NotAllowed(why));
        let schema = self.schema();
        if !valid_schema(schema) {
            return refuse(format!(
                "store.schema = {schema:?} is not a plain name; use lower-case letters, digits and '_' (at most 40), e.g. \"sealmail\""
            ));
        }
        let mut options = PgConnectOptions::from_str(&self.url)
            .map_err(|e| StoreError::NotAllowed(format!("store.url is not a PostgreSQL URL: {e}")))?;
        if self.url_has_password() {
            return refuse(
                "store.url must not carry a password; put it in store.password_file (mode 0600)".into(),
            );
        }
        if let Some(password) = &self.password {
            options = options.password(password);
        }
        let local = is_loopback_host(options.get_host());
        if !local && !self.tls.proves_remote_server() {
            return refuse(format!(
                "the PostgreSQL server {} is not on this machine: store.tls must be \"verify-full\" (with store.tls_ca for a private CA), so the connection is encrypted and the server proven by a certificate for its name",
                options.get_host()
            ));
        }
        let mode = match self.tls {
            PgTls::Disable => PgSslMode::Disable,
            PgTls::Prefer => PgSslMode::Prefer,
            PgTls::Require => PgSslMode::Require,
            PgTls::VerifyCa => PgSslMode::VerifyCa,
            PgTls::VerifyFull => PgSslMode::VerifyFull,
        };
        // On loopback the default (verify-full) would need a certificate most local servers
        // lack: there, nothing crosses a network, and TLS is used when offered.
        let mode = if local && self.tls == PgTls::VerifyFull && self.tls_ca.is_none() {
            PgSslMode::Prefer
        } else {
            mode
        };
        options = options.ssl_mode(mode);
        if let Some(ca) = &self.tls_ca {
            options = options.ssl_root_cert(ca);
        }
        Ok(options
            .options([("search_path", schema)])
            .application_name("sealmail")
            .log_statements(tracing::log::LevelFilter::Trace))
    }

    fn url_has_password(&self) -> bool {
        // postgres://user:password@host/...: a ':' in the part before '@' of the authority.
        let rest = self
            .url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, rest)| rest);
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        authority
            .rsplit_once('@')
            .is_some_and(|(user, _)| user.contains(':'))
            || self.url.contains("password=")
    }
}

fn valid_schema(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host.starts_with('/')
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

pub struct PgStore {
    pool: PgPool,
    /// How to open a connection of its own (the node-name lock).
    connect: PgConnectOptions,
    /// The task holding this node's name (see `register_node`).
    node_lock: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The NOTIFY channel of this schema's mailbox changes.
    channel: String,
    schema: String,
    watchers: Arc<Watchers>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
        if let Some(keeper) = self.node_lock.get_mut().take() {
            keeper.abort();
        }
    }
}

/// Advisory lock namespaces (the two-key form keeps them apart from each other).
const LOCKS_NODE_NAME: i32 = 0x5345_4e01;
const LOCKS_HOURLY_USE: i32 = 0x5345_4e02;

/// Takes the session-level lock of a node name on a connection of its own, which keeps it;
/// `None` when a running node holds it. The connection notices a dead peer within a minute
/// (TCP keepalives), so a crashed machine's name is free again soon.
async fn lock_node_name(connect: &PgConnectOptions, key: &str) -> Result<Option<PgConnection>, StoreError> {
    let mut conn = connect.connect().await?;
    sqlx::query("SET tcp_keepalives_idle = 30")
        .execute(&mut conn)
        .await?;
    sqlx::query("SET tcp_keepalives_interval = 10")
        .execute(&mut conn)
        .await?;
    sqlx::query("SET tcp_keepalives_count = 3")
        .execute(&mut conn)
        .await?;
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($2, hashtext($1))")
        .bind(key)
        .bind(LOCKS_NODE_NAME)
        .fetch_one(&mut conn)
        .await?;
    Ok(taken.then_some(conn))
}

/// Holds the node name while the process runs: checks the lock's connection every few seconds
/// and, when it was lost (a PostgreSQL restart or failover), takes the lock again; if another
/// node took the name meanwhile, says so loudly and keeps trying.
async fn keep_node_name(connect: PgConnectOptions, key: String, conn: PgConnection) {
    let mut held = Some(conn);
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        if let Some(conn) = held.as_mut()
            && sqlx::query("SELECT 1").execute(&mut *conn).await.is_ok()
        {
            continue;
        }
        held = match lock_node_name(&connect, &key).await {
            Ok(Some(conn)) => {
                tracing::warn!(lock = key, "the node name's lock was lost and is held again");
                Some(conn)
            }
            Ok(None) => {
                tracing::error!(
                    lock = key,
                    "another node took this node's name; give every node its own server.node_name"
                );
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not take the node name's lock again; retrying");
                None
            }
        };
    }
}

impl PgStore {
    /// Connects, creates the schema if missing and brings it up to date. Pending migrations on
    /// a store with data are logged with the advice to take a `pg_dump` first (`sealmail
    /// migrate --dry-run` lists them before an upgrade).
    pub async fn open(options: &PgOptions) -> Result<PgStore, StoreError> {
        let connect = options.connect_options()?;
        let schema = options.schema().to_string();
        let mut conn = connect.connect().await?;
        // The name was checked to be a plain identifier.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}"
        )))
        .execute(&mut conn)
        .await?;
        let applied = applied_versions(&mut conn).await?;
        let known: BTreeSet<i64> = MIGRATOR.iter().map(|m| m.version).collect();
        if let Some(newer) = applied.iter().find(|v| !known.contains(v)) {
            return Err(StoreError::NewerSchema(*newer));
        }
        let pending = known.difference(&applied).count();
        if pending > 0 && !applied.is_empty() {
            tracing::warn!(
                schema,
                pending,
                "migrating the PostgreSQL store; a pg_dump taken before is the way back"
            );
        }
        MIGRATOR.run(&mut conn).await?;
        drop(conn);

        // One more than asked for: the listener keeps one of the pool's connections for good.
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(2) + 1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(connect.clone())
            .await?;
        let channel = format!("sealmail_{schema}");
        let watchers = Arc::new(Watchers::default());
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(&channel).await?;
        let task = tokio::spawn(listen(listener, watchers.clone()));
        Ok(PgStore {
            pool,
            connect,
            node_lock: tokio::sync::Mutex::new(None),
            channel,
            schema,
            watchers,
            listener: task,
        })
    }

    /// The migrations [`PgStore::open`] would apply, without changing anything.
    pub async fn pending_migrations(options: &PgOptions) -> Result<Vec<Migration>, StoreError> {
        let mut conn = options.connect_options()?.connect().await?;
        let applied = applied_versions(&mut conn).await?;
        Ok(MIGRATOR
            .iter()
            .filter(|m| !applied.contains(&m.version))
            .map(|m| Migration {
                version: m.version,
                description: m.description.to_string(),
            })
            .collect())
    }

    /// The schema this store's tables are in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The pool, for tools that copy whole tables (`sealmail migrate-store`) and tests.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes every connection.
    pub async fn close(self) {
        self.listener.abort();
        self.pool.close().await;
    }

    /// Runs one write in its own transaction, again when it lost a deadlock or serialisation
    /// race; announces the mailboxes it changed once it committed.
    async fn write(&self, op: WriteOp) -> Result<WriteDone, StoreError> {
        let mut touched = Vec::new();
        op.touched_mailboxes(&mut touched);
        touched.sort_unstable();
        touched.dedup();
        let mut tries = 0;
        loop {
            tries += 1;
            let mut tx = self.pool.begin().await?;
            let result = apply(&mut tx, &op).await;
            let result = match result {
                Ok(done) => {
                    let mut announced = Ok(());
                    for mailbox in &touched {
                        announced = sqlx::query("SELECT pg_notify($1, $2)")
                            .bind(&self.channel)
                            .bind(mailbox.to_string())
                            .execute(&mut *tx)
                            .await
                            .map(|_| ());
                        if announced.is_err() {
                            break;
                        }
                    }
                    match announced {
                        Ok(()) => tx.commit().await.map(|_| done).map_err(StoreError::from),
                        Err(e) => Err(e.into()),
                    }
                }
                Err(e) => {
                    let _ = tx.rollback().await;
                    Err(e)
                }
            };
            match result {
                Ok(done) => {
                    self.watchers.notify(&touched);
                    return Ok(done);
                }
                Err(e) if tries < RETRIES && is_retryable(&e) => {
                    tracing::debug!(error = %e, tries, "store transaction lost a race; trying again");
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(tries))).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A deadlock (40P01) or serialisation failure (40001): the transaction did nothing, and the
/// same write again will likely succeed.
fn is_retryable(e: &StoreError) -> bool {
    match e {
        StoreError::Database(sqlx::Error::Database(db)) => {
            matches!(db.code().as_deref(), Some("40P01") | Some("40001"))
        }
        _ => false,
    }
}

/// Wakes this node's watchers for every mailbox change any node announces. After the
/// connection was lost (announcements may be missed), every watcher is woken.
async fn listen(mut listener: PgListener, watchers: Arc<Watchers>) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                if let Ok(mailbox) = notification.payload().parse::<i64>() {
                    watchers.notify(&[mailbox]);
                }
            }
            Ok(None) => {
                tracing::warn!("the PostgreSQL change listener reconnected; waking every watcher");
                watchers.notify_all();
            }
            Err(e) => {
                tracing::warn!(error = %e, "the PostgreSQL change listener failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn applied_versions(conn: &mut PgConnection) -> Result<BTreeSet<i64>, StoreError> {
    // to_regclass looks the name up on the search_path: this schema's table, if any.
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
        .fetch_one(&mut *conn)
        .await?;
    if exists.is_none() {
        return Ok(BTreeSet::new());
    }
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
        .fetch_all(&mut *conn)
        .await?;
    Ok(versions.into_iter().collect())
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

async fn domain_id(conn: &mut PgConnection, domain: &Domain) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar("SELECT id FROM domains WHERE name = $1")
        .bind(domain.as_str())
        .fetch_optional(&mut *conn)
        .await?)
}

async fn apply(conn: &mut PgConnection, op: &WriteOp) -> Result<WriteDone, StoreError> {
    match op {
        WriteOp::Prune(retention) => prune(conn, retention).await.map(WriteDone::Pruned),
        WriteOp::AddDomain(domain) => {
            let inserted = sqlx::query("INSERT INTO domains (name, created_at) VALUES ($1, $2)")
                .bind(domain.as_str())
                .bind(now_unix())
                .execute(&mut *conn)
                .await;
            match inserted {
                Err(e) if is_unique_violation(&e) => Err(StoreError::Duplicate(format!("domain {domain}"))),
                other => other.map(|_| WriteDone::Unit).map_err(Into::into),
            }
        }
        WriteOp::RemoveDomain(domain) => {
            let Some(id) = domain_id(conn, domain).await? else {
                return Err(StoreError::NotFound(format!("domain {domain}")));
            };
            let accounts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts WHERE domain_id = $1")
                .bind(id)
                .fetch_one(&mut *conn)
                .await?;
            if accounts > 0 {
                return Err(StoreError::DomainInUse {
                    domain: domain.clone(),
                    accounts,
                });
            }
            sqlx::query("DELETE FROM domains WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            Ok(WriteDone::Unit)
        }
        WriteOp::AddAccount { address, hash } => {
            let Some(domain) = domain_id(conn, address.domain()).await? else {
                return Err(StoreError::UnknownDomain(address.domain().clone()));
            };
            let now = now_unix();
            let inserted: Result<i64, _> = sqlx::query_scalar(
                "INSERT INTO accounts (domain_id, address, password_hash, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
            )
            .bind(domain)
            .bind(address.to_string())
            .bind(hash.as_str())
            .bind(now)
            .fetch_one(&mut *conn)
            .await;
            let id = match inserted {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Duplicate(format!("user {address}")));
                }
                other => other?,
            };
            // RFC 3501 2.3.1.1: a UIDVALIDITY that never repeats for a re-created mailbox.
            let uid_validity = mailboxes::next_uid_validity(conn, now).await?;
            for (name, special_use) in DEFAULT_MAILBOXES {
                sqlx::query(
                    "INSERT INTO mailboxes (account_id, name, special_use, uid_validity) VALUES ($1, $2, $3, $4)",
                )
                .bind(id)
                .bind(*name)
                .bind(*special_use)
                .bind(uid_validity)
                .execute(&mut *conn)
                .await?;
                sqlx::query("INSERT INTO subscriptions (account_id, name) VALUES ($1, $2)")
                    .bind(id)
                    .bind(*name)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(WriteDone::Account(AccountId(id)))
        }
        WriteOp::SetPassword { address, hash } => {
            let updated =
                sqlx::query("UPDATE accounts SET password_hash = $1, scram_sha256 = NULL WHERE address = $2")
                    .bind(hash.as_str())
                    .bind(address.to_string())
                    .execute(&mut *conn)
                    .await?;
            if updated.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("user {address}")));
            }
            Ok(WriteDone::Unit)
        }
        WriteOp::RemoveAccount(address) => {
            credentials::revoke_account_certs(conn, &address.to_string()).await?;
            // The account's mailboxes are locked (in id order) before their blobs are listed,
            // so no message stored meanwhile leaves a blob behind.
            let mailboxes: Vec<i64> = sqlx::query_scalar(
                "SELECT b.id FROM mailboxes b JOIN accounts a ON a.id = b.account_id WHERE a.address = $1 ORDER BY b.id",
            )
            .bind(address.to_string())
            .fetch_all(&mut *conn)
            .await?;
            mailboxes::lock_mailboxes(conn, &mailboxes).await?;
            let blobs: Vec<i64> = sqlx::query_scalar(
                "SELECT DISTINCT m.blob_id FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id JOIN accounts a ON a.id = b.account_id WHERE a.address = $1",
            )
            .bind(address.to_string())
            .fetch_all(&mut *conn)
            .await?;
            let removed = sqlx::query("DELETE FROM accounts WHERE address = $1")
                .bind(address.to_string())
                .execute(&mut *conn)
                .await?;
            if removed.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("user {address}")));
            }
            delete_unused_blobs(conn, &blobs).await?;
            Ok(WriteDone::Unit)
        }
        WriteOp::StoreMessage { message, sha256 } => {
            let stored = store_in_mailboxes(
                conn,
                &message.content,
                sha256,
                &message.mailboxes,
                message.internal_date,
                &message.flags,
            )
            .await?;
            Ok(WriteDone::Stored(stored))
        }
        WriteOp::AddBan { .. }
        | WriteOp::LiftBans { .. }
        | WriteOp::Event(_)
        | WriteOp::PruneSecurity { .. }
        | WriteOp::AddAbusePoints { .. }
        | WriteOp::TakeHourlyUse { .. } => apply_security(conn, op).await,
        WriteOp::Credentials(op) => credentials::apply(conn, op).await,
        WriteOp::Web(op) => web::apply(conn, op).await,
        WriteOp::CreateMailbox { account, name } => mailboxes::create(conn, *account, name, now_unix())
            .await
            .map(WriteDone::Mailbox),
        WriteOp::DeleteMailbox { account, name } => mailboxes::delete(conn, *account, name)
            .await
            .map(|_| WriteDone::Unit),
        WriteOp::RenameMailbox { account, from, to } => mailboxes::rename(conn, *account, from, to)
            .await
            .map(|_| WriteDone::Unit),
        WriteOp::Subscribe {
            account,
            name,
            subscribed,
        } => mailboxes::set_subscribed(conn, *account, name, *subscribed)
            .await
            .map(|_| WriteDone::Unit),
        WriteOp::ClaimRecent { mailbox, up_to } => mailboxes::claim_recent(conn, *mailbox, *up_to)
            .await
            .map(|before| WriteDone::Count(u64::from(before))),
        WriteOp::UpdateFlags(request) => mailboxes::update_flags(conn, request).await.map(WriteDone::Flags),
        WriteOp::Expunge { mailbox, uids } => mailboxes::expunge(conn, *mailbox, uids.as_deref())
            .await
            .map(WriteDone::Uids),
        WriteOp::Copy(request) => mailboxes::copy(conn, request).await.map(WriteDone::Copied),
        WriteOp::ClaimDue { now, limit, lease } => queue::claim_due(conn, *now, *limit, lease)
            .await
            .map(WriteDone::Due),
        WriteOp::ReleaseLeases(holder) => queue::release_leases(conn, holder).await.map(WriteDone::Count),
        WriteOp::ReleaseAllLeases => Err(StoreError::NotAllowed(
            "other nodes' leases are theirs to end".into(),
        )),
        WriteOp::RenewLeases {
            holder,
            recipients,
            until,
        } => queue::renew_leases(conn, holder, recipients, *until)
            .await
            .map(WriteDone::Count),
        WriteOp::RecordOutcomes { id, outcomes } => queue::record_outcomes(conn, *id, outcomes)
            .await
            .map(|_| WriteDone::Unit),
        WriteOp::RetryQueued(id) => queue::retry(conn, *id).await.map(WriteDone::Count),
        WriteOp::SaveStsPolicy(StoredStsPolicy {
            domain,
            policy_id,
            body,
            expires_at,
        }) => {
            sqlx::query(
                "INSERT INTO mta_sts_policies (domain, policy_id, body, expires_at) VALUES ($1, $2, $3, $4) ON CONFLICT (domain) DO UPDATE SET policy_id = excluded.policy_id, body = excluded.body, expires_at = excluded.expires_at",
            )
            .bind(domain)
            .bind(policy_id)
            .bind(body)
            .bind(*expires_at)
            .execute(&mut *conn)
            .await?;
            Ok(WriteDone::Unit)
        }
        WriteOp::DeleteQueued(id) => queue::delete(conn, *id)
            .await
            .map(|deleted| WriteDone::Count(u64::from(deleted))),
        WriteOp::TlsResult(result) => queue::record_tls_result(conn, result)
            .await
            .map(|_| WriteDone::Unit),
        WriteOp::ClaimDomainCheck {
            domain,
            node,
            due_before,
            now,
            until,
        } => checks::claim(conn, domain, node, *due_before, *now, *until)
            .await
            .map(WriteDone::Count),
        WriteOp::RecordDomainCheck(check) => checks::record(conn, check).await.map(|()| WriteDone::Unit),
        WriteOp::ClaimTlsReport { day, domain } => {
            let claimed = sqlx::query(
                "INSERT INTO tls_reports_sent (day, policy_domain, sent_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(day)
            .bind(domain)
            .bind(now_unix())
            .execute(&mut *conn)
            .await?
            .rows_affected();
            Ok(WriteDone::Count(claimed))
        }
        WriteOp::Accept {
            message,
            local_sha256,
            outbound_sha256,
        } => {
            let mut accepted = Accepted {
                stored: Vec::new(),
                queue_id: None,
            };
            if let (Some(local), Some(sha256)) = (message.local.as_ref(), local_sha256.as_ref()) {
                accepted.stored = store_in_mailboxes(
                    conn,
                    &local.content,
                    sha256,
                    &local.mailboxes,
                    local.internal_date,
                    &local.flags,
                )
                .await?;
            }
            if let (Some(outbound), Some(sha256)) = (message.outbound.as_ref(), outbound_sha256.as_ref()) {
                let blob = insert_blob(conn, &outbound.content, sha256).await?;
                let now = now_unix();
                let queue_id: i64 = sqlx::query_scalar(
                    "INSERT INTO queue_messages (blob_id, sender, created_at, require_tls, dsn_envid, dsn_ret) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                )
                .bind(blob)
                .bind(&outbound.sender)
                .bind(now)
                .bind(outbound.require_tls)
                .bind(&outbound.dsn_envid)
                .bind(&outbound.dsn_ret)
                .fetch_one(&mut *conn)
                .await?;
                for rcpt in &outbound.recipients {
                    sqlx::query(
                        "INSERT INTO queue_recipients (queue_id, address, domain, next_attempt_at, dsn_notify, dsn_orcpt) VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(queue_id)
                    .bind(rcpt.address.to_string())
                    .bind(rcpt.address.domain().as_str())
                    .bind(now)
                    .bind(&rcpt.dsn_notify)
                    .bind(&rcpt.dsn_orcpt)
                    .execute(&mut *conn)
                    .await?;
                }
                accepted.queue_id = Some(queue_id);
            }
            Ok(WriteDone::Accepted(accepted))
        }
    }
}

async fn apply_security(conn: &mut PgConnection, op: &WriteOp) -> Result<WriteDone, StoreError> {
    match op {
        WriteOp::AddBan {
            address,
            until,
            level,
            reason,
        } => {
            let now = now_unix();
            // The ban answers the points counted so far: counting starts again from nothing,
            // as it does in a single node's memory.
            sqlx::query("DELETE FROM abuse_points WHERE key = $1")
                .bind(address.as_str())
                .execute(&mut *conn)
                .await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO bans (address, created_at, until, level, reason) VALUES ($1, $2, $3, $4, $5) RETURNING id",
            )
            .bind(address.as_str())
            .bind(now)
            .bind(*until)
            .bind(*level)
            .bind(reason.as_str())
            .fetch_one(&mut *conn)
            .await?;
            Ok(WriteDone::Ban(Ban {
                id,
                address: address.clone(),
                created_at: now,
                until: *until,
                level: *level,
                reason: reason.clone(),
            }))
        }
        WriteOp::LiftBans { address, now } => {
            let lifted =
                sqlx::query("UPDATE bans SET lifted = TRUE WHERE address = $1 AND NOT lifted AND until > $2")
                    .bind(address.as_str())
                    .bind(*now)
                    .execute(&mut *conn)
                    .await?;
            Ok(WriteDone::Count(lifted.rows_affected()))
        }
        WriteOp::PruneSecurity { before } => {
            let events = sqlx::query("DELETE FROM security_events WHERE at < $1")
                .bind(*before)
                .execute(&mut *conn)
                .await?;
            let bans = sqlx::query("DELETE FROM bans WHERE until < $1")
                .bind(*before)
                .execute(&mut *conn)
                .await?;
            // Abuse points of keys that were never counted again (which would have removed
            // them) go with the events; hourly allowances are over after an hour.
            let hour_ago = now_unix() - 3600;
            let points = sqlx::query("DELETE FROM abuse_points WHERE at < $1")
                .bind(*before)
                .execute(&mut *conn)
                .await?;
            let used = sqlx::query("DELETE FROM hourly_use WHERE at < $1")
                .bind(hour_ago)
                .execute(&mut *conn)
                .await?;
            Ok(WriteDone::Count(
                events.rows_affected() + bans.rows_affected() + points.rows_affected() + used.rows_affected(),
            ))
        }
        WriteOp::AddAbusePoints {
            key,
            at,
            points,
            since,
        } => {
            sqlx::query("DELETE FROM abuse_points WHERE key = $1 AND at < $2")
                .bind(key.as_str())
                .bind(*since)
                .execute(&mut *conn)
                .await?;
            sqlx::query("INSERT INTO abuse_points (key, at, points) VALUES ($1, $2, $3)")
                .bind(key.as_str())
                .bind(*at)
                .bind(*points)
                .execute(&mut *conn)
                .await?;
            let total: i64 = sqlx::query_scalar(
                "SELECT COALESCE(SUM(points), 0)::BIGINT FROM abuse_points WHERE key = $1",
            )
            .bind(key.as_str())
            .fetch_one(&mut *conn)
            .await?;
            Ok(WriteDone::Count(total.max(0) as u64))
        }
        WriteOp::TakeHourlyUse {
            key,
            at,
            amount,
            per_hour,
        } => {
            // Nodes spending the same allowance at once take turns: the sum and the insert
            // must not interleave.
            sqlx::query("SELECT pg_advisory_xact_lock($2, hashtext($1))")
                .bind(key.as_str())
                .bind(LOCKS_HOURLY_USE)
                .execute(&mut *conn)
                .await?;
            sqlx::query("DELETE FROM hourly_use WHERE key = $1 AND at <= $2")
                .bind(key.as_str())
                .bind(*at - 3600)
                .execute(&mut *conn)
                .await?;
            let spent: i64 =
                sqlx::query_scalar("SELECT COALESCE(SUM(amount), 0)::BIGINT FROM hourly_use WHERE key = $1")
                    .bind(key.as_str())
                    .fetch_one(&mut *conn)
                    .await?;
            if spent.saturating_add(*amount) > *per_hour {
                return Ok(WriteDone::Taken(false));
            }
            sqlx::query("INSERT INTO hourly_use (key, at, amount) VALUES ($1, $2, $3)")
                .bind(key.as_str())
                .bind(*at)
                .bind(*amount)
                .execute(&mut *conn)
                .await?;
            Ok(WriteDone::Taken(true))
        }
        WriteOp::Event(event) => {
            sqlx::query(
                "INSERT INTO security_events (at, kind, address, account, listener, detail, node) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(event.at)
            .bind(&event.kind)
            .bind(&event.address)
            .bind(&event.account)
            .bind(&event.listener)
            .bind(&event.detail)
            .bind(&event.node)
            .execute(&mut *conn)
            .await?;
            Ok(WriteDone::Unit)
        }
        _ => Err(StoreError::Database(sqlx::Error::Protocol(
            "not a security write".into(),
        ))),
    }
}

async fn prune(conn: &mut PgConnection, retention: &Retention) -> Result<Pruned, StoreError> {
    let tombstones = sqlx::query("DELETE FROM expunged WHERE at < $1")
        .bind(retention.tombstones_before)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    let tls_results = sqlx::query("DELETE FROM tls_results WHERE day < $1")
        .bind(&retention.tls_days_before)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    let tls_reports_sent = sqlx::query("DELETE FROM tls_reports_sent WHERE day < $1")
        .bind(&retention.tls_days_before)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    let sts_policies = sqlx::query("DELETE FROM mta_sts_policies WHERE expires_at < $1")
        .bind(retention.sts_policies_expired_before)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    let revoked_certs = credentials::prune_revoked(conn, retention.revoked_certs_expired_before).await?;
    let web_sessions = web::prune_expired(conn, retention.web_sessions_expired_before).await?;
    let domain_checks = checks::prune(conn, retention.domain_checks_before).await?;
    Ok(Pruned {
        tombstones,
        tls_results,
        tls_reports_sent,
        sts_policies,
        revoked_certs,
        web_sessions,
        domain_checks,
    })
}

async fn insert_blob(conn: &mut PgConnection, content: &[u8], sha256: &str) -> Result<i64, StoreError> {
    let size = content.len() as i64;
    Ok(
        sqlx::query_scalar("INSERT INTO blobs (sha256, size, data) VALUES ($1, $2, $3) RETURNING id")
            .bind(sha256.as_bytes())
            .bind(size)
            .bind(content)
            .fetch_one(&mut *conn)
            .await?,
    )
}

/// Stores one blob and places it in each mailbox with the mailbox's next UID.
async fn store_in_mailboxes(
    conn: &mut PgConnection,
    content: &[u8],
    sha256: &str,
    mailboxes: &[MailboxId],
    internal_date: i64,
    flags: &[String],
) -> Result<Vec<StoredMessage>, StoreError> {
    let size = content.len() as u64;
    // Every mailbox's row is locked in id order before any is updated: two messages to the
    // same recipients in another order cannot deadlock.
    let mut ids: Vec<i64> = mailboxes.iter().map(|m| m.0).collect();
    ids.sort_unstable();
    ids.dedup();
    mailboxes::lock_mailboxes(conn, &ids).await?;
    let blob = insert_blob(conn, content, sha256).await?;
    let flag_text = flags.join(" ");
    let mut stored = Vec::with_capacity(mailboxes.len());
    for mailbox in mailboxes {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "UPDATE mailboxes SET uid_next = uid_next + 1, highest_modseq = highest_modseq + 1 \
             WHERE id = $1 RETURNING uid_next - 1, highest_modseq",
        )
        .bind(mailbox.0)
        .fetch_optional(&mut *conn)
        .await?;
        let Some((uid, modseq)) = row else {
            return Err(StoreError::NotFound(format!("mailbox {}", mailbox.0)));
        };
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO messages (mailbox_id, uid, blob_id, flags, internal_date, modseq) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(mailbox.0)
        .bind(uid)
        .bind(blob)
        .bind(&flag_text)
        .bind(internal_date)
        .bind(modseq)
        .fetch_one(&mut *conn)
        .await?;
        stored.push(StoredMessage {
            id: MessageId(id),
            mailbox: *mailbox,
            uid: uid as u32,
            size,
            sha256: sha256.to_string(),
            internal_date,
            flags: flags.to_vec(),
            modseq: modseq as u64,
        });
    }
    Ok(stored)
}

/// Removes those of `candidates` (blobs whose messages or queue entries were just deleted)
/// that nothing uses any more. Only the candidates are looked at, each through the indexes on
/// both blob columns: the single writer never scans every blob.
async fn delete_unused_blobs(conn: &mut PgConnection, candidates: &[i64]) -> Result<(), StoreError> {
    // Locked first (in id order): two transactions that each drop one of a blob's last two
    // references take turns, so the second sees the first's delete and removes the blob.
    sqlx::query("SELECT id FROM blobs WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(candidates)
        .execute(&mut *conn)
        .await?;
    for blob in candidates {
        sqlx::query(
            "DELETE FROM blobs WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM messages WHERE blob_id = $1) AND NOT EXISTS (SELECT 1 FROM queue_messages WHERE blob_id = $1)",
        )
        .bind(blob)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The content, if it hashes to the SHA-256 recorded when it was stored.
fn verified(message: MessageId, expected: &[u8], data: Vec<u8>) -> Result<Vec<u8>, StoreError> {
    let actual = sha256_hex(&data);
    if actual.as_bytes() != expected {
        let error = StoreError::Integrity {
            message,
            expected: String::from_utf8_lossy(expected).into_owned(),
            actual,
        };
        tracing::error!(error = %error, "message failed its integrity check");
        return Err(error);
    }
    Ok(data)
}

#[async_trait]
impl AccountStore for PgStore {
    async fn add_domain(&self, domain: &Domain) -> Result<(), StoreError> {
        self.write(WriteOp::AddDomain(domain.clone())).await.map(|_| ())
    }

    async fn remove_domain(&self, domain: &Domain) -> Result<(), StoreError> {
        self.write(WriteOp::RemoveDomain(domain.clone()))
            .await
            .map(|_| ())
    }

    async fn list_domains(&self) -> Result<Vec<Domain>, StoreError> {
        let names: Vec<String> = sqlx::query_scalar("SELECT name FROM domains ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        names
            .iter()
            .map(|n| Domain::parse(n).map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e)))))
            .collect()
    }

    async fn domain_exists(&self, domain: &Domain) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar("SELECT id FROM domains WHERE name = $1")
            .bind(domain.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    async fn resolve_recipient(&self, address: &EmailAddress) -> Result<Recipient, StoreError> {
        let row: Option<(Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT a.id AS account_id, m.id AS inbox_id FROM domains d \
             LEFT JOIN accounts a ON a.domain_id = d.id AND a.address = $2 \
             LEFT JOIN mailboxes m ON m.account_id = a.id AND m.name = 'INBOX' \
             WHERE d.name = $1",
        )
        .bind(address.domain().as_str())
        .bind(address.to_string())
        .fetch_optional(&self.pool)
        .await?;
        let Some((account, inbox)) = row else {
            return Ok(Recipient::NotLocal);
        };
        Ok(match (account, inbox) {
            (Some(account), Some(inbox)) => Recipient::Local {
                account: AccountId(account),
                inbox: MailboxId(inbox),
            },
            _ => Recipient::UnknownUser,
        })
    }

    async fn add_account(
        &self,
        address: &EmailAddress,
        password_hash: &str,
    ) -> Result<AccountId, StoreError> {
        let op = WriteOp::AddAccount {
            address: address.clone(),
            hash: password_hash.to_string(),
        };
        done_as!(self.write(op).await?, WriteDone::Account)
    }

    async fn set_password_hash(&self, address: &EmailAddress, password_hash: &str) -> Result<(), StoreError> {
        self.write(WriteOp::SetPassword {
            address: address.clone(),
            hash: password_hash.to_string(),
        })
        .await
        .map(|_| ())
    }

    async fn remove_account(&self, address: &EmailAddress) -> Result<(), StoreError> {
        self.write(WriteOp::RemoveAccount(address.clone()))
            .await
            .map(|_| ())
    }

    async fn account(&self, address: &EmailAddress) -> Result<Option<Account>, StoreError> {
        let row: Option<AccountRow> =
            sqlx::query_as("SELECT id, address, password_hash FROM accounts WHERE address = $1")
                .bind(address.to_string())
                .fetch_optional(&self.pool)
                .await?;
        row.map(Account::try_from).transpose()
    }

    async fn account_by_id(&self, id: AccountId) -> Result<Option<Account>, StoreError> {
        let row: Option<AccountRow> =
            sqlx::query_as("SELECT id, address, password_hash FROM accounts WHERE id = $1")
                .bind(id.0)
                .fetch_optional(&self.pool)
                .await?;
        row.map(Account::try_from).transpose()
    }

    async fn credentials_generation(&self) -> Result<i64, StoreError> {
        // Bumped by triggers (migration 9) on every password change and account removal.
        Ok(
            sqlx::query_scalar("SELECT generation FROM credentials_generation WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn list_accounts(&self) -> Result<Vec<Account>, StoreError> {
        let rows: Vec<AccountRow> =
            sqlx::query_as("SELECT id, address, password_hash FROM accounts ORDER BY address")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(Account::try_from).collect()
    }

    async fn account_usage(&self, account: AccountId) -> Result<u64, StoreError> {
        // Kept by the triggers of schema 10: one row read, however large the mailboxes.
        let used: Option<i64> = sqlx::query_scalar("SELECT used_bytes FROM accounts WHERE id = $1")
            .bind(account.0)
            .fetch_optional(&self.pool)
            .await?;
        Ok(used.and_then(|u| u64::try_from(u).ok()).unwrap_or(0))
    }
}

#[async_trait]
impl MailStore for PgStore {
    async fn accept_message(&self, message: AcceptedMessage) -> Result<Accepted, StoreError> {
        // Hash here, in the caller's task, so that hashing runs in parallel outside the writer.
        let local_sha256 = message.local.as_ref().map(|l| sha256_hex(&l.content));
        let outbound_sha256 = message.outbound.as_ref().map(|o| sha256_hex(&o.content));
        let op = WriteOp::Accept {
            message,
            local_sha256,
            outbound_sha256,
        };
        done_as!(self.write(op).await?, WriteDone::Accepted)
    }

    async fn mailboxes(&self, account: AccountId) -> Result<Vec<Mailbox>, StoreError> {
        let rows: Vec<MailboxRow> = sqlx::query_as(concat!(
            "SELECT ",
            mailbox_columns!(),
            " FROM mailboxes WHERE account_id = $1 ORDER BY id"
        ))
        .bind(account.0)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Mailbox::from).collect())
    }

    async fn mailbox(&self, account: AccountId, name: &str) -> Result<Option<Mailbox>, StoreError> {
        mailboxes::find_mailbox(&self.pool, account, name).await
    }

    async fn store_message(&self, message: NewMessage) -> Result<Vec<StoredMessage>, StoreError> {
        // Hash here, in the caller's task, so that hashing runs in parallel outside the writer.
        let sha256 = sha256_hex(&message.content);
        done_as!(
            self.write(WriteOp::StoreMessage { message, sha256 }).await?,
            WriteDone::Stored
        )
    }

    async fn messages(&self, mailbox: MailboxId) -> Result<Vec<StoredMessage>, StoreError> {
        mailboxes::all_messages(&self.pool, mailbox).await
    }

    async fn create_mailbox(&self, account: AccountId, name: &str) -> Result<Mailbox, StoreError> {
        let op = WriteOp::CreateMailbox {
            account,
            name: name.to_string(),
        };
        done_as!(self.write(op).await?, WriteDone::Mailbox)
    }

    async fn delete_mailbox(&self, account: AccountId, name: &str) -> Result<(), StoreError> {
        let op = WriteOp::DeleteMailbox {
            account,
            name: name.to_string(),
        };
        self.write(op).await.map(|_| ())
    }

    async fn rename_mailbox(&self, account: AccountId, from: &str, to: &str) -> Result<(), StoreError> {
        let op = WriteOp::RenameMailbox {
            account,
            from: from.to_string(),
            to: to.to_string(),
        };
        self.write(op).await.map(|_| ())
    }

    async fn set_subscribed(
        &self,
        account: AccountId,
        name: &str,
        subscribed: bool,
    ) -> Result<(), StoreError> {
        let op = WriteOp::Subscribe {
            account,
            name: name.to_string(),
            subscribed,
        };
        self.write(op).await.map(|_| ())
    }

    async fn mailbox_status(&self, mailbox: MailboxId) -> Result<MailboxStatus, StoreError> {
        mailboxes::status(&self.pool, mailbox).await
    }

    async fn subscriptions(&self, account: AccountId) -> Result<Vec<String>, StoreError> {
        mailboxes::subscriptions(&self.pool, account).await
    }

    async fn claim_recent(&self, mailbox: MailboxId, up_to: u32, claim: bool) -> Result<u32, StoreError> {
        let mark = mailboxes::recent_mark(&self.pool, mailbox).await?;
        // Nothing to take: no write (a client looping SELECT would otherwise occupy the
        // writer). The writer reads the mark again, so a claim racing this one is still exact.
        if !claim || up_to <= mark {
            return Ok(mark);
        }
        done_as!(
            self.write(WriteOp::ClaimRecent { mailbox, up_to }).await?,
            WriteDone::Count
        )
        .map(|before| u32::try_from(before).unwrap_or(u32::MAX))
    }

    async fn changes_since(&self, mailbox: MailboxId, modseq: u64) -> Result<MailboxChanges, StoreError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let changes = mailboxes::changes_since(&mut tx, mailbox, modseq).await?;
        tx.commit().await?;
        Ok(changes)
    }

    async fn update_flags(&self, request: SetFlags) -> Result<FlagUpdate, StoreError> {
        done_as!(self.write(WriteOp::UpdateFlags(request)).await?, WriteDone::Flags)
    }

    async fn expunge(&self, mailbox: MailboxId, uids: Option<Vec<u32>>) -> Result<Vec<u32>, StoreError> {
        done_as!(
            self.write(WriteOp::Expunge { mailbox, uids }).await?,
            WriteDone::Uids
        )
    }

    async fn copy_messages(&self, request: CopyMessages) -> Result<Copied, StoreError> {
        done_as!(self.write(WriteOp::Copy(request)).await?, WriteDone::Copied)
    }

    fn watch_mailbox(&self, mailbox: MailboxId) -> tokio::sync::watch::Receiver<()> {
        self.watchers.subscribe(mailbox)
    }

    async fn read_messages(
        &self,
        messages: &[MessageId],
    ) -> Result<Vec<Result<Vec<u8>, StoreError>>, StoreError> {
        let mut found: std::collections::HashMap<i64, (Vec<u8>, Vec<u8>)> = std::collections::HashMap::new();
        for chunk in messages.chunks(500) {
            let list = (0..chunk.len())
                .map(|i| format!("${}", i + 1))
                .collect::<Vec<_>>()
                .join(",");
            // Only numbered placeholders are formatted into the SQL.
            let sql = format!(
                "SELECT m.id, b.sha256, b.data FROM messages m JOIN blobs b ON b.id = m.blob_id WHERE m.id IN ({list})"
            );
            let mut query = sqlx::query_as::<_, (i64, Vec<u8>, Vec<u8>)>(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(id.0);
            }
            for (id, sha256, data) in query.fetch_all(&self.pool).await? {
                found.insert(id, (sha256, data));
            }
        }
        Ok(messages
            .iter()
            .map(|id| match found.remove(&id.0) {
                Some((expected, data)) => verified(*id, &expected, data),
                None => Err(StoreError::NotFound(format!("message {}", id.0))),
            })
            .collect())
    }

    async fn read_message(&self, message: MessageId) -> Result<Vec<u8>, StoreError> {
        let (expected, data): (Vec<u8>, Vec<u8>) = sqlx::query_as(
            "SELECT b.sha256, b.data FROM messages m JOIN blobs b ON b.id = m.blob_id WHERE m.id = $1",
        )
        .bind(message.0)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("message {}", message.0)))?;
        verified(message, &expected, data)
    }
}

#[async_trait]
impl QueueStore for PgStore {
    async fn queue(&self) -> Result<Vec<QueueEntry>, StoreError> {
        queue::entries(&self.pool, None).await
    }

    async fn queue_entry(&self, id: i64) -> Result<Option<QueueEntry>, StoreError> {
        Ok(queue::entries(&self.pool, Some(id)).await?.into_iter().next())
    }

    async fn due_messages(
        &self,
        now: i64,
        limit: i64,
        lease: &QueueLease,
    ) -> Result<Vec<DueMessage>, StoreError> {
        let op = WriteOp::ClaimDue {
            now,
            limit,
            lease: lease.clone(),
        };
        done_as!(self.write(op).await?, WriteDone::Due)
    }

    async fn renew_leases(&self, holder: &str, recipients: &[i64], until: i64) -> Result<u64, StoreError> {
        let op = WriteOp::RenewLeases {
            holder: holder.to_string(),
            recipients: recipients.to_vec(),
            until,
        };
        done_as!(self.write(op).await?, WriteDone::Count)
    }

    async fn register_node(&self, name: &str) -> Result<(), StoreError> {
        let key = format!("sealmail node {} {name}", self.schema);
        let conn = lock_node_name(&self.connect, &key).await?.ok_or_else(|| {
            StoreError::NotAllowed(format!(
                "another running node is named {name:?} on this store; give every node its own server.node_name"
            ))
        })?;
        let keeper = tokio::spawn(keep_node_name(self.connect.clone(), key, conn));
        if let Some(old) = self.node_lock.lock().await.replace(keeper) {
            old.abort();
        }
        Ok(())
    }

    async fn release_leases(&self, holder: &str) -> Result<u64, StoreError> {
        done_as!(
            self.write(WriteOp::ReleaseLeases(holder.to_string())).await?,
            WriteDone::Count
        )
    }

    async fn next_attempt_at(&self) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT MIN(next_attempt_at) FROM queue_recipients WHERE status = 'pending'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn queued_content(&self, id: i64) -> Result<Vec<u8>, StoreError> {
        let (expected, data): (Vec<u8>, Vec<u8>) = sqlx::query_as(
            "SELECT b.sha256, b.data FROM queue_messages q JOIN blobs b ON b.id = q.blob_id WHERE q.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("queued message {id}")))?;
        let actual = sha256_hex(&data);
        if actual.as_bytes() != expected {
            let error = StoreError::QueueIntegrity {
                id,
                expected: String::from_utf8_lossy(&expected).into_owned(),
                actual,
            };
            tracing::error!(error = %error, "queued message failed its integrity check");
            return Err(error);
        }
        Ok(data)
    }

    async fn record_outcomes(
        &self,
        id: i64,
        outcomes: Vec<(i64, RecipientOutcome)>,
    ) -> Result<(), StoreError> {
        self.write(WriteOp::RecordOutcomes { id, outcomes })
            .await
            .map(|_| ())
    }

    async fn retry_queued(&self, id: Option<i64>) -> Result<u64, StoreError> {
        done_as!(self.write(WriteOp::RetryQueued(id)).await?, WriteDone::Count)
    }

    async fn delete_queued(&self, id: i64) -> Result<bool, StoreError> {
        done_as!(self.write(WriteOp::DeleteQueued(id)).await?, WriteDone::Count).map(|n| n > 0)
    }
}

#[async_trait]
impl SecurityStore for PgStore {
    async fn add_ban(&self, address: &str, until: i64, level: i64, reason: &str) -> Result<Ban, StoreError> {
        let op = WriteOp::AddBan {
            address: address.to_string(),
            until,
            level,
            reason: reason.to_string(),
        };
        done_as!(self.write(op).await?, WriteDone::Ban)
    }

    async fn active_bans(&self, now: i64) -> Result<Vec<Ban>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, address, created_at, until, level, reason FROM bans WHERE NOT lifted AND until > $1 ORDER BY id",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn last_ban_level(&self, address: &str, since: i64) -> Result<i64, StoreError> {
        let level: Option<i64> =
            sqlx::query_scalar("SELECT MAX(level) FROM bans WHERE address = $1 AND created_at >= $2")
                .bind(address)
                .bind(since)
                .fetch_one(&self.pool)
                .await?;
        Ok(level.unwrap_or(0))
    }

    async fn lift_bans(&self, address: &str, now: i64) -> Result<u64, StoreError> {
        let op = WriteOp::LiftBans {
            address: address.to_string(),
            now,
        };
        done_as!(self.write(op).await?, WriteDone::Count)
    }

    async fn record_event(&self, event: SecurityEvent) -> Result<(), StoreError> {
        self.write(WriteOp::Event(event)).await.map(|_| ())
    }

    async fn prune_security(&self, before: i64) -> Result<u64, StoreError> {
        done_as!(
            self.write(WriteOp::PruneSecurity { before }).await?,
            WriteDone::Count
        )
    }

    async fn add_abuse_points(&self, key: &str, at: i64, points: i64, since: i64) -> Result<i64, StoreError> {
        let op = WriteOp::AddAbusePoints {
            key: key.to_string(),
            at,
            points,
            since,
        };
        done_as!(self.write(op).await?, WriteDone::Count).map(|n| n as i64)
    }

    async fn take_hourly_use(
        &self,
        key: &str,
        at: i64,
        amount: i64,
        per_hour: i64,
    ) -> Result<bool, StoreError> {
        let op = WriteOp::TakeHourlyUse {
            key: key.to_string(),
            at,
            amount,
            per_hour,
        };
        done_as!(self.write(op).await?, WriteDone::Taken)
    }

    fn shared_by_nodes(&self) -> bool {
        true
    }

    async fn events(&self, since: i64, address: Option<&str>) -> Result<Vec<SecurityEvent>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT at, kind, address, account, listener, detail, node FROM security_events \
             WHERE at >= $1 AND ($2::TEXT IS NULL OR address = $2) ORDER BY id",
        )
        .bind(since)
        .bind(address)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn recent_events(
        &self,
        filter: &EventFilter,
        limit: u32,
    ) -> Result<Vec<SecurityEvent>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT at, kind, address, account, listener, detail, node FROM security_events \
             WHERE at >= $1 AND ($2::TEXT IS NULL OR kind = $2) AND ($3::TEXT IS NULL OR address = $3) \
             AND ($4::TEXT IS NULL OR account = $4) AND ($6::BIGINT IS NULL OR at <= $6) ORDER BY id DESC LIMIT $5",
        )
        .bind(filter.since)
        .bind(filter.kind.as_deref())
        .bind(filter.address.as_deref())
        .bind(filter.account.as_deref())
        .bind(i64::from(limit))
        .bind(filter.until)
        .fetch_all(&self.pool)
        .await?)
    }
}

#[async_trait]
impl ReportStore for PgStore {
    async fn record_tls_result(&self, result: TlsResult) -> Result<(), StoreError> {
        self.write(WriteOp::TlsResult(result)).await.map(|_| ())
    }

    async fn mta_sts_policy(&self, domain: &str) -> Result<Option<StoredStsPolicy>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT domain, policy_id, body, expires_at FROM mta_sts_policies WHERE domain = $1",
        )
        .bind(domain)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn save_mta_sts_policy(&self, policy: StoredStsPolicy) -> Result<(), StoreError> {
        self.write(WriteOp::SaveStsPolicy(policy)).await.map(|_| ())
    }

    async fn tls_results(&self) -> Result<Vec<TlsResultCount>, StoreError> {
        queue::tls_results(&self.pool).await
    }

    async fn prune(&self, retention: Retention) -> Result<Pruned, StoreError> {
        done_as!(self.write(WriteOp::Prune(retention)).await?, WriteDone::Pruned)
    }

    async fn claim_tls_report(&self, day: &str, domain: &str) -> Result<bool, StoreError> {
        let op = WriteOp::ClaimTlsReport {
            day: day.to_string(),
            domain: domain.to_string(),
        };
        done_as!(self.write(op).await?, WriteDone::Count).map(|n| n > 0)
    }

    async fn claim_domain_check(
        &self,
        domain: &str,
        node: &str,
        due_before: i64,
        now: i64,
        until: i64,
    ) -> Result<bool, StoreError> {
        let op = WriteOp::ClaimDomainCheck {
            domain: domain.to_string(),
            node: node.to_string(),
            due_before,
            now,
            until,
        };
        done_as!(self.write(op).await?, WriteDone::Count).map(|n| n > 0)
    }

    async fn record_domain_check(&self, check: DomainCheck) -> Result<(), StoreError> {
        self.write(WriteOp::RecordDomainCheck(check)).await.map(|_| ())
    }

    async fn domain_checks(&self) -> Result<Vec<DomainCheck>, StoreError> {
        checks::list(&self.pool).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str, tls: PgTls, schema: Option<&str>) -> bool {
        let mut options = PgOptions::new(url);
        options.tls = tls;
        options.schema = schema.map(str::to_string);
        matches!(options.connect_options(), Err(StoreError::NotAllowed(_)))
    }

    #[test]
    fn connections_that_would_weaken_the_store_are_refused() {
        // A password in the URL, in either spelling.
        assert!(refused("postgres://u:secret@127.0.0.1/db", PgTls::Disable, None));
        assert!(refused(
            "postgres://u@127.0.0.1/db?password=secret",
            PgTls::Disable,
            None
        ));
        // Another machine: only a certificate for its name proves it.
        for tls in [PgTls::Disable, PgTls::Prefer, PgTls::Require, PgTls::VerifyCa] {
            assert!(refused("postgres://u@db.example.org/db", tls, None), "{tls:?}");
            assert!(
                refused("postgres://u@127.0.0.1/db?host=db.example.org", tls, None),
                "{tls:?}"
            );
        }
        assert!(!refused(
            "postgres://u@db.example.org/db",
            PgTls::VerifyFull,
            None
        ));
        // Loopback and sockets may go without TLS.
        for url in [
            "postgres://u@127.0.0.1/db",
            "postgres://u@localhost/db",
            "postgres://u@[::1]/db",
        ] {
            assert!(!refused(url, PgTls::Disable, None), "{url}");
        }
        // Schema names are plain identifiers (they are formatted into CREATE SCHEMA).
        assert!(refused(
            "postgres://u@127.0.0.1/db",
            PgTls::Disable,
            Some("a; DROP TABLE x")
        ));
        assert!(refused(
            "postgres://u@127.0.0.1/db",
            PgTls::Disable,
            Some("Mixed")
        ));
        assert!(!refused(
            "postgres://u@127.0.0.1/db",
            PgTls::Disable,
            Some("node_1")
        ));
    }

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let mut options = PgOptions::new("postgres://u@127.0.0.1/db");
        options.password = Some("hunter2-secret".into());
        let shown = format!("{options:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
