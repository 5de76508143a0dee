//! Mailbox state for IMAP in the PostgreSQL backend: mailbox create/delete/rename, flags, expunge,
//! copy/move, and the change log (mod-sequences and expunge tombstones) that lets every session
//! see what the others did.

use sqlx::PgExecutor;
use sqlx::postgres::PgConnection;

use sealmail_types::{AccountId, MailboxId};

use crate::mailbox_rules::{MAX_NAME_BYTES, MAX_NAME_LEVELS, apply_change, is_inbox};
use crate::rows::{MailboxRow, MessageRow, StatusRow, mailbox_columns, message_columns};

use crate::{
    Copied, CopyMessages, FlagUpdate, MAX_MAILBOXES_PER_ACCOUNT, MAX_SUBSCRIPTIONS_PER_ACCOUNT, Mailbox,
    MailboxChanges, MailboxStatus, MessageFlags, SetFlags, StoreError, StoredMessage,
};

/// Takes the mailbox's next mod-sequence.
pub(super) async fn next_modseq(conn: &mut PgConnection, mailbox: MailboxId) -> Result<i64, StoreError> {
    sqlx::query_scalar(
        "UPDATE mailboxes SET highest_modseq = highest_modseq + 1 WHERE id = $1 RETURNING highest_modseq",
    )
    .bind(mailbox.0)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("mailbox {}", mailbox.0)))
}

/// A UIDVALIDITY never handed out before in this store: the time in seconds, or one more than
/// the last one if the clock has not moved on (or went back).
pub(super) async fn next_uid_validity(conn: &mut PgConnection, now: i64) -> Result<i64, StoreError> {
    // Locked to the end of the transaction: two nodes never hand out the same value.
    let last: i64 = sqlx::query_scalar("SELECT value FROM counters WHERE name = 'uid_validity' FOR UPDATE")
        .fetch_optional(&mut *conn)
        .await?
        .unwrap_or(0);
    let next = (now & 0xffff_ffff).max(last + 1);
    if next > u32::MAX as i64 {
        return Err(StoreError::LimitReached(
            "UIDVALIDITY values are exhausted".into(),
        ));
    }
    sqlx::query("INSERT INTO counters (name, value) VALUES ('uid_validity', $1) ON CONFLICT(name) DO UPDATE SET value = $1")
        .bind(next)
        .execute(&mut *conn)
        .await?;
    Ok(next)
}

/// Refuses one more row of a kind a client makes the account keep once it has `max` of them
/// (`count` counts them for account `$1`): a bound on what a client can make us store.
async fn ensure_room(
    conn: &mut PgConnection,
    count: &'static str,
    account: AccountId,
    max: i64,
    what: &str,
) -> Result<(), StoreError> {
    let have: i64 = sqlx::query_scalar(count).bind(account.0).fetch_one(conn).await?;
    if have >= max {
        return Err(StoreError::LimitReached(format!(
            "an account may have at most {max} {what}"
        )));
    }
    Ok(())
}

/// The account's mailbox of that name (INBOX in any case).
pub(super) async fn find_mailbox<'e>(
    executor: impl PgExecutor<'e>,
    account: AccountId,
    name: &str,
) -> Result<Option<Mailbox>, StoreError> {
    let name = if is_inbox(name) { "INBOX" } else { name };
    let row: Option<MailboxRow> = sqlx::query_as(concat!(
        "SELECT ",
        mailbox_columns!(),
        " FROM mailboxes WHERE account_id = $1 AND name = $2"
    ))
    .bind(account.0)
    .bind(name)
    .fetch_optional(executor)
    .await?;
    Ok(row.map(Mailbox::from))
}

/// Every message of the mailbox, in UID order.
pub(super) async fn all_messages<'e>(
    executor: impl PgExecutor<'e>,
    mailbox: MailboxId,
) -> Result<Vec<StoredMessage>, StoreError> {
    let rows: Vec<MessageRow> = sqlx::query_as(concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages m JOIN blobs b ON b.id = m.blob_id WHERE m.mailbox_id = $1 ORDER BY m.uid"
    ))
    .bind(mailbox.0)
    .fetch_all(executor)
    .await?;
    Ok(rows.into_iter().map(StoredMessage::from).collect())
}

