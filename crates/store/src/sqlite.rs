//! The embedded backend: one SQLite database file in WAL mode in the data folder.
//!
//! Durability and group commit: `synchronous = FULL` makes every commit fsync the WAL. All writes
//! go through one writer task that owns the only write connection. It takes every write that is
//! waiting (up to `group_commit_max_batch`), applies each inside its own SAVEPOINT, and commits
//! them together: one fsync for the whole batch, and a failed write rolls back alone. While one
//! batch is being fsynced the next one queues up, so the batch size follows the load by itself.
//! Readers use a separate pool; WAL lets them run while the writer commits.
//!
//! Migrations are sqlx's, embedded in the binary. Before any migration runs on a store that
//! already has data, a consistent snapshot is written to `backups/` (see [`SqliteStore::open`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{mpsc, oneshot};

use sealmail_types::{AccountId, Domain, EmailAddress, MailboxId, MessageId};

mod checks;
mod credentials;
mod mailboxes;
mod queue;
mod web;

use crate::rows::{AccountRow, MailboxRow, mailbox_columns};
use crate::watchers::Watchers;
use crate::write::{Reply, WriteDone, WriteOp, done_as, unexpected};

use crate::{Accepted, AcceptedMessage, Ban, EventFilter, QueueEntry, Recipient, SecurityEvent};
use crate::{
    Account, CommitStats, DEFAULT_MAILBOXES, Mailbox, NewMessage, StoreError, StoredMessage, now_unix,
    sha256_hex,
};
use crate::{AccountStore, MailStore, QueueLease, QueueStore, ReportStore, SecurityStore};
use crate::{Copied, CopyMessages, FlagUpdate, MailboxChanges, MailboxStatus, SetFlags};
use crate::{
    DomainCheck, DueMessage, Pruned, RecipientOutcome, Retention, StoredStsPolicy, TlsResult, TlsResultCount,
};

/// The database file's name inside the data folder.
pub const DB_FILE: &str = "sealmail.db";
/// How long a write waits for another process (e.g. the admin CLI) to release the lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const READERS: u32 = 4;
const WRITE_QUEUE: usize = 4096;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// A schema migration, as `sealmail migrate --dry-run` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub version: i64,
    pub description: String,
}

#[derive(Default)]
struct Counters {
    writes: AtomicU64,
    commits: AtomicU64,
}

pub struct SqliteStore {
    path: PathBuf,
    readers: SqlitePool,
    writer: mpsc::Sender<(WriteOp, Reply)>,
    writer_task: tokio::task::JoinHandle<()>,
    counters: Arc<Counters>,
    watchers: Arc<Watchers>,
}

fn options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true)
        .log_statements(tracing::log::LevelFilter::Trace)
}

