//! Small fakes of what protocol sessions depend on for logging in and reporting abuse, and a
//! real SQLite store in a temporary folder (cheap to run for real), for the unit tests of the
//! SMTP and IMAP sessions.

use sealmail_store::AccountStore;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use sealmail_guard::access::{AbuseReporting, HourlyUse, LoginAttempt, LoginWatch, Logins};
use sealmail_guard::{Abuse, LoginOutcome};
use sealmail_store::SqliteStore;
use sealmail_types::proof::Authenticated;
use sealmail_types::{Domain, EmailAddress};

use crate::{TestResult, ctx};

pub const ALICE: &str = "alice@a.test";
pub const ALICE_PASSWORD: &str = "correct horse battery";

/// A store with the domain `a.test` and the account `alice@a.test` (INBOX and Junk).
pub async fn store(dir: &std::path::Path) -> TestResult<Arc<SqliteStore>> {
    let store = ctx(SqliteStore::open(dir, 16).await, "open store")?;
    let domain = ctx(Domain::parse("a.test"), "domain")?;
    ctx(store.add_domain(&domain).await, "add domain")?;
    let alice = ctx(EmailAddress::parse(ALICE), "address")?;
    ctx(store.add_account(&alice, "not-a-real-hash").await, "add account")?;
    Ok(Arc::new(store))
}

/// Accepts alice with her password; refuses everyone else, banning after `ban_after` failures.
pub struct FakeLogins {
    pub store: Arc<SqliteStore>,
    pub ban_after: usize,
    pub failures: Mutex<usize>,
}

#[async_trait::async_trait]
impl Logins for FakeLogins {
    async fn login(&self, attempt: LoginAttempt<'_>) -> LoginOutcome {
        let credentials = attempt.credentials;
        if credentials.username == ALICE && credentials.password.expose() == ALICE_PASSWORD {
            let Ok(address) = EmailAddress::parse(ALICE) else {
                return LoginOutcome::Unavailable;
            };
            return match self.store.account(&address).await {
                Ok(Some(account)) => LoginOutcome::Success(Authenticated::from_verified_credentials(account)),
                _ => LoginOutcome::Unavailable,
            };
        }
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        *failures += 1;
        LoginOutcome::Failed {
            banned: *failures >= self.ban_after,
        }
    }

    fn watch(&self, _login: &Authenticated) -> Box<dyn LoginWatch> {
        Box::new(NeverRevoked)
    }
}

struct NeverRevoked;

#[async_trait::async_trait]
impl LoginWatch for NeverRevoked {
    async fn revoked(&mut self) {
        std::future::pending::<()>().await
    }

    async fn revoked_now(&mut self) -> bool {
        false
    }
}

/// Records what was reported; bans at the `ban_at`th report.
#[derive(Default)]
pub struct FakeAbuse {
    pub reports: Mutex<Vec<(Abuse, String)>>,
    pub ban_at: Option<usize>,
    pub hourly_left: Mutex<Option<u32>>,
}

impl FakeAbuse {
    pub fn kinds(&self) -> Vec<Abuse> {
        let reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        reports.iter().map(|(abuse, _)| *abuse).collect()
    }
}

#[async_trait::async_trait]
impl AbuseReporting for FakeAbuse {
    async fn report(&self, _client: IpAddr, abuse: Abuse, _listener: &str, detail: &str) -> bool {
        let mut reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        reports.push((abuse, detail.to_string()));
        self.ban_at.is_some_and(|at| reports.len() >= at)
    }

    async fn take_hourly(&self, usage: HourlyUse<'_>) -> bool {
        let count = usage.count;
        let mut left = self.hourly_left.lock().unwrap_or_else(|p| p.into_inner());
        match left.as_mut() {
            None => true,
            Some(left) if *left >= count => {
                *left -= count;
                true
            }
            Some(_) => false,
        }
    }
}
