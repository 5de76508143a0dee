//! Ending logged-in sessions whose credential is no longer valid: after a password change, an
//! account's removal (and, once app passwords exist, an app password's revocation).
//!
//! The store is the source of truth, because the change may come from another process (the
//! admin CLI, another server sharing the store). One task per server ([`CredentialsWatch`])
//! reads the store's credentials generation every [`CREDENTIALS_POLL`], a single-row read
//! however many sessions are open, and publishes it on a `watch` channel. Each logged-in
//! session holds a [`LoginCheck`]; only when the generation moved does it look up its own
//! account (by id), and it ends when the account is gone or the credential it logged in with
//! is not the stored one any more. So a change reaches every session within about one poll
//! interval plus one lookup, whether the session is running commands, waiting for one or in IDLE.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use sealmail_store::Store;

use crate::{Authenticated, Credential, IdentityError};

/// How often each server reads the store's credentials generation.
pub const CREDENTIALS_POLL: Duration = Duration::from_secs(2);

/// The store's credentials generation as this server last read it.
#[derive(Clone)]
pub struct CredentialsWatch {
    generation: watch::Receiver<i64>,
}

impl CredentialsWatch {
    /// Reads the generation now and starts the task that rereads it every `interval`. The task
    /// ends when the last receiver (this watch and every session's check) is gone.
    pub async fn spawn(store: Arc<dyn Store>, interval: Duration) -> Result<CredentialsWatch, IdentityError> {
        let (publish, generation) = watch::channel(store.credentials_generation().await?);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if publish.is_closed() {
                    return;
                }
                match store.credentials_generation().await {
                    // send_if_modified: sessions wake only when the number really moved.
                    Ok(now) => {
                        publish.send_if_modified(|seen| std::mem::replace(seen, now) != now);
                    }
                    Err(e) => tracing::warn!(error = %e, "could not read the credentials generation"),
                }
            }
        });
        Ok(CredentialsWatch { generation })
    }

    /// A watch that never moves (the admin commands, which hold no sessions).
    pub fn fixed() -> CredentialsWatch {
        let (_, generation) = watch::channel(0);
        CredentialsWatch { generation }
    }

    /// The generation as published: changes whenever a credential changed in the store.
    pub fn changes(&self) -> watch::Receiver<i64> {
        self.generation.clone()
    }

    /// The check a session holds from a successful login on.
    pub fn check(&self, store: Arc<dyn Store>, login: &Authenticated) -> LoginCheck {
        LoginCheck {
            store,
            login: login.clone(),
            generation: self.generation.clone(),
            // Not "checked at the current generation": the password may have changed between
            // the login's read of the account and now, with the poll already past it. The
            // first check looks at the store whatever the generation says.
            checked: None,
        }
    }
}

/// Pause after a failed lookup before trying again, so a store outage is not a busy loop.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

/// Whether one session's login still stands.
pub struct LoginCheck {
    store: Arc<dyn Store>,
    login: Authenticated,
    generation: watch::Receiver<i64>,
    /// The generation at which the login was last found valid; `None` before the first check.
    checked: Option<i64>,
}

