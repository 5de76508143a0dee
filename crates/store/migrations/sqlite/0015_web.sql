-- sealmail schema version 15: the web pages (sealmail-web): who may use the admin console, and
-- the browser sessions of the self-service pages and the console.
--
-- The admin role is a flag on the account, granted with `sealmail user admin ADDRESS on` (or
-- `user add --admin`): the console is reached by logging in as an ordinary account, so no
-- second kind of credential exists to forget about.
ALTER TABLE accounts ADD COLUMN admin INTEGER NOT NULL DEFAULT 0;

-- A signed-in browser. The cookie's value is kept only as its hex SHA-256 (the value has
-- enough random bits for a fast hash), so a copy of the store opens no session. `credential`
-- is what the login used ("password", "password+totp", ...), shown with client address and
-- user agent in the list of sessions; an account's sessions end with it. Expired rows are
-- pruned hourly; a lookup ignores them before that.
CREATE TABLE web_sessions (
    id_hash TEXT PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    credential TEXT NOT NULL,
    client_address TEXT NOT NULL,
    user_agent TEXT NOT NULL,
    created_at INTEGER NOT NULL,        -- unix seconds
    last_seen_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX web_sessions_account ON web_sessions(account_id);
CREATE INDEX web_sessions_expires ON web_sessions(expires_at);

-- The account page shows an account's own security events: found by account, newest first.
CREATE INDEX security_events_account ON security_events(account, at);
