//! `sealmail migrate-store`: copies a stopped SQLite installation into an empty PostgreSQL
//! schema, row for row (ids, UIDs, flags, mod-sequences, the queue, bans, events), then checks
//! the copy: the same number of rows in every table, and every blob's bytes hash to the SHA-256
//! recorded when it was accepted, in both stores. A blob already corrupt in SQLite stops the
//! copy (it is not carried over as good), and nothing is copied into a schema that has rows.
//!
//! The tables are listed here with their columns' types (the schema at migration 17); a
//! migration that adds a table or column must add it here too, which the tests check by
//! comparing every table of both schemas.

use std::path::Path;

use sqlx::postgres::{PgArguments, PgConnection};
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{Arguments, Row};

use crate::{PgOptions, PgStore, SqliteStore, StoreError, sha256_hex};

/// What a column holds, for reading it from SQLite and binding it for PostgreSQL.
#[derive(Clone, Copy)]
enum Kind {
    Int,
    OptInt,
    Text,
    OptText,
    Bytes,
    Bool,
}

use Kind::{Bool, Bytes, Int, OptInt, OptText, Text};

/// A table and its columns, in the order rows are copied (parents before children).
struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Kind)],
    /// Copied in pages ordered by this integer key (so large tables never sit in memory
    /// whole); `None`: the table is small, read at once.
    page_by: Option<&'static str>,
    /// Has an identity column `id` whose sequence must continue after the copied rows.
    identity: bool,
}