pub(super) async fn create(
    conn: &mut PgConnection,
    account: AccountId,
    name: &str,
    now: i64,
) -> Result<Mailbox, StoreError> {
    if is_inbox(name) || find_mailbox(&mut *conn, account, name).await?.is_some() {
        return Err(StoreError::Duplicate(format!("mailbox {name}")));
    }
    ensure_room(
        &mut *conn,
        "SELECT COUNT(*) FROM mailboxes WHERE account_id = $1",
        account,
        MAX_MAILBOXES_PER_ACCOUNT,
        "mailboxes",
    )
    .await?;
    let uid_validity = next_uid_validity(conn, now).await?;
    // CREATE does not subscribe (RFC 3501 6.3.3); a name still subscribed from before is.
    let row: MailboxRow = sqlx::query_as(concat!(
        "INSERT INTO mailboxes (account_id, name, uid_validity, subscribed) VALUES ($1, $2, $3, \
         EXISTS (SELECT 1 FROM subscriptions WHERE account_id = $1 AND name = $2)) RETURNING ",
        mailbox_columns!(),
        ""
    ))
    .bind(account.0)
    .bind(name)
    .bind(uid_validity)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| match e {
        // Another node created the same name at the same moment.
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Duplicate(format!("mailbox {name}"))
        }
        other => other.into(),
    })?;
    Ok(row.into())
}

