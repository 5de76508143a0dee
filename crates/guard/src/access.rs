//! What protocol sessions need from identity and intrusion prevention, as narrow traits: a
//! session logs in ([`Logins`]), is told when that login stops standing ([`LoginWatch`]), and
//! reports abuse and spends hourly allowances ([`AbuseReporting`]). SMTP and IMAP sessions hold
//! these, not the concrete [`Guard`] and `Identity`, so their unit tests run on small fakes.

use std::net::IpAddr;
use std::sync::Arc;

use sealmail_identity::sasl::Credentials;
use sealmail_identity::scram::ScramFailure;
use sealmail_identity::{Identity, LoginCheck, Protocol, ScramPending};
use sealmail_types::proof::{Authenticated, TlsActive};

use crate::{Abuse, Guard, LoginOutcome};

/// A login: credentials from a client over TLS, on a listener (named in events), for a
/// protocol (app passwords are scoped).
#[derive(Clone, Copy)]
pub struct LoginAttempt<'a> {
    pub tls: &'a TlsActive,
    pub client: IpAddr,
    pub listener: &'a str,
    pub protocol: Protocol,
    pub credentials: &'a Credentials,
}

/// Where a login without a password (EXTERNAL, SCRAM) comes from.
#[derive(Clone, Copy)]
pub struct LoginContext<'a> {
    pub tls: &'a TlsActive,
    pub client: IpAddr,
    pub listener: &'a str,
}

/// How a SCRAM exchange's first round ended.
pub enum ScramStart {
    /// Send this server-first-message, then feed the client's answer to `Logins::scram_finish`.
    Challenge(Vec<u8>, ScramPending),
    /// The exchange is over; the outcome says how.
    Refused(LoginOutcome),
}

/// Checking credentials, with everything intrusion prevention does around it.
#[async_trait::async_trait]
pub trait Logins: Send + Sync {
    async fn login(&self, attempt: LoginAttempt<'_>) -> LoginOutcome;

    /// SASL EXTERNAL: the account of the TLS session's client certificate.
    async fn login_external(&self, _context: LoginContext<'_>, _authzid: Option<&str>) -> LoginOutcome {
        LoginOutcome::Failed { banned: false }
    }

    /// Whether SCRAM-SHA-256(-PLUS) is offered.
    fn scram_enabled(&self) -> bool {
        false
    }

    /// SCRAM's first round (`plus`: the client chose SCRAM-SHA-256-PLUS).
    async fn scram_start(&self, _context: LoginContext<'_>, _plus: bool, _client_first: &[u8]) -> ScramStart {
        ScramStart::Refused(LoginOutcome::Failed { banned: false })
    }

    /// SCRAM's last round: the outcome, and on success the server-final-message to send.
    async fn scram_finish(
        &self,
        _context: LoginContext<'_>,
        _pending: ScramPending,
        _client_final: &[u8],
    ) -> (LoginOutcome, Option<Vec<u8>>) {
        (LoginOutcome::Failed { banned: false }, None)
    }

    /// The watch a session holds from a successful login on.
    fn watch(&self, login: &Authenticated) -> Box<dyn LoginWatch>;
}

/// Tells a session when its login no longer stands (password changed, account removed).
#[async_trait::async_trait]
pub trait LoginWatch: Send + Sync {
    /// Returns once the login no longer stands; never while it does. Cancel-safe.
    async fn revoked(&mut self);
    /// Before a command: whether the login stopped standing since the last check.
    async fn revoked_now(&mut self) -> bool;
}

/// A session's watch before it has logged in is none: nothing to revoke.
#[async_trait::async_trait]
impl LoginWatch for Option<Box<dyn LoginWatch>> {
    async fn revoked(&mut self) {
        match self {
            Some(watch) => watch.revoked().await,
            None => std::future::pending().await,
        }
    }

    async fn revoked_now(&mut self) -> bool {
        match self {
            Some(watch) => watch.revoked_now().await,
            None => false,
        }
    }
}

/// Abuse a session saw, and allowances it spends.
#[async_trait::async_trait]
pub trait AbuseReporting: Send + Sync {
    /// Records the abuse and scores it against the client; true when that banned the client.
    async fn report(&self, client: IpAddr, abuse: Abuse, listener: &str, detail: &str) -> bool;

