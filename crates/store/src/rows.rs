//! Rows as both backends read them (sqlx's `FromRow` is generic over the database), and how
//! they become the store's types. Integer columns are i64 in both; SQLite reads its 0/1 flag
//! columns as `bool` too.

use sealmail_types::{AccountId, EmailAddress, MailboxId, MessageId};

use crate::{Account, DueRecipient, Mailbox, MailboxStatus, StoreError, StoredMessage};

// Column lists as macros so queries stay `&'static str` (sqlx only takes dynamic SQL through
// an explicit AssertSqlSafe).
macro_rules! mailbox_columns {
    () => {
        "id, account_id, name, special_use, uid_validity, uid_next, subscribed, highest_modseq"
    };
}
pub(crate) use mailbox_columns;

/// Message columns; the query must join `messages m` with `blobs b`.
macro_rules! message_columns {
    () => {
        "m.id, m.mailbox_id, m.uid, m.flags, m.internal_date, m.modseq, b.size, b.sha256"
    };
}
pub(crate) use message_columns;

/// A row of [`mailbox_columns`].
#[derive(sqlx::FromRow)]
pub(crate) struct MailboxRow {
    pub(crate) id: i64,
    pub(crate) account_id: i64,
    pub(crate) name: String,
    pub(crate) special_use: Option<String>,
    pub(crate) uid_validity: i64,
    pub(crate) uid_next: i64,
    pub(crate) subscribed: bool,
    pub(crate) highest_modseq: i64,
}

impl From<MailboxRow> for Mailbox {
    fn from(row: MailboxRow) -> Mailbox {
        Mailbox {
            id: MailboxId(row.id),
            account: AccountId(row.account_id),
            name: row.name,
            special_use: row.special_use,
            uid_validity: row.uid_validity as u32,
            uid_next: row.uid_next as u32,
            subscribed: row.subscribed,
            highest_modseq: row.highest_modseq as u64,
        }
    }
}

/// A row of [`message_columns`].
#[derive(sqlx::FromRow)]
pub(crate) struct MessageRow {
    pub(crate) id: i64,
    pub(crate) mailbox_id: i64,
    pub(crate) uid: i64,
    /// Space-separated, in the order they were set.
    pub(crate) flags: String,
    pub(crate) internal_date: i64,
    pub(crate) modseq: i64,
    pub(crate) size: i64,
    /// Lower-case hex, stored as bytes.
    pub(crate) sha256: Vec<u8>,
}

impl From<MessageRow> for StoredMessage {
    fn from(row: MessageRow) -> StoredMessage {
        StoredMessage {
            id: MessageId(row.id),
            mailbox: MailboxId(row.mailbox_id),
            uid: row.uid as u32,
            size: row.size as u64,
            sha256: String::from_utf8_lossy(&row.sha256).into_owned(),
            internal_date: row.internal_date,
            flags: row.flags.split_ascii_whitespace().map(str::to_string).collect(),
            modseq: row.modseq as u64,
        }
    }
}

/// The row [`status`] reads: the mailbox's counters and the counts over its messages.
#[derive(sqlx::FromRow)]
pub(crate) struct StatusRow {
    pub(crate) messages: i64,
    pub(crate) recent: i64,
    pub(crate) unseen: i64,
    pub(crate) deleted: i64,
    pub(crate) size: i64,
    pub(crate) uid_next: i64,
    pub(crate) uid_validity: i64,
    pub(crate) highest_modseq: i64,
}

impl From<StatusRow> for MailboxStatus {
    fn from(row: StatusRow) -> MailboxStatus {
        MailboxStatus {
            messages: row.messages as u32,
            recent: row.recent as u32,
            unseen: row.unseen as u32,
            deleted: row.deleted as u32,
            size: row.size as u64,
            uid_next: row.uid_next as u32,
            uid_validity: row.uid_validity as u32,
            highest_modseq: row.highest_modseq as u64,
        }
    }
}

/// An `accounts` row; the address is parsed again on the way out.
#[derive(sqlx::FromRow)]
pub(crate) struct AccountRow {
    pub(crate) id: i64,
    pub(crate) address: String,
    pub(crate) password_hash: String,
}

impl TryFrom<AccountRow> for Account {
    type Error = StoreError;

    fn try_from(row: AccountRow) -> Result<Account, StoreError> {
        Ok(Account {
            id: AccountId(row.id),
            address: EmailAddress::parse(&row.address)
                .map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))?,
            password_hash: row.password_hash,
        })
    }
}

/// A `queue_messages` row with its size, as [`entries`] reads it.
#[derive(sqlx::FromRow)]
pub(crate) struct QueuedRow {
    pub(crate) id: i64,
    pub(crate) sender: String,
    pub(crate) created_at: i64,
    pub(crate) require_tls: bool,
    pub(crate) size: i64,
}

