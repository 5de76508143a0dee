//! One IMAP session: its state (not authenticated, authenticated, selected; RFC 3501 section 3)
//! and every command. Commands arrive decoded by imap-codec; responses are written into
//! `out`, which the driver sends (FETCH flushes along the way, so a large FETCH never sits
//! whole in memory).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use imap_codec::imap_types::auth::AuthMechanism;
use imap_codec::imap_types::command::{Command, CommandBody, FetchModifier, SelectParameter, StoreModifier};
use imap_codec::imap_types::core::{AString, Charset};
use imap_codec::imap_types::extensions::binary::LiteralOrLiteral8;
use imap_codec::imap_types::extensions::enable::CapabilityEnable;
use imap_codec::imap_types::extensions::utf8::Utf8Kind;
use imap_codec::imap_types::fetch::{Macro, MacroOrMessageDataItemNames, MessageDataItemName, Section};
use imap_codec::imap_types::flag::{Flag, StoreResponse, StoreType};
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox as WireMailbox};
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::SequenceSet;
use imap_codec::imap_types::status::StatusDataItemName;

use sealmail_guard::access::{AbuseReporting, LoginWatch, Logins};
use sealmail_guard::{Abuse, LoginOutcome};
use sealmail_identity::Password;
use sealmail_identity::sasl::{self, Credentials, Mechanism, Step};
use sealmail_net::budget::BodyBudget;
use sealmail_net::{ConnError, Connection, Line, TlsActive};
use sealmail_store::{Account, FlagChange, Mailbox, NewMessage, Store, StoreError};

use crate::framing::{Limits, Stage};
use crate::list::{self, ListRequest};
use crate::search::{self, Candidate};
use crate::selected::{Selected, Text};
use crate::{fetch, sequence, wire};

/// Everything sessions share.
pub struct ImapContext {
    pub hostname: String,
    pub store: Arc<dyn Store>,
    /// Credentials checked under intrusion prevention.
    pub logins: Arc<dyn Logins>,
    /// Where floods of bad commands are scored.
    pub abuse: Arc<dyn AbuseReporting>,
    pub limits: Limits,
    /// The server-wide budget for message data in memory, shared with SMTP.
    pub budget: BodyBudget,
    /// BAD responses in a row (no OK between them) after which the session is ended.
    pub max_errors: u32,
    /// `limits.mailbox_quota`: octets one account may hold (0: no limit; RFC 9208 STORAGE).
    pub mailbox_quota: u64,
}

/// What the driver does after a command.
pub enum Next {
    Continue,
    StartTls,
    Idle(String),
    Close,
}

/// Output past this size is sent before the command goes on.
const FLUSH_AT: usize = 256 * 1024;
/// Longest line of an AUTHENTICATE exchange.
const MAX_AUTH_LINE: usize = 12 * 1024;
/// Messages read from the store per query during FETCH and SEARCH: at most this many, and at
/// most `BATCH_BYTES` of message data (a larger message is read alone), so a batch of big
/// messages does not sit in memory 128 at a time.
const FETCH_BATCH: usize = 128;
const BATCH_BYTES: u64 = 8 * 1024 * 1024;
/// Most flags one message may carry (a bound on what STORE can make us keep).
const MAX_FLAGS: usize = 64;
/// Longest text `$` may be written out as (a saved result of many scattered messages): past
/// it the command is left with its `$`, which imap-codec refuses.
const MAX_SAVED_TEXT: usize = 64 * 1024;
/// Most items in one FETCH, and most of them that copy message bytes (body sections).
const MAX_FETCH_ITEMS: usize = 64;
const MAX_FETCH_SECTIONS: usize = 8;

pub struct Session {
    ctx: Arc<ImapContext>,
    peer: SocketAddr,
    tls: Option<TlsActive>,
    account: Option<Account>,
    /// From login on: tells when the account's password changed or the account went.
    login_check: Option<Box<dyn LoginWatch>>,
    pub selected: Option<Selected>,
    /// RFC 7162: once the client uses CONDSTORE, every FETCH with FLAGS also carries MODSEQ.
    condstore: bool,
    /// RFC 7162 QRESYNC, enabled with ENABLE: VANISHED instead of EXPUNGE, SELECT (QRESYNC),
    /// UID FETCH (VANISHED).
    qresync: bool,
    /// RFC 6855 UTF8=ACCEPT, enabled with ENABLE: mailbox names are UTF-8 both ways.
    utf8: bool,
    /// RFC 9051 IMAP4rev2, enabled with ENABLE: ESEARCH for every SEARCH, no \Recent, UTF-8
    /// mailbox names.
    rev2: bool,
    /// The RETURN options the driver took off a `SEARCH RETURN (...)` (see `esearch`).
    pub search_return: Option<Result<crate::esearch::ReturnOptions, crate::esearch::ReturnError>>,
    /// The APPEND being run gave its message as `UTF8 (...)` (RFC 6855 4; see `esearch`).
    pub utf8_append: bool,
    /// RFC 5182 SEARCHRES: the UIDs of the last `SEARCH RETURN (SAVE)`, which `$` names;
    /// emptied when the mailbox is closed.
    saved: Vec<u32>,
    /// `$` named the empty saved result in this command's message set: it does nothing. Set by
    /// the driver for one command only.
    pub dollar_empty: bool,
    /// The tag of the command being run (ESEARCH names it).
    current_tag: String,
    /// Set by a FETCH BINARY of a part whose encoding cannot be undone (RFC 3516 UNKNOWN-CTE).
    unknown_encoding: bool,
    pub out: Vec<u8>,
    errors: u32,
}

/// How a command ended, for its tagged response.
enum Done {
    Ok(String),
    No(String),
    Bad(String),
}

fn ok(text: impl Into<String>) -> Done {
    Done::Ok(text.into())
}
fn no(text: impl Into<String>) -> Done {
    Done::No(text.into())
}
fn bad(text: impl Into<String>) -> Done {
    Done::Bad(text.into())
}

fn store_failure(e: &StoreError) -> Done {
    match e {
        StoreError::Integrity { .. } => no(
            "[CORRUPTION] A message failed its integrity check (SHA-256 mismatch) and is not served; the administrator has been told",
        ),
        StoreError::NotFound(what) => no(format!("[NONEXISTENT] {what} does not exist")),
        StoreError::Duplicate(what) => no(format!("[ALREADYEXISTS] {what} already exists")),
        StoreError::LimitReached(why) => no(format!("[LIMIT] {why}")),
        StoreError::NotAllowed(why) => no(format!("[CANNOT] {why}")),
        other => {
            tracing::error!(error = %other, "IMAP command failed in the store");
            no("[SERVERBUG] The mail store failed; try again later")
        }
    }
}

fn flag_name(flag: &Flag<'_>) -> Option<String> {
    match flag {
        Flag::Answered => Some("\\Answered".into()),
        Flag::Deleted => Some("\\Deleted".into()),
        Flag::Draft => Some("\\Draft".into()),
        Flag::Flagged => Some("\\Flagged".into()),
        Flag::Seen => Some("\\Seen".into()),
        // A keyword named NIL would read as NIL in a FLAGS response.
        Flag::Keyword(k) if k.as_ref().eq_ignore_ascii_case("NIL") => None,
        Flag::Keyword(k) => Some(k.as_ref().to_string()),
        // \Recent and unknown system flags cannot be set by a client.
        Flag::Extension(_) => None,
    }
}

fn astring_text(s: &AString<'_>) -> Option<String> {
    String::from_utf8(s.as_ref().to_vec()).ok()
}

/// Mailbox names are the client's own (UTF-8 inside, modified UTF-7 on the wire). Every name
/// is looked up inside the logged-in account only: there is no syntax for another user's
/// mailbox, so no name can reach one.
pub fn mailbox_name(mailbox: &WireMailbox<'_>, utf8: bool) -> Option<String> {
    match mailbox {
        WireMailbox::Inbox => Some("INBOX".to_string()),
        WireMailbox::Other(other) => wire::name_from_wire(other.as_ref(), utf8),
    }
}

/// Whether a name may be created: no empty levels, no wildcards or control characters, and
/// bounded length and depth.
fn valid_new_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').count() <= 16
        && !name.split('/').any(str::is_empty)
        && !name
            .chars()
            .any(|c| wire::unfit_in_name(c) || c == '*' || c == '%')
}

/// How many of the messages ahead (by their sizes) go into the next batch: at least one, at
/// most `FETCH_BATCH`, and no more than `BATCH_BYTES` together unless the first alone is larger.
fn batch_len(sizes: impl Iterator<Item = u64>) -> usize {
    let mut bytes = 0u64;
    let mut n = 0;
    for size in sizes.take(FETCH_BATCH) {
        bytes = bytes.saturating_add(size);
        if n > 0 && bytes > BATCH_BYTES {
            break;
        }
        n += 1;
    }
    n
}

fn section_path(path: &[std::num::NonZeroU32]) -> String {
    path.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(".")
}

