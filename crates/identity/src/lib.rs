//! Who may use sealmail, and how they prove it: accounts and their password credentials.
//!
//! Passwords are hashed with Argon2id at OWASP's minimum cost or above (m = 19 MiB, t = 2,
//! p = 1) and stored as PHC strings, so parameters can be raised later without breaking old
//! hashes. Verification compares in constant time (argon2's `verify_password`), and an unknown
//! user costs the same hash as a known one, so timing does not tell which accounts exist.
//! Passwords are held in [`Password`], which zeroizes itself and never prints.
//! SASL mechanisms (PLAIN, LOGIN now; SCRAM, TOTP and client certificates later) sit on
//! [`Identity::verify_password`].
//!
//! Hashing runs on a bounded pool of threads (see `hashing`). A successful login may be
//! remembered for a short time (`[auth] cache_ttl_secs`) as an HMAC of address and password
//! under a per-process random key, so that clients that reconnect often (phones, IMAP clients,
//! scripts submitting mail) do not pay Argon2 on every connection. Only successes are cached,
//! an entry is used only while the account's stored hash is unchanged (a password change
//! invalidates it at once), and failures always cost a full hash.

pub mod credentials;
mod hashing;
mod login;
pub mod revocation;
pub mod sasl;
pub mod scram;
pub mod sealing;
pub mod totp;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use argon2::password_hash::PasswordHasher;
use argon2::{Algorithm, Argon2, Params, Version};
use zeroize::Zeroizing;

use sealmail_store::{Account, Store, StoreError};
use sealmail_types::cache::ExpiringCache;
pub use sealmail_types::proof::Authenticated;
use sealmail_types::{AccountId, EmailAddress};

pub use credentials::{Enrolment, MfaStatus, Protocol, Scopes};
pub use login::{AuthPolicy, ScramPending};
pub use revocation::{CREDENTIALS_POLL, CredentialsWatch, LoginCheck};
pub use sealmail_types::proof::Credential;

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
    #[error("too many logins are being checked; try again later")]
    Busy,
    #[error(
        "no key to seal second-factor secrets with (auth.mfa_key_file); with PostgreSQL make it once with `openssl rand -hex 32 > FILE && chmod 600 FILE` and copy it to every node (docs/CLUSTER.md)"
    )]
    NoSealingKey,
    #[error("second-factor secret: {0}")]
    Sealing(String),
    #[error("{0}")]
    Mfa(&'static str),
    #[error("{0:?} is not a usable name: 1 to 64 characters, no commas or control characters")]
    BadName(String),
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

/// True when `password` matches the Argon2id PHC string `hash` (constant-time comparison),
/// using the parameters recorded in the hash itself.
pub fn verify_hash(password: &Password, hash: &str) -> bool {
    hashing::verify_in(password, hash, &mut Vec::new())
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

/// Recently verified logins, keyed by HMAC-SHA256(process key, address NUL password), with the
/// password hash they were verified against.
struct LoginCache {
    key: [u8; 32],
    ttl: Duration,
    entries: ExpiringCache<[u8; 32], Arc<str>>,
}

/// Most remembered logins; past it, the cache evicts the least used.
const LOGIN_CACHE_MAX: u64 = 10_000;

impl LoginCache {
    fn new(ttl: Duration) -> Result<LoginCache, IdentityError> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| IdentityError::Hash(e.to_string()))?;
        Ok(LoginCache {
            key,
            ttl,
            entries: ExpiringCache::new(LOGIN_CACHE_MAX),
        })
    }

    fn fingerprint(&self, address: &EmailAddress, password: &Password) -> Option<[u8; 32]> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).ok()?;
        mac.update(address.to_string().as_bytes());
        mac.update(&[0]);
        mac.update(password.expose().as_bytes());
        Some(mac.finalize().into_bytes().into())
    }

    /// True when this address and password were verified against exactly `stored_hash` lately.
    fn recalls(&self, fingerprint: &[u8; 32], stored_hash: &str) -> bool {
        self.entries
            .get(fingerprint)
            .is_some_and(|hash| *hash == *stored_hash)
    }

    fn remember(&self, fingerprint: [u8; 32], stored_hash: &str) {
        self.entries
            .insert_for(fingerprint, Arc::from(stored_hash), self.ttl);
    }
}

