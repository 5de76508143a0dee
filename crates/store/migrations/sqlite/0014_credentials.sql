-- sealmail schema version 14: credentials beyond the account password (docs/AUTH.md).
--
-- SCRAM-SHA-256 verifier (RFC 5803 text: salt, iterations, StoredKey, ServerKey), kept beside
-- the Argon2id hash. A password change clears it in the same statement; it is written again
-- from the new password (at `user passwd`, or at the next password login).
ALTER TABLE accounts ADD COLUMN scram_sha256 TEXT;

-- App passwords: one per device or program, each with its own scope and expiry. `lookup` is the
-- first group of the generated password (about 29 of its 170 bits), so a login checks one
-- Argon2id hash, not every app password of the account.
CREATE TABLE app_passwords (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    lookup TEXT NOT NULL,
    password_hash TEXT NOT NULL,        -- PHC string (Argon2id)
    scopes TEXT NOT NULL,               -- comma-separated: imap, smtp
    created_at INTEGER NOT NULL,
    expires_at INTEGER,                 -- unix seconds; NULL never expires
    last_used_at INTEGER,
    last_used_from TEXT,                -- client address of the last use
    UNIQUE (account_id, name)
);
CREATE INDEX app_passwords_lookup ON app_passwords(account_id, lookup);

-- TOTP second factor (RFC 6238). The secret is sealed (AEAD) under a key file kept outside the
-- store; `last_step` is the last time step used, so a code (and its step) works once.
CREATE TABLE mfa (
    account_id INTEGER PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    sealed_secret BLOB NOT NULL,
    active INTEGER NOT NULL DEFAULT 0,
    last_step INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    activated_at INTEGER
);

-- One-time recovery codes, as hex SHA-256 (80 random bits each make a fast hash safe).
CREATE TABLE recovery_codes (
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL,
    used_at INTEGER,
    PRIMARY KEY (account_id, code_hash)
);

-- Client certificates registered to an account (by `ca issue` or `user cert add`), by the hex
-- SHA-256 of their DER encoding.
CREATE TABLE client_certs (
    fingerprint TEXT PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    subject TEXT NOT NULL,
    not_after INTEGER NOT NULL,
    issued_here INTEGER NOT NULL,
    added_at INTEGER NOT NULL
);

-- Revoked client certificates: removed from an account, or of a removed account. Kept apart
-- from client_certs so that a certificate of a trusted CA stays refused whatever happens to
-- the account; pruned once the certificate has expired (it is refused as expired then).
CREATE TABLE revoked_certs (
    fingerprint TEXT PRIMARY KEY,
    not_after INTEGER NOT NULL,
    revoked_at INTEGER NOT NULL
);

-- Every change that can end a login bumps the credentials generation (schema 9), and so does
-- a certificate's registration (running servers reread which ones the handshake accepts).
CREATE TRIGGER app_password_revoked AFTER DELETE ON app_passwords
BEGIN
    UPDATE credentials_generation SET generation = generation + 1 WHERE id = 1;
END;
CREATE TRIGGER app_password_changed AFTER UPDATE OF password_hash, scopes, expires_at ON app_passwords
BEGIN
    UPDATE credentials_generation SET generation = generation + 1 WHERE id = 1;
END;
CREATE TRIGGER mfa_changed AFTER UPDATE OF active ON mfa
BEGIN
    UPDATE credentials_generation SET generation = generation + 1 WHERE id = 1;
END;
CREATE TRIGGER mfa_removed AFTER DELETE ON mfa
BEGIN
    UPDATE credentials_generation SET generation = generation + 1 WHERE id = 1;
END;
CREATE TRIGGER client_cert_revoked AFTER INSERT ON revoked_certs
BEGIN
    UPDATE credentials_generation SET generation = generation + 1 WHERE id = 1;
END;
CREATE TRIGGER client_cert_added AFTER INSERT ON client_certs
BEGIN
    UPDATE credentials_generation SET generation = generation + 1 WHERE id = 1;
END;
CREATE TRIGGER client_cert_removed AFTER DELETE ON client_certs
BEGIN
    UPDATE credentials_generation SET generation = generation + 1 WHERE id = 1;
END;
