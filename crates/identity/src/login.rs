//! Logins: which credential a client presented, and whether it lets this account in on this
//! protocol now. Password mechanisms (PLAIN, LOGIN) carry the account password, an app
//! password, or (with `auth.password_with_code`) the account password followed by a code;
//! SCRAM proves the account password without sending it; EXTERNAL names the account the
//! client certificate maps to.
//!
//! With a second factor active, the account password alone is refused everywhere (mail clients
//! cannot ask for a code), and so is SCRAM, which proves only that password. Every refusal
//! looks the same to the client and costs about one hash, so that it tells nothing.

use std::net::IpAddr;

use sealmail_store::{Account, AppPassword};
use sealmail_types::EmailAddress;
use sealmail_types::clock::now_unix;
use sealmail_types::proof::{Authenticated, Credential, TlsActive};

use crate::credentials::{Protocol, Scopes, app_password_lookup};
use crate::scram::{self, ChannelBindings, ScramFailure};
use crate::{Identity, IdentityError, MAX_PASSWORD_BYTES, Password, sasl};

/// The installation's choices about logins (`[auth]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthPolicy {
    /// Accept "password" + current code from accounts with a second factor.
    pub password_with_code: bool,
    /// Offer SCRAM-SHA-256(-PLUS).
    pub scram: bool,
}

impl Default for AuthPolicy {
    fn default() -> Self {
        AuthPolicy {
            password_with_code: false,
            scram: true,
        }
    }
}

/// A SCRAM exchange between its server-first and client-final messages.
pub struct ScramPending {
    server_first: scram::ServerFirst,
    /// The account, when the username named one whose SCRAM login is allowed; otherwise the
    /// exchange ran on a decoy and fails at the proof.
    account: Option<Account>,
    username: String,
}

impl ScramPending {
    /// The username the client gave (for throttling and events).
    pub fn username(&self) -> &str {
        &self.username
    }
}

impl Identity {
    /// Checks a username and password from PLAIN or LOGIN, over TLS, for `protocol`.
    /// A username that is not an address, an authorization identity other than the user
    /// (no proxy authorization), or a refused password all fail the same way.
    pub async fn authenticate(
        &self,
        _over: &TlsActive,
        credentials: &sasl::Credentials,
        protocol: Protocol,
        client: IpAddr,
    ) -> Result<Option<Authenticated>, IdentityError> {
        let password = &credentials.password;
        let Ok(address) = EmailAddress::parse(&credentials.username) else {
            self.spend_one_hash(password).await;
            return Ok(None);
        };
        if let Some(authzid) = &credentials.authorize_as
            && EmailAddress::parse(authzid).ok().as_ref() != Some(&address)
        {
            self.spend_one_hash(password).await;
            return Ok(None);
        }
        if password.expose().len() > MAX_PASSWORD_BYTES {
            return Ok(None);
        }
        let account = self.store.account(&address).await?;
        if let Some(account) = &account
            && let Some(lookup) = app_password_lookup(password.expose())
        {
            let candidates = self.store.app_password_candidates(account.id, lookup).await?;
            // Lookups collide for one in 2^29 pairs of an account's passwords; a few at most.
            for candidate in candidates.iter().take(4) {
                if self.verify_off_thread(password, &candidate.password_hash).await? {
                    self.remember(&address, password, &candidate.password_hash);
                    return self
                        .app_password_login(account, candidate, protocol, client)
                        .await;
                }
            }
        }
        self.account_password_login(&address, account, password).await
    }

    /// The account password, or (for an account with a second factor, when allowed) the
    /// account password followed by a current code.
    async fn account_password_login(
        &self,
        address: &EmailAddress,
        account: Option<Account>,
        password: &Password,
    ) -> Result<Option<Authenticated>, IdentityError> {
        let mfa = match &account {
            Some(account) => self.mfa_active(account.id).await?,
            None => false,
        };
        let hash = match &account {
            Some(a) => a.password_hash.clone(),
            None => self.dummy_hash.as_str().to_string(),
        };
        if mfa {
            if !self.policy.password_with_code {
                self.spend_one_hash(password).await;
                return Ok(None);
            }
            let Some((secret, code)) = split_code(password.expose()) else {
                self.spend_one_hash(password).await;
                return Ok(None);
            };
            let secret = Password::new(secret.to_string());
            if !self.verify_off_thread(&secret, &hash).await? {
                return Ok(None);
            }
            let Some(account) = account else {
                return Ok(None);
            };
            if !self.second_factor(account.id, code).await? {
                return Ok(None);
            }
            return Ok(Some(Authenticated::with_verified_credential(
                account,
                Credential::AccountPasswordWithCode,
            )));
        }
        if !self.verify_off_thread(password, &hash).await? {
            return Ok(None);
        }
        let Some(account) = account else {
            return Ok(None);
        };
        self.remember(address, password, &account.password_hash);
        if self.policy.scram && self.store.scram_verifier(account.id).await?.is_none() {
            // Accounts made before SCRAM get their verifier at their next password login.
            if let Err(e) = self
                .store_scram_verifier(account.id, &account.password_hash, password)
                .await
            {
                tracing::warn!(error = %e, "could not store a SCRAM verifier");
            }
        }
        Ok(Some(Authenticated::from_verified_credentials(account)))
    }