impl LoginCheck {
    /// Returns once the login no longer stands; never while it does. Cancel-safe: a check cut
    /// short is redone at the next call.
    pub async fn revoked(&mut self) {
        loop {
            let now = *self.generation.borrow_and_update();
            if self.checked != Some(now) {
                match self.still_valid().await {
                    Ok(false) => return,
                    Ok(true) => self.checked = Some(now),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not re-check a session's credentials");
                        tokio::time::sleep(RETRY_AFTER_ERROR).await;
                        continue;
                    }
                }
            }
            let expiry = self.expiry();
            tokio::select! {
                changed = self.generation.changed() => {
                    if changed.is_err() {
                        // The watch task is gone: no more news but the expiry to wait for.
                        self.expiry().await;
                        return;
                    }
                }
                () = expiry => return,
            }
        }
    }

    /// Completes when the credential expires by itself; never for one without an end.
    fn expiry(&self) -> impl std::future::Future<Output = ()> + use<> {
        let left = self
            .login
            .credential
            .expires_at()
            .map(|at| at.saturating_sub(sealmail_types::clock::now_unix()).max(0) as u64);
        async move {
            match left {
                Some(secs) => tokio::time::sleep(std::time::Duration::from_secs(secs)).await,
                None => std::future::pending().await,
            }
        }
    }

    fn expired(&self) -> bool {
        self.login
            .credential
            .expires_at()
            .is_some_and(|at| at <= sealmail_types::clock::now_unix())
    }

    /// Before a command: true when the generation moved since the last check and the login no
    /// longer stands. A failed lookup lets the command run (and is retried at the next one).
    pub async fn revoked_now(&mut self) -> bool {
        if self.expired() {
            return true;
        }
        let now = *self.generation.borrow();
        if self.checked == Some(now) {
            return false;
        }
        match self.still_valid().await {
            Ok(true) => {
                self.checked = Some(now);
                false
            }
            Ok(false) => true,
            Err(e) => {
                tracing::warn!(error = %e, "could not re-check a session's credentials");
                false
            }
        }
    }

    /// The login stands while the credential it used still stands: the account exists with
    /// the very password hash it logged in against (and, for the password alone or SCRAM, no
    /// second factor was turned on since); an app password still exists unchanged and
    /// unexpired; a certificate is not revoked. Revoking one app password ends only the
    /// sessions it opened.
    async fn still_valid(&self) -> Result<bool, IdentityError> {
        if self.expired() {
            return Ok(false);
        }
        let Some(account) = self.store.account_by_id(self.login.account.id).await? else {
            return Ok(false);
        };
        let password_unchanged = account.password_hash == self.login.account.password_hash;
        let mfa_active =
            || async { Ok::<_, IdentityError>(self.store.mfa(account.id).await?.is_some_and(|m| m.active)) };
        Ok(match &self.login.credential {
            Credential::AccountPassword | Credential::Scram => password_unchanged && !mfa_active().await?,
            Credential::AccountPasswordWithCode => password_unchanged,
            Credential::AppPassword {
                id, password_hash, ..
            } => {
                let now = sealmail_types::clock::now_unix();
                self.store.app_password(*id).await?.is_some_and(|app| {
                    app.account == account.id
                        && app.password_hash == *password_hash
                        && app.expires_at.is_none_or(|at| at > now)
                })
            }
            Credential::Certificate { fingerprint, .. } => !self.store.is_cert_revoked(fingerprint).await?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Identity, Password};
    use sealmail_store::{AccountStore, SqliteStore};
    use sealmail_types::{Domain, EmailAddress};

    /// A store in `dir` serving example.test, and an identity over it that polls the
    /// credentials generation every 50 ms.
    async fn watched_identity(
        dir: &std::path::Path,
    ) -> Result<(Arc<dyn Store>, Identity), Box<dyn std::error::Error>> {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir, 16).await?);
        store.add_domain(&Domain::parse("example.test")?).await?;
        let mut identity = Identity::new(store.clone())?;
        identity.watch_credentials(Duration::from_millis(50)).await?;
        Ok((store, identity))
    }

    async fn login(
        identity: &Identity,
        address: &EmailAddress,
    ) -> Result<Authenticated, Box<dyn std::error::Error>> {
        let password = Password::new("a long enough password".to_string());
        let account = identity
            .verify_password(address, &password)
            .await?
            .ok_or("login refused")?;
        Ok(Authenticated::from_verified_credentials(account))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_check_ends_only_the_logins_whose_credential_changed_in_the_store()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (_store, identity) = watched_identity(dir.path()).await?;
        let password = Password::new("a long enough password".to_string());
        let (alice, bob) = (
            EmailAddress::parse("alice@example.test")?,
            EmailAddress::parse("bob@example.test")?,
        );
        identity.add_user(&alice, &password).await?;
        identity.add_user(&bob, &password).await?;
        let mut alice_check = identity.login_check(&login(&identity, &alice).await?);
        let mut bob_check = identity.login_check(&login(&identity, &bob).await?);
        assert!(!alice_check.revoked_now().await);

        // Another process's change (here a second store handle on the same file).
        let other = SqliteStore::open(dir.path(), 16).await?;
        other
            .set_password_hash(&alice, &crate::hash_password(&password)?)
            .await?;
        tokio::time::timeout(Duration::from_secs(10), alice_check.revoked()).await?;
        assert!(alice_check.revoked_now().await, "stays revoked");

        // Bob's check saw the same generation move, looked, and stands.
        assert!(!bob_check.revoked_now().await);
        let still_waiting = tokio::time::timeout(Duration::from_millis(300), bob_check.revoked()).await;
        assert!(still_waiting.is_err(), "bob's login was revoked too");

        other.remove_account(&bob).await?;
        tokio::time::timeout(Duration::from_secs(10), bob_check.revoked()).await?;
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_password_changed_during_login_is_caught_by_the_first_check()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (store, identity) = watched_identity(dir.path()).await?;
        let alice = EmailAddress::parse("alice@example.test")?;
        let password = Password::new("a long enough password".to_string());
        identity.add_user(&alice, &password).await?;

        // The login read the old hash; the change lands, and the poll sees it, before the
        // session makes its check.
        let login = login(&identity, &alice).await?;
        store
            .set_password_hash(&alice, &crate::hash_password(&password)?)
            .await?;
        let changed = store.credentials_generation().await?;
        let mut seen = identity.credentials.generation.clone();
        tokio::time::timeout(Duration::from_secs(10), seen.wait_for(|g| *g == changed)).await??;

        let mut check = identity.login_check(&login);
        assert!(check.revoked_now().await, "a stale login passed its first check");
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_ends_when_its_app_password_expires_without_any_change_in_the_store()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (store, identity) = watched_identity(dir.path()).await?;
        let alice = EmailAddress::parse("alice@example.test")?;
        identity
            .add_user(&alice, &Password::new("a long enough password".to_string()))
            .await?;
        let account = store.account(&alice).await?.ok_or("alice missing")?;
        let soon = sealmail_types::clock::now_unix() + 2;
        let id = store
            .add_app_password(sealmail_store::NewAppPassword {
                account: account.id,
                name: "phone".into(),
                lookup: "abcde".into(),
                password_hash: "$argon2id$x".into(),
                scopes: "imap".into(),
                expires_at: Some(soon),
            })
            .await?;
        let login = Authenticated::with_verified_credential(
            account,
            Credential::AppPassword {
                id,
                name: "phone".into(),
                password_hash: "$argon2id$x".into(),
                expires_at: Some(soon),
            },
        );
        let mut check = identity.login_check(&login);
        assert!(!check.revoked_now().await, "valid before its expiry");
        let before = store.credentials_generation().await?;
        tokio::time::timeout(Duration::from_secs(6), check.revoked()).await?;
        assert_eq!(
            store.credentials_generation().await?,
            before,
            "ended by the clock alone"
        );
        assert!(check.revoked_now().await);
        Ok(())
    }
}