pub(super) async fn delete(
    conn: &mut PgConnection,
    account: AccountId,
    name: &str,
) -> Result<(), StoreError> {
    if is_inbox(name) {
        return Err(StoreError::NotAllowed("INBOX cannot be deleted".into()));
    }
    let Some(mailbox) = find_mailbox(&mut *conn, account, name).await? else {
        return Err(StoreError::NotFound(format!("mailbox {name}")));
    };
    // Locked before its blobs are listed: a message another node is storing into it either
    // committed before (and is listed) or waits and then finds the mailbox gone.
    lock_mailboxes(conn, &[mailbox.id.0]).await?;
    let blobs: Vec<i64> = sqlx::query_scalar("SELECT DISTINCT blob_id FROM messages WHERE mailbox_id = $1")
        .bind(mailbox.id.0)
        .fetch_all(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM mailboxes WHERE id = $1")
        .bind(mailbox.id.0)
        .execute(&mut *conn)
        .await?;
    super::delete_unused_blobs(conn, &blobs).await
}

pub(super) async fn rename(
    conn: &mut PgConnection,
    account: AccountId,
    from: &str,
    to: &str,
) -> Result<(), StoreError> {
    if is_inbox(from) {
        return Err(StoreError::NotAllowed(
            "renaming INBOX is not supported; create a new mailbox and move the messages".into(),
        ));
    }
    if find_mailbox(&mut *conn, account, from).await?.is_none() {
        return Err(StoreError::NotFound(format!("mailbox {from}")));
    }
    if is_inbox(to) || find_mailbox(&mut *conn, account, to).await?.is_some() {
        return Err(StoreError::Duplicate(format!("mailbox {to}")));
    }
    if to.starts_with(&format!("{from}/")) {
        return Err(StoreError::NotAllowed(
            "a mailbox cannot be moved below itself".into(),
        ));
    }
    // The mailbox and everything below it: "a" -> "b" also makes "a/x" into "b/x". substr()
    // counts characters in text, not bytes: "Ärger" is 5 long, not 6. (PostgreSQL before 16
    // wants the subquery below named: `AS renamed`.)
    let prefix_len = from.chars().count() as i64;
    // Every name the rename makes, subscriptions included, stays within the limits CREATE
    // enforces: otherwise renaming a parent below a long name, again and again, grows names
    // without end.
    let (longest, deepest): (Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT MAX(octet_length(n))::BIGINT, MAX(length(n) - length(replace(n, '/', '')))::BIGINT FROM ( \
           SELECT $3 || substr(name, ($4 + 1)::INT) AS n FROM mailboxes \
             WHERE account_id = $1 AND (name = $2 OR substr(name, 1, ($4 + 1)::INT) = $2 || '/') \
           UNION ALL \
           SELECT $3 || substr(name, ($4 + 1)::INT) AS n FROM subscriptions \
             WHERE account_id = $1 AND (name = $2 OR substr(name, 1, ($4 + 1)::INT) = $2 || '/')) AS renamed",
    )
    .bind(account.0)
    .bind(from)
    .bind(to)
    .bind(prefix_len)
    .fetch_one(&mut *conn)
    .await?;
    if longest.unwrap_or(0) > MAX_NAME_BYTES || deepest.unwrap_or(0) >= MAX_NAME_LEVELS {
        return Err(StoreError::LimitReached(format!(
            "a mailbox name below {to} would be longer than {MAX_NAME_BYTES} bytes or {MAX_NAME_LEVELS} levels"
        )));
    }
    // Both statements take $1 the account, $2 the old name, $3 the new one, $4 prefix_len.
    let rename_below = |sql| {
        sqlx::query(sql)
            .bind(account.0)
            .bind(from)
            .bind(to)
            .bind(prefix_len)
    };
    rename_below(
        "UPDATE mailboxes SET name = $3 || substr(name, ($4 + 1)::INT) \
         WHERE account_id = $1 AND (name = $2 OR substr(name, 1, ($4 + 1)::INT) = $2 || '/')",
    )
    .execute(&mut *conn)
    .await
    .map_err(|e| match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Duplicate(format!("a mailbox below {to}"))
        }
        other => other.into(),
    })?;
    // Subscriptions go along with the mailboxes; one the new name already had stays.
    rename_below(
        "DELETE FROM subscriptions WHERE account_id = $1 AND name IN ( \
           SELECT $3 || substr(name, ($4 + 1)::INT) FROM subscriptions \
             WHERE account_id = $1 AND (name = $2 OR substr(name, 1, ($4 + 1)::INT) = $2 || '/'))",
    )
    .execute(&mut *conn)
    .await?;
    rename_below(
        "UPDATE subscriptions SET name = $3 || substr(name, ($4 + 1)::INT) \
         WHERE account_id = $1 AND (name = $2 OR substr(name, 1, ($4 + 1)::INT) = $2 || '/')",
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Subscribes to an existing mailbox, or unsubscribes a name (which may no longer exist: a
/// deleted mailbox stays subscribed until then, RFC 3501 6.3.6).
pub(super) async fn set_subscribed(
    conn: &mut PgConnection,
    account: AccountId,
    name: &str,
    subscribed: bool,
) -> Result<(), StoreError> {
    let mailbox = find_mailbox(&mut *conn, account, name).await?;
    let name = mailbox.as_ref().map_or(name, |m| m.name.as_str());
    if subscribed {
        let Some(mailbox) = &mailbox else {
            return Err(StoreError::NotFound(format!("mailbox {name}")));
        };
        // Names outlive their mailboxes here: bounded, so create-subscribe-delete cycles
        // cannot grow the table without end.
        ensure_room(
            &mut *conn,
            "SELECT COUNT(*) FROM subscriptions WHERE account_id = $1",
            account,
            MAX_SUBSCRIPTIONS_PER_ACCOUNT,
            "subscriptions; unsubscribe some",
        )
        .await?;
        sqlx::query("INSERT INTO subscriptions (account_id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(account.0)
            .bind(name)
            .execute(&mut *conn)
            .await?;
        sqlx::query("UPDATE mailboxes SET subscribed = TRUE WHERE id = $1")
            .bind(mailbox.id.0)
            .execute(&mut *conn)
            .await?;
        return Ok(());
    }
    let removed = sqlx::query("DELETE FROM subscriptions WHERE account_id = $1 AND name = $2")
        .bind(account.0)
        .bind(name)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    match mailbox {
        Some(mailbox) => {
            sqlx::query("UPDATE mailboxes SET subscribed = FALSE WHERE id = $1")
                .bind(mailbox.id.0)
                .execute(&mut *conn)
                .await?;
            Ok(())
        }
        None if removed > 0 => Ok(()),
        None => Err(StoreError::NotFound(format!("mailbox {name}"))),
    }
}

/// The names an account subscribed to, whether their mailboxes exist or not.
pub(super) async fn subscriptions<'e>(
    executor: impl PgExecutor<'e>,
    account: AccountId,
) -> Result<Vec<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT name FROM subscriptions WHERE account_id = $1 ORDER BY name")
            .bind(account.0)
            .fetch_all(executor)
            .await?,
    )
}

