//! Credentials beyond the account password, as the admin commands manage them and logins check
//! them: app passwords (one per device, scoped, expiring, revocable), the TOTP second factor
//! with its recovery codes (RFC 6238), and client certificates registered to an account.
//!
//! What the store keeps is never enough to log in: app passwords as Argon2id hashes, TOTP
//! secrets sealed under a key file outside the store (`sealing`), recovery codes as SHA-256.

use std::fmt;

use zeroize::Zeroizing;

use sealmail_store::{AppPassword, ClientCert, NewAppPassword, StoreError};
use sealmail_types::clock::now_unix;
use sealmail_types::{AccountId, EmailAddress};

use crate::sealing::SealingKey;
use crate::totp::{self, TotpSecret};
use crate::{Identity, IdentityError, Password};

/// What a login is for: app passwords are scoped to protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Imap,
    Smtp,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Imap, Protocol::Smtp];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Imap => "imap",
            Protocol::Smtp => "smtp",
        }
    }

    pub fn parse(name: &str) -> Option<Protocol> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name.trim()))
    }
}

/// The protocols an app password may be used on, stored as "imap,smtp".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scopes {
    imap: bool,
    smtp: bool,
}

impl Scopes {
    pub const ALL: Scopes = Scopes {
        imap: true,
        smtp: true,
    };

    /// A comma-separated list of protocol names ("imap", "smtp", "imap,smtp"); none empty.
    pub fn parse(list: &str) -> Option<Scopes> {
        let mut scopes = Scopes {
            imap: false,
            smtp: false,
        };
        for name in list.split(',') {
            match Protocol::parse(name)? {
                Protocol::Imap => scopes.imap = true,
                Protocol::Smtp => scopes.smtp = true,
            }
        }
        Some(scopes)
    }

    pub fn allows(self, protocol: Protocol) -> bool {
        match protocol {
            Protocol::Imap => self.imap,
            Protocol::Smtp => self.smtp,
        }
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Protocol::ALL
            .into_iter()
            .filter(|p| self.allows(*p))
            .map(Protocol::name)
            .collect();
        f.write_str(&names.join(","))
    }
}

/// Symbols of generated app passwords: no look-alikes (0/O, 1/l/I), so they can be typed
/// from a screen.
const APP_ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
const APP_GROUPS: usize = 6;
const APP_GROUP_LEN: usize = 5;
/// Longest app password name.
pub const MAX_APP_PASSWORD_NAME: usize = 64;

/// A new app password: 6 groups of 5 symbols of 54 (about 172 bits), joined by '-'. The first
/// group is kept in clear as the lookup (29 bits), leaving about 143 bits secret.
fn generate_app_password() -> Result<Password, IdentityError> {
    let mut out = Zeroizing::new(String::with_capacity(APP_GROUPS * (APP_GROUP_LEN + 1)));
    let mut produced = 0;
    let limit = 256 - (256 % APP_ALPHABET.len());
    while produced < APP_GROUPS * APP_GROUP_LEN {
        let mut bytes = [0u8; 64];
        getrandom::fill(&mut bytes).map_err(|e| IdentityError::Hash(e.to_string()))?;
        for b in bytes {
            // Rejection sampling keeps every symbol equally likely.
            if (b as usize) >= limit || produced == APP_GROUPS * APP_GROUP_LEN {
                continue;
            }
            if produced > 0 && produced % APP_GROUP_LEN == 0 {
                out.push('-');
            }
            out.push(APP_ALPHABET[b as usize % APP_ALPHABET.len()] as char);
            produced += 1;
        }
    }
    Ok(Password(out))
}

/// The lookup group of a string shaped like a generated app password, or `None`.
pub(crate) fn app_password_lookup(password: &str) -> Option<&str> {
    let bytes = password.as_bytes();
    if bytes.len() != APP_GROUPS * (APP_GROUP_LEN + 1) - 1 {
        return None;
    }
    let shaped = bytes
        .iter()
        .enumerate()
        .all(|(i, b)| match (i + 1) % (APP_GROUP_LEN + 1) {
            0 => *b == b'-',
            _ => APP_ALPHABET.contains(b),
        });
    shaped.then(|| &password[..APP_GROUP_LEN])
}

/// What `user mfa enable` shows once: the secret as an otpauth URI and as a terminal QR code.
pub struct Enrolment {
    pub uri: Zeroizing<String>,
    pub qr: String,
}

/// What `user mfa status` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MfaStatus {
    Off,
    /// Enrolment started, not confirmed with a code yet.
    Pending,
    Active {
        since: i64,
        recovery_codes_left: u32,
    },
}

/// What `user app-password list` shows of one app password (never the password).
pub type AppPasswordInfo = AppPassword;

impl Identity {
    async fn account_id(&self, address: &EmailAddress) -> Result<AccountId, IdentityError> {
        match self.store.account(address).await? {
            Some(account) => Ok(account.id),
            None => Err(StoreError::NotFound(format!("user {address}")).into()),
        }
    }