/// Account management and password checks on top of a [`Store`].
#[derive(Clone)]
pub struct Identity {
    store: Arc<dyn Store>,
    /// Verified against when the user does not exist, so that both cases cost one hash.
    dummy_hash: Arc<String>,
    pool: Arc<hashing::HashPool>,
    cache: Option<Arc<LoginCache>>,
    /// What logged-in sessions watch to learn that credentials changed in the store.
    credentials: CredentialsWatch,
    /// The key TOTP secrets are sealed under; `None` where no second factor can be used.
    sealing: Option<Arc<sealing::SealingKey>>,
    policy: AuthPolicy,
    /// Makes the decoy SCRAM salts of unknown users (stable for this process).
    scram_decoy_secret: [u8; 32],
}

impl Identity {
    /// Without a login cache (the admin commands).
    pub fn new(store: Arc<dyn Store>) -> Result<Identity, IdentityError> {
        Identity::with_login_cache(store, Duration::ZERO)
    }

    /// With a login cache keeping successful logins for `ttl` (zero: no cache).
    pub fn with_login_cache(store: Arc<dyn Store>, ttl: Duration) -> Result<Identity, IdentityError> {
        let dummy = hash_password(&Password::new("sealmail-dummy-password".to_string()))?;
        let cache = match ttl.is_zero() {
            true => None,
            false => Some(Arc::new(LoginCache::new(ttl)?)),
        };
        let mut scram_decoy_secret = [0u8; 32];
        getrandom::fill(&mut scram_decoy_secret).map_err(|e| IdentityError::Hash(e.to_string()))?;
        Ok(Identity {
            store,
            dummy_hash: Arc::new(dummy),
            pool: hashing::HashPool::new()?,
            cache,
            credentials: CredentialsWatch::fixed(),
            sealing: None,
            policy: AuthPolicy::default(),
            scram_decoy_secret,
        })
    }

    /// Second factors need the key their secrets are sealed under.
    pub fn with_sealing_key(mut self, key: sealing::SealingKey) -> Identity {
        // SCRAM decoys must be the same on every node and after a restart, or comparing
        // challenges over time or across nodes would tell real accounts from unknown ones.
        self.scram_decoy_secret = key.derive(b"sealmail SCRAM decoy salts");
        self.sealing = Some(Arc::new(key));
        self
    }

    /// The installation's choices (`[auth]`).
    pub fn with_policy(mut self, policy: AuthPolicy) -> Identity {
        self.policy = policy;
        self
    }

    pub fn policy(&self) -> AuthPolicy {
        self.policy
    }

    /// Starts watching the store for credential changes (every `interval`), so that the
    /// checks made by [`Identity::login_check`] from now on end sessions whose login no
    /// longer stands. Servers call it once; the admin commands do not need it.
    pub async fn watch_credentials(&mut self, interval: Duration) -> Result<(), IdentityError> {
        self.credentials = CredentialsWatch::spawn(self.store.clone(), interval).await?;
        Ok(())
    }

    /// What a session keeps after a successful login to learn when that login stops standing
    /// (see [`revocation`]).
    /// Wakes whenever credentials changed in the store (the one poll of the credentials
    /// generation this server runs; see [`Identity::watch_credentials`]).
    pub fn credential_changes(&self) -> tokio::sync::watch::Receiver<i64> {
        self.credentials.changes()
    }

    pub fn login_check(&self, login: &Authenticated) -> LoginCheck {
        self.credentials.check(self.store.clone(), login)
    }

