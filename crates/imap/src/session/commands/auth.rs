//! LOGIN and AUTHENTICATE (RFC 3501 6.2.2-6.2.3): credentials only inside TLS, checked by
//! the server's `Logins` (intrusion prevention included); the SASL exchange reads its responses
//! through the session's [`Client`](crate::session::Client).

use sealmail_guard::access::{LoginContext, SaslAnswer, SaslChannel, SaslEnd, sasl_login};
use sealmail_identity::Protocol;

use crate::session::*;

impl Session {
    pub(in crate::session) async fn login(&mut self, credentials: Credentials, next: &mut Next) -> Done {
        let Some(tls) = self.tls.clone() else {
            return no("[PRIVACYREQUIRED] Use STARTTLS first");
        };
        let ctx = self.ctx.clone();
        let outcome = ctx
            .logins
            .login(LoginAttempt {
                tls: &tls,
                client: self.peer.ip(),
                listener: "imap",
                protocol: Protocol::Imap,
                credentials: &credentials,
            })
            .await;
        self.logged_in(outcome, next)
    }

    /// The tagged answer to a login, and the session's state after it.
    fn logged_in(&mut self, outcome: LoginOutcome, next: &mut Next) -> Done {
        let ctx = self.ctx.clone();
        match outcome {
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

    pub(in crate::session) async fn authenticate(
        &mut self,
        client: &mut dyn Client,
        mechanism: Mechanism,
        initial: Option<&[u8]>,
        next: &mut Next,
    ) -> Result<Done, ConnError> {
        let Some(tls) = self.tls.clone() else {
            return Ok(no("[PRIVACYREQUIRED] Use STARTTLS first"));
        };
        let ctx = self.ctx.clone();
        let context = LoginContext {
            tls: &tls,
            client: self.peer.ip(),
            listener: "imap",
        };
        let mut channel = ImapSasl {
            client,
            wait: self.ctx.limits.unauthenticated_idle,
        };
        let end = sasl_login(
            ctx.logins.as_ref(),
            context,
            Protocol::Imap,
            mechanism,
            initial.map(<[u8]>::to_vec),
            &mut channel,
        )
        .await?;
        Ok(match end {
            SaslEnd::Done(outcome) => self.logged_in(outcome, next),
            SaslEnd::Malformed(why) => bad(format!("Malformed SASL response: {why}")),
            SaslEnd::Cancelled => bad("Authentication cancelled"),
            SaslEnd::Invalid(why) => bad(why),
        })
    }
}

/// SASL challenges as IMAP continuation requests (RFC 9051 7.5), answers as base64 lines.
struct ImapSasl<'a> {
    client: &'a mut dyn Client,
    /// Still before login: the short timeout applies.
    wait: std::time::Duration,
}

#[async_trait::async_trait]
impl SaslChannel for ImapSasl<'_> {
    type Error = ConnError;

    async fn challenge(&mut self, data: &[u8]) -> Result<SaslAnswer, ConnError> {
        let line = format!("+ {}\r\n", BASE64.encode(data));
        self.client.send(line.as_bytes()).await?;
        let response = match self.client.read_response_line(MAX_AUTH_LINE, self.wait).await? {
            Line::Complete(line) => line,
            Line::TooLong(_) => return Ok(SaslAnswer::Invalid("SASL response too long")),
        };
        if response == b"*" {
            return Ok(SaslAnswer::Cancelled);
        }
        Ok(match BASE64.decode(&response) {
            Ok(decoded) => SaslAnswer::Data(decoded),
            Err(_) => SaslAnswer::Invalid("SASL response is not valid base64"),
        })
    }
}
