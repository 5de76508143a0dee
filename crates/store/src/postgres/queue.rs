//! The outbound queue in the PostgreSQL backend: what is due, attempt outcomes, retry and delete by
//! the admin, and the per-day TLS results for TLS-RPT. A message leaves the queue in the commit
//! that records its last recipient's final outcome, so a crash never loses one that is pending.

use sqlx::postgres::{PgConnection, PgPool};

use crate::rows::{DueRow, QueuedRow};

use crate::{
    DueMessage, QueueEntry, QueueLease, QueueRecipientState, RecipientOutcome, StoreError, TlsResult,
    TlsResultCount, now_unix,
};

pub(super) async fn record_outcomes(
    conn: &mut PgConnection,
    id: i64,
    outcomes: &[(i64, RecipientOutcome)],
) -> Result<(), StoreError> {
    // The message's row is locked first: outcomes for its other recipients (another domain,
    // another node) wait, so the last one to commit sees no recipient pending and removes it.
    sqlx::query("SELECT id FROM queue_messages WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    let now = now_unix();
    for (recipient, outcome) in outcomes {
        let (status, error, next, final_at, delay_warned) = match outcome {
            RecipientOutcome::Delivered(reply) => ("delivered", reply, None, Some(now), false),
            RecipientOutcome::Deferred {
                error,
                next_attempt_at,
                delay_warned,
            } => ("pending", error, Some(*next_attempt_at), None, *delay_warned),
            RecipientOutcome::Failed(error) => ("failed", error, None, Some(now), false),
        };
        sqlx::query(
            "UPDATE queue_recipients SET status = $1, last_error = $2, attempts = attempts + 1, last_attempt_at = $3, next_attempt_at = COALESCE($4, next_attempt_at), final_at = $5, delay_warned = delay_warned OR $8, lease_until = 0, leased_by = NULL WHERE id = $6 AND queue_id = $7 AND status = 'pending'",
        )
        .bind(status)
        .bind(error)
        .bind(now)
        .bind(next)
        .bind(final_at)
        .bind(recipient)
        .bind(id)
        .bind(delay_warned)
        .execute(&mut *conn)
        .await?;
    }
    let pending: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM queue_recipients WHERE queue_id = $1 AND status = 'pending'",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    if pending == 0 {
        delete(conn, id).await?;
    }
    Ok(())
}

pub(super) async fn delete(conn: &mut PgConnection, id: i64) -> Result<bool, StoreError> {
    let blob: Option<i64> = sqlx::query_scalar("DELETE FROM queue_messages WHERE id = $1 RETURNING blob_id")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(blob) = blob else {
        return Ok(false);
    };
    sqlx::query("DELETE FROM queue_recipients WHERE queue_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    // Queued content is never shared with a mailbox copy (each has its own blob).
    sqlx::query(
        "DELETE FROM blobs WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM messages WHERE blob_id = $1) AND NOT EXISTS (SELECT 1 FROM queue_messages WHERE blob_id = $1)",
    )
    .bind(blob)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

pub(super) async fn retry(conn: &mut PgConnection, id: Option<i64>) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE queue_recipients SET next_attempt_at = $1 WHERE ($2::BIGINT IS NULL OR queue_id = $2) AND status = 'pending'",
    )
    .bind(now_unix())
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

pub(super) async fn record_tls_result(conn: &mut PgConnection, result: &TlsResult) -> Result<(), StoreError> {
    let day = time::OffsetDateTime::now_utc().date().to_string();
    sqlx::query(
        "INSERT INTO tls_results (day, policy_domain, policy_type, mx_host, result_type, detail, count) VALUES ($1, $2, $3, $4, $5, $6, 1) ON CONFLICT (day, policy_domain, policy_type, mx_host, result_type) DO UPDATE SET count = tls_results.count + 1, detail = excluded.detail",
    )
    .bind(day)
    .bind(&result.policy_domain)
    .bind(&result.policy_type)
    .bind(&result.mx_host)
    .bind(&result.result_type)
    .bind(&result.detail)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(super) async fn tls_results(readers: &PgPool) -> Result<Vec<TlsResultCount>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT day, policy_domain, policy_type, mx_host, result_type, detail, count FROM tls_results ORDER BY day, policy_domain, policy_type, mx_host, result_type",
    )
    .fetch_all(readers)
    .await?)
}

