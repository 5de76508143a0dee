//! One IMAP session: its state (not authenticated, authenticated, selected; RFC 3501 section 3),
//! the decoding of a framed command, and the dispatch to the commands, which live by concern
//! in `session/commands/`. Responses are written into `out`, which the driver sends; FETCH
//! sends along the way through [`Client`], so a large FETCH never sits whole in memory.

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
use imap_codec::imap_types::mailbox::Mailbox as WireMailbox;
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::SequenceSet;
use imap_codec::imap_types::status::StatusDataItemName;

use imap_codec::CommandCodec;
use imap_codec::decode::Decoder;
use sealmail_guard::access::{AbuseReporting, LoginAttempt, LoginWatch, Logins};
use sealmail_guard::{Abuse, LoginOutcome};
use sealmail_identity::Password;
use sealmail_identity::sasl::{Credentials, Mechanism};
use sealmail_net::budget::BodyBudget;
use sealmail_net::{ConnError, Connection, Line, TlsActive};

use crate::esearch;
use crate::framing::{Frame, Refusal};
use sealmail_store::{Account, CopyMessages, FlagChange, Mailbox, NewMessage, SetFlags, Store, StoreError};

use crate::framing::{Limits, Stage};
use crate::list::{self, ListRequest};
use crate::search::{self, Candidate};
use crate::selected::{Selected, Text};
use crate::{fetch, sequence, wire};

mod commands;
#[cfg(test)]
mod dialog_tests;

pub use commands::list::run_list;

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

/// The session's side of its connection. The session never touches the socket: it puts its
/// responses in `out`, which the driver sends after each command, and reaches the client
/// during a command only through this: to send what cannot wait (FETCH in batches, an
/// AUTHENTICATE challenge) and to read an AUTHENTICATE response. The driver implements it over
/// the [`Connection`]; unit tests over a script.
#[async_trait::async_trait]
pub trait Client: Send {
    async fn send(&mut self, bytes: &[u8]) -> Result<(), ConnError>;
    /// One line of at most `max` octets, within `wait`.
    async fn read_response_line(&mut self, max: usize, wait: std::time::Duration) -> Result<Line, ConnError>;
}

#[async_trait::async_trait]
impl Client for Connection {
    async fn send(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        self.write_all(bytes).await
    }

    async fn read_response_line(&mut self, max: usize, wait: std::time::Duration) -> Result<Line, ConnError> {
        self.read_line_within(max, wait).await
    }
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

/// The response to a command the framing refused: whether it counts as the client's error
/// (BAD) or is a NO for a load the server cannot take now.
fn refusal_text(reason: Refusal) -> (bool, &'static str) {
    match reason {
        Refusal::LineTooLong => (true, "Command line too long"),
        Refusal::CommandTooLarge => (true, "[TOOBIG] Command too large"),
        Refusal::LiteralTooLarge => (true, "[TOOBIG] Literal too large"),
        Refusal::TooManyLiterals => (true, "[LIMIT] Too many literals in one command"),
        Refusal::LoginFirst => (true, "Log in first"),
        Refusal::OverBudget => (
            false,
            "[LIMIT] The server holds too much message data just now; try again later",
        ),
    }
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
        self.login_check.revoked().await
    }

