//! One SMTP session's state and its answers to commands, without sockets: the driver in
//! `lib.rs` reads lines and data, hands them here, and carries out the returned [`Action`].
//!
//! State is explicit: no greeting yet, greeted (EHLO/HELO), in a mail transaction. After
//! STARTTLS everything is forgotten (RFC 3207 section 4.2). On `submission`, MAIL needs an
//! [`Authenticated`] proof, which only needs TLS to get (RFC 8314, RFC 4954 section 4).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use smtp_proto::{
    AUTH_EXTERNAL, AUTH_LOGIN, AUTH_PLAIN, AUTH_SCRAM_SHA_256, AUTH_SCRAM_SHA_256_PLUS, MAIL_BODY_8BITMIME,
    MAIL_BODY_BINARYMIME, MAIL_REQUIRETLS, MAIL_RET_FULL, MAIL_RET_HDRS, MAIL_SMTPUTF8, RCPT_NOTIFY_DELAY,
    RCPT_NOTIFY_FAILURE, RCPT_NOTIFY_NEVER, RCPT_NOTIFY_SUCCESS, Request,
};

use sealmail_config::{Role, SmtpConfig};
use sealmail_guard::Abuse;
use sealmail_guard::LoginOutcome;
use sealmail_guard::access::{
    AbuseReporting, HourlyUse, LoginContext, LoginWatch, Logins, SaslChannel, SaslEnd, sasl_login,
};
use sealmail_identity::Protocol;
use sealmail_identity::sasl::Mechanism;
use sealmail_mailauth::inbound::{InboundPolicy, InboundVerdicts};
use sealmail_mailauth::signing::MessageSigning;
use sealmail_store::{AcceptedMessage, LocalCopy, OutboundCopy, QueueRecipient, Recipient as Lookup, Store};
use sealmail_types::clock::now_unix;
use sealmail_types::proof::{Authenticated, TlsActive};
use sealmail_types::{AccountId, EmailAddress, MailboxId};

use crate::message;
use crate::pipeline::{self, Draft, Envelope, Services};
use crate::reply::Reply;

/// What the server shares with every SMTP session.
pub struct SmtpContext {
    pub hostname: String,
    pub config: SmtpConfig,
    pub store: Arc<dyn Store>,
    /// Credentials checked under intrusion prevention.
    pub logins: Arc<dyn Logins>,
    /// Where unknown recipients, relay attempts and error floods are scored, and hourly
    /// sending allowances are kept.
    pub abuse: Arc<dyn AbuseReporting>,
    pub body_budget: crate::budget::BodyBudget,
    /// Sender authentication for mail received on `mx`.
    pub verdicts: Arc<dyn InboundVerdicts>,
    /// DKIM keys of our domains, for submission.
    pub signer: Arc<dyn MessageSigning>,
    pub inbound: InboundPolicy,
    /// Told after a message was queued for remote recipients (wakes the delivery scheduler).
    pub on_queued: Option<Arc<dyn Fn() + Send + Sync>>,
    /// `limits.mailbox_quota`: octets one account may hold (0: no limit).
    pub mailbox_quota: u64,
    /// `server.node_name`, named in the `Received` header.
    pub node_name: String,
}

/// What the driver must do after a command.
pub enum Action {
    Reply(Reply),
    /// Send the reply, then upgrade to TLS.
    StartTls(Reply),
    /// Send the reply, then close.
    Close(Reply),
    /// Send 354 and read the message with the DATA receiver.
    ReceiveData,
    /// Read a BDAT chunk of `size` octets; `keep` is false when it must be read and dropped.
    ReceiveChunk {
        size: usize,
        last: bool,
        keep: bool,
    },
    /// Run a SASL exchange starting with this step.
    /// Run a SASL exchange of this mechanism, with the decoded initial response if any.
    Authenticate(Mechanism, Option<Vec<u8>>),
}

/// A BDAT chunk as the driver read it.
pub enum Chunk {
    Data(Vec<u8>),
    /// Read and dropped because the transaction could not take it.
    Dropped,
    /// Read and dropped because it alone exceeds the size limit.
    TooBig,
    /// Read and dropped because the server-wide body memory budget is spent.
    NoMemory,
}

enum Target {
    Local { account: AccountId, mailbox: MailboxId },
    Remote(QueueRecipient),
}

struct Recipient {
    address: EmailAddress,
    target: Target,
    /// NOTIFY and ORCPT (RFC 3461), for a local recipient's "delivered" notice.
    dsn_notify: Option<String>,
    dsn_orcpt: Option<String>,
}

struct Transaction {
    /// `None` is the null reverse-path `<>`.
    sender: Option<EmailAddress>,
    smtputf8: bool,
    eight_bit: bool,
    dsn_ret: Option<String>,
    dsn_envid: Option<String>,
    /// RFC 8689: the message may only travel over TLS to verified servers.
    require_tls: bool,
    recipients: Vec<Recipient>,
    /// Chunks received so far with BDAT (RFC 3030), and the memory they hold.
    chunks: Option<Vec<u8>>,
    chunks_reservation: Option<crate::budget::Reservation>,
    chunks_too_big: bool,
    chunks_over_budget: bool,
    /// When a chunked transaction must have ended (`smtp.data_timeout_secs` after its first
    /// BDAT): buffered chunks hold a share of the body budget across commands, so a client
    /// that stops after a non-final chunk (and sends NOOPs) must not keep it for long.
    chunks_deadline: Option<Instant>,
    /// The size the client declared with MAIL's SIZE (RFC 1870), 0 when none.
    declared_size: u64,
}

pub struct Session {
    ctx: Arc<SmtpContext>,
    role: Role,
    peer: SocketAddr,
    tls: Option<TlsActive>,
    helo: Option<String>,
    esmtp: bool,
    auth: Option<Authenticated>,
    /// From AUTH on: tells when the account's password changed or the account went.
    login_check: Option<Box<dyn LoginWatch>>,
    transaction: Option<Transaction>,
    /// A failed BDAT transaction: further chunks are read and dropped until LAST or RSET.
    bdat_failed: bool,
    errors: u32,
    /// The client was banned during this session; it is closed after the current reply.
    banned: bool,
}

fn reply(code: u16, status: &'static str, text: impl Into<String>) -> Action {
    Action::Reply(Reply::new(code, status, text))
}

impl Session {
    pub fn new(ctx: Arc<SmtpContext>, role: Role, peer: SocketAddr, tls: Option<TlsActive>) -> Session {
        Session {
            ctx,
            role,
            peer,
            tls,
            helo: None,
            esmtp: false,
            auth: None,
            login_check: None,
            transaction: None,
            bdat_failed: false,
            errors: 0,
            banned: false,
        }
    }

    pub fn greeting(&self) -> Reply {
        Reply::bare(220, format!("{} ESMTP sealmail", self.ctx.hostname))
    }