/// Raises the mailbox's `\Recent` mark to `up_to` (never lowers it); returns the mark before.
pub(super) async fn claim_recent(
    conn: &mut PgConnection,
    mailbox: MailboxId,
    up_to: u32,
) -> Result<u32, StoreError> {
    // The row stays locked to the commit: reading then raising is one step for every other
    // session, on every node.
    let before: Option<i64> = sqlx::query_scalar("SELECT recent_uid FROM mailboxes WHERE id = $1 FOR UPDATE")
        .bind(mailbox.0)
        .fetch_optional(&mut *conn)
        .await?;
    let before = before.ok_or_else(|| StoreError::NotFound(format!("mailbox {}", mailbox.0)))?;
    let before = u32::try_from(before).unwrap_or(0);
    if up_to > before {
        sqlx::query("UPDATE mailboxes SET recent_uid = $2 WHERE id = $1")
            .bind(mailbox.0)
            .bind(i64::from(up_to))
            .execute(&mut *conn)
            .await?;
    }
    Ok(before)
}

pub(super) async fn recent_mark<'e>(
    executor: impl PgExecutor<'e>,
    mailbox: MailboxId,
) -> Result<u32, StoreError> {
    let mark: Option<i64> = sqlx::query_scalar("SELECT recent_uid FROM mailboxes WHERE id = $1")
        .bind(mailbox.0)
        .fetch_optional(executor)
        .await?;
    let mark = mark.ok_or_else(|| StoreError::NotFound(format!("mailbox {}", mailbox.0)))?;
    Ok(u32::try_from(mark).unwrap_or(0))
}

/// UIDs as PostgreSQL takes them in one array parameter.
fn uid_array(uids: &[u32]) -> Vec<i64> {
    uids.iter().map(|uid| i64::from(*uid)).collect()
}

async fn messages_with_uids(
    conn: &mut PgConnection,
    mailbox: MailboxId,
    uids: &[u32],
) -> Result<Vec<StoredMessage>, StoreError> {
    let rows: Vec<MessageRow> = sqlx::query_as(concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages m JOIN blobs b ON b.id = m.blob_id WHERE m.mailbox_id = $1 AND m.uid = ANY($2) ORDER BY m.uid"
    ))
    .bind(mailbox.0)
    .bind(uid_array(uids))
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(StoredMessage::from).collect())
}

/// Locks the mailboxes' rows to the end of the transaction, in id order (so two writes that
/// lock the same mailboxes cannot deadlock): every change to their messages on any node waits.
pub(super) async fn lock_mailboxes(conn: &mut PgConnection, mailboxes: &[i64]) -> Result<(), StoreError> {
    let found: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM mailboxes WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(mailboxes)
            .fetch_all(&mut *conn)
            .await?;
    match mailboxes.iter().find(|id| !found.contains(id)) {
        Some(missing) => Err(StoreError::NotFound(format!("mailbox {missing}"))),
        None => Ok(()),
    }
}