    /// Before running a command: whether the login stopped standing since the last check.
    pub async fn login_revoked_now(&mut self) -> bool {
        self.login_check.revoked_now().await
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
            let mut caps = "IMAP4rev1 IMAP4rev2 SASL-IR LITERAL+ ID ENABLE IDLE NAMESPACE".to_string();
            let certificate = self.tls.as_ref().is_some_and(|t| t.client_certificate.is_some());
            for mechanism in Mechanism::offered(self.ctx.logins.scram_enabled(), certificate) {
                caps.push_str(" AUTH=");
                caps.push_str(mechanism.name());
            }
            return caps;
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

    /// Runs one framed command, whatever it holds: a refusal from the framing, a command
    /// imap-codec decodes (after the rewrites of `esearch` for what it cannot parse), or an
    /// extended LIST, which `list` parses itself. Responses are in `out`.
    pub async fn frame(&mut self, frame: Frame, client: &mut dyn Client) -> Result<Next, ConnError> {
        // The reservation (the budget share the command's literals hold) is bound here, so it
        // is given back only when this function returns, after the command has run.
        let (bytes, _reservation) = match frame {
            Frame::Refused { tag, reason } => {
                let keep_going = match refusal_text(reason) {
                    (true, text) => self.refuse(tag.as_deref(), text).await,
                    (false, text) => {
                        self.decline(tag.as_deref(), text);
                        true
                    }
                };
                return Ok(if keep_going { Next::Continue } else { Next::Close });
            }
            Frame::Command(bytes, reservation) => (bytes, reservation),
        };
        let (bytes, search_return) = match esearch::strip_return(&bytes) {
            Some((stripped, options)) => (stripped, Some(options)),
            None => (bytes, None),
        };
        let (bytes, utf8_append) = match esearch::strip_utf8_append(&bytes) {
            Some(stripped) => (stripped, true),
            None => (bytes, false),
        };
        // RFC 5182: `$` is the saved search result, written out before decoding. Whether it
        // named no message belongs to this command only.
        let mut dollar_empty = false;
        let substituted = match self.selected {
            Some(_) => esearch::substitute_saved(&bytes, |use_| {
                let (text, empty) = self.saved_result_text(use_)?;
                dollar_empty |= empty && matches!(use_, esearch::SavedUse::Set { .. });
                Some(text)
            }),
            None => None,
        };
        let bytes = match substituted {
            Some(rewritten) => rewritten,
            None => {
                dollar_empty = false;
                bytes
            }
        };
        match CommandCodec::default().decode(&bytes) {
            Ok((b"", command)) => {
                self.search_return = search_return;
                self.utf8_append = utf8_append;
                self.dollar_empty = dollar_empty;
                let next = self.execute(command, client).await;
                self.search_return = None;
                self.utf8_append = false;
                self.dollar_empty = false;
                next
            }
            _ => match list::parse_extended(&bytes) {
                Some((tag, request)) => {
                    run_list(self, &tag, request).await;
                    Ok(Next::Continue)
                }
                None => {
                    let tag = crate::framing::tag_of(&bytes);
                    let keep_going = self
                        .refuse(tag.as_deref(), "Syntax error or unknown command")
                        .await;
                    Ok(if keep_going { Next::Continue } else { Next::Close })
                }
            },
        }
    }

    /// Runs one command; its responses are in `out`.
    pub async fn execute(
        &mut self,
        command: Command<'_>,
        client: &mut dyn Client,
    ) -> Result<Next, ConnError> {
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
                let certificate = self.tls.as_ref().is_some_and(|t| t.client_certificate.is_some());
                let offered = Mechanism::offered(self.ctx.logins.scram_enabled(), certificate);
                let mechanism = match mechanism {
                    AuthMechanism::Plain => Some(Mechanism::Plain),
                    AuthMechanism::Login => Some(Mechanism::Login),
                    AuthMechanism::ScramSha256 => Some(Mechanism::ScramSha256),
                    AuthMechanism::ScramSha256Plus => Some(Mechanism::ScramSha256Plus),
                    other => Mechanism::from_name(other.as_ref()),
                }
                .filter(|m| offered.contains(m));
                match mechanism {
                    None => no("Unsupported mechanism; see the AUTH= capabilities"),
                    Some(mechanism) => {
                        let initial = initial_response.map(|r| r.declassify().to_vec());
                        self.authenticate(client, mechanism, initial.as_deref(), &mut next)
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
                    self.authenticated(&tag, body, client, &mut next).await?
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

    fn account_id(&self) -> Option<sealmail_types::AccountId> {
        self.account.as_ref().map(|a| a.id)
    }

    /// The account's mailbox a command names, or the NO the command ends with: `missing` is
    /// the response text for a name that is not there (`[TRYCREATE] ...` for a target,
    /// `[NONEXISTENT] ...` otherwise).
    async fn named_mailbox(&self, mailbox: &WireMailbox<'_>, missing: &str) -> Result<Mailbox, Done> {
        let Some(name) = mailbox_name(mailbox, self.utf8) else {
            return Err(no(missing));
        };
        match self.find_mailbox(&name).await {
            Ok(Some(found)) => Ok(found),
            Ok(None) => Err(no(missing)),
            Err(e) => Err(store_failure(&e)),
        }
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
        client: &mut dyn Client,
        next: &mut Next,
    ) -> Result<Done, ConnError> {
        let Some(account) = self.account_id() else {
            return Ok(bad("Log in first"));
        };
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
            CommandBody::Create { mailbox } => self.create(&mailbox).await,
            CommandBody::Delete { mailbox } => self.delete(&mailbox).await,
            CommandBody::Rename { from, to } => self.rename(&from, &to).await,
            CommandBody::Subscribe { mailbox } => self.subscribe(&mailbox, true).await,
            CommandBody::Unsubscribe { mailbox } => self.subscribe(&mailbox, false).await,
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
            CommandBody::Status { mailbox, item_names } => self.status(&mailbox, item_names.as_ref()).await,
            CommandBody::Append {
                mailbox,
                flags,
                date,
                message,
            } => self.append(&mailbox, &flags, date, &message).await,
            // RFC 9208: one quota root, "", for all of an account's mailboxes.
            CommandBody::GetQuotaRoot { mailbox } => self.get_quota_root(&mailbox).await,
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
                self.in_mailbox(body, client).await?
            }
        })
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

    async fn in_mailbox(
        &mut self,
        body: CommandBody<'_>,
        client: &mut dyn Client,
    ) -> Result<Done, ConnError> {
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
                self.fetch(&sequence_set, macro_or_item_names, uid, &modifiers, client)
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

    fn uids_of(&self, indices: &[usize]) -> Vec<u32> {
        match &self.selected {
            Some(s) => indices
                .iter()
                .filter_map(|&i| s.entries.get(i).map(|e| e.uid))
                .collect(),
            None => Vec::new(),
        }
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