    /// Takes the units of an hourly allowance; false (taking nothing) when that would pass
    /// its limit.
    async fn take_hourly(&self, usage: HourlyUse<'_>) -> bool;
}

/// A use of an hourly allowance: `count` units of `what` (e.g. "messages") by `account`, which
/// may use at most `per_hour`; `client` and `listener` say where, for the event it may record.
#[derive(Debug, Clone, Copy)]
pub struct HourlyUse<'a> {
    pub what: &'static str,
    pub account: &'a str,
    pub count: u32,
    pub per_hour: u32,
    pub client: IpAddr,
    pub listener: &'a str,
}

/// The server's [`Logins`]: `Identity` verifies, the [`Guard`] throttles, counts and bans.
pub struct GuardedLogins {
    guard: Arc<Guard>,
    identity: Identity,
}

impl GuardedLogins {
    pub fn new(guard: Arc<Guard>, identity: Identity) -> GuardedLogins {
        GuardedLogins { guard, identity }
    }
}

#[async_trait::async_trait]
impl Logins for GuardedLogins {
    async fn login(&self, attempt: LoginAttempt<'_>) -> LoginOutcome {
        self.guard.login(&self.identity, attempt).await
    }

    async fn login_external(&self, context: LoginContext<'_>, authzid: Option<&str>) -> LoginOutcome {
        let result = self.identity.authenticate_external(context.tls, authzid).await;
        let who = match &context.tls.client_certificate {
            Some(cert) => format!("certificate {}", cert.fingerprint),
            None => "no certificate".to_string(),
        };
        self.guard.settle(context, result, &who, None).await
    }

    fn scram_enabled(&self) -> bool {
        self.identity.policy().scram
    }

    async fn scram_start(&self, context: LoginContext<'_>, plus: bool, client_first: &[u8]) -> ScramStart {
        match self.identity.scram_start(context.tls, plus, client_first).await {
            Ok((challenge, pending)) => {
                if self
                    .guard
                    .wait_for_turn(pending.username(), context.client)
                    .await
                    .is_err()
                {
                    return ScramStart::Refused(LoginOutcome::Unavailable);
                }
                ScramStart::Challenge(challenge, pending)
            }
            Err(failure) => {
                let detail = scram_failure_detail(failure);
                ScramStart::Refused(
                    self.guard
                        .settle(context, Ok(None), "(SCRAM)", Some(detail))
                        .await,
                )
            }
        }
    }

    async fn scram_finish(
        &self,
        context: LoginContext<'_>,
        pending: ScramPending,
        client_final: &[u8],
    ) -> (LoginOutcome, Option<Vec<u8>>) {
        let username = pending.username().to_string();
        match self.identity.scram_finish(pending, client_final) {
            Ok((server_final, login)) => {
                let outcome = self.guard.settle(context, Ok(Some(login)), &username, None).await;
                (outcome, Some(server_final))
            }
            Err(failure) => {
                let detail = scram_failure_detail(failure);
                (
                    self.guard
                        .settle(context, Ok(None), &username, Some(detail))
                        .await,
                    None,
                )
            }
        }
    }

    fn watch(&self, login: &Authenticated) -> Box<dyn LoginWatch> {
        Box::new(self.identity.login_check(login))
    }
}

/// How a SCRAM failure is recorded: a binding mismatch means something between the client and
/// us terminated TLS (a man in the middle), and is named as such.
fn scram_failure_detail(failure: ScramFailure) -> String {
    match failure {
        ScramFailure::BindingMismatch => {
            "SCRAM channel binding mismatch: the client's TLS session is not ours (man in the middle?)".into()
        }
        ScramFailure::BindingDowngrade => {
            "SCRAM channel binding downgrade: the client saw no -PLUS offer".into()
        }
        other => format!("SCRAM: {other:?}"),
    }
}

#[async_trait::async_trait]
impl LoginWatch for LoginCheck {
    async fn revoked(&mut self) {
        LoginCheck::revoked(self).await
    }

    async fn revoked_now(&mut self) -> bool {
        LoginCheck::revoked_now(self).await
    }
}

#[async_trait::async_trait]
impl AbuseReporting for Guard {
    async fn report(&self, client: IpAddr, abuse: Abuse, listener: &str, detail: &str) -> bool {
        self.abuse(client, abuse, listener, detail).await.is_some()
    }