fn section_text(section: &Option<Section<'_>>) -> String {
    fn part(p: &imap_codec::imap_types::fetch::Part) -> String {
        p.0.as_ref()
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(".")
    }
    fn names(list: &[AString<'_>]) -> String {
        let shown: Vec<String> = list
            .iter()
            .map(|n| {
                let mut out = Vec::new();
                wire::string(&mut out, n.as_ref());
                let text = String::from_utf8_lossy(&out).into_owned();
                // An atom needs no quotes.
                match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
                    Some(inner)
                        if !inner.is_empty()
                            && inner
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
                    {
                        inner.to_string()
                    }
                    _ => text,
                }
            })
            .collect();
        shown.join(" ")
    }
    let with = |p: &Option<imap_codec::imap_types::fetch::Part>, rest: &str| match p {
        Some(p) => format!("{}.{rest}", part(p)),
        None => rest.to_string(),
    };
    match section {
        None => String::new(),
        Some(Section::Part(p)) => part(p),
        Some(Section::Header(p)) => with(p, "HEADER"),
        Some(Section::HeaderFields(p, list)) => with(p, &format!("HEADER.FIELDS ({})", names(list.as_ref()))),
        Some(Section::HeaderFieldsNot(p, list)) => {
            with(p, &format!("HEADER.FIELDS.NOT ({})", names(list.as_ref())))
        }
        Some(Section::Text(p)) => with(p, "TEXT"),
        Some(Section::Mime(p)) => format!("{}.MIME", part(p)),
    }
}

impl Session {
    pub fn new(ctx: Arc<ImapContext>, peer: SocketAddr, tls: Option<TlsActive>) -> Session {
        Session {
            ctx,
            peer,
            tls,
            account: None,
            login_check: None,
            selected: None,
            condstore: false,
            qresync: false,
            utf8: false,
            rev2: false,
            search_return: None,
            saved: Vec::new(),
            dollar_empty: false,
            utf8_append: false,
            current_tag: String::new(),
            unknown_encoding: false,
            out: Vec::with_capacity(4096),
            errors: 0,
        }
    }

    /// Returns once the login no longer stands (its password changed or its account was
    /// removed); never before login. Cancel-safe, so the driver races it with reading.
    pub async fn login_revoked(&mut self) {
        match self.login_check.as_mut() {
            Some(check) => check.revoked().await,
            None => std::future::pending().await,
        }
    }

    /// Before running a command: whether the login stopped standing since the last check.
    pub async fn login_revoked_now(&mut self) -> bool {
        match self.login_check.as_mut() {
            Some(check) => check.revoked_now().await,
            None => false,
        }
    }

    pub fn set_tls(&mut self, tls: Option<TlsActive>) {
        self.tls = tls;
    }

    /// Reports what changed in the selected mailbox (during IDLE).
    pub async fn idle_update(&mut self) {
        let condstore = self.condstore;
        if let Some(selected) = self.selected.as_mut()
            && let Err(e) = selected
                .sync(self.ctx.store.as_ref(), &mut self.out, true, condstore)
                .await
        {
            tracing::warn!(peer = %self.peer, error = %e, "IMAP mailbox sync failed during IDLE");
        }
    }

    /// What `$` is written out as (RFC 5182), and whether it names no message: in SEARCH a
    /// UID key (`NOT ALL` when empty), elsewhere the saved messages' UIDs or sequence numbers
    /// (a placeholder when empty: the caller makes the command do nothing). `None` without a
    /// mailbox, or when the set would take more than [`MAX_SAVED_TEXT`] to write out.
    pub fn saved_result_text(&self, use_: crate::esearch::SavedUse) -> Option<(String, bool)> {
        use crate::esearch::SavedUse;
        let selected = self.selected.as_ref()?;
        let mut numbers: Vec<u32> = match use_ {
            SavedUse::Set { uid: false } => self
                .saved
                .iter()
                .filter_map(|&u| selected.index_of_uid(u).map(|i| i as u32 + 1))
                .collect(),
            _ => self
                .saved
                .iter()
                .copied()
                .filter(|&u| selected.index_of_uid(u).is_some())
                .collect(),
        };
        numbers.sort_unstable();
        if numbers.is_empty() {
            return Some(match use_ {
                SavedUse::SearchKey { after_uid: false } => ("NOT ALL".to_string(), true),
                // `UID NOT ALL` would not parse: a UID beyond the mailbox's, matched by nothing.
                SavedUse::SearchKey { after_uid: true } => {
                    let past = selected
                        .mailbox
                        .uid_next
                        .max(selected.max_uid().saturating_add(1));
                    (past.to_string(), true)
                }
                SavedUse::Set { .. } => ("1".to_string(), true),
            });
        }
        let set = sequence::compact(&numbers);
        if set.len() > MAX_SAVED_TEXT {
            return None;
        }
        Some(match use_ {
            SavedUse::SearchKey { after_uid: false } => (format!("UID {set}"), false),
            _ => (set, false),
        })
    }

    pub fn capabilities(&self) -> String {
        if self.tls.is_none() {
            return "IMAP4rev1 IMAP4rev2 STARTTLS LOGINDISABLED".to_string();
        }
        if self.account.is_none() {
            return "IMAP4rev1 IMAP4rev2 SASL-IR LITERAL+ ID ENABLE IDLE NAMESPACE AUTH=PLAIN AUTH=LOGIN"
                .to_string();
        }
        format!(
            "IMAP4rev1 IMAP4rev2 SASL-IR LITERAL+ ID ENABLE IDLE NAMESPACE UNSELECT UIDPLUS MOVE CHILDREN SPECIAL-USE LIST-EXTENDED LIST-STATUS STATUS=SIZE BINARY UTF8=ACCEPT ESEARCH SEARCHRES CONDSTORE QRESYNC QUOTA QUOTA=RES-STORAGE APPENDLIMIT={}",
            self.ctx.limits.max_append.min(u64::from(u32::MAX))
        )
    }

    pub fn greeting(&self) -> String {
        format!(
            "* OK [CAPABILITY {}] {} sealmail ready\r\n",
            self.capabilities(),
            self.ctx.hostname
        )
    }

    fn tagged(&mut self, tag: &str, done: Done) {
        let (status, text) = match done {
            Done::Ok(t) => {
                self.errors = 0;
                ("OK", t)
            }
            Done::No(t) => ("NO", t),
            Done::Bad(t) => {
                self.errors += 1;
                ("BAD", t)
            }
        };
        let _ = write!(Text(&mut self.out), "{tag} {status} {text}\r\n");
    }

    pub fn stage(&self) -> Stage {
        match self.account {
            Some(_) => Stage::Authenticated,
            None => Stage::NotAuthenticated,
        }
    }

    /// A command that was read but cannot be taken now (NO: not the client's error).
    pub fn decline(&mut self, tag: Option<&str>, text: &str) {
        self.tagged(tag.unwrap_or("*"), no(text));
    }

    /// A command that could not be read or decoded. Returns false when the session must end.
    pub async fn refuse(&mut self, tag: Option<&str>, text: &str) -> bool {
        self.tagged(tag.unwrap_or("*"), bad(text));
        self.check_errors().await
    }

    async fn check_errors(&mut self) -> bool {
        if self.errors < self.ctx.max_errors {
            return true;
        }
        self.out.extend_from_slice(b"* BYE Too many errors\r\n");
        self.ctx
            .abuse
            .report(
                self.peer.ip(),
                Abuse::ProtocolErrors,
                "imap",
                "too many bad IMAP commands",
            )
            .await;
        false
    }