    /// Counts an error reply; returns the 421 that ends the session when there were too many
    /// or when the client has just been banned.
    pub async fn count_error(&mut self, sent: &Reply) -> Option<Reply> {
        if self.banned {
            return Some(Reply::new(
                421,
                "4.7.0",
                format!("{} Access denied for this address", self.ctx.hostname),
            ));
        }
        if !sent.is_error() {
            return None;
        }
        self.errors += 1;
        if self.errors < self.ctx.config.max_errors {
            return None;
        }
        let detail = format!("{} errors in one session", self.errors);
        self.ctx
            .abuse
            .report(self.peer.ip(), Abuse::ProtocolErrors, self.role.as_str(), &detail)
            .await;
        Some(Reply::new(
            421,
            "4.7.0",
            format!("{} Too many errors, closing connection", self.ctx.hostname),
        ))
    }

    /// RFC 3207 section 4.2: after the handshake the server discards all knowledge from before.
    pub fn tls_started(&mut self, tls: Option<TlsActive>) {
        self.tls = tls;
        self.helo = None;
        self.esmtp = false;
        self.auth = None;
        self.transaction = None;
        self.bdat_failed = false;
    }

    pub fn line_too_long(&self) -> Reply {
        Reply::new(500, "5.5.2", "Line too long")
    }

    pub fn authenticated(&self) -> Option<&Authenticated> {
        self.auth.as_ref()
    }

    /// Returns once the AUTH login no longer stands (its password changed or its account was
    /// removed); never before AUTH. Cancel-safe, so the driver races it with reading.
    pub async fn login_revoked(&mut self) {
        self.login_check.revoked().await
    }

    /// Before acting on a command or a message: whether the login stopped standing since the
    /// last check.
    pub async fn login_revoked_now(&mut self) -> bool {
        self.login_check.revoked_now().await
    }

    /// The reply that ends a session whose login no longer stands.
    pub fn login_revoked_reply(&self) -> Reply {
        Reply::new(
            421,
            "4.7.0",
            format!(
                "{} Your login is no longer valid: the credential it used was changed or revoked, or the account removed; closing connection",
                self.ctx.hostname
            ),
        )
    }