pub(super) async fn update_flags(
    conn: &mut PgConnection,
    request: &SetFlags,
) -> Result<FlagUpdate, StoreError> {
    let SetFlags {
        mailbox,
        ref uids,
        change,
        ref flags,
        unchanged_since,
    } = *request;
    lock_mailboxes(conn, &[mailbox.0]).await?;
    let current = messages_with_uids(conn, mailbox, uids).await?;
    let mut update = FlagUpdate::default();
    let mut modseq: Option<i64> = None;
    for message in current {
        if unchanged_since.is_some_and(|limit| message.modseq > limit) {
            update.modified.push(message.uid);
            continue;
        }
        let new_flags = apply_change(&message.flags, change, flags);
        if new_flags == message.flags {
            update.messages.push(MessageFlags {
                uid: message.uid,
                flags: message.flags,
                modseq: message.modseq,
            });
            continue;
        }
        let seq = match modseq {
            Some(seq) => seq,
            None => *modseq.insert(next_modseq(conn, mailbox).await?),
        };
        sqlx::query("UPDATE messages SET flags = $2, modseq = $3 WHERE id = $1")
            .bind(message.id.0)
            .bind(new_flags.join(" "))
            .bind(seq)
            .execute(&mut *conn)
            .await?;
        update.messages.push(MessageFlags {
            uid: message.uid,
            flags: new_flags,
            modseq: seq as u64,
        });
    }
    Ok(update)
}

async fn remove_messages(
    conn: &mut PgConnection,
    mailbox: MailboxId,
    uids: &[u32],
) -> Result<(), StoreError> {
    if uids.is_empty() {
        return Ok(());
    }
    let modseq = next_modseq(conn, mailbox).await?;
    let now = crate::now_unix();
    let uids = uid_array(uids);
    let mut blobs: Vec<i64> =
        sqlx::query_scalar("DELETE FROM messages WHERE mailbox_id = $1 AND uid = ANY($2) RETURNING blob_id")
            .bind(mailbox.0)
            .bind(&uids)
            .fetch_all(&mut *conn)
            .await?;
    sqlx::query("INSERT INTO expunged (mailbox_id, uid, modseq, at) SELECT $1, uid, $3, $4 FROM UNNEST($2::BIGINT[]) AS uid")
        .bind(mailbox.0)
        .bind(&uids)
        .bind(modseq)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    blobs.sort_unstable();
    blobs.dedup();
    super::delete_unused_blobs(conn, &blobs).await
}

pub(super) async fn expunge(
    conn: &mut PgConnection,
    mailbox: MailboxId,
    uids: Option<&[u32]>,
) -> Result<Vec<u32>, StoreError> {
    lock_mailboxes(conn, &[mailbox.0]).await?;
    let candidates = match uids {
        Some(uids) => messages_with_uids(conn, mailbox, uids).await?,
        None => all_messages(&mut *conn, mailbox).await?,
    };
    let deleted: Vec<u32> = candidates
        .into_iter()
        .filter(|m| m.flags.iter().any(|f| f.eq_ignore_ascii_case("\\Deleted")))
        .map(|m| m.uid)
        .collect();
    remove_messages(conn, mailbox, &deleted).await?;
    Ok(deleted)
}

pub(super) async fn copy(conn: &mut PgConnection, request: &CopyMessages) -> Result<Copied, StoreError> {
    let CopyMessages {
        from,
        ref uids,
        to,
        remove_source,
    } = *request;
    let mut locked = vec![from.0, to.0];
    locked.sort_unstable();
    locked.dedup();
    lock_mailboxes(conn, &locked).await?;
    let source = messages_with_uids(conn, from, uids).await?;
    let (uid_validity,): (i64,) = sqlx::query_as("SELECT uid_validity FROM mailboxes WHERE id = $1")
        .bind(to.0)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("mailbox {}", to.0)))?;
    let mut copied = Copied {
        uid_validity: uid_validity as u32,
        uids: Vec::with_capacity(source.len()),
    };
    if source.is_empty() {
        return Ok(copied);
    }
    let modseq = next_modseq(conn, to).await?;
    for message in &source {
        let uid: i64 = sqlx::query_scalar(
            "UPDATE mailboxes SET uid_next = uid_next + 1 WHERE id = $1 RETURNING uid_next - 1",
        )
        .bind(to.0)
        .fetch_one(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO messages (mailbox_id, uid, blob_id, flags, internal_date, modseq) \
             SELECT $1, $2, blob_id, flags, internal_date, $3 FROM messages WHERE id = $4",
        )
        .bind(to.0)
        .bind(uid)
        .bind(modseq)
        .bind(message.id.0)
        .execute(&mut *conn)
        .await?;
        copied.uids.push((message.uid, uid as u32));
    }
    if remove_source {
        let moved: Vec<u32> = source.iter().map(|m| m.uid).collect();
        remove_messages(conn, from, &moved).await?;
    }
    Ok(copied)
}