    async fn flush_if_large(&mut self, conn: &mut Connection) -> Result<(), ConnError> {
        if self.out.len() >= FLUSH_AT {
            conn.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Runs one command; its responses are in `out`.
    pub async fn execute(&mut self, command: Command<'_>, conn: &mut Connection) -> Result<Next, ConnError> {
        let tag = command.tag.as_ref().to_string();
        self.current_tag.clone_from(&tag);
        let mut next = Next::Continue;
        // RFC 3501 7.4.1: no EXPUNGE during FETCH, STORE or SEARCH by sequence number.
        let mut allow_expunge = true;
        let dollar_empty = std::mem::take(&mut self.dollar_empty);
        let done = match command.body {
            // RFC 5182: `$` named an empty result; by sequence number there is nothing to do.
            CommandBody::Fetch { .. }
            | CommandBody::Store { .. }
            | CommandBody::Copy { .. }
            | CommandBody::Move { .. }
            | CommandBody::ExpungeUid { .. }
                if dollar_empty =>
            {
                ok("Completed; $ names no message")
            }
            CommandBody::Capability => {
                let caps = self.capabilities();
                let _ = write!(Text(&mut self.out), "* CAPABILITY {caps}\r\n");
                ok("CAPABILITY completed")
            }
            CommandBody::Noop => ok("NOOP completed"),
            CommandBody::Logout => {
                self.out.extend_from_slice(b"* BYE Logging out\r\n");
                next = Next::Close;
                ok("LOGOUT completed")
            }
            CommandBody::Id { .. } => {
                self.out.extend_from_slice(b"* ID (\"name\" \"sealmail\")\r\n");
                ok("ID completed")
            }
            CommandBody::StartTLS if self.tls.is_some() => bad("TLS is already active"),
            CommandBody::StartTLS => {
                next = Next::StartTls;
                ok("Begin TLS negotiation now")
            }
            CommandBody::Login { .. } | CommandBody::Authenticate { .. } if self.tls.is_none() => {
                no("[PRIVACYREQUIRED] Use STARTTLS first; passwords are never sent in the clear")
            }
            CommandBody::Login { .. } | CommandBody::Authenticate { .. } if self.account.is_some() => {
                bad("Already authenticated")
            }
            CommandBody::Login { username, password } => {
                let credentials = match (astring_text(&username), astring_text(password.declassify())) {
                    (Some(username), Some(password)) => Some(Credentials {
                        authorize_as: None,
                        username,
                        password: Password::new(password),
                    }),
                    _ => None,
                };
                match credentials {
                    Some(credentials) => self.login(credentials, &mut next).await,
                    None => no("[AUTHENTICATIONFAILED] Authentication failed"),
                }
            }
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } => {
                let mechanism = match mechanism {
                    AuthMechanism::Plain => Some(Mechanism::Plain),
                    AuthMechanism::Login => Some(Mechanism::Login),
                    _ => None,
                };
                match mechanism {
                    None => no("Unsupported mechanism; use PLAIN or LOGIN"),
                    Some(mechanism) => {
                        let initial = initial_response.map(|r| r.declassify().to_vec());
                        self.authenticate(conn, mechanism, initial.as_deref(), &mut next)
                            .await?
                    }
                }
            }
            body => match &self.account {
                None => bad("Log in first"),
                Some(_) => {
                    allow_expunge = !matches!(
                        body,
                        CommandBody::Fetch { uid: false, .. }
                            | CommandBody::Store { uid: false, .. }
                            | CommandBody::Search { uid: false, .. }
                    );
                    self.authenticated(&tag, body, conn, &mut next).await?
                }
            },
        };
        if let (Some(selected), true) = (self.selected.as_mut(), matches!(next, Next::Continue)) {
            let condstore = self.condstore;
            if let Err(e) = selected
                .sync(self.ctx.store.as_ref(), &mut self.out, allow_expunge, condstore)
                .await
            {
                if matches!(e, StoreError::NotFound(_)) {
                    self.out
                        .extend_from_slice(b"* BYE [UNAVAILABLE] The selected mailbox was deleted\r\n");
                    next = Next::Close;
                } else {
                    tracing::warn!(peer = %self.peer, error = %e, "IMAP mailbox sync failed");
                }
            }
        }
        // IDLE's tagged response comes when the client ends it.
        if !matches!(next, Next::Idle(_)) {
            self.tagged(&tag, done);
        }
        if !self.check_errors().await {
            next = Next::Close;
        }
        Ok(next)
    }

    async fn login(&mut self, credentials: Credentials, next: &mut Next) -> Done {
        let Some(tls) = self.tls.clone() else {
            return no("[PRIVACYREQUIRED] Use STARTTLS first");
        };
        let ctx = self.ctx.clone();
        match ctx.logins.login(&tls, self.peer.ip(), "imap", &credentials).await {
            LoginOutcome::Success(authenticated) => {
                self.login_check = Some(ctx.logins.watch(&authenticated));
                self.account = Some(authenticated.account);
                ok(format!("[CAPABILITY {}] Logged in", self.capabilities()))
            }
            LoginOutcome::Failed { banned } => {
                if banned {
                    self.out.extend_from_slice(b"* BYE Too many failed logins\r\n");
                    *next = Next::Close;
                }
                no("[AUTHENTICATIONFAILED] Authentication failed")
            }
            LoginOutcome::Unavailable => {
                no("[UNAVAILABLE] Temporary authentication failure; try again later")
            }
        }
    }

    async fn authenticate(
        &mut self,
        conn: &mut Connection,
        mechanism: Mechanism,
        initial: Option<&[u8]>,
        next: &mut Next,
    ) -> Result<Done, ConnError> {
        let (mut exchange, mut step) = sasl::Exchange::start(mechanism, initial);
        loop {
            match step {
                Step::Done(credentials) => return Ok(self.login(credentials, next).await),
                Step::Malformed(why) => return Ok(bad(format!("Malformed SASL response: {why}"))),
                Step::Challenge(challenge) => {
                    let line = format!("+ {}\r\n", BASE64.encode(challenge));
                    conn.write_all(line.as_bytes()).await?;
                    // Still before login: the short timeout applies.
                    let wait = self.ctx.limits.unauthenticated_idle;
                    let response = match conn.read_line_within(MAX_AUTH_LINE, wait).await? {
                        Line::Complete(line) => line,
                        Line::TooLong(_) => return Ok(bad("SASL response too long")),
                    };
                    if response == b"*" {
                        return Ok(bad("Authentication cancelled"));
                    }
                    match BASE64.decode(&response) {
                        Ok(decoded) => step = exchange.respond(&decoded),
                        Err(_) => return Ok(bad("SASL response is not valid base64")),
                    }
                }
            }
        }
    }

    fn account_id(&self) -> Option<sealmail_types::AccountId> {
        self.account.as_ref().map(|a| a.id)
    }

    async fn find_mailbox(&self, name: &str) -> Result<Option<Mailbox>, StoreError> {
        match self.account_id() {
            Some(account) => self.ctx.store.mailbox(account, name).await,
            None => Ok(None),
        }
    }

    async fn authenticated(
        &mut self,
        tag: &str,
        body: CommandBody<'_>,
        conn: &mut Connection,
        next: &mut Next,
    ) -> Result<Done, ConnError> {
        let Some(account) = self.account_id() else {
            return Ok(bad("Log in first"));
        };
        let store = self.ctx.store.clone();
        Ok(match body {
            // RFC 5161 3.1: only in the authenticated state, before a mailbox is selected.
            CommandBody::Enable { .. } if self.selected.is_some() => {
                bad("ENABLE is not allowed once a mailbox is selected")
            }
            CommandBody::Enable { capabilities } => {
                let mut enabled = Vec::new();
                for capability in capabilities.as_ref() {
                    if matches!(capability, CapabilityEnable::CondStore) {
                        self.condstore = true;
                        enabled.push("CONDSTORE");
                    }
                    if capability.to_string().eq_ignore_ascii_case("IMAP4rev2") && !self.rev2 {
                        // RFC 9051: mailbox names are UTF-8, SEARCH answers with ESEARCH.
                        self.rev2 = true;
                        self.utf8 = true;
                        enabled.push("IMAP4rev2");
                    }
                    if matches!(capability, CapabilityEnable::Utf8(Utf8Kind::Accept)) && !self.utf8 {
                        self.utf8 = true;
                        enabled.push("UTF8=ACCEPT");
                    }
                    // QRESYNC implies CONDSTORE (RFC 7162 3.2.3).
                    if capability.to_string().eq_ignore_ascii_case("QRESYNC") && !self.qresync {
                        self.qresync = true;
                        self.condstore = true;
                        enabled.push("QRESYNC");
                    }
                }
                let _ = write!(Text(&mut self.out), "* ENABLED {}\r\n", enabled.join(" "));
                ok("ENABLE completed")
            }
            CommandBody::Namespace => {
                self.out
                    .extend_from_slice(b"* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n");
                ok("NAMESPACE completed")
            }
            CommandBody::Select { mailbox, parameters } => self.select(&mailbox, false, &parameters).await,
            CommandBody::Examine { mailbox, parameters } => self.select(&mailbox, true, &parameters).await,
            CommandBody::Create { mailbox } => {
                let Some(name) = mailbox_name(&mailbox, self.utf8) else {
                    return Ok(no("[CANNOT] Mailbox name is not valid modified UTF-7"));
                };
                let name = name.trim_end_matches('/').to_string();
                if name.eq_ignore_ascii_case("INBOX") {
                    return Ok(no("[ALREADYEXISTS] INBOX always exists"));
                }
                if !valid_new_name(&name) {
                    return Ok(no(
                        "[CANNOT] Mailbox names need non-empty levels separated by \"/\", no wildcards or control characters, at most 255 bytes and 16 levels",
                    ));
                }
                // RFC 3501 6.3.3: create the superior levels that do not exist yet.
                let levels: Vec<&str> = name.split('/').collect();
                for depth in 1..levels.len() {
                    let parent = levels[..depth].join("/");
                    match store.create_mailbox(account, &parent).await {
                        Ok(_) | Err(StoreError::Duplicate(_)) => {}
                        Err(e) => return Ok(store_failure(&e)),
                    }
                }
                match store.create_mailbox(account, &name).await {
                    Ok(_) => ok("CREATE completed"),
                    Err(e) => store_failure(&e),
                }
            }
            CommandBody::Delete { mailbox } => match mailbox_name(&mailbox, self.utf8) {
                None => no("[NONEXISTENT] No such mailbox"),
                Some(name) => {
                    if self.selected.as_ref().is_some_and(|s| s.mailbox.name == name) {
                        self.selected = None;
                        self.saved.clear();
                    }
                    match store.delete_mailbox(account, &name).await {
                        Ok(()) => ok("DELETE completed"),
                        Err(e) => store_failure(&e),
                    }
                }
            },
            CommandBody::Rename { from, to } => {
                match (mailbox_name(&from, self.utf8), mailbox_name(&to, self.utf8)) {
                    (Some(from), Some(to)) => {
                        let to = to.trim_end_matches('/').to_string();
                        if !valid_new_name(&to) {
                            return Ok(no("[CANNOT] The new name is not a valid mailbox name"));
                        }
                        match store.rename_mailbox(account, &from, &to).await {
                            Ok(()) => {
                                if let Some(selected) = self.selected.as_mut()
                                    && selected.mailbox.name == from
                                {
                                    selected.mailbox.name = to;
                                }
                                ok("RENAME completed")
                            }
                            Err(e) => store_failure(&e),
                        }
                    }
                    _ => no("[NONEXISTENT] No such mailbox"),
                }
            }
            CommandBody::Subscribe { ref mailbox } | CommandBody::Unsubscribe { ref mailbox } => {
                let subscribe = matches!(body, CommandBody::Subscribe { .. });
                match mailbox_name(mailbox, self.utf8) {
                    None => no("[NONEXISTENT] No such mailbox"),
                    Some(name) => match store.set_subscribed(account, &name, subscribe).await {
                        Ok(()) => ok(if subscribe {
                            "SUBSCRIBE completed"
                        } else {
                            "UNSUBSCRIBE completed"
                        }),
                        Err(e) => store_failure(&e),
                    },
                }
            }
            CommandBody::List {
                reference,
                mailbox_wildcard,
            } => {
                let request = ListRequest::plain(&reference, &mailbox_wildcard, false);
                self.list(request).await
            }
            CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } => {
                let request = ListRequest::plain(&reference, &mailbox_wildcard, true);
                self.list(request).await
            }
            CommandBody::Status { mailbox, item_names } => {
                let Some(name) = mailbox_name(&mailbox, self.utf8) else {
                    return Ok(no("[NONEXISTENT] No such mailbox"));
                };
                match self.find_mailbox(&name).await {
                    Ok(Some(found)) => match self.status_line(&found, item_names.as_ref()).await {
                        Ok(()) => ok("STATUS completed"),
                        Err(e) => store_failure(&e),
                    },
                    Ok(None) => no("[NONEXISTENT] No such mailbox"),
                    Err(e) => store_failure(&e),
                }
            }
            CommandBody::Append {
                mailbox,
                flags,
                date,
                message,
            } => {
                let Some(name) = mailbox_name(&mailbox, self.utf8) else {
                    return Ok(no("[TRYCREATE] No such mailbox"));
                };
                let target = match self.find_mailbox(&name).await {
                    Ok(Some(found)) => found,
                    Ok(None) => return Ok(no("[TRYCREATE] No such mailbox")),
                    Err(e) => return Ok(store_failure(&e)),
                };
                if self.utf8_append && !self.utf8 {
                    return Ok(bad("APPEND ... UTF8 (...) needs ENABLE UTF8=ACCEPT first"));
                }
                let content = match &message {
                    LiteralOrLiteral8::Literal(literal) => literal.as_ref().to_vec(),
                    // RFC 3516 4.4: binary content (a NUL) is not stored here; a literal8
                    // without one is an ordinary message.
                    LiteralOrLiteral8::Literal8(literal8) if literal8.data.contains(&0) => {
                        return Ok(no("[UNKNOWN-CTE] Binary content (NUL octets) is not stored here"));
                    }
                    LiteralOrLiteral8::Literal8(literal8) => literal8.data.to_vec(),
                };
                if content.is_empty() {
                    return Ok(no("An empty message cannot be appended"));
                }
                if let Err(done) = self.room_for(account, content.len() as u64).await {
                    return Ok(done);
                }
                let flags: Vec<String> = flags.iter().filter_map(flag_name).take(MAX_FLAGS).collect();
                let internal_date = date
                    .map(|d| d.as_ref().timestamp())
                    .unwrap_or_else(|| time::OffsetDateTime::now_utc().unix_timestamp());
                let appended = store
                    .store_message(NewMessage {
                        content,
                        mailboxes: vec![target.id],
                        internal_date,
                        flags,
                    })
                    .await;
                match appended {
                    Ok(stored) => match stored.first() {
                        Some(m) => ok(format!(
                            "[APPENDUID {} {}] APPEND completed",
                            target.uid_validity, m.uid
                        )),
                        None => ok("APPEND completed"),
                    },
                    Err(e) => store_failure(&e),
                }
            }
            // RFC 9208: one quota root, "", for all of an account's mailboxes.
            CommandBody::GetQuotaRoot { mailbox } => {
                let Some(name) = mailbox_name(&mailbox, self.utf8) else {
                    return Ok(no("[NONEXISTENT] No such mailbox"));
                };
                let mut line = b"* QUOTAROOT ".to_vec();
                wire::string(&mut line, wire::name_to_wire(&name, self.utf8).as_bytes());
                if self.ctx.mailbox_quota > 0 {
                    line.extend_from_slice(b" \"\"");
                }
                line.extend_from_slice(b"\r\n");
                self.out.extend_from_slice(&line);
                if let Err(done) = self.quota_response(account).await {
                    return Ok(done);
                }
                ok("GETQUOTAROOT completed")
            }
            CommandBody::GetQuota { root } if root.as_ref().is_empty() && self.ctx.mailbox_quota > 0 => {
                if let Err(done) = self.quota_response(account).await {
                    return Ok(done);
                }
                ok("GETQUOTA completed")
            }
            CommandBody::GetQuota { .. } => no("[NONEXISTENT] No such quota root"),
            CommandBody::SetQuota { .. } => {
                no("[NOPERM] Quotas are set by the administrator (limits.mailbox_quota)")
            }
            CommandBody::Idle => {
                *next = Next::Idle(tag.to_string());
                // The tagged response comes when the client ends IDLE.
                return Ok(ok("IDLE terminated"));
            }
            body => {
                let Some(_) = self.selected else {
                    return Ok(bad("Select a mailbox first"));
                };
                self.in_mailbox(body, conn).await?
            }
        })
    }