    /// Answers one command line (without its CRLF).
    pub async fn command(&mut self, line: &[u8]) -> Action {
        self.expire_stalled_chunks();
        let mut with_crlf = Vec::with_capacity(line.len() + 2);
        with_crlf.extend_from_slice(line);
        with_crlf.extend_from_slice(b"\r\n");
        let request = match Request::parse(&mut with_crlf.iter()) {
            Ok(request) => request.into_owned(),
            Err(e) => return parse_error(e),
        };
        match request {
            Request::Ehlo { host } => self.ehlo(host, true),
            Request::Helo { host } => self.ehlo(host, false),
            Request::Lhlo { .. } => reply(500, "5.5.1", "LHLO is for LMTP"),
            Request::StartTls => self.starttls(),
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, &initial_response),
            Request::Mail { from } => self.mail(from).await,
            Request::Rcpt { to } => self.rcpt(to).await,
            Request::Data => self.data(),
            Request::Bdat { chunk_size, is_last } => self.bdat(chunk_size, is_last),
            Request::Rset => {
                self.transaction = None;
                self.bdat_failed = false;
                reply(250, "2.0.0", "OK")
            }
            Request::Noop { .. } => reply(250, "2.0.0", "OK"),
            Request::Quit => Action::Close(Reply::new(
                221,
                "2.0.0",
                format!("{} closing connection", self.ctx.hostname),
            )),
            // RFC 5321 3.5.3: 252 when the server will not say whether a user exists.
            Request::Vrfy { .. } | Request::Expn { .. } => reply(
                252,
                "2.5.0",
                "Cannot verify the user; send mail and delivery will be attempted",
            ),
            Request::Help { .. } => reply(
                214,
                "2.0.0",
                "See RFC 5321; sealmail supports ESMTP with the extensions EHLO lists",
            ),
            Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                reply(502, "5.5.1", "Command not implemented")
            }
        }
    }

    fn ehlo(&mut self, host: String, esmtp: bool) -> Action {
        if host.is_empty() || host.len() > 255 || host.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return reply(501, "5.5.4", "Syntax: EHLO domain-or-address-literal");
        }
        // RFC 5321 4.1.4: EHLO also resets any transaction.
        self.transaction = None;
        self.helo = Some(host.clone());
        self.esmtp = esmtp;
        if !esmtp {
            return Action::Reply(Reply::bare(250, self.ctx.hostname.clone()));
        }
        let mut lines = vec![
            format!("{} greets {host}", self.ctx.hostname),
            "PIPELINING".to_string(),
            format!("SIZE {}", self.ctx.config.max_message_size),
            "8BITMIME".to_string(),
            "SMTPUTF8".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "CHUNKING".to_string(),
        ];
        // DSN (RFC 3461) on submission only: there we send every notice NOTIFY can ask for.
        // mx delivers or refuses before its reply, so only "delivered" notices would remain, and
        // those would go to unverified addresses; a sender's server that sees no DSN here says
        // "relayed" to its user instead, which is the truth.
        if self.role == Role::Submission {
            lines.push("DSN".to_string());
        }
        if self.tls.is_none() {
            lines.push("STARTTLS".to_string());
        } else {
            // RFC 8689 2: offered only once TLS protects the session.
            lines.push("REQUIRETLS".to_string());
        }
        // RFC 4954 section 4 and RFC 8314: password mechanisms only over TLS, only for our users.
        if self.role == Role::Submission && self.tls.is_some() {
            let names: Vec<&str> = self.offered_mechanisms().iter().map(|m| m.name()).collect();
            lines.push(format!("AUTH {}", names.join(" ")));
        }
        lines.push("HELP".to_string());
        Action::Reply(Reply::multiline(250, lines))
    }

    fn starttls(&mut self) -> Action {
        if self.tls.is_some() {
            return reply(503, "5.5.1", "TLS already active");
        }
        Action::StartTls(Reply::new(220, "2.0.0", "Ready to start TLS"))
    }

    fn auth(&mut self, mechanism: u64, initial: &str) -> Action {
        if self.role != Role::Submission {
            return reply(
                503,
                "5.5.1",
                "AUTH is not available on this port; use the submission port",
            );
        }
        let Some(_) = &self.tls else {
            return reply(530, "5.7.0", "Must issue a STARTTLS command first");
        };
        if self.helo.is_none() {
            return reply(503, "5.5.1", "Send EHLO first");
        }
        if self.auth.is_some() {
            return reply(503, "5.5.1", "Already authenticated");
        }
        if self.transaction.is_some() {
            return reply(503, "5.5.1", "AUTH is not allowed during a mail transaction");
        }
        let mechanism = match mechanism {
            AUTH_PLAIN => Some(Mechanism::Plain),
            AUTH_LOGIN => Some(Mechanism::Login),
            AUTH_EXTERNAL => Some(Mechanism::External),
            AUTH_SCRAM_SHA_256 => Some(Mechanism::ScramSha256),
            AUTH_SCRAM_SHA_256_PLUS => Some(Mechanism::ScramSha256Plus),
            _ => None,
        };
        let Some(mechanism) = mechanism.filter(|m| self.offered_mechanisms().contains(m)) else {
            return reply(504, "5.5.4", "Mechanism not supported; see the AUTH line of EHLO");
        };
        // RFC 4954 section 4: "=" is an empty initial response.
        let initial = match initial {
            "" => None,
            "=" => Some(Vec::new()),
            encoded => match BASE64.decode(encoded) {
                Ok(bytes) => Some(bytes),
                Err(_) => return reply(501, "5.5.2", "Initial response is not valid base64"),
            },
        };
        Action::Authenticate(mechanism, initial)
    }

    /// The SASL mechanisms this session offers (RFC 4954): SCRAM when enabled, EXTERNAL when
    /// the client presented an accepted certificate, PLAIN and LOGIN.
    fn offered_mechanisms(&self) -> Vec<Mechanism> {
        let certificate = self.tls.as_ref().is_some_and(|t| t.client_certificate.is_some());
        Mechanism::offered(self.ctx.logins.scram_enabled(), certificate)
    }

    /// Runs the SASL exchange AUTH asked for over `channel`, and answers it.
    pub async fn run_auth<C: SaslChannel>(
        &mut self,
        mechanism: Mechanism,
        initial: Option<Vec<u8>>,
        channel: &mut C,
    ) -> Result<Reply, C::Error> {
        let Some(tls) = self.tls.clone() else {
            return Ok(Reply::new(530, "5.7.0", "Must issue a STARTTLS command first"));
        };
        let ctx = self.ctx.clone();
        let context = LoginContext {
            tls: &tls,
            client: self.peer.ip(),
            listener: self.role.as_str(),
        };
        let end = sasl_login(
            ctx.logins.as_ref(),
            context,
            Protocol::Smtp,
            mechanism,
            initial,
            channel,
        )
        .await?;
        Ok(match end {
            SaslEnd::Done(outcome) => self.finish_login(outcome),
            SaslEnd::Malformed(why) => Reply::new(501, "5.5.2", format!("Authentication failed: {why}")),
            SaslEnd::Cancelled => Reply::new(501, "5.0.0", "Authentication cancelled"),
            SaslEnd::Invalid(why) => Reply::new(501, "5.5.2", why),
        })
    }

    /// The reply to a finished login, and the session's state after it.
    fn finish_login(&mut self, outcome: LoginOutcome) -> Reply {
        let ctx = self.ctx.clone();
        match outcome {
            LoginOutcome::Success(authenticated) => {
                self.login_check = Some(ctx.logins.watch(&authenticated));
                self.auth = Some(authenticated);
                Reply::new(235, "2.7.0", "Authentication successful")
            }
            LoginOutcome::Failed { banned } => {
                self.banned |= banned;
                Reply::new(535, "5.7.8", "Authentication credentials invalid")
            }
            LoginOutcome::Unavailable => Reply::new(454, "4.7.0", "Temporary authentication failure"),
        }
    }

    async fn mail(&mut self, from: smtp_proto::MailFrom<String>) -> Action {
        if self.helo.is_none() {
            return reply(503, "5.5.1", "Send EHLO first");
        }
        if self.transaction.is_some() {
            return reply(503, "5.5.1", "Nested MAIL command");
        }
        if self.role == Role::Submission {
            if self.tls.is_none() {
                return reply(530, "5.7.0", "Must issue a STARTTLS command first");
            }
            if self.auth.is_none() {
                return reply(530, "5.7.0", "Authentication required");
            }
        }
        if from.flags & MAIL_BODY_BINARYMIME != 0 {
            return reply(555, "5.5.4", "BODY=BINARYMIME is not supported");
        }
        if self.role != Role::Submission
            && (from.flags & (MAIL_RET_FULL | MAIL_RET_HDRS) != 0 || from.env_id.is_some())
        {
            return reply(555, "5.5.4", "DSN is not offered here (RET, ENVID)");
        }
        // RFC 3461 4.4: ENVID is xtext of printable US-ASCII. smtp-proto decodes it; the
        // decoded text is checked and kept re-encoded, so it can only leave encoded.
        let dsn_envid = match from.env_id.as_deref().map(dsn_parameter) {
            None => None,
            Some(Some(encoded)) => Some(encoded),
            Some(None) => {
                return reply(
                    501,
                    "5.5.4",
                    "ENVID must be xtext of printable US-ASCII (RFC 3461)",
                );
            }
        };
        let require_tls = from.flags & MAIL_REQUIRETLS != 0;
        if require_tls && self.tls.is_none() {
            // RFC 8689 4.1: REQUIRETLS is only valid on a session protected by TLS.
            return reply(
                530,
                "5.7.0",
                "REQUIRETLS needs a TLS session; issue STARTTLS first",
            );
        }
        if from.size > self.ctx.config.max_message_size {
            return reply(
                552,
                "5.3.4",
                format!(
                    "Message too big; the limit is {} octets",
                    self.ctx.config.max_message_size
                ),
            );
        }
        let smtputf8 = from.flags & MAIL_SMTPUTF8 != 0;
        let sender = if from.address.is_empty() {
            None
        } else {
            match EmailAddress::parse(&from.address) {
                Ok(address) => Some(address),
                Err(e) => return reply(501, "5.1.7", format!("Bad sender address: {e}")),
            }
        };
        // RFC 6531 section 3.4: a non-ASCII address needs SMTPUTF8.
        if !smtputf8 && !from.address.is_ascii() {
            return reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
        }
        if let Some(auth) = &self.auth {
            // No spoofing of colleagues: a user sends as themself only (aliases come later).
            match &sender {
                Some(address) if *address == auth.account.address => {}
                Some(address) => {
                    return reply(
                        553,
                        "5.7.1",
                        format!("Sender address rejected: {address} is not yours"),
                    );
                }
                None => return reply(553, "5.7.1", "The null sender is not allowed for users"),
            }
        }
        if let Err(refusal) = self
            .spend_hourly("messages", self.ctx.config.messages_per_hour)
            .await
        {
            return refusal;
        }
        let dsn_ret = match from.flags {
            f if f & MAIL_RET_FULL != 0 => Some("FULL".to_string()),
            f if f & MAIL_RET_HDRS != 0 => Some("HDRS".to_string()),
            _ => None,
        };
        self.transaction = Some(Transaction {
            sender,
            smtputf8,
            eight_bit: from.flags & MAIL_BODY_8BITMIME != 0,
            dsn_ret,
            dsn_envid,
            require_tls,
            recipients: Vec::new(),
            chunks: None,
            chunks_reservation: None,
            chunks_too_big: false,
            chunks_over_budget: false,
            chunks_deadline: None,
            declared_size: from.size as u64,
        });
        reply(250, "2.1.0", "Sender OK")
    }

    async fn rcpt(&mut self, to: smtp_proto::RcptTo<String>) -> Action {
        let role = self.role;
        let max_recipients = self.ctx.config.max_recipients;
        let store = self.ctx.store.clone();
        let Some(transaction) = self.transaction.as_mut() else {
            return reply(503, "5.5.1", "Need MAIL before RCPT");
        };
        if transaction.recipients.len() >= max_recipients {
            // RFC 5321 4.5.3.1.10: 452 for too many recipients.
            return reply(452, "4.5.3", "Too many recipients");
        }
        let dsn_notify = notify_text(to.flags);
        if role != Role::Submission && (dsn_notify.is_some() || to.orcpt.is_some()) {
            return reply(555, "5.5.4", "DSN is not offered here (NOTIFY, ORCPT)");
        }
        // smtp-proto accepts only the rfc822 address type and decodes the xtext (RFC 3461
        // 4.2); like ENVID, the address is checked and kept encoded.
        let dsn_orcpt = match to.orcpt.as_deref().map(dsn_parameter) {
            None => None,
            Some(Some(encoded)) => Some(format!("rfc822;{encoded}")),
            Some(None) => {
                return reply(
                    501,
                    "5.5.4",
                    "ORCPT must be xtext of printable US-ASCII (RFC 3461)",
                );
            }
        };
        if !transaction.smtputf8 && !to.address.is_ascii() {
            return reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
        }
        let address = match EmailAddress::parse(&to.address) {
            Ok(address) => address,
            Err(e) => return reply(501, "5.1.3", format!("Bad recipient address: {e}")),
        };
        if transaction.recipients.iter().any(|r| r.address == address) {
            return reply(250, "2.1.5", "Recipient OK (duplicate ignored)");
        }
        let recipient = match store.resolve_recipient(&address).await {
            Ok(recipient) => recipient,
            Err(e) => return temporary_failure(&e),
        };
        let target = match (recipient, role) {
            (Lookup::Local { account, inbox }, _) => {
                let quota = self.ctx.mailbox_quota;
                if quota > 0 {
                    let used = match store.account_usage(account).await {
                        Ok(used) => used,
                        Err(e) => return temporary_failure(&e),
                    };
                    // RFC 1870 6.1 / RFC 3463 5.2.2: full now, or full with the declared size.
                    if used >= quota || used.saturating_add(transaction.declared_size) > quota {
                        return reply(
                            552,
                            "5.2.2",
                            format!("Mailbox full: {address} is over its storage quota"),
                        );
                    }
                }
                Target::Local {
                    account,
                    mailbox: inbox,
                }
            }
            (Lookup::UnknownUser, _) => {
                self.report_recipient(Abuse::UnknownRecipient, &address).await;
                return reply(550, "5.1.1", format!("No such user here: {address}"));
            }
            (Lookup::NotLocal, Role::Submission) => Target::Remote(QueueRecipient {
                address: address.clone(),
                dsn_notify: dsn_notify.clone(),
                dsn_orcpt: dsn_orcpt.clone(),
            }),
            // mx never relays.
            (Lookup::NotLocal, _) => {
                self.report_recipient(Abuse::RelayAttempt, &address).await;
                let refusal = format!("Relaying denied: {} is not served here", address.domain());
                return reply(550, "5.7.1", refusal);
            }
        };
        if let Err(refusal) = self
            .spend_hourly("recipients", self.ctx.config.recipients_per_hour)
            .await
        {
            return refusal;
        }
        let Some(transaction) = self.transaction.as_mut() else {
            return reply(503, "5.5.1", "Need MAIL before RCPT");
        };
        transaction.recipients.push(Recipient {
            address,
            target,
            dsn_notify,
            dsn_orcpt,
        });
        reply(250, "2.1.5", "Recipient OK")
    }

    /// Spends one unit of the logged-in account's hourly allowance `what`, or gives the 451 that
    /// refuses it; nothing to spend without a login (MX sessions have no account to count against).
    async fn spend_hourly(&self, what: &'static str, per_hour: u32) -> Result<(), Action> {
        let Some(auth) = &self.auth else { return Ok(()) };
        let account = auth.account.address.to_string();
        let usage = HourlyUse {
            what,
            account: &account,
            count: 1,
            per_hour,
            client: self.peer.ip(),
            listener: self.role.as_str(),
        };
        if self.ctx.abuse.take_hourly(usage).await {
            return Ok(());
        }
        Err(reply(
            451,
            "4.7.1",
            format!("Too many {what} from this account in the last hour; try again later"),
        ))
    }

    /// Scores a refused RCPT against the client; once that bans it, the session ends after
    /// the refusal (see [`Session::count_error`]).
    async fn report_recipient(&mut self, abuse: Abuse, address: &EmailAddress) {
        let detail = format!("RCPT TO:<{address}>");
        if self
            .ctx
            .abuse
            .report(self.peer.ip(), abuse, self.role.as_str(), &detail)
            .await
        {
            self.banned = true;
        }
    }

    /// The "delivered" notice (RFC 3464) for local recipients whose NOTIFY asked for it, into
    /// the submitting user's INBOX. The message is already accepted: a failure here is logged.
    async fn notify_delivered(
        &self,
        envid: &Option<String>,
        notices: &[sealmail_dsn::Notice],
        original: &[u8],
    ) {
        // Only for the logged-in user, to their own address (MAIL FROM is theirs).
        let Some(auth) = &self.auth else {
            return;
        };
        let sender = auth.account.address.to_string();
        let report = sealmail_dsn::Report {
            hostname: &self.ctx.hostname,
            sender: &sender,
            envid: envid.as_deref(),
            ret_full: false,
            arrival: now_unix(),
            recipients: notices,
            original,
        };
        if let Err(e) = sealmail_dsn::deliver_to_sender(self.ctx.store.as_ref(), &report).await {
            tracing::error!(error = %e, "cannot store a DSN");
        }
    }

    fn data(&mut self) -> Action {
        match &self.transaction {
            None => reply(503, "5.5.1", "Need MAIL before DATA"),
            Some(t) if t.chunks.is_some() => reply(503, "5.5.1", "DATA cannot follow BDAT"),
            Some(t) if t.recipients.is_empty() => reply(554, "5.5.1", "No valid recipients"),
            Some(_) => Action::ReceiveData,
        }
    }

    fn bdat(&mut self, size: usize, last: bool) -> Action {
        let data_timeout = self.ctx.config.data_timeout;
        let keep = match &mut self.transaction {
            Some(t) if !t.recipients.is_empty() && !self.bdat_failed => {
                t.chunks.get_or_insert_with(Vec::new);
                t.chunks_deadline
                    .get_or_insert_with(|| Instant::now() + data_timeout);
                true
            }
            _ => false,
        };
        Action::ReceiveChunk { size, last, keep }
    }

    /// When the chunked transaction in progress must have ended, if one is.
    pub fn chunks_deadline(&self) -> Option<Instant> {
        self.transaction.as_ref().and_then(|t| t.chunks_deadline)
    }

    /// Ends a chunked transaction whose deadline passed: its chunks and their share of the
    /// body budget are let go, and its further chunks are refused until RSET.
    fn expire_stalled_chunks(&mut self) {
        let stalled = self
            .transaction
            .as_ref()
            .and_then(|t| t.chunks_deadline)
            .is_some_and(|deadline| Instant::now() >= deadline);
        if stalled {
            tracing::info!(peer = %self.peer, "a chunked (BDAT) transaction took too long; its chunks are dropped");
            self.transaction = None;
        }
    }

    /// The answer after a BDAT chunk was read.
    pub async fn chunk_received(&mut self, chunk: Chunk, last: bool) -> Reply {
        let budget = self.ctx.body_budget.clone();
        let peer = self.peer.ip();
        let (chunk, over_budget) = match chunk {
            Chunk::Data(bytes) => (Some(bytes), false),
            Chunk::TooBig => (None, false),
            Chunk::NoMemory => (None, true),
            Chunk::Dropped => return self.chunk_refused(last),
        };
        let max = self.ctx.config.max_message_size;
        let Some(transaction) = self.transaction.as_mut() else {
            return Reply::new(503, "5.5.1", "Need MAIL before BDAT");
        };
        let buffer = transaction.chunks.get_or_insert_with(Vec::new);
        let reservation = transaction
            .chunks_reservation
            .get_or_insert_with(|| budget.reservation_for(peer));
        let received = chunk.as_ref().map(Vec::len).unwrap_or(0);
        transaction.chunks_over_budget |= over_budget;
        match chunk {
            Some(bytes)
                if !transaction.chunks_too_big
                    && !transaction.chunks_over_budget
                    && buffer.len() + bytes.len() <= max =>
            {
                if reservation.grow_to(buffer.len() + bytes.len()) {
                    buffer.extend_from_slice(&bytes);
                } else {
                    transaction.chunks_over_budget = true;
                    *buffer = Vec::new();
                }
            }
            Some(_) if transaction.chunks_over_budget => *buffer = Vec::new(),
            _ if over_budget => *buffer = Vec::new(),
            _ => {
                transaction.chunks_too_big = true;
                *buffer = Vec::new();
            }
        }
        if !last {
            return Reply::new(250, "2.0.0", format!("{received} octets received"));
        }
        let too_big = transaction.chunks_too_big;
        let content = std::mem::take(buffer);
        if too_big {
            self.transaction = None;
            return Reply::new(
                552,
                "5.3.4",
                format!("Message too big; the limit is {max} octets"),
            );
        }
        if transaction.chunks_over_budget {
            self.transaction = None;
            return insufficient_storage();
        }
        // BDAT's content is not dot-stuffed, but without BINARYMIME (not offered) it must
        // still be lines ending in CRLF without NUL (RFC 3030 3): the same rules as DATA, or a
        // chunked message could carry what DATA refuses to the next hop.
        if let Some(problem) = sealmail_types::line::unsafe_content(&content) {
            self.transaction = None;
            sealmail_metrics::MESSAGES_REFUSED.inc();
            return if problem.contains("NUL") {
                nul_refused()
            } else {
                bare_line_ending_refused()
            };
        }
        self.finish_message(content).await
    }

    fn chunk_refused(&mut self, last: bool) -> Reply {
        let no_transaction = self.transaction.as_ref().is_none_or(|t| t.recipients.is_empty());
        if last {
            self.bdat_failed = false;
            self.transaction = None;
        } else if !no_transaction {
            self.bdat_failed = true;
        }
        match no_transaction {
            true => Reply::new(503, "5.5.1", "Need MAIL and RCPT before BDAT"),
            false => Reply::new(554, "5.5.0", "Earlier BDAT failed; send RSET"),
        }
    }

    /// The answer after DATA was read to its end marker.
    pub async fn data_received(&mut self, data: crate::data::Data) -> Reply {
        if data.bare_line_ending || data.nul || data.too_big {
            sealmail_metrics::MESSAGES_REFUSED.inc();
        }
        if data.nul {
            self.transaction = None;
            return nul_refused();
        }
        if data.bare_line_ending {
            self.transaction = None;
            return bare_line_ending_refused();
        }
        if data.over_budget {
            self.transaction = None;
            return insufficient_storage();
        }
        if data.too_big {
            self.transaction = None;
            return Reply::new(
                552,
                "5.3.4",
                format!(
                    "Message too big; the limit is {} octets",
                    self.ctx.config.max_message_size
                ),
            );
        }
        self.finish_message(data.content).await
    }

    /// Runs the role's stages, routes the recipients, adds the trace, and stores the message
    /// durably before saying 250.
    async fn finish_message(&mut self, content: Vec<u8>) -> Reply {
        let Some(transaction) = self.transaction.take() else {
            return Reply::new(503, "5.5.1", "Need MAIL first");
        };
        let id = match message::new_id() {
            Ok(id) => id,
            Err(e) => {
                tracing::error!(error = %e, "no message id");
                return Reply::new(451, "4.3.0", "Temporary local problem; try again later");
            }
        };
        let sender_text = transaction
            .sender
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut draft = Draft::new(id, content);
        let services = Services {
            store: self.ctx.store.as_ref(),
            verdicts: self.ctx.verdicts.as_ref(),
            signer: self.ctx.signer.as_ref(),
            policy: &self.ctx.inbound,
        };
        let envelope = Envelope {
            client: self.peer.ip(),
            helo: self.helo.as_deref().unwrap_or(""),
            sender: &sender_text,
            account: self.auth.as_ref().map(|auth| &auth.account.address),
            hostname: &self.ctx.hostname,
        };
        let stages = match self.role {
            Role::Mx => pipeline::INBOUND,
            Role::Submission => pipeline::SUBMISSION,
            // An SMTP session is never made for other roles; refuse rather than guess.
            Role::Imap | Role::Https | Role::Http => {
                return Reply::new(451, "4.3.0", "Temporary local problem; try again later");
            }
        };
        if let Err(refusal) = pipeline::run(stages, &services, &envelope, &mut draft).await {
            return refusal;
        }
        let routed = match self.route(transaction.recipients, draft.to_junk).await {
            Ok(routed) => routed,
            Err(reply) => return reply,
        };
        let single_rcpt = match routed.addresses.as_slice() {
            [only] => Some(only),
            _ => None,
        };
        let received = message::received_header(&message::Trace {
            helo: self.helo.as_deref().unwrap_or("unknown"),
            peer: self.peer,
            hostname: &self.ctx.hostname,
            esmtp: self.esmtp,
            tls: self.tls.as_ref(),
            authenticated: self.auth.is_some(),
            smtputf8: transaction.smtputf8,
            id: &draft.id,
            single_recipient: single_rcpt,
            node: &self.ctx.node_name,
        });
        // Each copy is assembled once at its final size; the draft is not needed after that
        // unless a "delivered" notice quotes it.
        let local = (!routed.mailboxes.is_empty()).then(|| LocalCopy {
            // RFC 5321 4.4: the delivering server adds Return-Path.
            content: draft.assemble(format!("Return-Path: <{sender_text}>\r\n").as_bytes(), &received),
            mailboxes: routed.mailboxes,
            flags: draft.flags.clone(),
            internal_date: now_unix(),
        });
        let outbound = (!routed.remote.is_empty()).then(|| OutboundCopy {
            content: draft.assemble(b"", &received),
            sender: sender_text.clone(),
            recipients: routed.remote,
            dsn_envid: transaction.dsn_envid.clone(),
            dsn_ret: transaction.dsn_ret.clone(),
            require_tls: transaction.require_tls,
        });
        let size = draft.content.len();
        let authored = (!routed.delivered.is_empty()).then(|| draft.authored());
        let id = std::mem::take(&mut draft.id);
        drop(draft);
        match self
            .ctx
            .store
            .accept_message(AcceptedMessage { local, outbound })
            .await
        {
            Ok(accepted) => {
                if accepted.queue_id.is_some()
                    && let Some(on_queued) = &self.ctx.on_queued
                {
                    on_queued();
                }
                tracing::info!(
                    id = %id,
                    peer = %self.peer,
                    from = %sender_text,
                    size,
                    stored = accepted.stored.len(),
                    queued = ?accepted.queue_id,
                    eight_bit = transaction.eight_bit,
                    tls = self.tls.as_ref().map(|t| t.version).unwrap_or("none"),
                    "message accepted"
                );
                sealmail_metrics::MESSAGES_ACCEPTED.inc();
                if let Some(authored) = authored {
                    self.notify_delivered(&transaction.dsn_envid, &routed.delivered, &authored)
                        .await;
                }
                Reply::new(250, "2.0.0", format!("OK: message {id} accepted"))
            }
            Err(e) => {
                tracing::error!(id = %id, error = %e, "message could not be stored");
                Reply::new(
                    451,
                    "4.3.0",
                    "Temporary failure storing the message; try again later",
                )
            }
        }
    }

    /// Where each recipient's copy goes: a local mailbox (Junk when DMARC asked for
    /// quarantine and the recipient has one), or the queue; and which "delivered" notices
    /// submission owes.
    async fn route(&self, recipients: Vec<Recipient>, to_junk: bool) -> Result<Routed, Reply> {
        let mut routed = Routed::default();
        for rcpt in recipients {
            if matches!(rcpt.target, Target::Local { .. })
                && self.role == Role::Submission
                && sealmail_dsn::Action::Delivered.wanted_by(rcpt.dsn_notify.as_deref())
            {
                routed.delivered.push(sealmail_dsn::Notice {
                    address: rcpt.address.to_string(),
                    orcpt: rcpt.dsn_orcpt.clone(),
                    action: sealmail_dsn::Action::Delivered,
                    status: "2.0.0".into(),
                    diagnostic: "250 2.0.0 message accepted".into(),
                    remote_mta: None,
                    will_retry_until: None,
                });
            }
            routed.addresses.push(rcpt.address);
            match rcpt.target {
                Target::Local { account, mailbox } if to_junk => {
                    // DMARC p=quarantine: the recipient's Junk, or the INBOX if it has none.
                    match self.ctx.store.mailbox(account, "Junk").await {
                        Ok(Some(junk)) => routed.mailboxes.push(junk.id),
                        Ok(None) => routed.mailboxes.push(mailbox),
                        Err(e) => {
                            tracing::error!(error = %e, "store lookup failed");
                            return Err(pipeline::lookup_failure());
                        }
                    }
                }
                Target::Local { mailbox, .. } => routed.mailboxes.push(mailbox),
                Target::Remote(queued) => routed.remote.push(queued),
            }
        }
        Ok(routed)
    }
}

