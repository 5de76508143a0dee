-- sealmail schema version 16: security keys (WebAuthn credentials: hardware keys, passkeys)
-- registered as a second factor on the web pages.
--
-- `credential_id` is the id the authenticator chose (at most 1023 bytes), unique in the whole
-- store: one authenticator's credential belongs to one account. `public_key` is the credential's
-- key as a DER SubjectPublicKeyInfo. `sign_count` is the authenticator's signature counter last
-- seen (0 when it keeps none): a use is taken only with a higher counter (or 0 again where it
-- keeps none), which is how a cloned authenticator or a replayed assertion shows. An account
-- keeps at most 10 (sealmail_store::MAX_SECURITY_KEYS). AUTOINCREMENT: the id of a removed key
-- is never given to the next one, so a stale "remove key N" cannot remove a newer key.
CREATE TABLE security_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    credential_id BLOB NOT NULL UNIQUE,
    public_key BLOB NOT NULL,
    name TEXT NOT NULL,
    sign_count INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,        -- unix seconds
    last_used_at INTEGER                -- unix seconds; NULL never used
);
CREATE INDEX security_keys_account ON security_keys(account_id);

-- Registering or removing a second factor can end logins (a password-only session of an account
-- that has a second factor), so both bump the credentials generation (schema 9), as TOTP's do.
-- A use (the counter moving on) does not.
CREATE TRIGGER security_key_added AFTER INSERT ON security_keys
BEGIN
    UPDATE credentials_generation SET generation = generation + 1 WHERE id = 1;
END;
CREATE TRIGGER security_key_removed AFTER DELETE ON security_keys
BEGIN
    UPDATE credentials_generation SET generation = generation + 1 WHERE id = 1;
END;