    async fn select(
        &mut self,
        mailbox: &WireMailbox<'_>,
        read_only: bool,
        parameters: &[SelectParameter],
    ) -> Done {
        self.saved.clear();
        if self.selected.take().is_some() {
            // RFC 7162 3.2.11: the previous mailbox is closed.
            self.out
                .extend_from_slice(b"* OK [CLOSED] Previous mailbox closed\r\n");
        }
        if parameters.iter().any(|p| matches!(p, SelectParameter::CondStore)) {
            self.condstore = true;
        }
        let resync = parameters.iter().find_map(|p| match p {
            SelectParameter::QResync {
                uid_validity,
                mod_sequence_value,
                known_uids,
                ..
            } => Some((uid_validity.get(), mod_sequence_value.get(), known_uids.clone())),
            SelectParameter::CondStore => None,
        });
        if resync.is_some() && !self.qresync {
            return bad("QRESYNC must be enabled first (ENABLE QRESYNC)");
        }
        let Some(name) = mailbox_name(mailbox, self.utf8) else {
            return no("[NONEXISTENT] No such mailbox");
        };
        let found = match self.find_mailbox(&name).await {
            Ok(Some(found)) => found,
            Ok(None) => return no("[NONEXISTENT] No such mailbox"),
            Err(e) => return store_failure(&e),
        };
        let mut selected = match Selected::open(self.ctx.store.as_ref(), found, read_only).await {
            Ok(selected) => selected,
            Err(e) => return store_failure(&e),
        };
        let first_unseen = selected
            .entries
            .iter()
            .position(|e| !e.flags.iter().any(|f| f.eq_ignore_ascii_case("\\Seen")));
        let uid_next = selected
            .mailbox
            .uid_next
            .max(selected.max_uid().saturating_add(1));
        selected.rev2 = self.rev2;
        selected.write_flags(&mut self.out);
        let mut text = Text(&mut self.out);
        let _ = write!(text, "* {} EXISTS\r\n", selected.exists());
        if !self.rev2 {
            let _ = write!(text, "* {} RECENT\r\n", selected.recent_count());
        }
        if let Some(index) = first_unseen {
            let _ = write!(text, "* OK [UNSEEN {}] First unseen message\r\n", index + 1);
        }
        let _ = write!(
            text,
            "* OK [UIDVALIDITY {}] UIDs valid\r\n",
            selected.mailbox.uid_validity
        );
        let _ = write!(text, "* OK [UIDNEXT {uid_next}] Predicted next UID\r\n");
        let _ = write!(text, "* OK [HIGHESTMODSEQ {}] Highest\r\n", selected.known_modseq);
        if let Some(special) = &selected.mailbox.special_use {
            let _ = write!(text, "* LIST ({special}) \"/\" ");
            let mut name_out = Vec::new();
            wire::string(
                &mut name_out,
                wire::name_to_wire(&selected.mailbox.name, self.utf8).as_bytes(),
            );
            self.out.extend_from_slice(&name_out);
            self.out.extend_from_slice(b"\r\n");
        }
        // RFC 7162 3.2.5: what changed since the client's mod-sequence, if its UIDs still hold.
        if let Some((uid_validity, since, known)) = resync
            && uid_validity == selected.mailbox.uid_validity
        {
            let last = uid_next.saturating_sub(1);
            let ranges = match &known {
                Some(known) => crate::sequence::Merged::new(known, last).ranges().to_vec(),
                None if last > 0 => vec![(1, last)],
                None => Vec::new(),
            };
            let ranges = selected.write_vanished_earlier(ranges, last, &mut self.out);
            // Sorted and disjoint: a binary search per message.
            let in_known = |uid: u32| {
                let i = ranges.partition_point(|&(_, hi)| hi < uid);
                ranges.get(i).is_some_and(|&(lo, _)| lo <= uid)
            };
            for (index, entry) in selected.entries.iter().enumerate() {
                if entry.modseq > since && (known.is_none() || in_known(entry.uid)) {
                    let _ = write!(
                        Text(&mut self.out),
                        "* {} FETCH (UID {} FLAGS ",
                        index + 1,
                        entry.uid
                    );
                    selected.write_flag_list(&mut self.out, entry.uid, &entry.flags);
                    let _ = write!(Text(&mut self.out), " MODSEQ ({}))\r\n", entry.modseq);
                }
            }
        }
        selected.qresync = self.qresync;
        self.selected = Some(selected);
        if read_only {
            ok("[READ-ONLY] EXAMINE completed")
        } else {
            ok("[READ-WRITE] SELECT completed")
        }
    }