/// The recipients of one message, sorted by where their copies go.
#[derive(Default)]
struct Routed {
    addresses: Vec<EmailAddress>,
    mailboxes: Vec<MailboxId>,
    remote: Vec<QueueRecipient>,
    delivered: Vec<sealmail_dsn::Notice>,
}

fn insufficient_storage() -> Reply {
    sealmail_metrics::MESSAGES_REFUSED.inc();
    tracing::warn!("message refused: the memory budget for message bodies is spent");
    Reply::new(452, "4.3.1", "Insufficient system storage; try again later")
}

fn temporary_failure(e: &sealmail_store::StoreError) -> Action {
    tracing::error!(error = %e, "store lookup failed");
    reply(451, "4.3.0", "Temporary lookup failure; try again later")
}

fn bare_line_ending_refused() -> Reply {
    Reply::new(
        550,
        "5.5.2",
        "Message refused: bare CR or LF; lines must end with CRLF (RFC 5321 section 2.3.8)",
    )
}

fn nul_refused() -> Reply {
    Reply::new(
        550,
        "5.6.0",
        "Message refused: NUL bytes are not allowed (RFC 5321 section 4.1.4; no BINARYMIME)",
    )
}

/// A decoded ENVID or ORCPT value (RFC 3461) in its canonical xtext, or None when the decoded
/// text holds anything but printable US-ASCII (CR LF above all: it would break the line).
fn dsn_parameter(decoded: &str) -> Option<String> {
    if !sealmail_types::xtext::printable_ascii(decoded) {
        return None;
    }
    sealmail_types::xtext::encode(decoded)
}

