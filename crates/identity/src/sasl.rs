//! SASL mechanisms (RFC 4422) shared by SMTP AUTH (RFC 4954) and IMAP AUTHENTICATE (RFC 9051).
//!
//! An exchange takes decoded client responses and yields either a challenge to send or the
//! credentials to check; the protocols do the base64 and the framing. Mechanisms plug in by
//! adding a [`Mechanism`] variant: PLAIN (RFC 4616) and LOGIN (draft-murchison-sasl-login) now,
//! SCRAM and EXTERNAL later. Password mechanisms are only offered over TLS; the protocols check
//! that, and [`crate::Identity::authenticate`] demands the proof.

use crate::Password;

/// Most bytes a client response may hold (a PLAIN response is authzid + authcid + password).
pub const MAX_RESPONSE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
    /// RFC 4422 appendix A: the TLS client certificate.
    External,
    /// RFC 7677.
    ScramSha256,
    /// RFC 7677 with channel binding (RFC 5929, RFC 9266).
    ScramSha256Plus,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::External => "EXTERNAL",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha256Plus => "SCRAM-SHA-256-PLUS",
        }
    }

    /// Looks a mechanism up by its (case-insensitive) name.
    pub fn from_name(name: &str) -> Option<Mechanism> {
        match name.to_ascii_uppercase().as_str() {
            "PLAIN" => Some(Mechanism::Plain),
            "LOGIN" => Some(Mechanism::Login),
            "EXTERNAL" => Some(Mechanism::External),
            "SCRAM-SHA-256" => Some(Mechanism::ScramSha256),
            "SCRAM-SHA-256-PLUS" => Some(Mechanism::ScramSha256Plus),
            _ => None,
        }
    }

    /// The mechanisms to advertise on a TLS session, strongest first: SCRAM when the
    /// installation offers it, EXTERNAL only when the session carries an accepted client
    /// certificate, then the password mechanisms.
    pub fn offered(scram: bool, client_certificate: bool) -> Vec<Mechanism> {
        let mut offered = Vec::new();
        if scram {
            offered.extend([Mechanism::ScramSha256Plus, Mechanism::ScramSha256]);
        }
        if client_certificate {
            offered.push(Mechanism::External);
        }
        offered.extend(PASSWORD_MECHANISMS);
        offered
    }
}

/// The mechanisms offered over TLS, in order of preference.
pub const PASSWORD_MECHANISMS: &[Mechanism] = &[Mechanism::Plain, Mechanism::Login];

/// A username and password as the client claimed them.
#[derive(Debug)]
pub struct Credentials {
    /// The identity to act as, when it differs from `username` (PLAIN authzid).
    pub authorize_as: Option<String>,
    pub username: String,
    pub password: Password,
}

#[derive(Debug)]
pub enum Step {
    /// Send this challenge (decoded) and feed the answer to [`Exchange::respond`].
    Challenge(Vec<u8>),
    /// The exchange is complete: check these credentials.
    Done(Credentials),
    /// The client's response is malformed; the text says how.
    Malformed(&'static str),
}

enum State {
    Plain,
    LoginUsername,
    LoginPassword { username: String },
    Finished,
}

/// One SASL exchange.
pub struct Exchange {
    state: State,
}

impl Exchange {
    /// Starts an exchange. `initial` is the initial response (SASL-IR, RFC 4959 / RFC 4954),
    /// already decoded; `Some(empty)` is an empty initial response.
    /// Only the password mechanisms (PLAIN, LOGIN) run here; the others need the server's
    /// state (`guard::access::sasl_login` drives them).
    pub fn start(mechanism: Mechanism, initial: Option<&[u8]>) -> (Exchange, Step) {
        let mut exchange = Exchange {
            state: match mechanism {
                Mechanism::Plain => State::Plain,
                Mechanism::Login => State::LoginUsername,
                _ => State::Finished,
            },
        };
        let step = match (mechanism, initial) {
            (Mechanism::External | Mechanism::ScramSha256 | Mechanism::ScramSha256Plus, _) => {
                Step::Malformed("not a password mechanism")
            }
            (Mechanism::Plain, Some(response)) if !response.is_empty() => exchange.respond(response),
            (Mechanism::Plain, _) => Step::Challenge(Vec::new()),
            (Mechanism::Login, Some(response)) if !response.is_empty() => exchange.respond(response),
            (Mechanism::Login, _) => Step::Challenge(b"Username:".to_vec()),
        };
        (exchange, step)
    }