    async fn status_line(
        &mut self,
        mailbox: &Mailbox,
        items: &[StatusDataItemName],
    ) -> Result<(), StoreError> {
        let status = self.ctx.store.mailbox_status(mailbox.id).await?;
        let mut parts = Vec::new();
        for item in items {
            match item {
                StatusDataItemName::Messages => parts.push(format!("MESSAGES {}", status.messages)),
                StatusDataItemName::Recent => parts.push(format!("RECENT {}", status.recent)),
                StatusDataItemName::UidNext => parts.push(format!("UIDNEXT {}", status.uid_next)),
                StatusDataItemName::UidValidity => parts.push(format!("UIDVALIDITY {}", status.uid_validity)),
                StatusDataItemName::Unseen => parts.push(format!("UNSEEN {}", status.unseen)),
                StatusDataItemName::Deleted => parts.push(format!("DELETED {}", status.deleted)),
                StatusDataItemName::DeletedStorage => parts.push("DELETED-STORAGE 0".to_string()),
                // RFC 8438: the mailbox's total size in octets.
                StatusDataItemName::Size => parts.push(format!("SIZE {}", status.size)),
                StatusDataItemName::HighestModSeq => {
                    self.condstore = true;
                    parts.push(format!("HIGHESTMODSEQ {}", status.highest_modseq));
                }
            }
        }
        self.out.extend_from_slice(b"* STATUS ");
        wire::string(
            &mut self.out,
            wire::name_to_wire(&mailbox.name, self.utf8).as_bytes(),
        );
        let _ = write!(Text(&mut self.out), " ({})\r\n", parts.join(" "));
        Ok(())
    }

    async fn list(&mut self, mut request: ListRequest) -> Done {
        request.utf8 = self.utf8;
        let Some(account) = self.account_id() else {
            return bad("Log in first");
        };
        let mailboxes = match self.ctx.store.mailboxes(account).await {
            Ok(m) => m,
            Err(e) => return store_failure(&e),
        };
        let subscriptions = match self.ctx.store.subscriptions(account).await {
            Ok(s) => s,
            Err(e) => return store_failure(&e),
        };
        let verb = if request.lsub { "LSUB" } else { "LIST" };
        let listed = match list::respond(&request, &mailboxes, &subscriptions) {
            Ok(listed) => listed,
            Err(why) => return bad(why),
        };
        for listed in listed {
            self.out.extend_from_slice(&listed.line);
            if let (Some(items), Some(mailbox)) = (&request.status, &listed.mailbox)
                && let Err(e) = self.status_line(mailbox, items).await
            {
                return store_failure(&e);
            }
        }
        ok(format!("{verb} completed"))
    }