    pub async fn add_user(
        &self,
        address: &EmailAddress,
        password: &Password,
    ) -> Result<AccountId, IdentityError> {
        let hash = self.hash_new_password(password).await?;
        let id = self.store.add_account(address, &hash).await?;
        self.store_scram_verifier(id, &hash, password).await?;
        Ok(id)
    }

    pub async fn set_password(
        &self,
        address: &EmailAddress,
        password: &Password,
    ) -> Result<(), IdentityError> {
        let hash = self.hash_new_password(password).await?;
        self.store.set_password_hash(address, &hash).await?;
        if let Some(account) = self.store.account(address).await? {
            self.store_scram_verifier(account.id, &hash, password).await?;
        }
        Ok(())
    }

    /// Makes the SCRAM-SHA-256 verifier of `password` (PBKDF2, off the runtime) and stores it
    /// while the account's password is still the one hashed as `password_hash`.
    pub(crate) async fn store_scram_verifier(
        &self,
        account: AccountId,
        password_hash: &str,
        password: &Password,
    ) -> Result<(), IdentityError> {
        if !self.policy.scram {
            return Ok(());
        }
        let password = password.clone();
        let verifier = match self
            .pool
            .run(move |_| scram::Verifier::derive(password.expose(), scram::ITERATIONS))
            .await?
        {
            Ok(verifier) => verifier,
            // A password SASLprep refuses still logs in by every other mechanism; the change it
            // came with is already committed, so this is no error.
            Err(e) => {
                tracing::warn!(error = %e, "no SCRAM verifier for this password");
                return Ok(());
            }
        };
        self.store
            .set_scram_verifier(account, password_hash, &verifier.encode())
            .await?;
        Ok(())
    }

    /// The hash to store for a password a user is given, once it passes the rules for new ones.
    async fn hash_new_password(&self, password: &Password) -> Result<String, IdentityError> {
        check_new_password(password)?;
        self.hash_off_thread(password.clone()).await
    }

    /// Costs what a real verification costs, so that failures all take the same time.
    async fn spend_one_hash(&self, password: &Password) {
        let _ = self.verify_off_thread(password, self.dummy_hash.as_str()).await;
    }

    async fn verify_off_thread(&self, password: &Password, hash: &str) -> Result<bool, IdentityError> {
        let (password, hash) = (password.clone(), hash.to_string());
        self.pool
            .run(move |blocks| hashing::verify_in(&password, &hash, blocks))
            .await
    }

    async fn hash_off_thread(&self, password: Password) -> Result<String, IdentityError> {
        self.pool.run(move |_| hash_password(&password)).await?
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
        let fingerprint = self.cache.as_ref().and_then(|c| c.fingerprint(address, password));
        if let (Some(cache), Some(fingerprint), Some(account)) = (&self.cache, &fingerprint, &account)
            && cache.recalls(fingerprint, &account.password_hash)
        {
            return Ok(Some(account.clone()));
        }
        // The dummy hash has the same parameters as real ones, so both paths cost one hash.
        let hash = match &account {
            Some(a) => a.password_hash.as_str(),
            None => self.dummy_hash.as_str(),
        };
        let matches = self.verify_off_thread(password, hash).await?;
        match account {
            Some(account) if matches => {
                if let (Some(cache), Some(fingerprint)) = (&self.cache, fingerprint) {
                    cache.remember(fingerprint, &account.password_hash);
                }
                Ok(Some(account))
            }
            _ => Ok(None),
        }
    }
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
    use sealmail_store::{AccountStore, SqliteStore};
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

#[cfg(test)]
mod cache_tests {
    use super::*;
    use sealmail_store::{AccountStore, SqliteStore};
    use sealmail_types::Domain;
    use std::time::Instant;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_login_cache_remembers_successes_only_until_the_password_changes()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Arc::new(SqliteStore::open(dir.path(), 16).await?);
        store.add_domain(&Domain::parse("example.test")?).await?;
        let identity = Identity::with_login_cache(store.clone(), Duration::from_secs(60))?;
        let alice = EmailAddress::parse("alice@example.test")?;
        let old = Password::new("the first long password".to_string());
        identity.add_user(&alice, &old).await?;