const TABLES: &[Table] = &[
    Table {
        name: "domains",
        columns: &[("id", Int), ("name", Text), ("created_at", Int)],
        page_by: Some("id"),
        identity: true,
    },
    // used_bytes starts at 0: PostgreSQL's triggers count every message copied after.
    Table {
        name: "accounts",
        columns: &[
            ("id", Int),
            ("domain_id", Int),
            ("address", Text),
            ("password_hash", Text),
            ("created_at", Int),
            ("scram_sha256", OptText),
            ("admin", Bool),
        ],
        page_by: Some("id"),
        identity: true,
    },
    Table {
        name: "mailboxes",
        columns: &[
            ("id", Int),
            ("account_id", Int),
            ("name", Text),
            ("special_use", OptText),
            ("uid_validity", Int),
            ("uid_next", Int),
            ("subscribed", Bool),
            ("highest_modseq", Int),
            ("recent_uid", Int),
        ],
        page_by: Some("id"),
        identity: true,
    },
    Table {
        name: "blobs",
        columns: &[("id", Int), ("sha256", Bytes), ("size", Int), ("data", Bytes)],
        page_by: Some("id"),
        identity: true,
    },
    Table {
        name: "messages",
        columns: &[
            ("id", Int),
            ("mailbox_id", Int),
            ("uid", Int),
            ("blob_id", Int),
            ("flags", Text),
            ("internal_date", Int),
            ("modseq", Int),
        ],
        page_by: Some("id"),
        identity: true,
    },
    Table {
        name: "queue_messages",
        columns: &[
            ("id", Int),
            ("blob_id", Int),
            ("sender", Text),
            ("created_at", Int),
            ("require_tls", Bool),
            ("dsn_envid", OptText),
            ("dsn_ret", OptText),
        ],
        page_by: Some("id"),
        identity: true,
    },
    Table {
        name: "queue_recipients",
        columns: &[
            ("id", Int),
            ("queue_id", Int),
            ("address", Text),
            ("domain", Text),
            ("status", Text),
            ("attempts", Int),
            ("next_attempt_at", Int),
            ("last_error", OptText),
            ("dsn_notify", OptText),
            ("dsn_orcpt", OptText),
            ("last_attempt_at", OptInt),
            ("final_at", OptInt),
            ("delay_warned", Bool),
            ("lease_until", Int),
            ("leased_by", OptText),
        ],
        page_by: Some("id"),
        identity: true,
    },
    Table {
        name: "bans",
        columns: &[
            ("id", Int),
            ("address", Text),
            ("created_at", Int),
            ("until", Int),
            ("level", Int),
            ("reason", Text),
            ("lifted", Bool),
        ],
        page_by: Some("id"),
        identity: true,
    },
    Table {
        name: "security_events",
        columns: &[
            ("id", Int),
            ("at", Int),
            ("kind", Text),
            ("address", OptText),
            ("account", OptText),
            ("listener", OptText),
            ("detail", OptText),
            ("node", OptText),
        ],
        page_by: Some("id"),
        identity: true,
    },
    Table {
        name: "expunged",
        columns: &[("mailbox_id", Int), ("uid", Int), ("modseq", Int), ("at", Int)],
        page_by: Some("rowid"),
        identity: false,
    },
    Table {
        name: "tls_results",
        columns: &[
            ("day", Text),
            ("policy_domain", Text),
            ("policy_type", Text),
            ("mx_host", Text),
            ("result_type", Text),
            ("detail", Text),
            ("count", Int),
        ],
        page_by: Some("rowid"),
        identity: false,
    },
    Table {
        name: "mta_sts_policies",
        columns: &[
            ("domain", Text),
            ("policy_id", Text),
            ("body", Text),
            ("expires_at", Int),
        ],
        page_by: Some("rowid"),
        identity: false,
    },
    Table {
        name: "tls_reports_sent",
        columns: &[("day", Text), ("policy_domain", Text), ("sent_at", Int)],
        page_by: Some("rowid"),
        identity: false,
    },
    Table {
        name: "subscriptions",
        columns: &[("account_id", Int), ("name", Text)],
        page_by: Some("rowid"),
        identity: false,
    },
    Table {
        name: "abuse_points",
        columns: &[("key", Text), ("at", Int), ("points", Int)],
        page_by: Some("rowid"),
        identity: false,
    },
    Table {
        name: "hourly_use",
        columns: &[("key", Text), ("at", Int), ("amount", Int)],
        page_by: Some("rowid"),
        identity: false,
    },
    Table {
        name: "app_passwords",
        columns: &[
            ("id", Int),
            ("account_id", Int),
            ("name", Text),
            ("lookup", Text),
            ("password_hash", Text),
            ("scopes", Text),
            ("created_at", Int),
            ("expires_at", OptInt),
            ("last_used_at", OptInt),
            ("last_used_from", OptText),
        ],
        page_by: Some("id"),
        identity: true,
    },
    Table {
        name: "mfa",
        columns: &[
            ("account_id", Int),
            ("sealed_secret", Bytes),
            ("active", Bool),
            ("last_step", Int),
            ("created_at", Int),
            ("activated_at", OptInt),
        ],
        page_by: Some("account_id"),
        identity: false,
    },
    Table {
        name: "recovery_codes",
        columns: &[("account_id", Int), ("code_hash", Text), ("used_at", OptInt)],
        page_by: Some("rowid"),
        identity: false,
    },
    Table {
        name: "client_certs",
        columns: &[
            ("fingerprint", Text),
            ("account_id", Int),
            ("subject", Text),
            ("not_after", Int),
            ("issued_here", Bool),
            ("added_at", Int),
        ],
        page_by: Some("rowid"),
        identity: false,
    },
    Table {
        name: "revoked_certs",
        columns: &[("fingerprint", Text), ("not_after", Int), ("revoked_at", Int)],
        page_by: Some("rowid"),
        identity: false,
    },
    // Copied like the rest: whoever is signed in to the web pages stays so on the new store.
    Table {
        name: "web_sessions",
        columns: &[
            ("id_hash", Text),
            ("account_id", Int),
            ("credential", Text),
            ("client_address", Text),
            ("user_agent", Text),
            ("created_at", Int),
            ("last_seen_at", Int),
            ("expires_at", Int),
        ],
        page_by: Some("rowid"),
        identity: false,
    },
    // Copied with their counters: a use on the new store must still show a replayed one.
    Table {
        name: "security_keys",
        columns: &[
            ("id", Int),
            ("account_id", Int),
            ("credential_id", Bytes),
            ("public_key", Bytes),
            ("name", Text),
            ("sign_count", Int),
            ("created_at", Int),
            ("last_used_at", OptInt),
        ],
        page_by: Some("id"),
        identity: true,
    },
    // The last daily check of each domain: a drop of the grade is still seen after the move.
    Table {
        name: "domain_checks",
        columns: &[
            ("domain", Text),
            ("checked_at", Int),
            ("grade", OptText),
            ("score", OptInt),
            ("report", OptText),
            ("node", OptText),
            ("claimed_by", OptText),
            ("claimed_until", Int),
        ],
        page_by: Some("rowid"),
        identity: false,
    },
];