    /// An app password that matched: refused when expired or out of its scope; a use is noted.
    async fn app_password_login(
        &self,
        account: &Account,
        app: &AppPassword,
        protocol: Protocol,
        client: IpAddr,
    ) -> Result<Option<Authenticated>, IdentityError> {
        let now = now_unix();
        let in_scope = Scopes::parse(&app.scopes).is_some_and(|s| s.allows(protocol));
        if !in_scope || app.expires_at.is_some_and(|at| at <= now) {
            return Ok(None);
        }
        if let Err(e) = self
            .store
            .note_app_password_use(app.id, now, &client.to_string())
            .await
        {
            tracing::warn!(error = %e, "could not note an app password's use");
        }
        Ok(Some(Authenticated::with_verified_credential(
            account.clone(),
            Credential::AppPassword {
                id: app.id,
                name: app.name.clone(),
                password_hash: app.password_hash.clone(),
                expires_at: app.expires_at,
            },
        )))
    }

    fn remember(&self, address: &EmailAddress, password: &Password, hash: &str) {
        if let Some(cache) = &self.cache
            && let Some(fingerprint) = cache.fingerprint(address, password)
        {
            cache.remember(fingerprint, hash);
        }
    }

    /// The login, when these exact credentials logged in successfully within the login cache's
    /// lifetime and the credential they matched is unchanged (and still allowed); no hashing,
    /// no wait. Lets a user's known-good login skip per-account throttling caused by someone
    /// else's guessing (only correct passwords are ever remembered).
    pub async fn recalled_login(
        &self,
        _over: &TlsActive,
        credentials: &sasl::Credentials,
        protocol: Protocol,
        client: IpAddr,
    ) -> Result<Option<Authenticated>, IdentityError> {
        let (Some(cache), Ok(address)) = (&self.cache, EmailAddress::parse(&credentials.username)) else {
            return Ok(None);
        };
        if credentials.authorize_as.is_some() {
            return Ok(None);
        }
        let Some(fingerprint) = cache.fingerprint(&address, &credentials.password) else {
            return Ok(None);
        };
        let Some(account) = self.store.account(&address).await? else {
            return Ok(None);
        };
        if let Some(lookup) = app_password_lookup(credentials.password.expose()) {
            for candidate in self.store.app_password_candidates(account.id, lookup).await? {
                if cache.recalls(&fingerprint, &candidate.password_hash) {
                    return self
                        .app_password_login(&account, &candidate, protocol, client)
                        .await;
                }
            }
        }
        if !cache.recalls(&fingerprint, &account.password_hash) || self.mfa_active(account.id).await? {
            return Ok(None);
        }
        Ok(Some(Authenticated::from_verified_credentials(account)))
    }