    /// Indices into the selected mailbox named by a sequence set (or UID set).
    fn resolve(&self, set: &SequenceSet, uid: bool) -> Result<Vec<usize>, Done> {
        let Some(selected) = &self.selected else {
            return Err(bad("Select a mailbox first"));
        };
        // Merged first, so a set that repeats itself costs no more than once, and the result
        // is at most one index per message.
        if uid {
            let merged = sequence::Merged::new(set, selected.max_uid());
            return Ok(selected
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| merged.contains(e.uid))
                .map(|(i, _)| i)
                .collect());
        }
        let exists = selected.exists();
        if !sequence::within(set, exists) {
            return Err(bad("Invalid message sequence number"));
        }
        let merged = sequence::Merged::new(set, exists);
        let mut indices = Vec::new();
        // Sorted and disjoint, each within 1..=exists (checked above).
        for &(lo, hi) in merged.ranges() {
            indices.extend((lo as usize - 1)..(hi as usize));
        }
        Ok(indices)
    }

    async fn in_mailbox(&mut self, body: CommandBody<'_>, conn: &mut Connection) -> Result<Done, ConnError> {
        let store = self.ctx.store.clone();
        let Some(selected) = self.selected.as_ref() else {
            return Ok(bad("Select a mailbox first"));
        };
        let (mailbox_id, read_only) = (selected.mailbox.id, selected.read_only);
        Ok(match body {
            CommandBody::Check => ok("CHECK completed"),
            CommandBody::Unselect => {
                self.selected = None;
                self.saved.clear();
                ok("UNSELECT completed")
            }
            CommandBody::Close => {
                if !read_only && let Err(e) = store.expunge(mailbox_id, None).await {
                    return Ok(store_failure(&e));
                }
                self.selected = None;
                self.saved.clear();
                ok("CLOSE completed")
            }
            CommandBody::Expunge | CommandBody::ExpungeUid { .. } if read_only => {
                no("[READ-ONLY] Mailbox is read-only")
            }
            CommandBody::Expunge => self.expunge(None).await,
            CommandBody::ExpungeUid { sequence_set } => match self.resolve(&sequence_set, true) {
                Ok(indices) => {
                    let uids = self.uids_of(&indices);
                    self.expunge(Some(uids)).await
                }
                Err(done) => done,
            },
            CommandBody::Search {
                charset,
                criteria,
                uid,
            } => self.search(charset.as_ref(), criteria.as_ref(), uid).await,
            CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                modifiers,
            } => {
                self.fetch(&sequence_set, macro_or_item_names, uid, &modifiers, conn)
                    .await?
            }
            CommandBody::Store { .. } if read_only => no("[READ-ONLY] Mailbox is read-only"),
            CommandBody::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
                modifiers,
            } => {
                self.store_flags(&sequence_set, kind, response, &flags, uid, &modifiers)
                    .await
            }
            CommandBody::Copy {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(&sequence_set, &mailbox, uid, false).await,
            CommandBody::Move { .. } if read_only => no("[READ-ONLY] Mailbox is read-only"),
            CommandBody::Move {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(&sequence_set, &mailbox, uid, true).await,
            _ => bad("Command unknown or not supported"),
        })
    }

    /// The account's quota and what it uses now, when a quota is set.
    async fn quota_and_use(&self, account: sealmail_types::AccountId) -> Result<Option<(u64, u64)>, Done> {
        let quota = self.ctx.mailbox_quota;
        if quota == 0 {
            return Ok(None);
        }
        let used = self
            .ctx
            .store
            .account_usage(account)
            .await
            .map_err(|e| store_failure(&e))?;
        Ok(Some((quota, used)))
    }

    /// Err(NO [OVERQUOTA]) when `adding` more octets would take the account past its quota.
    async fn room_for(&self, account: sealmail_types::AccountId, adding: u64) -> Result<(), Done> {
        match self.quota_and_use(account).await? {
            Some((quota, used)) if used.saturating_add(adding) > quota => Err(no(
                "[OVERQUOTA] The mailbox quota would be exceeded; delete some mail",
            )),
            _ => Ok(()),
        }
    }

    /// `* QUOTA "" (STORAGE used limit)` in KiB (RFC 9208 5.1), when a quota is set.
    async fn quota_response(&mut self, account: sealmail_types::AccountId) -> Result<(), Done> {
        let Some((quota, used)) = self.quota_and_use(account).await? else {
            return Ok(());
        };
        let _ = write!(
            Text(&mut self.out),
            "* QUOTA \"\" (STORAGE {} {})\r\n",
            used.div_ceil(1024),
            quota / 1024
        );
        Ok(())
    }

    fn uids_of(&self, indices: &[usize]) -> Vec<u32> {
        match &self.selected {
            Some(s) => indices
                .iter()
                .filter_map(|&i| s.entries.get(i).map(|e| e.uid))
                .collect(),
            None => Vec::new(),
        }
    }

    async fn expunge(&mut self, uids: Option<Vec<u32>>) -> Done {
        let Some(selected) = self.selected.as_mut() else {
            return bad("Select a mailbox first");
        };
        match self.ctx.store.expunge(selected.mailbox.id, uids).await {
            Ok(removed) => {
                selected.remove_own(&removed, &mut self.out);
                ok("EXPUNGE completed")
            }
            Err(e) => store_failure(&e),
        }
    }

    async fn copy(
        &mut self,
        set: &SequenceSet,
        mailbox: &WireMailbox<'_>,
        uid: bool,
        remove_source: bool,
    ) -> Done {
        let indices = match self.resolve(set, uid) {
            Ok(i) => i,
            Err(done) => return done,
        };
        let Some(name) = mailbox_name(mailbox, self.utf8) else {
            return no("[TRYCREATE] No such mailbox");
        };
        let target = match self.find_mailbox(&name).await {
            Ok(Some(found)) => found,
            Ok(None) => return no("[TRYCREATE] No such mailbox"),
            Err(e) => return store_failure(&e),
        };
        let uids = self.uids_of(&indices);
        let verb = if remove_source { "MOVE" } else { "COPY" };
        if uids.is_empty() {
            return ok(format!("{verb} completed (no messages)"));
        }
        if !remove_source && let (Some(selected), Some(account)) = (&self.selected, self.account_id()) {
            // A copy adds its messages' size to the account; a move does not.
            let adding: u64 = indices
                .iter()
                .filter_map(|&i| selected.entries.get(i))
                .map(|entry| entry.size)
                .sum();
            if let Err(done) = self.room_for(account, adding).await {
                return done;
            }
        }
        let Some(selected) = self.selected.as_mut() else {
            return bad("Select a mailbox first");
        };
        match self
            .ctx
            .store
            .copy_messages(selected.mailbox.id, uids, target.id, remove_source)
            .await
        {
            Ok(copied) => {
                let source: Vec<u32> = copied.uids.iter().map(|(s, _)| *s).collect();
                let dest: Vec<u32> = copied.uids.iter().map(|(_, d)| *d).collect();
                let code = format!(
                    "[COPYUID {} {} {}]",
                    copied.uid_validity,
                    sequence::compact(&source),
                    sequence::compact(&dest)
                );
                if remove_source {
                    // RFC 6851: COPYUID comes untagged, before the EXPUNGEs.
                    let _ = write!(Text(&mut self.out), "* OK {code} Moved\r\n");
                    selected.remove_own(&source, &mut self.out);
                    ok("MOVE completed")
                } else {
                    ok(format!("{code} COPY completed"))
                }
            }
            Err(e) => store_failure(&e),
        }
    }

    async fn store_flags(
        &mut self,
        set: &SequenceSet,
        kind: StoreType,
        response: StoreResponse,
        flags: &[Flag<'_>],
        uid: bool,
        modifiers: &[StoreModifier],
    ) -> Done {
        let indices = match self.resolve(set, uid) {
            Ok(i) => i,
            Err(done) => return done,
        };
        let mut names = Vec::with_capacity(flags.len());
        for flag in flags {
            match flag_name(flag) {
                Some(name) if name.len() <= 100 => names.push(name),
                Some(_) => return bad("Keyword too long"),
                None => return no("[CANNOT] That flag cannot be set"),
            }
        }
        if names.len() > MAX_FLAGS {
            return no(format!("[LIMIT] At most {MAX_FLAGS} flags per message"));
        }
        let change = match kind {
            StoreType::Add => FlagChange::Add,
            StoreType::Remove => FlagChange::Remove,
            StoreType::Replace => FlagChange::Replace,
        };
        let unchanged_since = modifiers.iter().map(|StoreModifier::UnchangedSince(n)| *n).next();
        if unchanged_since.is_some() {
            self.condstore = true;
        }
        let uids = self.uids_of(&indices);
        let Some(selected) = self.selected.as_mut() else {
            return bad("Select a mailbox first");
        };
        if change != FlagChange::Remove && !selected.keywords_fit(&names) {
            return no(format!(
                "[LIMIT] A mailbox may use at most {} keywords",
                crate::selected::MAX_KEYWORDS
            ));
        }
        let update = match self
            .ctx
            .store
            .update_flags(selected.mailbox.id, uids, change, names, unchanged_since)
            .await
        {
            Ok(update) => update,
            Err(e) => return store_failure(&e),
        };
        let mut shown = Vec::with_capacity(update.messages.len());
        for message in &update.messages {
            if let Some(index) = selected.apply_own_flags(message) {
                shown.push((index, message));
            }
        }
        // A keyword new to the mailbox is announced before any FETCH shows it.
        selected.announce_new_keywords(&mut self.out, update.messages.iter().map(|m| m.flags.as_slice()));
        for (index, message) in shown {
            if matches!(response, StoreResponse::Silent) && !self.condstore {
                continue;
            }
            let mut text = Text(&mut self.out);
            let _ = write!(text, "* {} FETCH (", index + 1);
            if uid {
                let _ = write!(text, "UID {} ", message.uid);
            }
            if !matches!(response, StoreResponse::Silent) {
                self.out.extend_from_slice(b"FLAGS ");
                selected.write_flag_list(&mut self.out, message.uid, &message.flags);
                if self.condstore {
                    self.out.push(b' ');
                }
            }
            if self.condstore {
                let _ = write!(Text(&mut self.out), "MODSEQ ({})", message.modseq);
            }
            self.out.extend_from_slice(b")\r\n");
        }
        if update.modified.is_empty() {
            return ok("STORE completed");
        }
        let modified: Vec<u32> = if uid {
            update.modified
        } else {
            update
                .modified
                .iter()
                .filter_map(|u| selected.index_of_uid(*u).map(|i| i as u32 + 1))
                .collect()
        };
        ok(format!(
            "[MODIFIED {}] Conditional STORE failed",
            sequence::compact(&modified)
        ))
    }

    async fn search(&mut self, charset: Option<&Charset<'_>>, criteria: &[SearchKey<'_>], uid: bool) -> Done {
        // A RETURN clause we refuse is refused before any searching.
        if let Some(Err(crate::esearch::ReturnError::Unknown(option))) = &self.search_return {
            let text = format!("Unknown SEARCH RETURN option {option}");
            self.search_return = None;
            return bad(text);
        }
        if let Some(charset) = charset {
            let name = charset.as_ref();
            if !name.eq_ignore_ascii_case("UTF-8") && !name.eq_ignore_ascii_case("US-ASCII") {
                return no("[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset");
            }
        }
        let Some(selected) = &self.selected else {
            return bad("Select a mailbox first");
        };
        let (keys, content_keys) = criteria
            .iter()
            .map(search::key_counts)
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        if keys > search::MAX_KEYS || content_keys > search::MAX_CONTENT_KEYS {
            return bad(format!(
                "At most {} search keys, {} of them on message content (BODY, TEXT, headers)",
                search::MAX_KEYS,
                search::MAX_CONTENT_KEYS
            ));
        }
        let wants_content = criteria.iter().any(search::needs_content);
        let uses_modseq = criteria.iter().any(uses_modseq);
        if uses_modseq {
            self.condstore = true;
        }
        let (max_seq, max_uid) = (selected.exists(), selected.max_uid());
        let prepared = search::Prepared::new(criteria, max_seq, max_uid);
        let mut found = Vec::new();
        let mut found_uids = Vec::new();
        let mut highest = 0;
        let mut start = 0;
        while start < selected.entries.len() {
            let rest = &selected.entries[start..];
            let batch = &rest[..batch_len(rest.iter().map(|e| if wants_content { e.size } else { 0 }))];
            let batch_start = start;
            start += batch.len();
            let contents: Vec<Option<Vec<u8>>> = if wants_content {
                let ids: Vec<_> = batch.iter().map(|e| e.id).collect();
                let mut contents = Vec::with_capacity(batch.len());
                match self.ctx.store.read_messages(&ids).await {
                    Ok(results) => {
                        for result in results {
                            match result {
                                Ok(bytes) => contents.push(Some(bytes)),
                                // Expunged meanwhile: it matches nothing.
                                Err(StoreError::NotFound(_)) => contents.push(None),
                                Err(e) => return store_failure(&e),
                            }
                        }
                    }
                    Err(e) => return store_failure(&e),
                }
                contents
            } else {
                batch.iter().map(|_| None).collect()
            };
            for (offset, (entry, content)) in batch.iter().zip(&contents).enumerate() {
                if wants_content && content.is_none() {
                    continue;
                }
                let seq = (batch_start + offset) as u32 + 1;
                let candidate = Candidate {
                    seq,
                    entry,
                    content: content.as_deref(),
                    max_seq,
                    max_uid,
                    prepared: &prepared,
                    recent: selected.is_recent(entry.uid),
                };
                let mut parsed = None;
                if criteria
                    .iter()
                    .all(|key| search::matches(key, &candidate, &mut parsed))
                {
                    found.push(if uid { entry.uid } else { seq });
                    found_uids.push(entry.uid);
                    highest = highest.max(entry.modseq);
                }
            }
        }
        let options = match self.search_return.take() {
            Some(Ok(options)) => Some(options),
            Some(Err(crate::esearch::ReturnError::Unknown(option))) => {
                return bad(format!("Unknown SEARCH RETURN option {option}"));
            }
            // IMAP4rev2: every SEARCH answers with ESEARCH (RFC 9051 6.4.4).
            None if self.rev2 => Some(crate::esearch::ReturnOptions {
                all: true,
                ..crate::esearch::ReturnOptions::default()
            }),
            None => None,
        };
        if let Some(options) = options {
            found.sort_unstable();
            if options.save {
                // RFC 5182 2.1: with MIN or MAX alone, only those are saved.
                found_uids.sort_unstable();
                self.saved = if (options.min || options.max) && !options.all && !options.count {
                    let mut kept = Vec::new();
                    if let (true, Some(&min)) = (options.min, found_uids.first()) {
                        kept.push(min);
                    }
                    if let (true, Some(&max)) = (options.max, found_uids.last()) {
                        kept.push(max);
                    }
                    kept.dedup();
                    kept
                } else {
                    found_uids
                };
            }
            if !options.answers() {
                return ok("SEARCH completed, result saved");
            }
            let modseq = uses_modseq.then_some(highest);
            let line = crate::esearch::response(&self.current_tag, uid, options, &found, modseq);
            self.out.extend_from_slice(line.as_bytes());
            return ok("SEARCH completed");
        }
        let mut text = Text(&mut self.out);
        let _ = write!(text, "* SEARCH");
        for n in &found {
            let _ = write!(text, " {n}");
        }
        if uses_modseq && !found.is_empty() {
            let _ = write!(text, " (MODSEQ {highest})");
        }
        let _ = write!(text, "\r\n");
        ok("SEARCH completed")
    }

    async fn fetch(
        &mut self,
        set: &SequenceSet,
        items: MacroOrMessageDataItemNames<'_>,
        uid: bool,
        modifiers: &[FetchModifier],
        conn: &mut Connection,
    ) -> Result<Done, ConnError> {
        let indices = match self.resolve(set, uid) {
            Ok(i) => i,
            Err(done) => return Ok(done),
        };
        let items = match items {
            // RFC 3501 6.4.5 (Macro::expand borrows the macro, which this match consumes).
            MacroOrMessageDataItemNames::Macro(m) => {
                use MessageDataItemName::*;
                match m {
                    Macro::All => vec![Flags, InternalDate, Rfc822Size, Envelope],
                    Macro::Full => vec![Flags, InternalDate, Rfc822Size, Envelope, Body],
                    _ => vec![Flags, InternalDate, Rfc822Size],
                }
            }
            MacroOrMessageDataItemNames::MessageDataItemNames(items) => items,
        };
        // Each item that copies message bytes is built in memory for every message before it is
        // sent: the same item twice is sent once, and only a few such items are taken at a time.
        if items.len() > MAX_FETCH_ITEMS {
            return Ok(bad(format!("At most {MAX_FETCH_ITEMS} FETCH items")));
        }
        let mut unique = Vec::with_capacity(items.len());
        for item in items {
            if !unique.contains(&item) {
                unique.push(item);
            }
        }
        let mut items = unique;
        let copies = items
            .iter()
            .filter(|i| {
                matches!(
                    i,
                    MessageDataItemName::BodyExt { .. }
                        | MessageDataItemName::Binary { .. }
                        | MessageDataItemName::BinarySize { .. }
                        | MessageDataItemName::Rfc822
                        | MessageDataItemName::Rfc822Text
                        | MessageDataItemName::Rfc822Header
                )
            })
            .count();
        if copies > MAX_FETCH_SECTIONS {
            return Ok(bad(format!(
                "At most {MAX_FETCH_SECTIONS} body sections (BODY[], BINARY[], RFC822...) in one FETCH"
            )));
        }
        if uid && !items.contains(&MessageDataItemName::Uid) {
            items.insert(0, MessageDataItemName::Uid);
        }
        let changed_since = modifiers.iter().find_map(|m| match m {
            FetchModifier::ChangedSince(n) => Some(n.get()),
            FetchModifier::Vanished => None,
        });
        // RFC 7162 3.2.6: UID FETCH (CHANGEDSINCE n VANISHED) also names the UIDs of the set
        // that are gone, once QRESYNC is enabled.
        if modifiers.contains(&FetchModifier::Vanished) {
            if !uid || changed_since.is_none() || !self.qresync {
                return Ok(bad("VANISHED needs UID FETCH, CHANGEDSINCE and ENABLE QRESYNC"));
            }
            if let Some(selected) = &self.selected {
                let last = selected
                    .mailbox
                    .uid_next
                    .max(selected.max_uid().saturating_add(1))
                    .saturating_sub(1);
                let ranges = crate::sequence::Merged::new(set, last).ranges().to_vec();
                selected.write_vanished_earlier(ranges, last, &mut self.out);
            }
        }
        if changed_since.is_some() || items.contains(&MessageDataItemName::ModSeq) {
            self.condstore = true;
        }
        if self.condstore && changed_since.is_some() && !items.contains(&MessageDataItemName::ModSeq) {
            items.push(MessageDataItemName::ModSeq);
        }
        let wants_content = items.iter().any(|i| {
            matches!(
                i,
                MessageDataItemName::Body
                    | MessageDataItemName::BodyExt { .. }
                    | MessageDataItemName::Binary { .. }
                    | MessageDataItemName::BinarySize { .. }
                    | MessageDataItemName::BodyStructure
                    | MessageDataItemName::Envelope
                    | MessageDataItemName::Rfc822
                    | MessageDataItemName::Rfc822Header
                    | MessageDataItemName::Rfc822Text
            )
        });
        let sets_seen = items.iter().any(|i| {
            matches!(
                i,
                MessageDataItemName::BodyExt { peek: false, .. }
                    | MessageDataItemName::Binary { peek: false, .. }
                    | MessageDataItemName::Rfc822
                    | MessageDataItemName::Rfc822Text
            )
        });
        let Some(selected) = self.selected.as_mut() else {
            return Ok(bad("Select a mailbox first"));
        };
        let indices: Vec<usize> = match changed_since {
            Some(since) => indices
                .into_iter()
                .filter(|&i| selected.entries.get(i).is_some_and(|e| e.modseq > since))
                .collect(),
            None => indices,
        };
        // RFC 3501 6.4.5: fetching a body section sets \Seen, in a read-write mailbox.
        let mut newly_seen = std::collections::HashSet::new();
        if sets_seen && !selected.read_only {
            let unseen: Vec<u32> = indices
                .iter()
                .filter_map(|&i| selected.entries.get(i))
                .filter(|e| !e.flags.iter().any(|f| f.eq_ignore_ascii_case("\\Seen")))
                .map(|e| e.uid)
                .collect();
            if !unseen.is_empty() {
                match self
                    .ctx
                    .store
                    .update_flags(
                        selected.mailbox.id,
                        unseen,
                        FlagChange::Add,
                        vec!["\\Seen".into()],
                        None,
                    )
                    .await
                {
                    Ok(update) => {
                        for message in &update.messages {
                            selected.apply_own_flags(message);
                            newly_seen.insert(message.uid);
                        }
                    }
                    Err(e) => return Ok(store_failure(&e)),
                }
            }
        }
        let mut vanished = false;
        // Messages are read in batches: one store query per batch instead of one per message.
        let mut start = 0;
        while start < indices.len() {
            let Some(selected) = self.selected.as_ref() else {
                break;
            };
            let rest = &indices[start..];
            let size_of = |&i: &usize| match (wants_content, selected.entries.get(i)) {
                (true, Some(e)) => e.size,
                _ => 0,
            };
            let batch = &rest[..batch_len(rest.iter().map(size_of))];
            start += batch.len();
            let entries: Vec<(usize, crate::selected::Entry)> = batch
                .iter()
                .filter_map(|&i| selected.entries.get(i).map(|e| (i, e.clone())))
                .collect();
            let contents: Vec<Option<Result<Vec<u8>, StoreError>>> = if wants_content {
                let ids: Vec<_> = entries.iter().map(|(_, e)| e.id).collect();
                match self.ctx.store.read_messages(&ids).await {
                    Ok(contents) => contents.into_iter().map(Some).collect(),
                    Err(e) => return Ok(store_failure(&e)),
                }
            } else {
                entries.iter().map(|_| None).collect()
            };
            for ((index, entry), content) in entries.iter().zip(contents) {
                let content = match content {
                    None => None,
                    Some(Ok(bytes)) => Some(bytes),
                    Some(Err(StoreError::NotFound(_))) => {
                        vanished = true;
                        continue;
                    }
                    Some(Err(e)) => {
                        if matches!(e, StoreError::Integrity { .. }) {
                            let mailbox = self
                                .selected
                                .as_ref()
                                .map(|s| s.mailbox.name.clone())
                                .unwrap_or_default();
                            tracing::error!(peer = %self.peer, uid = entry.uid, %mailbox, "IMAP FETCH refused a message that failed its integrity check");
                        }
                        return Ok(store_failure(&e));
                    }
                };
                let include_flags =
                    newly_seen.contains(&entry.uid) && !items.contains(&MessageDataItemName::Flags);
                self.fetch_one(*index, entry, content.as_deref(), &items, include_flags);
                self.flush_if_large(conn).await?;
            }
        }
        Ok(if vanished {
            no("[EXPUNGEISSUED] Some messages were expunged meanwhile")
        } else if std::mem::take(&mut self.unknown_encoding) {
            no("[UNKNOWN-CTE] A part's Content-Transfer-Encoding is not one BINARY can undo")
        } else {
            ok("FETCH completed")
        })
    }

    fn fetch_one(
        &mut self,
        index: usize,
        entry: &crate::selected::Entry,
        content: Option<&[u8]>,
        items: &[MessageDataItemName<'_>],
        include_flags: bool,
    ) {
        let condstore = self.condstore;
        let mut unknown_encoding = false;
        let recent = self.selected.as_ref().is_some_and(|s| s.is_recent(entry.uid));
        let flags = match &self.selected {
            Some(selected) => selected.shown_flags(&entry.flags),
            None => entry.flags.clone(),
        };
        let out = &mut self.out;
        let _ = write!(Text(out), "* {} FETCH (", index + 1);
        let mut parsed: Option<Option<mail_parser::Message<'_>>> = None;
        let mut first = true;
        let mut sep = |out: &mut Vec<u8>| {
            if !std::mem::take(&mut first) {
                out.push(b' ');
            }
        };
        let mut modseq_written = false;
        let mut all_items: Vec<&MessageDataItemName<'_>> = items.iter().collect();
        let flags_item = MessageDataItemName::Flags;
        if include_flags {
            all_items.push(&flags_item);
        }
        for item in all_items {
            sep(out);
            match item {
                MessageDataItemName::Uid => {
                    let _ = write!(Text(out), "UID {}", entry.uid);
                }
                MessageDataItemName::Flags => {
                    out.extend_from_slice(b"FLAGS ");
                    wire::flag_list_of(out, &flags, recent);
                    if condstore && !modseq_written && !items.contains(&MessageDataItemName::ModSeq) {
                        let _ = write!(Text(out), " MODSEQ ({})", entry.modseq);
                        modseq_written = true;
                    }
                }
                MessageDataItemName::ModSeq => {
                    let _ = write!(Text(out), "MODSEQ ({})", entry.modseq);
                }
                MessageDataItemName::InternalDate => {
                    let _ = write!(
                        Text(out),
                        "INTERNALDATE {}",
                        wire::internal_date(entry.internal_date)
                    );
                }
                MessageDataItemName::Rfc822Size => {
                    let _ = write!(Text(out), "RFC822.SIZE {}", entry.size);
                }
                MessageDataItemName::Rfc822 => {
                    out.extend_from_slice(b"RFC822 ");
                    wire::literal(out, content.unwrap_or_default());
                }
                MessageDataItemName::Rfc822Header => {
                    let bytes = content.unwrap_or_default();
                    out.extend_from_slice(b"RFC822.HEADER ");
                    wire::literal(out, &bytes[..fetch::header_end(bytes)]);
                }
                MessageDataItemName::Rfc822Text => {
                    let bytes = content.unwrap_or_default();
                    out.extend_from_slice(b"RFC822.TEXT ");
                    wire::literal(out, &bytes[fetch::header_end(bytes)..]);
                }
                MessageDataItemName::Envelope
                | MessageDataItemName::Body
                | MessageDataItemName::BodyStructure => {
                    let bytes = content.unwrap_or_default();
                    if parsed.is_none() {
                        parsed = Some(fetch::parse(bytes));
                    }
                    let label: &[u8] = match item {
                        MessageDataItemName::Envelope => b"ENVELOPE ",
                        MessageDataItemName::Body => b"BODY ",
                        _ => b"BODYSTRUCTURE ",
                    };
                    out.extend_from_slice(label);
                    match (&parsed, item) {
                        (Some(Some(m)), MessageDataItemName::Envelope) => fetch::envelope(out, m),
                        (Some(Some(m)), MessageDataItemName::Body) => {
                            fetch::body_structure(out, bytes, m, 0, false, 0)
                        }
                        (Some(Some(m)), _) => fetch::body_structure(out, bytes, m, 0, true, 0),
                        (_, MessageDataItemName::Envelope) => {
                            out.extend_from_slice(b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)")
                        }
                        _ => out.extend_from_slice(b"(\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 0 0)"),
                    }
                }
                MessageDataItemName::BodyExt { section, partial, .. } => {
                    let bytes = content.unwrap_or_default();
                    let data = fetch::section(bytes, section.as_ref()).unwrap_or_default();
                    let _ = write!(Text(out), "BODY[{}]", section_text(section));
                    match partial {
                        Some((origin, length)) => {
                            let start = (*origin as usize).min(data.len());
                            let end = start.saturating_add(length.get() as usize).min(data.len());
                            let _ = write!(Text(out), "<{origin}> ");
                            wire::literal(out, &data[start..end]);
                        }
                        None => {
                            out.push(b' ');
                            wire::literal(out, &data);
                        }
                    }
                }
                MessageDataItemName::Binary { section, partial, .. } => {
                    let path = section_path(section);
                    let data = fetch::binary_section(content.unwrap_or_default(), section);
                    let _ = write!(Text(out), "BINARY[{path}]");
                    match data {
                        // RFC 3516: the fetch fails with NO [UNKNOWN-CTE] (see `fetch`).
                        Err(fetch::UnknownEncoding) => {
                            out.extend_from_slice(b" NIL");
                            unknown_encoding = true;
                        }
                        Ok(data) => {
                            let data = data.unwrap_or_default();
                            match partial {
                                Some((origin, length)) => {
                                    let start = (*origin as usize).min(data.len());
                                    let end = start.saturating_add(length.get() as usize).min(data.len());
                                    let _ = write!(Text(out), "<{origin}> ");
                                    wire::literal_or_8(out, &data[start..end]);
                                }
                                None => {
                                    out.push(b' ');
                                    wire::literal_or_8(out, &data);
                                }
                            }
                        }
                    }
                }
                MessageDataItemName::BinarySize { section } => {
                    let size = fetch::binary_section(content.unwrap_or_default(), section)
                        .ok()
                        .flatten()
                        .map_or(0, |d| d.len());
                    let _ = write!(Text(out), "BINARY.SIZE[{}] {size}", section_path(section));
                }
            }
        }
        out.extend_from_slice(b")\r\n");
        self.unknown_encoding |= unknown_encoding;
    }
}