/// Rows of the one-row tables every new schema already has; copied by overwriting.
const SINGLE_ROWS: &[(&str, &str)] = &[
    (
        "SELECT value FROM counters WHERE name = 'uid_validity'",
        "UPDATE counters SET value = $1 WHERE name = 'uid_validity'",
    ),
    (
        "SELECT generation FROM credentials_generation WHERE id = 1",
        "UPDATE credentials_generation SET generation = $1 WHERE id = 1",
    ),
];

/// Rows per page.
const PAGE: i64 = 256;
/// Blobs per page: whole messages (up to `smtp.max_message_size` each), so few at a time.
const BLOB_PAGE: i64 = 4;

/// How far the copy is: `table`, `done` of `total` rows.
pub struct Progress<'a> {
    pub table: &'a str,
    pub done: u64,
    pub total: u64,
}

/// What was copied and checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// (table, rows) in copy order.
    pub tables: Vec<(String, u64)>,
    /// Blobs whose SHA-256 was checked in both stores.
    pub blobs_verified: u64,
}

/// Copies the SQLite store in `data_dir` (which must not be in use) into the empty schema
/// `target` names; see the module comment.
pub async fn copy_sqlite_to_postgres(
    data_dir: &Path,
    target: &PgOptions,
    progress: &mut (dyn FnMut(Progress<'_>) + Send),
) -> Result<CopyReport, StoreError> {
    // Opening brings the SQLite store up to the schema the tables above describe.
    let source = SqliteStore::open(data_dir, 1).await?;
    let result = async {
        let destination = PgStore::open(target).await?;
        let copied = copy_all(&source, &destination, progress).await;
        destination.close().await;
        copied
    }
    .await;
    source.close().await;
    result
}

async fn copy_all(
    source: &SqliteStore,
    destination: &PgStore,
    progress: &mut (dyn FnMut(Progress<'_>) + Send),
) -> Result<CopyReport, StoreError> {
    // One read transaction: every table is read from the same snapshot, whatever else writes.
    let mut snapshot = source.readers().begin().await?;
    let mut tx = destination.pool().begin().await?;
    for table in TABLES {
        let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM {}",
            table.name
        )))
        .fetch_one(&mut *tx)
        .await?;
        if rows > 0 {
            return Err(StoreError::NotAllowed(format!(
                "the PostgreSQL schema {} is not empty ({} has {rows} rows); nothing was copied. Copy into a new schema (store.schema) or an empty database",
                destination.schema(),
                table.name
            )));
        }
    }
    let mut report = CopyReport::default();
    for table in TABLES {
        let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM {}",
            table.name
        )))
        .fetch_one(&mut *snapshot)
        .await?;
        let page_size = if table.name == "blobs" { BLOB_PAGE } else { PAGE };
        let total = total.max(0) as u64;
        let names: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
        let key = table.page_by.unwrap_or("rowid");
        let select = format!(
            "SELECT {key} AS page_key, {} FROM {} WHERE {key} > ?1 ORDER BY {key} LIMIT ?2",
            names.join(", "),
            table.name
        );
        let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
        let insert = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            table.name,
            names.join(", "),
            placeholders.join(", ")
        );
        let mut after = i64::MIN;
        let mut done = 0u64;
        progress(Progress {
            table: table.name,
            done,
            total,
        });
        loop {
            let page: Vec<SqliteRow> = sqlx::query(sqlx::AssertSqlSafe(select.clone()))
                .bind(after)
                .bind(page_size)
                .fetch_all(&mut *snapshot)
                .await?;
            let Some(last) = page.last() else { break };
            after = last.try_get("page_key")?;
            for row in &page {
                if table.name == "blobs" {
                    check_blob(row)?;
                }
                let mut arguments = PgArguments::default();
                for (name, kind) in table.columns {
                    bind_column(&mut arguments, row, name, *kind)?;
                }
                sqlx::query_with(sqlx::AssertSqlSafe(insert.clone()), arguments)
                    .execute(&mut *tx)
                    .await?;
            }
            done += page.len() as u64;
            progress(Progress {
                table: table.name,
                done,
                total,
            });
        }
        if table.identity {
            let sql = format!(
                "SELECT setval(pg_get_serial_sequence('{0}', 'id'), COALESCE(MAX(id), 0) + 1, false) FROM {0}",
                table.name
            );
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut *tx).await?;
        }
        report.tables.push((table.name.to_string(), done));
    }
    for (read, write) in SINGLE_ROWS {
        let value: Option<i64> = sqlx::query_scalar(*read).fetch_optional(&mut *snapshot).await?;
        if let Some(value) = value {
            sqlx::query(*write).bind(value).execute(&mut *tx).await?;
        }
    }
    // Leases named the old installation's process: the new nodes take everything afresh.
    sqlx::query("UPDATE queue_recipients SET lease_until = 0, leased_by = NULL")
        .execute(&mut *tx)
        .await?;
    // Checked before COMMIT: a copy that fails its check leaves nothing behind.
    report.blobs_verified = verify(&mut snapshot, &mut tx, &report).await?;
    tx.commit().await?;
    let _ = snapshot.rollback().await;
    Ok(report)
}

