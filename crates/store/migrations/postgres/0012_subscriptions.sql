-- sealmail schema version 12 (PostgreSQL): subscriptions belong to names, not to mailboxes
-- (RFC 3501 6.3.6), see migrations/sqlite/0012.
CREATE TABLE subscriptions (
    account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    PRIMARY KEY (account_id, name)
);
INSERT INTO subscriptions (account_id, name) SELECT account_id, name FROM mailboxes WHERE subscribed;
