//! Who may use sealmail, and how they prove it: accounts and their password credentials.
//!
//! Passwords are hashed with Argon2id at OWASP's minimum cost or above (m = 19 MiB, t = 2,
//! p = 1) and stored as PHC strings, so parameters can be raised later without breaking old
//! hashes. Verification compares in constant time (argon2's `verify_password`), and an unknown
//! user costs the same hash as a known one, so timing does not tell which accounts exist.
//! Passwords are held in [`Password`], which zeroizes itself and never prints.
//! SASL mechanisms (PLAIN, LOGIN now; SCRAM, TOTP and client certificates later) sit on
//! [`Identity::verify_password`].

pub mod sasl;

use std::fmt;
use std::sync::Arc;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use zeroize::Zeroizing;

use sealmail_store::{Account, Store, StoreError};
use sealmail_tls::TlsActive;
use sealmail_types::{AccountId, EmailAddress};

/// OWASP password storage cheat sheet, Argon2id option 2: 19 MiB, 2 iterations, 1 lane.
pub const ARGON2_MEMORY_KIB: u32 = 19 * 1024;
pub const ARGON2_ITERATIONS: u32 = 2;
pub const ARGON2_LANES: u32 = 1;
/// Shortest password `user add`/`user passwd` accept (NIST SP 800-63B: at least 8).
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest password accepted; bounds the hashing work an attacker can ask for.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// A secret that is wiped from memory when dropped and never shown in logs.
#[derive(Clone)]
pub struct Password(Zeroizing<String>);

impl Password {
    pub fn new(secret: String) -> Password {
        Password(Zeroizing::new(secret))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the password is too short: use at least {MIN_PASSWORD_CHARS} characters")]
    PasswordTooShort,
    #[error("the password is too long: at most {MAX_PASSWORD_BYTES} bytes")]
    PasswordTooLong,
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn hasher() -> Result<Argon2<'static>, IdentityError> {
    let params = Params::new(ARGON2_MEMORY_KIB, ARGON2_ITERATIONS, ARGON2_LANES, None)
        .map_err(|e| IdentityError::Hash(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes a password into a PHC string with a fresh random salt.
pub fn hash_password(password: &Password) -> Result<String, IdentityError> {
    let hash = hasher()?
        .hash_password(password.expose().as_bytes())
        .map_err(|e| IdentityError::Hash(e.to_string()))?;
    Ok(hash.to_string())
}

/// True when `password` matches the PHC string `hash` (constant-time comparison).
pub fn verify_hash(password: &Password, hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        tracing::error!("a stored password hash cannot be parsed; the account cannot log in");
        return false;
    };
    // Verification uses the parameters recorded in the hash itself.
    Argon2::default()
        .verify_password(password.expose().as_bytes(), &parsed)
        .is_ok()
}

/// Checks a password a person chose.
pub fn check_new_password(password: &Password) -> Result<(), IdentityError> {
    if password.expose().len() > MAX_PASSWORD_BYTES {
        return Err(IdentityError::PasswordTooLong);
    }
    if password.expose().chars().count() < MIN_PASSWORD_CHARS {
        return Err(IdentityError::PasswordTooShort);
    }
    Ok(())
}

/// A random password of 24 characters from a 54-symbol alphabet without look-alikes
/// (about 138 bits), grouped by dashes for reading aloud.
pub fn generate_password() -> Result<Password, IdentityError> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut out = Zeroizing::new(String::with_capacity(29));
    let mut produced = 0;
    while produced < 24 {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| IdentityError::Hash(e.to_string()))?;
        for b in bytes {
            // Rejection sampling keeps every symbol equally likely.
            let limit = 256 - (256 % ALPHABET.len());
            if (b as usize) >= limit || produced == 24 {
                continue;
            }
            if produced > 0 && produced % 6 == 0 {
                out.push('-');
            }
            out.push(ALPHABET[b as usize % ALPHABET.len()] as char);
            produced += 1;
        }
    }
    Ok(Password(out))
}

/// Proof that a session has authenticated as `account`. Only [`Identity::authenticate`] makes it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Authenticated {
    pub account: Account,
}

/// Account management and password checks on top of a [`Store`].
#[derive(Clone)]
pub struct Identity {
    store: Arc<dyn Store>,
    /// Verified against when the user does not exist, so that both cases cost one hash.
    dummy_hash: Arc<String>,
}

impl Identity {
    pub fn new(store: Arc<dyn Store>) -> Result<Identity, IdentityError> {
        let dummy = hash_password(&Password::new("sealmail-dummy-password".to_string()))?;
        Ok(Identity {
            store,
            dummy_hash: Arc::new(dummy),
        })
    }

    pub async fn add_user(
        &self,
        address: &EmailAddress,
        password: &Password,
    ) -> Result<AccountId, IdentityError> {
        check_new_password(password)?;
        let hash = hash_off_thread(password.clone()).await?;
        Ok(self.store.add_account(address, &hash).await?)
    }

    pub async fn set_password(
        &self,
        address: &EmailAddress,
        password: &Password,
    ) -> Result<(), IdentityError> {
        check_new_password(password)?;
        let hash = hash_off_thread(password.clone()).await?;
        Ok(self.store.set_password_hash(address, &hash).await?)
    }