/// For reading a store that may belong to another process, without changing its settings.
fn read_only(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .busy_timeout(BUSY_TIMEOUT)
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir` and brings its schema up to date.
    /// If migrations are pending on a store that has data, a snapshot is written first to
    /// `data_dir/backups/pre-migration-vN-TIME.db`.
    pub async fn open(data_dir: &Path, group_commit_max_batch: usize) -> Result<SqliteStore, StoreError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        if !data_dir.exists() {
            sealmail_safeio::create_private_dir(data_dir).map_err(io(data_dir))?;
        }
        let path = data_dir.join(DB_FILE);
        let mut writer = options(&path).create_if_missing(true).connect().await?;

        let applied = applied_versions(&mut writer).await?;
        let known: BTreeSet<i64> = MIGRATOR.iter().map(|m| m.version).collect();
        if let Some(newer) = applied.iter().find(|v| !known.contains(v)) {
            return Err(StoreError::NewerSchema(*newer));
        }
        let pending = known.difference(&applied).count();
        if pending > 0 && !applied.is_empty() {
            let backups = data_dir.join("backups");
            sealmail_safeio::create_private_dir(&backups).map_err(io(&backups))?;
            let current = applied.iter().max().copied().unwrap_or(0);
            let snapshot = backups.join(format!("pre-migration-v{current}-{}.db", now_unix()));
            vacuum_into(&mut writer, &snapshot).await?;
            tracing::info!(snapshot = %snapshot.display(), from = current, pending, "snapshot taken before migrating the store");
        }
        MIGRATOR.run(&mut writer).await?;

        let readers = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(options(&path))
            .await?;
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let max_batch = group_commit_max_batch.max(1);
        let watchers = Arc::new(Watchers::default());
        let writer_task = tokio::spawn(writer_loop(
            writer,
            rx,
            max_batch,
            counters.clone(),
            watchers.clone(),
        ));
        Ok(SqliteStore {
            path,
            readers,
            writer: tx,
            writer_task,
            counters,
            watchers,
        })
    }

    /// The migrations that [`SqliteStore::open`] would apply, without changing anything.
    pub async fn pending_migrations(data_dir: &Path) -> Result<Vec<Migration>, StoreError> {
        let path = data_dir.join(DB_FILE);
        let applied = if path.exists() {
            let mut conn = read_only(&path).connect().await?;
            applied_versions(&mut conn).await?
        } else {
            BTreeSet::new()
        };
        Ok(MIGRATOR
            .iter()
            .filter(|m| !applied.contains(&m.version))
            .map(|m| Migration {
                version: m.version,
                description: m.description.to_string(),
            })
            .collect())
    }

    /// Writes a consistent copy of the database in `data_dir` to `dest`, without migrating it
    /// and while other processes keep writing (for `sealmail backup`).
    pub async fn backup_database(data_dir: &Path, dest: &Path) -> Result<(), StoreError> {
        let path = data_dir.join(DB_FILE);
        if !path.exists() {
            return Err(StoreError::NotFound(format!("store {}", path.display())));
        }
        let mut conn = read_only(&path).connect().await?;
        vacuum_into(&mut conn, dest).await?;
        let _ = conn.close().await;
        Ok(())
    }

    /// Finishes the writes in flight and closes every connection (SQLite then checkpoints
    /// the WAL into the database file).
    pub async fn close(self) {
        let SqliteStore {
            readers,
            writer,
            writer_task,
            ..
        } = self;
        drop(writer);
        let _ = writer_task.await;
        readers.close().await;
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The readers' pool, for copying whole tables (`crate::copy`).
    pub(crate) fn readers(&self) -> &SqlitePool {
        &self.readers
    }

    async fn write(&self, op: WriteOp) -> Result<WriteDone, StoreError> {
        let (reply, done) = oneshot::channel();
        self.writer
            .send((op, reply))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        done.await.map_err(|_| StoreError::WriterGone)?
    }
}

async fn applied_versions(conn: &mut SqliteConnection) -> Result<BTreeSet<i64>, StoreError> {
    let exists: Option<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_optional(&mut *conn)
    .await?;
    if exists.is_none() {
        return Ok(BTreeSet::new());
    }
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success = 1")
        .fetch_all(&mut *conn)
        .await?;
    Ok(versions.into_iter().collect())
}

/// Writes a consistent copy of the database to `dest` and makes it durable.
async fn vacuum_into(conn: &mut SqliteConnection, dest: &Path) -> Result<(), StoreError> {
    let dest_str = dest.to_str().ok_or_else(|| StoreError::Io {
        path: dest.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "path is not UTF-8"),
    })?;
    sqlx::query("VACUUM INTO ?1")
        .bind(dest_str)
        .execute(&mut *conn)
        .await?;
    // VACUUM INTO does not fsync its output.
    let sync = || -> std::io::Result<()> {
        std::fs::File::open(dest)?.sync_all()?;
        sealmail_safeio::sync_dir(dest.parent().unwrap_or(Path::new(".")))
    };
    sync().map_err(|source| StoreError::Io {
        path: dest.to_path_buf(),
        source,
    })
}

async fn writer_loop(
    mut conn: SqliteConnection,
    mut queue: mpsc::Receiver<(WriteOp, Reply)>,
    max_batch: usize,
    counters: Arc<Counters>,
    watchers: Arc<Watchers>,
) {
    let mut batch = Vec::with_capacity(max_batch);
    let mut touched = Vec::new();
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while batch.len() < max_batch {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let mut results = Vec::with_capacity(batch.len());
        let begun = sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await;
        let committed = match begun {
            Err(e) => Err(e.to_string()),
            Ok(_) => {
                let mut rolled_back = false;
                if let [(op, _)] = batch.as_mut_slice() {
                    // A lone write needs no savepoint: if it fails, the whole transaction goes.
                    let result = apply(&mut conn, op).await;
                    if result.is_err() {
                        let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
                        rolled_back = true;
                    }
                    results.push(result);
                } else {
                    for (op, _) in batch.iter_mut() {
                        results.push(apply_in_savepoint(&mut conn, op).await);
                    }
                }
                match rolled_back {
                    true => Ok(()),
                    false => commit(&mut conn).await,
                }
            }
        };
        counters.writes.fetch_add(batch.len() as u64, Ordering::Relaxed);
        counters.commits.fetch_add(1, Ordering::Relaxed);
        match committed {
            Ok(()) => {
                touched.clear();
                for (op, _) in &batch {
                    op.touched_mailboxes(&mut touched);
                }
                touched.sort_unstable();
                touched.dedup();
                watchers.notify(&touched);
                for ((_, reply), result) in batch.drain(..).zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(message) => {
                tracing::error!(error = %message, writes = batch.len(), "store commit failed; no write in the batch was stored");
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(StoreError::Database(sqlx::Error::Protocol(format!(
                        "commit failed: {message}"
                    )))));
                }
            }
        }
    }
    let _ = conn.close().await;
}

async fn commit(conn: &mut SqliteConnection) -> Result<(), String> {
    match sqlx::query("COMMIT").execute(&mut *conn).await {
        Ok(_) => Ok(()),
        Err(e) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            Err(e.to_string())
        }
    }
}

async fn apply_in_savepoint(conn: &mut SqliteConnection, op: &mut WriteOp) -> Result<WriteDone, StoreError> {
    sqlx::query("SAVEPOINT op").execute(&mut *conn).await?;
    let result = apply(conn, op).await;
    if result.is_err() {
        sqlx::query("ROLLBACK TO op").execute(&mut *conn).await?;
    }
    sqlx::query("RELEASE op").execute(&mut *conn).await?;
    result
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

async fn domain_id(conn: &mut SqliteConnection, domain: &Domain) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar("SELECT id FROM domains WHERE name = ?1")
        .bind(domain.as_str())
        .fetch_optional(&mut *conn)
        .await?)
}

async fn apply(conn: &mut SqliteConnection, op: &mut WriteOp) -> Result<WriteDone, StoreError> {
    match op {
        WriteOp::Prune(retention) => prune(conn, retention).await.map(WriteDone::Pruned),
        WriteOp::AddDomain(domain) => {
            let inserted = sqlx::query("INSERT INTO domains (name, created_at) VALUES (?1, ?2)")
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
            let accounts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts WHERE domain_id = ?1")
                .bind(id)
                .fetch_one(&mut *conn)
                .await?;
            if accounts > 0 {
                return Err(StoreError::DomainInUse {
                    domain: domain.clone(),
                    accounts,
                });
            }
            sqlx::query("DELETE FROM domains WHERE id = ?1")
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
                "INSERT INTO accounts (domain_id, address, password_hash, created_at) VALUES (?1, ?2, ?3, ?4) RETURNING id",
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
                    "INSERT INTO mailboxes (account_id, name, special_use, uid_validity) VALUES (?1, ?2, ?3, ?4)",
                )
                .bind(id)
                .bind(*name)
                .bind(*special_use)
                .bind(uid_validity)
                .execute(&mut *conn)
                .await?;
                sqlx::query("INSERT INTO subscriptions (account_id, name) VALUES (?1, ?2)")
                    .bind(id)
                    .bind(*name)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(WriteDone::Account(AccountId(id)))
        }
        WriteOp::SetPassword { address, hash } => {
            let updated =
                sqlx::query("UPDATE accounts SET password_hash = ?1, scram_sha256 = NULL WHERE address = ?2")
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
            let blobs: Vec<i64> = sqlx::query_scalar(
                "SELECT DISTINCT m.blob_id FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id JOIN accounts a ON a.id = b.account_id WHERE a.address = ?1",
            )
            .bind(address.to_string())
            .fetch_all(&mut *conn)
            .await?;
            let removed = sqlx::query("DELETE FROM accounts WHERE address = ?1")
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
            let content = std::mem::take(&mut message.content);
            let stored = store_in_mailboxes(
                conn,
                content,
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
        WriteOp::ReleaseAllLeases => queue::release_all_leases(conn).await.map(WriteDone::Count),
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
                "INSERT INTO mta_sts_policies (domain, policy_id, body, expires_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (domain) DO UPDATE SET policy_id = excluded.policy_id, body = excluded.body, expires_at = excluded.expires_at",
            )
            .bind(&*domain)
            .bind(&*policy_id)
            .bind(&*body)
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
                "INSERT INTO tls_reports_sent (day, policy_domain, sent_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            )
            .bind(&*day)
            .bind(&*domain)
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
            if let (Some(local), Some(sha256)) = (message.local.as_mut(), local_sha256.as_ref()) {
                let content = std::mem::take(&mut local.content);
                accepted.stored = store_in_mailboxes(
                    conn,
                    content,
                    sha256,
                    &local.mailboxes,
                    local.internal_date,
                    &local.flags,
                )
                .await?;
            }
            if let (Some(outbound), Some(sha256)) = (message.outbound.as_mut(), outbound_sha256.as_ref()) {
                let content = std::mem::take(&mut outbound.content);
                let blob = insert_blob(conn, content, sha256).await?;
                let now = now_unix();
                let queue_id: i64 = sqlx::query_scalar(
                    "INSERT INTO queue_messages (blob_id, sender, created_at, require_tls, dsn_envid, dsn_ret) VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
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
                        "INSERT INTO queue_recipients (queue_id, address, domain, next_attempt_at, dsn_notify, dsn_orcpt) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
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

async fn apply_security(conn: &mut SqliteConnection, op: &mut WriteOp) -> Result<WriteDone, StoreError> {
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
            sqlx::query("DELETE FROM abuse_points WHERE key = ?1")
                .bind(address.as_str())
                .execute(&mut *conn)
                .await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO bans (address, created_at, until, level, reason) VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
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
                sqlx::query("UPDATE bans SET lifted = 1 WHERE address = ?1 AND lifted = 0 AND until > ?2")
                    .bind(address.as_str())
                    .bind(*now)
                    .execute(&mut *conn)
                    .await?;
            Ok(WriteDone::Count(lifted.rows_affected()))
        }
        WriteOp::PruneSecurity { before } => {
            let events = sqlx::query("DELETE FROM security_events WHERE at < ?1")
                .bind(*before)
                .execute(&mut *conn)
                .await?;
            let bans = sqlx::query("DELETE FROM bans WHERE until < ?1")
                .bind(*before)
                .execute(&mut *conn)
                .await?;
            // Abuse points of keys that were never counted again (which would have removed
            // them) go with the events; hourly allowances are over after an hour.
            let hour_ago = now_unix() - 3600;
            let points = sqlx::query("DELETE FROM abuse_points WHERE at < ?1")
                .bind(*before)
                .execute(&mut *conn)
                .await?;
            let used = sqlx::query("DELETE FROM hourly_use WHERE at < ?1")
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
            sqlx::query("DELETE FROM abuse_points WHERE key = ?1 AND at < ?2")
                .bind(key.as_str())
                .bind(*since)
                .execute(&mut *conn)
                .await?;
            sqlx::query("INSERT INTO abuse_points (key, at, points) VALUES (?1, ?2, ?3)")
                .bind(key.as_str())
                .bind(*at)
                .bind(*points)
                .execute(&mut *conn)
                .await?;
            let total: i64 =
                sqlx::query_scalar("SELECT COALESCE(SUM(points), 0) FROM abuse_points WHERE key = ?1")
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
            sqlx::query("DELETE FROM hourly_use WHERE key = ?1 AND at <= ?2")
                .bind(key.as_str())
                .bind(*at - 3600)
                .execute(&mut *conn)
                .await?;
            let spent: i64 =
                sqlx::query_scalar("SELECT COALESCE(SUM(amount), 0) FROM hourly_use WHERE key = ?1")
                    .bind(key.as_str())
                    .fetch_one(&mut *conn)
                    .await?;
            if spent.saturating_add(*amount) > *per_hour {
                return Ok(WriteDone::Taken(false));
            }
            sqlx::query("INSERT INTO hourly_use (key, at, amount) VALUES (?1, ?2, ?3)")
                .bind(key.as_str())
                .bind(*at)
                .bind(*amount)
                .execute(&mut *conn)
                .await?;
            Ok(WriteDone::Taken(true))
        }
        WriteOp::Event(event) => {
            sqlx::query(
                "INSERT INTO security_events (at, kind, address, account, listener, detail, node) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
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

async fn prune(conn: &mut SqliteConnection, retention: &Retention) -> Result<Pruned, StoreError> {
    let tombstones = sqlx::query("DELETE FROM expunged WHERE at < ?1")
        .bind(retention.tombstones_before)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    let tls_results = sqlx::query("DELETE FROM tls_results WHERE day < ?1")
        .bind(&retention.tls_days_before)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    let tls_reports_sent = sqlx::query("DELETE FROM tls_reports_sent WHERE day < ?1")
        .bind(&retention.tls_days_before)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    let sts_policies = sqlx::query("DELETE FROM mta_sts_policies WHERE expires_at < ?1")
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

async fn insert_blob(conn: &mut SqliteConnection, content: Vec<u8>, sha256: &str) -> Result<i64, StoreError> {
    let size = content.len() as i64;
    Ok(
        sqlx::query_scalar("INSERT INTO blobs (sha256, size, data) VALUES (?1, ?2, ?3) RETURNING id")
            .bind(sha256.as_bytes())
            .bind(size)
            .bind(content)
            .fetch_one(&mut *conn)
            .await?,
    )
}

/// Stores one blob and places it in each mailbox with the mailbox's next UID.
async fn store_in_mailboxes(
    conn: &mut SqliteConnection,
    content: Vec<u8>,
    sha256: &str,
    mailboxes: &[MailboxId],
    internal_date: i64,
    flags: &[String],
) -> Result<Vec<StoredMessage>, StoreError> {
    let size = content.len() as u64;
    let blob = insert_blob(conn, content, sha256).await?;
    let flag_text = flags.join(" ");
    let mut stored = Vec::with_capacity(mailboxes.len());
    for mailbox in mailboxes {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "UPDATE mailboxes SET uid_next = uid_next + 1, highest_modseq = highest_modseq + 1 \
             WHERE id = ?1 RETURNING uid_next - 1, highest_modseq",
        )
        .bind(mailbox.0)
        .fetch_optional(&mut *conn)
        .await?;
        let Some((uid, modseq)) = row else {
            return Err(StoreError::NotFound(format!("mailbox {}", mailbox.0)));
        };
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO messages (mailbox_id, uid, blob_id, flags, internal_date, modseq) VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
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
async fn delete_unused_blobs(conn: &mut SqliteConnection, candidates: &[i64]) -> Result<(), StoreError> {
    for blob in candidates {
        sqlx::query(
            "DELETE FROM blobs WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM messages WHERE blob_id = ?1) AND NOT EXISTS (SELECT 1 FROM queue_messages WHERE blob_id = ?1)",
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
impl AccountStore for SqliteStore {
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
            .fetch_all(&self.readers)
            .await?;
        names
            .iter()
            .map(|n| Domain::parse(n).map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e)))))
            .collect()
    }

    async fn domain_exists(&self, domain: &Domain) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar("SELECT id FROM domains WHERE name = ?1")
            .bind(domain.as_str())
            .fetch_optional(&self.readers)
            .await?;
        Ok(found.is_some())
    }

    async fn resolve_recipient(&self, address: &EmailAddress) -> Result<Recipient, StoreError> {
        let row: Option<(Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT a.id AS account_id, m.id AS inbox_id FROM domains d \
             LEFT JOIN accounts a ON a.domain_id = d.id AND a.address = ?2 \
             LEFT JOIN mailboxes m ON m.account_id = a.id AND m.name = 'INBOX' \
             WHERE d.name = ?1",
        )
        .bind(address.domain().as_str())
        .bind(address.to_string())
        .fetch_optional(&self.readers)
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
            sqlx::query_as("SELECT id, address, password_hash FROM accounts WHERE address = ?1")
                .bind(address.to_string())
                .fetch_optional(&self.readers)
                .await?;
        row.map(Account::try_from).transpose()
    }

    async fn account_by_id(&self, id: AccountId) -> Result<Option<Account>, StoreError> {
        let row: Option<AccountRow> =
            sqlx::query_as("SELECT id, address, password_hash FROM accounts WHERE id = ?1")
                .bind(id.0)
                .fetch_optional(&self.readers)
                .await?;
        row.map(Account::try_from).transpose()
    }

    async fn credentials_generation(&self) -> Result<i64, StoreError> {
        // Bumped by triggers (migration 9) on every password change and account removal.
        Ok(
            sqlx::query_scalar("SELECT generation FROM credentials_generation WHERE id = 1")
                .fetch_one(&self.readers)
                .await?,
        )
    }

    async fn list_accounts(&self) -> Result<Vec<Account>, StoreError> {
        let rows: Vec<AccountRow> =
            sqlx::query_as("SELECT id, address, password_hash FROM accounts ORDER BY address")
                .fetch_all(&self.readers)
                .await?;
        rows.into_iter().map(Account::try_from).collect()
    }

    async fn account_usage(&self, account: AccountId) -> Result<u64, StoreError> {
        // Kept by the triggers of schema 10: one row read, however large the mailboxes.
        let used: Option<i64> = sqlx::query_scalar("SELECT used_bytes FROM accounts WHERE id = ?1")
            .bind(account.0)
            .fetch_optional(&self.readers)
            .await?;
        Ok(used.and_then(|u| u64::try_from(u).ok()).unwrap_or(0))
    }
}

#[async_trait]
impl MailStore for SqliteStore {
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
            " FROM mailboxes WHERE account_id = ?1 ORDER BY id"
        ))
        .bind(account.0)
        .fetch_all(&self.readers)
        .await?;
        Ok(rows.into_iter().map(Mailbox::from).collect())
    }

    async fn mailbox(&self, account: AccountId, name: &str) -> Result<Option<Mailbox>, StoreError> {
        mailboxes::find_mailbox(&self.readers, account, name).await
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
        mailboxes::all_messages(&self.readers, mailbox).await
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
        mailboxes::status(&self.readers, mailbox).await
    }

    async fn subscriptions(&self, account: AccountId) -> Result<Vec<String>, StoreError> {
        mailboxes::subscriptions(&self.readers, account).await
    }

    async fn claim_recent(&self, mailbox: MailboxId, up_to: u32, claim: bool) -> Result<u32, StoreError> {
        let mark = mailboxes::recent_mark(&self.readers, mailbox).await?;
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
        let mut conn = self.readers.acquire().await?;
        mailboxes::changes_since(&mut conn, mailbox, modseq).await
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
                .map(|i| format!("?{}", i + 1))
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
            for (id, sha256, data) in query.fetch_all(&self.readers).await? {
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
            "SELECT b.sha256, b.data FROM messages m JOIN blobs b ON b.id = m.blob_id WHERE m.id = ?1",
        )
        .bind(message.0)
        .fetch_optional(&self.readers)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("message {}", message.0)))?;
        verified(message, &expected, data)
    }
}

#[async_trait]
impl QueueStore for SqliteStore {
    async fn queue(&self) -> Result<Vec<QueueEntry>, StoreError> {
        queue::entries(&self.readers, None).await
    }

    async fn queue_entry(&self, id: i64) -> Result<Option<QueueEntry>, StoreError> {
        Ok(queue::entries(&self.readers, Some(id)).await?.into_iter().next())
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

    async fn register_node(&self, _name: &str) -> Result<(), StoreError> {
        // The data folder's lock makes this the only process on the file: every lease is left
        // over from an earlier run, whatever name it had then.
        self.write(WriteOp::ReleaseAllLeases).await.map(|_| ())
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
                .fetch_one(&self.readers)
                .await?,
        )
    }

    async fn queued_content(&self, id: i64) -> Result<Vec<u8>, StoreError> {
        let (expected, data): (Vec<u8>, Vec<u8>) = sqlx::query_as(
            "SELECT b.sha256, b.data FROM queue_messages q JOIN blobs b ON b.id = q.blob_id WHERE q.id = ?1",
        )
        .bind(id)
        .fetch_optional(&self.readers)
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
impl SecurityStore for SqliteStore {
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
            "SELECT id, address, created_at, until, level, reason FROM bans WHERE lifted = 0 AND until > ?1 ORDER BY id",
        )
        .bind(now)
        .fetch_all(&self.readers)
        .await?)
    }

    async fn last_ban_level(&self, address: &str, since: i64) -> Result<i64, StoreError> {
        let level: Option<i64> =
            sqlx::query_scalar("SELECT MAX(level) FROM bans WHERE address = ?1 AND created_at >= ?2")
                .bind(address)
                .bind(since)
                .fetch_one(&self.readers)
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
        false
    }

    async fn events(&self, since: i64, address: Option<&str>) -> Result<Vec<SecurityEvent>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT at, kind, address, account, listener, detail, node FROM security_events \
             WHERE at >= ?1 AND (?2 IS NULL OR address = ?2) ORDER BY id",
        )
        .bind(since)
        .bind(address)
        .fetch_all(&self.readers)
        .await?)
    }

    async fn recent_events(
        &self,
        filter: &EventFilter,
        limit: u32,
    ) -> Result<Vec<SecurityEvent>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT at, kind, address, account, listener, detail, node FROM security_events \
             WHERE at >= ?1 AND (?2 IS NULL OR kind = ?2) AND (?3 IS NULL OR address = ?3) \
             AND (?4 IS NULL OR account = ?4) AND (?6 IS NULL OR at <= ?6) ORDER BY id DESC LIMIT ?5",
        )
        .bind(filter.since)
        .bind(filter.kind.as_deref())
        .bind(filter.address.as_deref())
        .bind(filter.account.as_deref())
        .bind(i64::from(limit))
        .bind(filter.until)
        .fetch_all(&self.readers)
        .await?)
    }
}

#[async_trait]
impl ReportStore for SqliteStore {
    async fn record_tls_result(&self, result: TlsResult) -> Result<(), StoreError> {
        self.write(WriteOp::TlsResult(result)).await.map(|_| ())
    }

    async fn mta_sts_policy(&self, domain: &str) -> Result<Option<StoredStsPolicy>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT domain, policy_id, body, expires_at FROM mta_sts_policies WHERE domain = ?1",
        )
        .bind(domain)
        .fetch_optional(&self.readers)
        .await?)
    }

    async fn save_mta_sts_policy(&self, policy: StoredStsPolicy) -> Result<(), StoreError> {
        self.write(WriteOp::SaveStsPolicy(policy)).await.map(|_| ())
    }

    async fn tls_results(&self) -> Result<Vec<TlsResultCount>, StoreError> {
        queue::tls_results(&self.readers).await
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
        checks::list(&self.readers).await
    }
}

impl SqliteStore {
    /// Writes a consistent copy of the whole store to `dest` (a new file), while the store is in use.
    pub async fn snapshot(&self, dest: &Path) -> Result<(), StoreError> {
        let mut conn = self.readers.acquire().await?;
        vacuum_into(&mut conn, dest).await
    }

    /// How writes were batched into commits.
    pub fn commit_stats(&self) -> CommitStats {
        CommitStats {
            writes: self.counters.writes.load(Ordering::Relaxed),
            commits: self.counters.commits.load(Ordering::Relaxed),
        }
    }
}
