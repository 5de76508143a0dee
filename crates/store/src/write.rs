//! The writes both backends share: one value per write (carried to SQLite's single writer, or
//! run in its own transaction by PostgreSQL), and the answer each gives.

use tokio::sync::oneshot;

use sealmail_types::{AccountId, Domain, EmailAddress, MailboxId};

use crate::{
    Accepted, AcceptedMessage, Ban, ClientCert, Copied, CopyMessages, DomainCheck, DueMessage, FlagUpdate,
    Mailbox, NewAppPassword, NewMessage, Pruned, QueueLease, RecipientOutcome, Retention, SecurityEvent,
    SecurityKey, SetFlags, StoreError, StoredMessage, StoredStsPolicy, TlsResult, WebSession,
};

pub(crate) enum WriteOp {
    Prune(Retention),
    AddDomain(Domain),
    RemoveDomain(Domain),
    AddAccount {
        address: EmailAddress,
        hash: String,
    },
    SetPassword {
        address: EmailAddress,
        hash: String,
    },
    RemoveAccount(EmailAddress),
    StoreMessage {
        message: NewMessage,
        sha256: String,
    },
    Accept {
        message: AcceptedMessage,
        local_sha256: Option<String>,
        outbound_sha256: Option<String>,
    },
    AddBan {
        address: String,
        until: i64,
        level: i64,
        reason: String,
    },
    LiftBans {
        address: String,
        now: i64,
    },
    Event(SecurityEvent),
    PruneSecurity {
        before: i64,
    },
    CreateMailbox {
        account: AccountId,
        name: String,
    },
    DeleteMailbox {
        account: AccountId,
        name: String,
    },
    RenameMailbox {
        account: AccountId,
        from: String,
        to: String,
    },
    Subscribe {
        account: AccountId,
        name: String,
        subscribed: bool,
    },
    ClaimRecent {
        mailbox: MailboxId,
        up_to: u32,
    },
    UpdateFlags(SetFlags),
    Expunge {
        mailbox: MailboxId,
        uids: Option<Vec<u32>>,
    },
    Copy(CopyMessages),
    RecordOutcomes {
        id: i64,
        outcomes: Vec<(i64, RecipientOutcome)>,
    },
    RetryQueued(Option<i64>),
    SaveStsPolicy(StoredStsPolicy),
    DeleteQueued(i64),
    TlsResult(TlsResult),
    ClaimTlsReport {
        day: String,
        domain: String,
    },
    ClaimDomainCheck {
        domain: String,
        node: String,
        due_before: i64,
        now: i64,
        until: i64,
    },
    RecordDomainCheck(DomainCheck),
    ClaimDue {
        now: i64,
        limit: i64,
        lease: QueueLease,
    },
    ReleaseLeases(String),
    /// SQLite only: one process owns the file.
    ReleaseAllLeases,
    RenewLeases {
        holder: String,
        recipients: Vec<i64>,
        until: i64,
    },
    AddAbusePoints {
        key: String,
        at: i64,
        points: i64,
        since: i64,
    },
    TakeHourlyUse {
        key: String,
        at: i64,
        amount: i64,
        per_hour: i64,
    },
    Credentials(CredentialWrite),
    Web(WebWrite),
}

/// The writes of [`crate::CredentialStore`].
pub(crate) enum CredentialWrite {
    SetScram {
        account: AccountId,
        password_hash: String,
        verifier: String,
    },
    AddAppPassword(NewAppPassword),
    RevokeAppPassword {
        account: AccountId,
        name: String,
    },
    AppPasswordUsed {
        id: i64,
        at: i64,
        from: String,
    },
    StartMfa {
        account: AccountId,
        sealed_secret: Vec<u8>,
    },
    ActivateMfa {
        account: AccountId,
        step: i64,
        recovery_code_hashes: Vec<String>,
    },
    DisableMfa(AccountId),
    UseTotpStep {
        account: AccountId,
        step: i64,
    },
    UseRecoveryCode {
        account: AccountId,
        code_hash: String,
    },
    AddClientCert(ClientCert),
    RemoveClientCert {
        account: AccountId,
        fingerprint: String,
    },
}

/// The writes of [`crate::WebStore`].
pub(crate) enum WebWrite {
    AddSession(WebSession),
    TouchSession {
        id_hash: String,
        now: i64,
        expires_at: i64,
    },
    EndSession(String),
    EndSessions {
        account: AccountId,
        keep: Option<String>,
    },
    SetAdmin {
        address: EmailAddress,
        admin: bool,
    },
    AddSecurityKey(SecurityKey),
    SecurityKeyUsed {
        account: AccountId,
        credential_id: Vec<u8>,
        sign_count: u32,
        at: i64,
    },
    RemoveSecurityKey {
        account: AccountId,
        id: i64,
    },
    RemoveSecurityKeys(AccountId),
}

impl WriteOp {
    /// The mailboxes whose watchers must be woken once this write is committed.
    pub(crate) fn touched_mailboxes(&self, into: &mut Vec<i64>) {
        match self {
            WriteOp::StoreMessage { message, .. } => into.extend(message.mailboxes.iter().map(|m| m.0)),
            WriteOp::Accept { message, .. } => {
                if let Some(local) = &message.local {
                    into.extend(local.mailboxes.iter().map(|m| m.0));
                }
            }
            WriteOp::UpdateFlags(SetFlags { mailbox, .. }) | WriteOp::Expunge { mailbox, .. } => {
                into.push(mailbox.0)
            }
            WriteOp::Copy(CopyMessages { from, to, .. }) => into.extend([from.0, to.0]),
            _ => {}
        }
    }
}

pub(crate) enum WriteDone {
    Unit,
    Account(AccountId),
    Stored(Vec<StoredMessage>),
    Accepted(Accepted),
    Ban(Ban),
    Count(u64),
    Mailbox(Mailbox),
    Flags(FlagUpdate),
    Uids(Vec<u32>),
    Copied(Copied),
    Pruned(Pruned),
    Due(Vec<DueMessage>),
    Taken(bool),
    /// The row id of what was added, `None` when nothing was.
    Added(Option<i64>),
}

pub(crate) type Reply = oneshot::Sender<Result<WriteDone, StoreError>>;

/// The value a write's answer carries, when the answer is `$variant`, the one that write gives
/// (anything else is a bug in the writer, reported as an error rather than a panic).
macro_rules! done_as {
    ($done:expr, $variant:path) => {
        match $done {
            $variant(value) => Ok(value),
            other => Err(unexpected(other)),
        }
    };
}

pub(crate) fn unexpected(done: WriteDone) -> StoreError {
    let what = match done {
        WriteDone::Unit => "nothing",
        WriteDone::Account(_) => "an account",
        WriteDone::Stored(_) => "stored messages",
        WriteDone::Accepted(_) => "an accepted message",
        WriteDone::Ban(_) => "a ban",
        WriteDone::Count(_) => "a count",
        WriteDone::Mailbox(_) => "a mailbox",
        WriteDone::Flags(_) => "flags",
        WriteDone::Uids(_) => "UIDs",
        WriteDone::Copied(_) => "copied messages",
        WriteDone::Pruned(_) => "pruned rows",
        WriteDone::Due(_) => "due recipients",
        WriteDone::Taken(_) => "an allowance",
        WriteDone::Added(_) => "a row id",
    };
    StoreError::Database(sqlx::Error::Protocol(format!(
        "store writer returned {what} unexpectedly"
    )))
}

pub(crate) use done_as;
