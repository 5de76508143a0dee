//! LOGIN and AUTHENTICATE (RFC 3501 6.2.2-6.2.3): credentials only inside TLS, checked by
//! the server's `Logins` (intrusion prevention included); the SASL exchange reads its responses
//! through the session's [`Client`](crate::session::Client).

use crate::session::*;

impl Session {
    pub(in crate::session) async fn login(&mut self, credentials: Credentials, next: &mut Next) -> Done {
        let Some(tls) = self.tls.clone() else {
            return no("[PRIVACYREQUIRED] Use STARTTLS first");
        };
        let ctx = self.ctx.clone();
        match ctx
            .logins
            .login(LoginAttempt {
                tls: &tls,
                client: self.peer.ip(),
                listener: "imap",
                credentials: &credentials,
            })
            .await
        {
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
        let (mut exchange, mut step) = sasl::Exchange::start(mechanism, initial);
        loop {
            match step {
                Step::Done(credentials) => return Ok(self.login(credentials, next).await),
                Step::Malformed(why) => return Ok(bad(format!("Malformed SASL response: {why}"))),
                Step::Challenge(challenge) => {
                    let line = format!("+ {}\r\n", BASE64.encode(challenge));
                    client.send(line.as_bytes()).await?;
                    // Still before login: the short timeout applies.
                    let wait = self.ctx.limits.unauthenticated_idle;
                    let response = match client.read_response_line(MAX_AUTH_LINE, wait).await? {
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
}