    /// SASL EXTERNAL (RFC 4422 appendix A): the account the client certificate of this TLS
    /// session maps to: the one it is registered to, or else the account named by its e-mail
    /// address (a certificate of a trusted CA). Refused when the certificate expired or was
    /// revoked since the handshake, or when `authzid` names another account.
    pub async fn authenticate_external(
        &self,
        over: &TlsActive,
        authzid: Option<&str>,
    ) -> Result<Option<Authenticated>, IdentityError> {
        let Some(cert) = &over.client_certificate else {
            return Ok(None);
        };
        if cert.not_after <= now_unix() || self.store.is_cert_revoked(&cert.fingerprint).await? {
            return Ok(None);
        }
        let account = match self.store.client_cert(&cert.fingerprint).await? {
            Some(registered) => self.store.account_by_id(registered.account).await?,
            None => {
                // A certificate of a trusted CA names its account by its one ASCII rfc822Name
                // (IA5String; Unicode case folding could map a look-alike onto a real name).
                let [email] = cert.emails.as_slice() else {
                    return Ok(None);
                };
                let Some(address) = email
                    .is_ascii()
                    .then(|| EmailAddress::parse(email).ok())
                    .flatten()
                else {
                    return Ok(None);
                };
                let found = self.store.account(&address).await?;
                if let Some(account) = &found {
                    // Registered at first use, so `user cert list` shows it, `user cert remove`
                    // revokes it, and the account's removal revokes it for good.
                    let registered = self
                        .store
                        .add_client_cert(sealmail_store::ClientCert {
                            fingerprint: cert.fingerprint.clone(),
                            account: account.id,
                            subject: format!("emailAddress={address}"),
                            not_after: cert.not_after,
                            issued_here: false,
                            added_at: now_unix(),
                        })
                        .await;
                    match registered {
                        Ok(()) => {}
                        // Registered meanwhile (a login in parallel, or an admin): go on only
                        // if to this account and not revoked.
                        Err(sealmail_store::StoreError::Duplicate(_)) => {
                            let now_registered = self.store.client_cert(&cert.fingerprint).await?;
                            if now_registered.is_none_or(|c| c.account != account.id)
                                || self.store.is_cert_revoked(&cert.fingerprint).await?
                            {
                                return Ok(None);
                            }
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                found
            }
        };
        let Some(account) = account else {
            return Ok(None);
        };
        if let Some(authzid) = authzid.filter(|a| !a.is_empty())
            && EmailAddress::parse(authzid).ok().as_ref() != Some(&account.address)
        {
            return Ok(None);
        }
        Ok(Some(Authenticated::with_verified_credential(
            account,
            Credential::Certificate {
                fingerprint: cert.fingerprint.clone(),
                not_after: cert.not_after,
            },
        )))
    }

    /// SCRAM's first round: parses the client-first-message and answers with the
    /// server-first-message. An unknown user, an account without a verifier yet, or one with a
    /// second factor gets a decoy that fails at the proof, indistinguishable from a wrong
    /// password.
    pub async fn scram_start(
        &self,
        over: &TlsActive,
        plus: bool,
        client_first: &[u8],
    ) -> Result<(Vec<u8>, ScramPending), ScramFailure> {
        let bindings = ChannelBindings {
            tls_exporter: over.channel_bindings.tls_exporter.clone(),
            tls_server_end_point: over.channel_bindings.tls_server_end_point.clone(),
        };
        let first = scram::client_first(client_first, plus, true, &bindings)?;
        let username = first.username().to_string();
        let address = EmailAddress::parse(&username).ok();
        let account = match &address {
            Some(address) => self.store.account(address).await.ok().flatten(),
            None => None,
        };
        // The decoy is keyed by the name as accounts are looked up (two spellings of one
        // unknown address get one salt, as two spellings of a real one do).
        let canonical = address.map(|a| a.to_string()).unwrap_or_else(|| username.clone());
        let authzid_ok = first.authzid().is_none_or(|authzid| {
            EmailAddress::parse(authzid).ok().as_ref() == account.as_ref().map(|a| &a.address)
        });
        // The challenge depends on the username only: an account with a verifier always shows
        // its real salt, even when this exchange cannot succeed (another authzid, a second
        // factor), so comparing challenges tells nothing; those fail at the proof instead.
        let mut real = None;
        if let Some(account) = account
            && let Ok(Some(text)) = self.store.scram_verifier(account.id).await
            && let Some(verifier) = scram::Verifier::parse(&text)
        {
            real = Some((account, verifier));
        }
        let (account, verifier) = match real {
            Some((account, verifier)) => {
                let allowed = authzid_ok && !self.mfa_active(account.id).await.unwrap_or(true);
                (allowed.then_some(account), verifier)
            }
            None => (None, scram::Verifier::decoy(&canonical, &self.scram_decoy_secret)),
        };
        let (message, server_first) = first.challenge(&verifier);
        Ok((
            message,
            ScramPending {
                server_first,
                account,
                username,
            },
        ))
    }

    /// SCRAM's last round: checks the channel binding and the proof; on success, the
    /// server-final-message to send and the login.
    pub fn scram_finish(
        &self,
        pending: ScramPending,
        client_final: &[u8],
    ) -> Result<(Vec<u8>, Authenticated), ScramFailure> {
        let server_final = pending.server_first.finish(client_final)?;
        match pending.account {
            Some(account) => Ok((
                server_final,
                Authenticated::with_verified_credential(account, Credential::Scram),
            )),
            // A decoy's proof cannot verify; this is only reached if it somehow did.
            None => Err(ScramFailure::WrongProof),
        }
    }
}

/// "password123456" as ("password", "123456"): a 6-digit TOTP code or a recovery code
/// (xxxx-xxxx-xxxx-xxxx, 19 characters) at the end.
fn split_code(text: &str) -> Option<(&str, &str)> {
    let totp = crate::totp::DIGITS as usize;
    if text.len() > totp && text.is_char_boundary(text.len() - totp) {
        let (secret, code) = text.split_at(text.len() - totp);
        if code.bytes().all(|b| b.is_ascii_digit()) {
            return Some((secret, code));
        }
    }
    const RECOVERY: usize = 19;
    if text.len() > RECOVERY && text.is_char_boundary(text.len() - RECOVERY) {
        let (secret, code) = text.split_at(text.len() - RECOVERY);
        if crate::totp::recovery_code_hash(code).is_some() {
            return Some((secret, code));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_is_split_off_the_end() {
        assert_eq!(
            split_code("a long password123456"),
            Some(("a long password", "123456"))
        );
        assert_eq!(split_code("123456"), None, "nothing before the code");
        assert_eq!(split_code("a long password"), None);
        assert_eq!(split_code("pässwörd12345é"), None);
    }
}