    async fn take_hourly(&self, usage: HourlyUse<'_>) -> bool {
        Guard::take_hourly(self, usage).await
    }
}

/// A client's answer to a SASL challenge, decoded from the protocol's framing.
pub enum SaslAnswer {
    Data(Vec<u8>),
    /// "*" (RFC 4954 4, RFC 9051 6.2.2).
    Cancelled,
    /// Not base64, or too long; the text says which.
    Invalid(&'static str),
}

/// How a protocol sends a challenge (`334 ...` in SMTP, `+ ...` in IMAP) and reads the answer.
#[async_trait::async_trait]
pub trait SaslChannel: Send {
    type Error: Send;
    async fn challenge(&mut self, data: &[u8]) -> Result<SaslAnswer, Self::Error>;
}

/// How a SASL exchange ended, for the protocol to answer.
pub enum SaslEnd {
    Done(LoginOutcome),
    /// The client's message was malformed (no login was attempted beyond what is counted).
    Malformed(String),
    Cancelled,
    Invalid(&'static str),
}

/// Runs one SASL exchange (RFC 4422) of any mechanism over a protocol's channel, the same way
/// for SMTP AUTH and IMAP AUTHENTICATE; every end that checked credentials is counted by
/// `logins`. `initial` is the decoded initial response (SASL-IR), if the client sent one.
pub async fn sasl_login<C: SaslChannel>(
    logins: &dyn Logins,
    context: LoginContext<'_>,
    protocol: Protocol,
    mechanism: sealmail_identity::sasl::Mechanism,
    initial: Option<Vec<u8>>,
    channel: &mut C,
) -> Result<SaslEnd, C::Error> {
    use sealmail_identity::sasl::{Exchange, Mechanism, Step};
    macro_rules! data {
        ($answer:expr) => {
            match $answer {
                SaslAnswer::Data(data) => data,
                SaslAnswer::Cancelled => return Ok(SaslEnd::Cancelled),
                SaslAnswer::Invalid(why) => return Ok(SaslEnd::Invalid(why)),
            }
        };
    }
    match mechanism {
        Mechanism::Plain | Mechanism::Login => {
            let (mut exchange, mut step) = Exchange::start(mechanism, initial.as_deref());
            loop {
                match step {
                    Step::Done(credentials) => {
                        let attempt = LoginAttempt {
                            tls: context.tls,
                            client: context.client,
                            listener: context.listener,
                            protocol,
                            credentials: &credentials,
                        };
                        return Ok(SaslEnd::Done(logins.login(attempt).await));
                    }
                    Step::Malformed(why) => return Ok(SaslEnd::Malformed(why.to_string())),
                    Step::Challenge(challenge) => {
                        let response = data!(channel.challenge(&challenge).await?);
                        step = exchange.respond(&response);
                    }
                }
            }
        }
        Mechanism::External => {
            let authzid = data!(first_message(channel, initial).await?);
            let Ok(authzid) = String::from_utf8(authzid) else {
                return Ok(SaslEnd::Malformed(
                    "the authorization identity must be UTF-8".into(),
                ));
            };
            let authzid = (!authzid.is_empty()).then_some(authzid.as_str());
            Ok(SaslEnd::Done(logins.login_external(context, authzid).await))
        }
        Mechanism::ScramSha256 | Mechanism::ScramSha256Plus => {
            let client_first = data!(first_message(channel, initial).await?);
            let plus = mechanism == Mechanism::ScramSha256Plus;
            let (server_first, pending) = match logins.scram_start(context, plus, &client_first).await {
                ScramStart::Challenge(server_first, pending) => (server_first, pending),
                ScramStart::Refused(outcome) => return Ok(SaslEnd::Done(outcome)),
            };
            // A client that walks away after seeing the salt still counts as a failed login:
            // otherwise probing challenges (which accounts exist?) would be free.
            let answer = match channel.challenge(&server_first).await {
                Ok(answer) => answer,
                Err(e) => {
                    let _ = logins.scram_finish(context, pending, b"").await;
                    return Err(e);
                }
            };
            let client_final = match answer {
                SaslAnswer::Data(data) => data,
                other => {
                    let _ = logins.scram_finish(context, pending, b"").await;
                    return Ok(match other {
                        SaslAnswer::Invalid(why) => SaslEnd::Invalid(why),
                        _ => SaslEnd::Cancelled,
                    });
                }
            };
            let (outcome, server_final) = logins.scram_finish(context, pending, &client_final).await;
            if let (LoginOutcome::Success(_), Some(server_final)) = (&outcome, server_final) {
                // RFC 5802 5: the server's signature goes to the client as a last challenge,
                // answered with an empty response (neither protocol here carries data with
                // its success reply).
                match channel.challenge(&server_final).await? {
                    SaslAnswer::Data(empty) if empty.is_empty() => {}
                    SaslAnswer::Cancelled => return Ok(SaslEnd::Cancelled),
                    SaslAnswer::Invalid(why) => return Ok(SaslEnd::Invalid(why)),
                    SaslAnswer::Data(_) => {
                        return Ok(SaslEnd::Malformed("expected an empty response".into()));
                    }
                }
            }
            Ok(SaslEnd::Done(outcome))
        }
    }
}

/// The client's first message: the initial response, or the answer to an empty challenge.
async fn first_message<C: SaslChannel>(
    channel: &mut C,
    initial: Option<Vec<u8>>,
) -> Result<SaslAnswer, C::Error> {
    match initial {
        Some(data) => Ok(SaslAnswer::Data(data)),
        None => channel.challenge(b"").await,
    }
}