    /// Checks credentials from a SASL exchange; only over TLS (the `TlsActive` proof).
    /// A username that is not an address, an authorization identity other than the user
    /// (no proxy authorization), or a wrong password all fail the same way.
    pub async fn authenticate(
        &self,
        _over: &TlsActive,
        credentials: &sasl::Credentials,
    ) -> Result<Option<Authenticated>, IdentityError> {
        let Ok(address) = EmailAddress::parse(&credentials.username) else {
            self.spend_one_hash(&credentials.password).await;
            return Ok(None);
        };
        if let Some(authzid) = &credentials.authorize_as
            && EmailAddress::parse(authzid).ok().as_ref() != Some(&address)
        {
            self.spend_one_hash(&credentials.password).await;
            return Ok(None);
        }
        Ok(self
            .verify_password(&address, &credentials.password)
            .await?
            .map(|account| Authenticated { account }))
    }

    /// Costs what a real verification costs, so that failures all take the same time.
    async fn spend_one_hash(&self, password: &Password) {
        let (password, hash) = (password.clone(), self.dummy_hash.clone());
        let _ = tokio::task::spawn_blocking(move || verify_hash(&password, &hash)).await;
    }

    /// The account, if `address` exists and `password` is its password. Takes the same time
    /// whether or not the account exists.
    pub async fn verify_password(
        &self,
        address: &EmailAddress,
        password: &Password,
    ) -> Result<Option<Account>, IdentityError> {
        if password.expose().len() > MAX_PASSWORD_BYTES {
            return Ok(None);
        }
        let account = self.store.account(address).await?;
        let hash = match &account {
            Some(a) => a.password_hash.clone(),
            None => self.dummy_hash.as_str().to_string(),
        };
        // The dummy hash has the same parameters as real ones, so both paths cost one hash.
        let password = password.clone();
        let matches = tokio::task::spawn_blocking(move || verify_hash(&password, &hash))
            .await
            .unwrap_or(false);
        Ok(account.filter(|_| matches))
    }
}

/// Argon2 takes tens of milliseconds of CPU: keep it off the async workers.
async fn hash_off_thread(password: Password) -> Result<String, IdentityError> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| IdentityError::Hash(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_with_owasp_parameters_and_verify() -> Result<(), IdentityError> {
        let password = Password::new("correct horse battery staple".to_string());
        let hash = hash_password(&password)?;
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert!(verify_hash(&password, &hash));
        assert!(!verify_hash(
            &Password::new("correct horse battery stapl".to_string()),
            &hash
        ));
        assert!(!verify_hash(&password, "not a hash"));
        // Same password, new salt: different hash.
        assert_ne!(hash, hash_password(&password)?);
        Ok(())
    }

    #[test]
    fn generated_passwords_are_long_random_and_pass_policy() -> Result<(), IdentityError> {
        let a = generate_password()?;
        let b = generate_password()?;
        assert_eq!(a.expose().len(), 24 + 3);
        assert_ne!(a.expose(), b.expose());
        check_new_password(&a)?;
        Ok(())
    }

    #[test]
    fn passwords_do_not_print() {
        let p = Password::new("hunter2hunter2".to_string());
        assert!(!format!("{p:?}").contains("hunter2"));
    }

    #[test]
    fn weak_passwords_are_refused() {
        assert!(matches!(
            check_new_password(&Password::new("short".into())),
            Err(IdentityError::PasswordTooShort)
        ));
        assert!(matches!(
            check_new_password(&Password::new("x".repeat(MAX_PASSWORD_BYTES + 1))),
            Err(IdentityError::PasswordTooLong)
        ));
    }
}

#[cfg(test)]
mod store_tests {
    use super::*;
    use sealmail_store::SqliteStore;
    use sealmail_types::Domain;

    #[tokio::test]
    async fn users_are_created_verified_and_refused_against_a_real_store()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Arc::new(SqliteStore::open(dir.path(), 16).await?);
        store.add_domain(&Domain::parse("example.test")?).await?;
        let identity = Identity::new(store.clone())?;
        let alice = EmailAddress::parse("alice@example.test")?;
        let password = Password::new("a long enough password".to_string());
        identity.add_user(&alice, &password).await?;

        let stored = store.account(&alice).await?.ok_or("alice missing")?;
        assert!(stored.password_hash.starts_with("$argon2id$"));
        assert!(!stored.password_hash.contains("a long enough password"));

        let ok = identity
            .verify_password(&EmailAddress::parse("Alice@EXAMPLE.test")?, &password)
            .await?;
        assert_eq!(ok.map(|a| a.address), Some(alice.clone()));
        let wrong = identity
            .verify_password(&alice, &Password::new("a long enough passwore".to_string()))
            .await?;
        assert!(wrong.is_none());
        let nobody = identity
            .verify_password(&EmailAddress::parse("nobody@example.test")?, &password)
            .await?;
        assert!(nobody.is_none());

        let duplicate = identity.add_user(&alice, &password).await;
        assert!(
            matches!(duplicate, Err(IdentityError::Store(StoreError::Duplicate(_)))),
            "{duplicate:?}"
        );
        let unknown_domain = identity
            .add_user(&EmailAddress::parse("carol@nowhere.test")?, &password)
            .await;
        assert!(matches!(
            unknown_domain,
            Err(IdentityError::Store(StoreError::UnknownDomain(_)))
        ));

        let new_password = Password::new("another long password".to_string());
        identity.set_password(&alice, &new_password).await?;
        assert!(identity.verify_password(&alice, &password).await?.is_none());
        assert!(identity.verify_password(&alice, &new_password).await?.is_some());
        Ok(())
    }
}