/// A due recipient with its message's columns, as [`due`] reads it.
#[derive(sqlx::FromRow)]
pub(crate) struct DueRow {
    pub(crate) queue_id: i64,
    pub(crate) sender: String,
    pub(crate) created_at: i64,
    pub(crate) require_tls: bool,
    pub(crate) dsn_envid: Option<String>,
    pub(crate) dsn_ret: Option<String>,
    #[sqlx(flatten)]
    pub(crate) recipient: DueRecipient,
}

/// An `app_passwords` row, all columns.
#[derive(sqlx::FromRow)]
pub(crate) struct AppPasswordRow {
    pub(crate) id: i64,
    pub(crate) account_id: i64,
    pub(crate) name: String,
    pub(crate) lookup: String,
    pub(crate) password_hash: String,
    pub(crate) scopes: String,
    pub(crate) created_at: i64,
    pub(crate) expires_at: Option<i64>,
    pub(crate) last_used_at: Option<i64>,
    pub(crate) last_used_from: Option<String>,
}

impl From<AppPasswordRow> for crate::AppPassword {
    fn from(row: AppPasswordRow) -> crate::AppPassword {
        crate::AppPassword {
            id: row.id,
            account: AccountId(row.account_id),
            name: row.name,
            lookup: row.lookup,
            password_hash: row.password_hash,
            scopes: row.scopes,
            created_at: row.created_at,
            expires_at: row.expires_at,
            last_used_at: row.last_used_at,
            last_used_from: row.last_used_from,
        }
    }
}

/// An `mfa` row with the count of its unused recovery codes.
#[derive(sqlx::FromRow)]
pub(crate) struct MfaRow {
    pub(crate) sealed_secret: Vec<u8>,
    pub(crate) active: bool,
    pub(crate) last_step: i64,
    pub(crate) created_at: i64,
    pub(crate) activated_at: Option<i64>,
    pub(crate) recovery_codes_left: i64,
}

impl From<MfaRow> for crate::Mfa {
    fn from(row: MfaRow) -> crate::Mfa {
        crate::Mfa {
            sealed_secret: row.sealed_secret,
            active: row.active,
            last_step: row.last_step,
            created_at: row.created_at,
            activated_at: row.activated_at,
            recovery_codes_left: u32::try_from(row.recovery_codes_left).unwrap_or(0),
        }
    }
}

/// A `client_certs` row.
#[derive(sqlx::FromRow)]
pub(crate) struct ClientCertRow {
    pub(crate) fingerprint: String,
    pub(crate) account_id: i64,
    pub(crate) subject: String,
    pub(crate) not_after: i64,
    pub(crate) issued_here: bool,
    pub(crate) added_at: i64,
}

impl From<ClientCertRow> for crate::ClientCert {
    fn from(row: ClientCertRow) -> crate::ClientCert {
        crate::ClientCert {
            fingerprint: row.fingerprint,
            account: AccountId(row.account_id),
            subject: row.subject,
            not_after: row.not_after,
            issued_here: row.issued_here,
            added_at: row.added_at,
        }
    }
}

/// A `web_sessions` row.
#[derive(sqlx::FromRow)]
pub(crate) struct WebSessionRow {
    pub(crate) id_hash: String,
    pub(crate) account_id: i64,
    pub(crate) credential: String,
    pub(crate) client_address: String,
    pub(crate) user_agent: String,
    pub(crate) created_at: i64,
    pub(crate) last_seen_at: i64,
    pub(crate) expires_at: i64,
}

impl From<WebSessionRow> for crate::WebSession {
    fn from(row: WebSessionRow) -> crate::WebSession {
        crate::WebSession {
            id_hash: row.id_hash,
            account: AccountId(row.account_id),
            credential: row.credential,
            client_address: row.client_address,
            user_agent: row.user_agent,
            created_at: row.created_at,
            last_seen_at: row.last_seen_at,
            expires_at: row.expires_at,
        }
    }
}

/// A `security_keys` row.
#[derive(sqlx::FromRow)]
pub(crate) struct SecurityKeyRow {
    pub(crate) id: i64,
    pub(crate) account_id: i64,
    pub(crate) credential_id: Vec<u8>,
    pub(crate) public_key: Vec<u8>,
    pub(crate) name: String,
    pub(crate) sign_count: i64,
    pub(crate) created_at: i64,
    pub(crate) last_used_at: Option<i64>,
}

impl From<SecurityKeyRow> for crate::SecurityKey {
    fn from(row: SecurityKeyRow) -> crate::SecurityKey {
        crate::SecurityKey {
            id: row.id,
            account: AccountId(row.account_id),
            credential_id: row.credential_id,
            public_key: row.public_key,
            name: row.name,
            // Only a u32 is ever stored; anything else fails closed (no later count is higher).
            sign_count: u32::try_from(row.sign_count).unwrap_or(u32::MAX),
            created_at: row.created_at,
            last_used_at: row.last_used_at,
        }
    }
}