    /// Feeds the client's decoded response.
    pub fn respond(&mut self, response: &[u8]) -> Step {
        if response.len() > MAX_RESPONSE {
            self.state = State::Finished;
            return Step::Malformed("response too long");
        }
        match std::mem::replace(&mut self.state, State::Finished) {
            State::Plain => plain(response),
            State::LoginUsername => match std::str::from_utf8(response) {
                Ok(username) if !username.is_empty() => {
                    self.state = State::LoginPassword {
                        username: username.to_string(),
                    };
                    Step::Challenge(b"Password:".to_vec())
                }
                _ => Step::Malformed("the username must be non-empty UTF-8"),
            },
            State::LoginPassword { username } => match String::from_utf8(response.to_vec()) {
                Ok(password) => Step::Done(Credentials {
                    authorize_as: None,
                    username,
                    password: Password::new(password),
                }),
                Err(_) => Step::Malformed("the password must be UTF-8"),
            },
            State::Finished => Step::Malformed("the exchange is already complete"),
        }
    }
}

/// RFC 4616: message = [authzid] UTF8NUL authcid UTF8NUL passwd
fn plain(response: &[u8]) -> Step {
    let mut parts = response.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Step::Malformed("PLAIN needs authzid NUL authcid NUL password");
    };
    let (Ok(authzid), Ok(authcid), Ok(password)) = (
        std::str::from_utf8(authzid),
        std::str::from_utf8(authcid),
        String::from_utf8(password.to_vec()),
    ) else {
        return Step::Malformed("PLAIN fields must be UTF-8");
    };
    if authcid.is_empty() || password.is_empty() {
        return Step::Malformed("PLAIN needs a username and a password");
    }
    Step::Done(Credentials {
        authorize_as: (!authzid.is_empty()).then(|| authzid.to_string()),
        username: authcid.to_string(),
        password: Password::new(password),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(step: Step) -> Credentials {
        match step {
            Step::Done(c) => c,
            other => panic!("expected credentials, got {other:?}"),
        }
    }

    #[test]
    fn plain_with_and_without_initial_response() {
        let (_, step) = Exchange::start(Mechanism::Plain, Some(b"\0alice@example.test\0secret pw"));
        let c = done(step);
        assert_eq!(
            (c.authorize_as, c.username.as_str(), c.password.expose()),
            (None, "alice@example.test", "secret pw")
        );

        let (mut exchange, step) = Exchange::start(Mechanism::Plain, None);
        assert!(matches!(step, Step::Challenge(ref c) if c.is_empty()));
        let c = done(exchange.respond(b"admin\0alice\0pw"));
        assert_eq!(c.authorize_as.as_deref(), Some("admin"));
        assert!(
            matches!(exchange.respond(b"\0a\0b"), Step::Malformed(_)),
            "no second round"
        );
    }

    #[test]
    fn login_asks_username_then_password() {
        let (mut exchange, step) = Exchange::start(Mechanism::Login, None);
        assert!(matches!(step, Step::Challenge(ref c) if c == b"Username:"));
        assert!(matches!(exchange.respond(b"alice"), Step::Challenge(ref c) if c == b"Password:"));
        let c = done(exchange.respond(b"pw"));
        assert_eq!((c.username.as_str(), c.password.expose()), ("alice", "pw"));
    }

    #[test]
    fn malformed_responses_are_refused() {
        for bad in [
            &b"alice\0pw"[..],
            b"\0\0pw",
            b"\0alice\0",
            b"a\0b\0c\0d",
            b"\0\xff\0pw",
        ] {
            let (_, step) = Exchange::start(Mechanism::Plain, Some(bad));
            assert!(matches!(step, Step::Malformed(_)), "{bad:?}");
        }
        let (_, step) = Exchange::start(Mechanism::Plain, Some(&vec![b'a'; MAX_RESPONSE + 1]));
        assert!(matches!(step, Step::Malformed(_)));
    }
}