    fn sealing_key(&self) -> Result<&SealingKey, IdentityError> {
        self.sealing.as_deref().ok_or(IdentityError::NoSealingKey)
    }

    /// Makes an app password for `address`, stores its hash, and returns it: the only time it
    /// is ever shown.
    pub async fn add_app_password(
        &self,
        address: &EmailAddress,
        name: &str,
        scopes: Scopes,
        expires_at: Option<i64>,
    ) -> Result<Password, IdentityError> {
        if name.is_empty()
            || name.len() > MAX_APP_PASSWORD_NAME
            || name.chars().any(|c| c.is_control() || c == ',')
        {
            return Err(IdentityError::BadName(
                name.chars().filter(|c| !c.is_control()).take(80).collect(),
            ));
        }
        let account = self.account_id(address).await?;
        let password = generate_app_password()?;
        let lookup = app_password_lookup(password.expose())
            .ok_or_else(|| IdentityError::Hash("generated app password has the wrong shape".into()))?
            .to_string();
        let password_hash = self.hash_off_thread(password.clone()).await?;
        self.store
            .add_app_password(NewAppPassword {
                account,
                name: name.to_string(),
                lookup,
                password_hash,
                scopes: scopes.to_string(),
                expires_at,
            })
            .await?;
        Ok(password)
    }

    pub async fn app_passwords(&self, address: &EmailAddress) -> Result<Vec<AppPasswordInfo>, IdentityError> {
        let account = self.account_id(address).await?;
        Ok(self.store.app_passwords(account).await?)
    }

    pub async fn revoke_app_password(&self, address: &EmailAddress, name: &str) -> Result<(), IdentityError> {
        let account = self.account_id(address).await?;
        Ok(self.store.revoke_app_password(account, name).await?)
    }

    /// Starts a TOTP enrolment: a new secret, sealed and stored as pending, shown once as an
    /// otpauth URI (issuer = this server's host name) and QR code.
    pub async fn enable_mfa(&self, address: &EmailAddress, issuer: &str) -> Result<Enrolment, IdentityError> {
        let account = self.account_id(address).await?;
        let key = self.sealing_key()?;
        let secret = TotpSecret::generate().map_err(|e| IdentityError::Hash(e.to_string()))?;
        let sealed = key
            .seal(secret.as_bytes(), &account_context(account))
            .map_err(|e| IdentityError::Sealing(e.to_string()))?;
        self.store.start_mfa(account, sealed).await?;
        let uri = totp::otpauth_uri(issuer, &address.to_string(), &secret);
        let qr = totp::qr_for_terminal(&uri).map_err(|e| IdentityError::Hash(e.to_string()))?;
        Ok(Enrolment { uri, qr })
    }

    /// Activates a pending enrolment once `code` is a current code of its secret; returns the
    /// new recovery codes (shown once, stored hashed).
    pub async fn confirm_mfa(
        &self,
        address: &EmailAddress,
        code: &str,
    ) -> Result<Vec<Zeroizing<String>>, IdentityError> {
        let account = self.account_id(address).await?;
        let Some(mfa) = self.store.mfa(account).await? else {
            return Err(IdentityError::Mfa(
                "no enrolment was started; run `user mfa enable` first",
            ));
        };
        if mfa.active {
            return Err(IdentityError::Mfa("the second factor is already active"));
        }
        let secret = self.open_secret(account, &mfa.sealed_secret)?;
        let Some(step) = totp::matching_step(&secret, &normalise_code(code), now_unix()) else {
            return Err(IdentityError::Mfa(
                "the code is not a current code of the enrolled secret",
            ));
        };
        let codes = totp::generate_recovery_codes().map_err(|e| IdentityError::Hash(e.to_string()))?;
        let hashes = codes
            .iter()
            .filter_map(|code| totp::recovery_code_hash(code))
            .collect();
        if !self.store.activate_mfa(account, step, hashes).await? {
            return Err(IdentityError::Mfa("the enrolment changed meanwhile; start again"));
        }
        Ok(codes)
    }

    pub async fn disable_mfa(&self, address: &EmailAddress) -> Result<bool, IdentityError> {
        let account = self.account_id(address).await?;
        Ok(self.store.disable_mfa(account).await?)
    }

    pub async fn mfa_status(&self, address: &EmailAddress) -> Result<MfaStatus, IdentityError> {
        let account = self.account_id(address).await?;
        Ok(match self.store.mfa(account).await? {
            None => MfaStatus::Off,
            Some(mfa) if !mfa.active => MfaStatus::Pending,
            Some(mfa) => MfaStatus::Active {
                since: mfa.activated_at.unwrap_or(mfa.created_at),
                recovery_codes_left: mfa.recovery_codes_left,
            },
        })
    }