pub(super) async fn status<'e>(
    executor: impl PgExecutor<'e>,
    mailbox: MailboxId,
) -> Result<MailboxStatus, StoreError> {
    let row: StatusRow = sqlx::query_as(
        "SELECT mb.uid_next, mb.uid_validity, mb.highest_modseq, \
           COUNT(m.id) AS messages, \
           COALESCE(SUM(CASE WHEN m.uid > mb.recent_uid THEN 1 ELSE 0 END), 0)::BIGINT AS recent, \
           COALESCE(SUM(CASE WHEN strpos(' ' || m.flags || ' ', ' \\Seen ') = 0 THEN 1 ELSE 0 END), 0)::BIGINT AS unseen, \
           COALESCE(SUM(CASE WHEN strpos(' ' || m.flags || ' ', ' \\Deleted ') > 0 THEN 1 ELSE 0 END), 0)::BIGINT AS deleted, \
           COALESCE(SUM(b.size), 0)::BIGINT AS size \
         FROM mailboxes mb LEFT JOIN messages m ON m.mailbox_id = mb.id LEFT JOIN blobs b ON b.id = m.blob_id \
         WHERE mb.id = $1 GROUP BY mb.id",
    )
    .bind(mailbox.0)
    .fetch_optional(executor)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("mailbox {}", mailbox.0)))?;
    Ok(row.into())
}

pub(super) async fn changes_since(
    conn: &mut PgConnection,
    mailbox: MailboxId,
    modseq: u64,
) -> Result<MailboxChanges, StoreError> {
    // One read transaction: the rows and HIGHESTMODSEQ come from the same snapshot, so nothing
    // committed in between can be skipped. The caller's sqlx transaction rolls back if this
    // future is dropped, so a pooled connection never keeps a stale snapshot.
    async {
        let highest: Option<i64> = sqlx::query_scalar("SELECT highest_modseq FROM mailboxes WHERE id = $1")
            .bind(mailbox.0)
            .fetch_optional(&mut *conn)
            .await?;
        let highest = highest.ok_or_else(|| StoreError::NotFound(format!("mailbox {}", mailbox.0)))?;
        let rows: Vec<MessageRow> = sqlx::query_as(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages m JOIN blobs b ON b.id = m.blob_id \
             WHERE m.mailbox_id = $1 AND m.modseq > $2 ORDER BY m.uid"
        ))
        .bind(mailbox.0)
        .bind(modseq as i64)
        .fetch_all(&mut *conn)
        .await?;
        let changed = rows.into_iter().map(StoredMessage::from).collect();
        // From zero (a SELECT) nobody can need to hear of an expunge: skip the tombstones.
        let mut expunged: Vec<u32> = if modseq == 0 {
            Vec::new()
        } else {
            sqlx::query_scalar::<_, i64>("SELECT uid FROM expunged WHERE mailbox_id = $1 AND modseq > $2")
                .bind(mailbox.0)
                .bind(modseq as i64)
                .fetch_all(&mut *conn)
                .await?
                .into_iter()
                .map(|uid| uid as u32)
                .collect()
        };
        expunged.sort_unstable();
        expunged.dedup();
        Ok(MailboxChanges {
            highest_modseq: highest as u64,
            changed,
            expunged,
        })
    }
    .await
}