/// A blob whose bytes do not hash to what was recorded when it was accepted is corrupt in
/// SQLite already: the copy stops (and rolls back) rather than carry it over as good.
fn check_blob(row: &SqliteRow) -> Result<(), StoreError> {
    let id: i64 = row.try_get("id")?;
    let recorded: Vec<u8> = row.try_get("sha256")?;
    let data: Vec<u8> = row.try_get("data")?;
    let actual = sha256_hex(&data);
    if actual.as_bytes() != recorded {
        return Err(StoreError::NotAllowed(format!(
            "blob {id} in the SQLite store hashes to {actual}, not to the {} recorded when it was accepted: it is corrupt there, and nothing was copied",
            String::from_utf8_lossy(&recorded)
        )));
    }
    Ok(())
}

fn bind_column(
    arguments: &mut PgArguments,
    row: &SqliteRow,
    name: &str,
    kind: Kind,
) -> Result<(), StoreError> {
    let added = match kind {
        Int => arguments.add(row.try_get::<i64, _>(name)?),
        OptInt => arguments.add(row.try_get::<Option<i64>, _>(name)?),
        Text => arguments.add(row.try_get::<String, _>(name)?),
        OptText => arguments.add(row.try_get::<Option<String>, _>(name)?),
        Bytes => arguments.add(row.try_get::<Vec<u8>, _>(name)?),
        Bool => arguments.add(row.try_get::<bool, _>(name)?),
    };
    added.map_err(|e| StoreError::Database(sqlx::Error::Encode(e)))
}

/// Checks the copy: the same row counts in both stores, and every blob in PostgreSQL hashes to
/// the SHA-256 SQLite recorded for it (which SQLite's own bytes must match too). Returns how
/// many blobs were checked.
async fn verify(
    source: &mut SqliteConnection,
    destination: &mut PgConnection,
    report: &CopyReport,
) -> Result<u64, StoreError> {
    for (table, copied) in &report.tables {
        let count = format!("SELECT COUNT(*) FROM {table}");
        let here: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count.clone()))
            .fetch_one(&mut *source)
            .await?;
        let there: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count))
            .fetch_one(&mut *destination)
            .await?;
        if here != there || there.max(0) as u64 != *copied {
            return Err(StoreError::NotAllowed(format!(
                "copy check failed: {table} has {here} rows in SQLite but {there} in PostgreSQL"
            )));
        }
    }
    let mut after = 0i64;
    let mut verified = 0u64;
    loop {
        let page: Vec<(i64, Vec<u8>, Vec<u8>)> =
            sqlx::query_as("SELECT id, sha256, data FROM blobs WHERE id > $1 ORDER BY id LIMIT $2")
                .bind(after)
                .bind(BLOB_PAGE)
                .fetch_all(&mut *destination)
                .await?;
        let Some(last) = page.last() else { break };
        after = last.0;
        for (id, copied_sha256, data) in page {
            let recorded: Vec<u8> = sqlx::query_scalar("SELECT sha256 FROM blobs WHERE id = ?1")
                .bind(id)
                .fetch_one(&mut *source)
                .await?;
            let actual = sha256_hex(&data);
            if actual.as_bytes() != recorded || copied_sha256 != recorded {
                return Err(StoreError::NotAllowed(format!(
                    "copy check failed: blob {id} hashes to {actual} in PostgreSQL but SQLite recorded {} when it was accepted",
                    String::from_utf8_lossy(&recorded)
                )));
            }
            verified += 1;
        }
    }
    Ok(verified)
}