    fn open_secret(&self, account: AccountId, sealed: &[u8]) -> Result<TotpSecret, IdentityError> {
        let key = self.sealing_key()?;
        let opened = key
            .open(sealed, &account_context(account))
            .map_err(|e| IdentityError::Sealing(e.to_string()))?;
        Ok(TotpSecret::from_bytes(opened.to_vec()))
    }

    /// Whether `code` is a second factor of the account now: a current TOTP code of a step not
    /// used before, or an unused recovery code. Either is used up by this call.
    pub async fn second_factor(&self, account: AccountId, code: &str) -> Result<bool, IdentityError> {
        let Some(mfa) = self.store.mfa(account).await? else {
            return Ok(false);
        };
        if !mfa.active {
            return Ok(false);
        }
        let code = normalise_code(code);
        if code.len() == totp::DIGITS as usize {
            // A secret that does not open (another node's key file, a lost key) must look and
            // count like a wrong code: an error here would tell a right password from a wrong one.
            let secret = match self.open_secret(account, &mfa.sealed_secret) {
                Ok(secret) => secret,
                Err(e) => {
                    tracing::error!(error = %e, "a second-factor secret does not open; is auth.mfa_key_file the same on every node?");
                    return Ok(false);
                }
            };
            return match totp::matching_step(&secret, &code, now_unix()) {
                Some(step) => Ok(self.store.use_totp_step(account, step).await?),
                None => Ok(false),
            };
        }
        match totp::recovery_code_hash(&code) {
            Some(hash) => Ok(self.store.use_recovery_code(account, &hash).await?),
            None => Ok(false),
        }
    }

    /// Whether the account has an active second factor.
    pub async fn mfa_active(&self, account: AccountId) -> Result<bool, IdentityError> {
        Ok(self.store.mfa(account).await?.is_some_and(|m| m.active))
    }

    /// Registers a client certificate (its facts, from `sealmail_tls`) to `address`.
    pub async fn add_client_cert(
        &self,
        address: &EmailAddress,
        fingerprint: &str,
        subject: &str,
        not_after: i64,
        issued_here: bool,
    ) -> Result<(), IdentityError> {
        let account = self.account_id(address).await?;
        Ok(self
            .store
            .add_client_cert(ClientCert {
                fingerprint: fingerprint.to_ascii_lowercase(),
                account,
                subject: subject.to_string(),
                not_after,
                issued_here,
                added_at: now_unix(),
            })
            .await?)
    }

    pub async fn client_certs(&self, address: &EmailAddress) -> Result<Vec<ClientCert>, IdentityError> {
        let account = self.account_id(address).await?;
        Ok(self.store.client_certs(account).await?)
    }

    /// Removes and revokes a certificate of `address` (colons and case in the fingerprint are
    /// ignored, as `openssl x509 -fingerprint` prints them).
    pub async fn remove_client_cert(
        &self,
        address: &EmailAddress,
        fingerprint: &str,
    ) -> Result<(), IdentityError> {
        let account = self.account_id(address).await?;
        let fingerprint: String = fingerprint
            .chars()
            .filter(|c| *c != ':')
            .collect::<String>()
            .to_ascii_lowercase();
        Ok(self.store.remove_client_cert(account, &fingerprint).await?)
    }
}

/// What binds a sealed TOTP secret to its account: the same bytes do not open for another.
fn account_context(account: AccountId) -> Vec<u8> {
    format!("sealmail-totp:{}", account.0).into_bytes()
}

/// Codes as people type them: spaces and dashes are not part of them.
fn normalise_code(code: &str) -> String {
    code.chars().filter(|c| !c.is_whitespace()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_passwords_are_long_shaped_and_found_by_their_first_group() -> Result<(), IdentityError> {
        let a = generate_app_password()?;
        let b = generate_app_password()?;
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.expose().len(), 35);
        assert_eq!(a.expose().split('-').count(), 6);
        assert_eq!(app_password_lookup(a.expose()), Some(&a.expose()[..5]));
        assert_eq!(app_password_lookup("a long enough password"), None);
        assert_eq!(
            app_password_lookup("abcde-fghij-kmnpq-rstuv-wxyzA-BCDE0"),
            None,
            "0 is not a symbol"
        );
        // 30 symbols of 54: log2(54) * 30 > 172 bits, 143 of them after the lookup group.
        assert!((APP_ALPHABET.len() as f64).log2() * 25.0 > 128.0);
        Ok(())
    }

    #[test]
    fn scopes_parse_print_and_allow() {
        let imap = Scopes::parse("imap");
        assert!(imap.is_some_and(|s| s.allows(Protocol::Imap) && !s.allows(Protocol::Smtp)));
        assert_eq!(
            Scopes::parse("smtp, IMAP").map(|s| s.to_string()).as_deref(),
            Some("imap,smtp")
        );
        assert_eq!(Scopes::parse("pop3"), None);
        assert_eq!(Scopes::parse(""), None);
    }
}