        assert!(identity.verify_password(&alice, &old).await?.is_some());
        let cache = identity.cache.clone().ok_or("no cache")?;
        assert_eq!(cache.entries.len(), 1, "success remembered");
        // A cached login is answered without Argon2: much faster than a full verification.
        let started = Instant::now();
        for _ in 0..20 {
            assert!(identity.verify_password(&alice, &old).await?.is_some());
        }
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "cache not used: {:?}",
            started.elapsed()
        );

        // Failures are never remembered and always fail.
        let wrong = Password::new("not the password at all".to_string());
        assert!(identity.verify_password(&alice, &wrong).await?.is_none());
        assert_eq!(cache.entries.len(), 1);

        // A password change (here through another Identity, as the admin CLI does) ends the
        // cached login at once.
        let new = Password::new("the second long password".to_string());
        Identity::new(store.clone())?.set_password(&alice, &new).await?;
        assert!(
            identity.verify_password(&alice, &old).await?.is_none(),
            "old password still accepted"
        );
        assert!(identity.verify_password(&alice, &new).await?.is_some());
        Ok(())
    }

    /// Two nodes on one PostgreSQL store, each with its own login cache: a password changed
    /// through node B ends node A's remembered login at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_password_change_on_another_node_ends_the_remembered_login()
    -> Result<(), Box<dyn std::error::Error>> {
        let schema = sealmail_testkit::postgres::TestSchema::new().await?;
        let mut options = sealmail_store::PgOptions::new(&schema.url);
        options.schema = Some(schema.name.clone());
        let store_a = Arc::new(sealmail_store::PgStore::open(&options).await?);
        let store_b = Arc::new(sealmail_store::PgStore::open(&options).await?);
        store_a.add_domain(&Domain::parse("example.test")?).await?;
        let node_a = Identity::with_login_cache(store_a, Duration::from_secs(600))?;
        let node_b = Identity::with_login_cache(store_b, Duration::from_secs(600))?;
        let alice = EmailAddress::parse("alice@example.test")?;
        let old = Password::new("the first long password".to_string());
        node_a.add_user(&alice, &old).await?;
        assert!(node_a.verify_password(&alice, &old).await?.is_some());
        assert_eq!(node_a.cache.as_ref().ok_or("no cache")?.entries.len(), 1);

        let new = Password::new("the second long password".to_string());
        node_b.set_password(&alice, &new).await?;
        assert!(
            node_a.verify_password(&alice, &old).await?.is_none(),
            "node A still accepts the old password"
        );
        assert!(node_a.verify_password(&alice, &new).await?.is_some());
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_logins_are_all_answered_by_the_bounded_pool()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Arc::new(SqliteStore::open(dir.path(), 16).await?);
        store.add_domain(&Domain::parse("example.test")?).await?;
        let identity = Identity::new(store)?;
        let alice = EmailAddress::parse("alice@example.test")?;
        let password = Password::new("a long enough password".to_string());
        identity.add_user(&alice, &password).await?;
        let mut tasks = Vec::new();
        for i in 0..24 {
            let (identity, alice, password) = (identity.clone(), alice.clone(), password.clone());
            tasks.push(tokio::spawn(async move {
                let attempt = if i % 2 == 0 {
                    password
                } else {
                    Password::new("wrong wrong wrong".into())
                };
                identity
                    .verify_password(&alice, &attempt)
                    .await
                    .map(|a| a.is_some())
            }));
        }
        let mut ok = 0;
        for task in tasks {
            if task.await?? {
                ok += 1;
            }
        }
        assert_eq!(ok, 12);
        Ok(())
    }
}
