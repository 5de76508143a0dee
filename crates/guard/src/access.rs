//! What protocol sessions need from identity and intrusion prevention, as narrow traits: a
//! session logs in ([`Logins`]), is told when that login stops standing ([`LoginWatch`]), and
//! reports abuse and spends hourly allowances ([`AbuseReporting`]). SMTP and IMAP sessions hold
//! these, not the concrete [`Guard`] and `Identity`, so their unit tests run on small fakes.

use std::net::IpAddr;
use std::sync::Arc;

use sealmail_identity::sasl::Credentials;
use sealmail_identity::{Identity, LoginCheck};
use sealmail_types::proof::{Authenticated, TlsActive};

use crate::{Abuse, Guard, LoginOutcome};

/// A login: credentials from a client over TLS, on a listener (named in events).
#[derive(Clone, Copy)]
pub struct LoginAttempt<'a> {
    pub tls: &'a TlsActive,
    pub client: IpAddr,
    pub listener: &'a str,
    pub credentials: &'a Credentials,
}

/// Checking credentials, with everything intrusion prevention does around it.
#[async_trait::async_trait]
pub trait Logins: Send + Sync {
    async fn login(&self, attempt: LoginAttempt<'_>) -> LoginOutcome;

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

    fn watch(&self, login: &Authenticated) -> Box<dyn LoginWatch> {
        Box::new(self.identity.login_check(login))
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