fn notify_text(flags: u64) -> Option<String> {
    if flags & RCPT_NOTIFY_NEVER != 0 {
        return Some("NEVER".to_string());
    }
    let names: Vec<&str> = [
        (RCPT_NOTIFY_SUCCESS, "SUCCESS"),
        (RCPT_NOTIFY_FAILURE, "FAILURE"),
        (RCPT_NOTIFY_DELAY, "DELAY"),
    ]
    .iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, name)| *name)
    .collect();
    (!names.is_empty()).then(|| names.join(","))
}

fn parse_error(e: smtp_proto::Error) -> Action {
    use smtp_proto::Error;
    match e {
        Error::UnknownCommand => reply(500, "5.5.1", "Command unrecognised"),
        Error::InvalidSenderAddress => reply(501, "5.1.7", "Bad sender address syntax"),
        Error::InvalidRecipientAddress => reply(501, "5.1.3", "Bad recipient address syntax"),
        Error::SyntaxError { syntax } => reply(501, "5.5.4", format!("Syntax: {syntax}")),
        Error::InvalidParameter { param } => reply(501, "5.5.4", format!("Invalid value for {param}")),
        Error::UnsupportedParameter { param } => reply(
            555,
            "5.5.4",
            format!(
                "Unsupported parameter {}",
                param.chars().take(32).collect::<String>()
            ),
        ),
        Error::NeedsMoreData { .. } | Error::ResponseTooLong | Error::InvalidResponse { .. } => {
            reply(500, "5.5.2", "Syntax error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{self, FakeAbuse, FakeLogins, FakeSigner, FakeVerdicts, TestResult, ctx};
    use sealmail_guard::Abuse;
    use sealmail_mailauth::inbound::Disposition;
    use sealmail_store::{AccountStore, MailStore, SqliteStore};

    struct World {
        _dir: tempfile::TempDir,
        store: Arc<SqliteStore>,
        abuse: Arc<FakeAbuse>,
        ctx: Arc<SmtpContext>,
    }

    async fn world(disposition: Disposition, abuse: FakeAbuse) -> TestResult<World> {
        world_with(disposition, abuse, 3).await
    }

    async fn world_with(disposition: Disposition, abuse: FakeAbuse, max_errors: u32) -> TestResult<World> {
        let dir = ctx(tempfile::tempdir(), "tempdir")?;
        let store = fakes::store(dir.path()).await?;
        let abuse = Arc::new(abuse);
        let config = SmtpConfig {
            max_errors,
            max_recipients: 2,
            ..SmtpConfig::default()
        };
        let ctx = Arc::new(SmtpContext {
            hostname: "mx.a.test".into(),
            config,
            store: store.clone(),
            logins: Arc::new(FakeLogins {
                store: store.clone(),
                ban_after: 3,
                failures: std::sync::Mutex::new(0),
            }),
            abuse: abuse.clone(),
            body_budget: crate::budget::BodyBudget::new(1 << 20),
            verdicts: Arc::new(FakeVerdicts::new(disposition)),
            signer: Arc::new(FakeSigner::default()),
            inbound: InboundPolicy::default(),
            on_queued: None,
            mailbox_quota: 0,
            node_name: "node-a".into(),
        });
        Ok(World {
            _dir: dir,
            store,
            abuse,
            ctx,
        })
    }

    fn peer() -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 7], 40000))
    }

    /// What the driver would send or do for an action: the reply's first line, or a marker.
    fn shown(action: &Action) -> String {
        let first_line = |reply: &Reply| {
            let bytes = reply.to_bytes();
            let text = String::from_utf8_lossy(&bytes).into_owned();
            text.lines().next().unwrap_or_default().to_string()
        };
        match action {
            Action::Reply(reply) => first_line(reply),
            Action::StartTls(reply) => format!("STARTTLS {}", first_line(reply)),
            Action::Close(reply) => format!("CLOSE {}", first_line(reply)),
            Action::ReceiveData => "DATA".into(),
            Action::ReceiveChunk { size, last, keep } => format!("CHUNK {size} {last} {keep}"),
            Action::Authenticate(..) => "AUTHENTICATE".into(),
        }
    }

    /// Runs command lines and checks that each answer starts with the expected text.
    async fn dialog(session: &mut Session, steps: &[(&str, &str)]) {
        for (line, expected) in steps {
            let action = session.command(line.as_bytes()).await;
            let got = shown(&action);
            assert!(
                got.starts_with(expected),
                "{line:?}: expected {expected:?}, got {got:?}"
            );
            if let Action::Reply(reply) | Action::Close(reply) = &action {
                session.count_error(reply).await;
            }
        }
    }

    #[tokio::test]
    async fn mx_dialog_follows_rfc_5321_state_rules() -> TestResult {
        let w = world_with(Disposition::Accept, FakeAbuse::default(), 100).await?;
        let mut session = Session::new(w.ctx.clone(), Role::Mx, peer(), None);
        assert_eq!(session.greeting().code, 220);
        dialog(
            &mut session,
            &[
                ("MAIL FROM:<bob@b.test>", "503 5.5.1"),
                ("RCPT TO:<alice@a.test>", "503 5.5.1"),
                ("EHLO client.b.test", "250-mx.a.test"),
                ("DATA", "503 5.5.1"),
                ("AUTH PLAIN AGFsaWNl", "503 5.5.1"),
                ("MAIL FROM:<bob@b.test> ENVID=x", "555 5.5.4"),
                ("MAIL FROM:<bob@b.test>", "250 2.1.0"),
                ("MAIL FROM:<bob@b.test>", "503 5.5.1"),
                ("DATA", "554 5.5.1"),
                ("RCPT TO:<alice@a.test> NOTIFY=SUCCESS", "555 5.5.4"),
                ("RCPT TO:<Alice@A.TEST>", "250 2.1.5"),
                ("RCPT TO:<alice@a.test>", "250 2.1.5 Recipient OK (duplicate"),
                ("BDAT 10 LAST", "CHUNK 10 true true"),
                ("RSET", "250 2.0.0"),
                ("DATA", "503 5.5.1"),
                ("VRFY alice", "252 2.5.0"),
                ("STARTTLS", "STARTTLS 220 2.0.0"),
                ("QUIT", "CLOSE 221 2.0.0"),
            ],
        )
        .await;
        assert!(w.abuse.kinds().is_empty(), "nothing here is abuse");
        Ok(())
    }

    #[tokio::test]
    async fn mx_never_relays_and_scores_unknown_users_and_relay_attempts() -> TestResult {
        let abuse = FakeAbuse {
            ban_at: Some(2),
            ..FakeAbuse::default()
        };
        let w = world(Disposition::Accept, abuse).await?;
        let mut session = Session::new(w.ctx.clone(), Role::Mx, peer(), None);
        dialog(
            &mut session,
            &[
                ("EHLO client.b.test", "250"),
                ("MAIL FROM:<bob@b.test>", "250"),
                ("RCPT TO:<nobody@a.test>", "550 5.1.1"),
                ("RCPT TO:<carol@c.test>", "550 5.7.1 Relaying denied"),
            ],
        )
        .await;
        assert_eq!(
            w.abuse.kinds(),
            vec![Abuse::UnknownRecipient, Abuse::RelayAttempt]
        );
        // The second report banned the client: the session ends after that reply.
        let bye = session
            .count_error(&Reply::new(250, "2.0.0", "OK"))
            .await
            .ok_or("a banned client must be told goodbye")?;
        assert_eq!((bye.code, bye.status), (421, Some("4.7.0")));
        Ok(())
    }

    #[tokio::test]
    async fn too_many_errors_end_the_session_and_are_reported() -> TestResult {
        let w = world(Disposition::Accept, FakeAbuse::default()).await?;
        let mut session = Session::new(w.ctx.clone(), Role::Mx, peer(), None);
        let mut bye = None;
        for _ in 0..3 {
            let action = session.command(b"FOO").await;
            let Action::Reply(reply) = action else {
                return Err("an unknown command gets a reply".into());
            };
            assert_eq!(reply.code, 500);
            bye = session.count_error(&reply).await;
        }
        let bye = bye.ok_or("the third error ends the session (max_errors = 3)")?;
        assert_eq!(bye.code, 421);
        assert_eq!(w.abuse.kinds(), vec![Abuse::ProtocolErrors]);
        Ok(())
    }

    async fn deliver_over_mx(w: &World, message: &[u8]) -> TestResult<Reply> {
        let mut session = Session::new(w.ctx.clone(), Role::Mx, peer(), None);
        dialog(
            &mut session,
            &[
                ("EHLO client.b.test", "250"),
                ("MAIL FROM:<bob@b.test>", "250"),
                ("RCPT TO:<alice@a.test>", "250"),
                ("DATA", "DATA"),
            ],
        )
        .await;
        Ok(session
            .data_received(crate::data::Data {
                content: message.to_vec(),
                too_big: false,
                bare_line_ending: false,
                nul: false,
                over_budget: false,
            })
            .await)
    }

    async fn stored_in(w: &World, mailbox: &str) -> TestResult<Vec<String>> {
        let alice = ctx(EmailAddress::parse(fakes::ALICE), "address")?;
        let account = ctx(w.store.account(&alice).await, "account")?.ok_or("no alice")?;
        let Some(mailbox) = ctx(w.store.mailbox(account.id, mailbox).await, "mailbox")? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for message in ctx(w.store.messages(mailbox.id).await, "list")? {
            let content = ctx(w.store.read_message(message.id).await, "read")?;
            out.push(String::from_utf8_lossy(&content).into_owned());
        }
        Ok(out)
    }

    #[tokio::test]
    async fn accepted_mail_is_stored_with_its_trace_and_quarantine_goes_to_junk() -> TestResult {
        let message = b"From: bob@b.test\r\nSubject: hello\r\n\r\nhi alice\r\n";
        let w = world(Disposition::Accept, FakeAbuse::default()).await?;
        let reply = deliver_over_mx(&w, message).await?;
        assert_eq!(reply.code, 250);
        let inbox = stored_in(&w, "INBOX").await?;
        assert_eq!(inbox.len(), 1);
        let stored = &inbox[0];
        assert!(stored.starts_with("Return-Path: <bob@b.test>\r\nAuthentication-Results: mx.a.test; dmarc=pass (fake)\r\nReceived: from client.b.test"), "{stored}");
        assert!(stored.ends_with("\r\n\r\nhi alice\r\n"));

        let w = world(Disposition::Junk, FakeAbuse::default()).await?;
        assert_eq!(deliver_over_mx(&w, message).await?.code, 250);
        assert!(stored_in(&w, "INBOX").await?.is_empty());
        assert_eq!(stored_in(&w, "Junk").await?.len(), 1);

        let w = world(Disposition::Reject("DMARC policy".into()), FakeAbuse::default()).await?;
        let reply = deliver_over_mx(&w, message).await?;
        assert_eq!((reply.code, reply.status), (550, Some("5.7.1")));
        assert!(stored_in(&w, "INBOX").await?.is_empty());
        Ok(())
    }

    /// The whole driver over a duplex: STARTTLS with the listeners' TLS policy, AUTH only
    /// inside TLS, a submitted message signed and stored, and the "delivered" notice asked
    /// for with NOTIFY in the sender's INBOX.
    #[tokio::test]
    async fn submission_over_a_duplex_with_starttls_auth_and_a_delivered_notice() -> TestResult {
        use base64::Engine as _;
        use sealmail_net::{Connection, ConnectionInfo, Handler as _, Timeouts};
        use sealmail_testkit::LineClient;

        let w = world_with(Disposition::Accept, FakeAbuse::default(), 100).await?;
        let certs = ctx(tempfile::tempdir(), "tempdir")?;
        let (server_tls, client_tls) = sealmail_testkit::pki::tls_pair(certs.path(), "mx.a.test")?;
        let (client, server) = tokio::io::duplex(64 * 1024);
        let info = ConnectionInfo {
            peer: peer(),
            local: SocketAddr::from(([192, 0, 2, 1], 587)),
            role: Role::Submission,
            tls_mode: sealmail_config::TlsMode::StartTls,
        };
        let conn = Connection::over_stream(
            info,
            server,
            Some(server_tls),
            Timeouts::uniform(std::time::Duration::from_secs(10)),
            tokio_util::sync::CancellationToken::new(),
        );
        let handler = crate::SmtpHandler { ctx: w.ctx.clone() };
        let served = tokio::spawn(async move { handler.handle(conn).await });

        let mut plain = LineClient::new(client);
        assert!(plain.line().await?.starts_with("220 mx.a.test"));
        plain.send("EHLO client.a.test\r\n").await?;
        let ehlo = plain.smtp_reply().await?;
        assert!(ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"), "{ehlo}");
        plain
            .dialog(&[
                (
                    "AUTH PLAIN AGFsaWNlQGEudGVzdABjb3JyZWN0IGhvcnNlIGJhdHRlcnk=",
                    "530",
                ),
                ("STARTTLS", "220"),
            ])
            .await?;
        let tls = sealmail_testkit::tls_upgrade(plain.into_inner(), client_tls, "mx.a.test").await?;
        let mut client = LineClient::new(tls);
        client.send("EHLO client.a.test\r\n").await?;
        let ehlo = client.smtp_reply().await?;
        assert!(
            ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
            "{ehlo}"
        );
        let plain_auth = base64::engine::general_purpose::STANDARD.encode(format!(
            "\0{}\0{}",
            fakes::ALICE,
            fakes::ALICE_PASSWORD
        ));
        client
            .dialog(&[
                ("MAIL FROM:<alice@a.test>", "530"),
                ("AUTH PLAIN AGFsaWNlQGEudGVzdAB3cm9uZw==", "535"),
                (format!("AUTH PLAIN {plain_auth}").as_str(), "235"),
                ("MAIL FROM:<bob@a.test>", "553"),
                ("MAIL FROM:<alice@a.test>", "250"),
                ("RCPT TO:<alice@a.test> NOTIFY=SUCCESS", "250"),
                ("DATA", "354"),
            ])
            .await?;
        client
            .command(
                "From: alice@a.test\r\nSubject: note to self\r\n\r\nhello\r\n.",
                "250",
            )
            .await?;
        client.command("QUIT", "221").await?;
        ctx(served.await, "session task")?;

        let inbox = stored_in(&w, "INBOX").await?;
        assert_eq!(inbox.len(), 2, "the message and its delivered notice");
        let message = inbox
            .iter()
            .find(|m| m.contains("Subject: note to self"))
            .ok_or("the message is not stored")?;
        assert!(
            message.contains("DKIM-Signature: v=1; d=a.test; fake\r\nMessage-ID: <"),
            "{message}"
        );
        assert!(
            message.contains("with ESMTPSA (TLSv1."),
            "the Received line names TLS: {message}"
        );
        let notice = inbox
            .iter()
            .find(|m| m.contains("multipart/report"))
            .ok_or("no delivered notice")?;
        assert!(notice.contains("Action: delivered"), "{notice}");
        Ok(())
    }
}