fn uses_modseq(key: &SearchKey<'_>) -> bool {
    match key {
        SearchKey::ModSequence { .. } => true,
        SearchKey::And(keys) => keys.as_ref().iter().any(uses_modseq),
        SearchKey::Not(k) => uses_modseq(k),
        SearchKey::Or(a, b) => uses_modseq(a) || uses_modseq(b),
        _ => false,
    }
}

/// The LIST request the driver parsed itself (RFC 5258 extended syntax), run like LIST.
pub async fn run_list(session: &mut Session, tag: &str, request: ListRequest) {
    let done = if session.account.is_none() {
        bad("Log in first")
    } else {
        session.list(request).await
    };
    session.tagged(tag, done);
}

pub fn list_mailbox_text(pattern: &ListMailbox<'_>) -> Vec<u8> {
    match pattern {
        ListMailbox::Token(t) => t.as_ref().to_vec(),
        ListMailbox::String(s) => s.as_ref().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_bounded_by_count_and_bytes() {
        const MIB: u64 = 1024 * 1024;
        assert_eq!(batch_len(std::iter::repeat_n(100, 1000)), FETCH_BATCH);
        assert_eq!(batch_len([3 * MIB, 3 * MIB, 3 * MIB, 1].into_iter()), 2);
        // A message larger than the byte bound is a batch of its own, never skipped.
        assert_eq!(batch_len([50 * MIB, 1].into_iter()), 1);
        assert_eq!(batch_len([1, 50 * MIB].into_iter()), 1);
        assert_eq!(batch_len(std::iter::empty()), 0);
        // Without content to read, only the count bounds a batch.
        assert_eq!(batch_len(std::iter::repeat_n(0, 500)), FETCH_BATCH);
    }
}