pub(super) async fn entries(readers: &PgPool, only: Option<i64>) -> Result<Vec<QueueEntry>, StoreError> {
    let messages: Vec<QueuedRow> = sqlx::query_as(
        "SELECT q.id, q.sender, q.created_at, q.require_tls, b.size FROM queue_messages q JOIN blobs b ON b.id = q.blob_id WHERE $1::BIGINT IS NULL OR q.id = $1 ORDER BY q.id",
    )
    .bind(only)
    .fetch_all(readers)
    .await?;
    let mut entries = Vec::with_capacity(messages.len());
    for row in messages {
        let recipients: Vec<QueueRecipientState> = sqlx::query_as(
            "SELECT address, status, attempts, next_attempt_at, last_error, dsn_notify, dsn_orcpt FROM queue_recipients WHERE queue_id = $1 ORDER BY id",
        )
        .bind(row.id)
        .fetch_all(readers)
        .await?;
        entries.push(QueueEntry {
            id: row.id,
            sender: row.sender,
            size: row.size as u64,
            created_at: row.created_at,
            require_tls: row.require_tls,
            recipients,
        });
    }
    Ok(entries)
}

/// Takes the due recipients no lease holds and leases them: rows another node is taking at
/// this moment are skipped (SKIP LOCKED), not waited for, and each row goes to one node.
pub(super) async fn claim_due(
    conn: &mut PgConnection,
    now: i64,
    limit: i64,
    lease: &QueueLease,
) -> Result<Vec<DueMessage>, StoreError> {
    // One statement: the scheduler runs this several times a second while mail is in flight.
    let rows: Vec<DueRow> = sqlx::query_as(
        "WITH taken AS ( \
           UPDATE queue_recipients SET lease_until = $3, leased_by = $4 WHERE id IN ( \
             SELECT id FROM queue_recipients \
             WHERE status = 'pending' AND next_attempt_at <= $1 AND lease_until <= $1 \
             ORDER BY queue_id, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
           RETURNING id, queue_id, address, domain, attempts, dsn_notify, dsn_orcpt, delay_warned) \
         SELECT q.id AS queue_id, q.sender, q.created_at, q.require_tls, q.dsn_envid, q.dsn_ret, t.id, t.address, t.domain, t.attempts, t.dsn_notify, t.dsn_orcpt, t.delay_warned \
         FROM taken t JOIN queue_messages q ON q.id = t.queue_id ORDER BY q.id, t.id",
    )
    .bind(now)
    .bind(limit)
    .bind(lease.until)
    .bind(&lease.holder)
    .fetch_all(&mut *conn)
    .await?;
    Ok(group_due(rows))
}

pub(super) async fn renew_leases(
    conn: &mut PgConnection,
    holder: &str,
    recipients: &[i64],
    until: i64,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE queue_recipients SET lease_until = $3 WHERE id = ANY($1) AND leased_by = $2 AND status = 'pending'",
    )
    .bind(recipients)
    .bind(holder)
    .bind(until)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

pub(super) async fn release_leases(conn: &mut PgConnection, holder: &str) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE queue_recipients SET lease_until = 0, leased_by = NULL WHERE leased_by = $1 AND status = 'pending'",
    )
    .bind(holder)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// Due rows (ordered by message) as one [`DueMessage`] per message.
fn group_due(rows: Vec<DueRow>) -> Vec<DueMessage> {
    let mut due: Vec<DueMessage> = Vec::new();
    for row in rows {
        if due.last().is_none_or(|m| m.id != row.queue_id) {
            due.push(DueMessage {
                id: row.queue_id,
                sender: row.sender,
                created_at: row.created_at,
                require_tls: row.require_tls,
                dsn_envid: row.dsn_envid,
                dsn_ret: row.dsn_ret,
                recipients: Vec::new(),
            });
        }
        if let Some(message) = due.last_mut() {
            let mut recipient = row.recipient;
            // The column has the domain as queued; DueRecipient promises it in lower case.
            recipient.domain.make_ascii_lowercase();
            message.recipients.push(recipient);
        }
    }
    due
}
