-- sealmail schema version 1: domains, accounts, mailboxes, messages and their blobs.

CREATE TABLE domains (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,          -- lower-case A-label form, no trailing dot
    created_at INTEGER NOT NULL         -- unix seconds
);

CREATE TABLE accounts (
    id INTEGER PRIMARY KEY,
    domain_id INTEGER NOT NULL REFERENCES domains(id),
    address TEXT NOT NULL UNIQUE,       -- normalised local@domain
    password_hash TEXT NOT NULL,        -- PHC string (Argon2id)
    created_at INTEGER NOT NULL
);

CREATE TABLE mailboxes (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    special_use TEXT,                   -- RFC 6154 attribute, e.g. '\Sent'
    uid_validity INTEGER NOT NULL,
    uid_next INTEGER NOT NULL DEFAULT 1,
    subscribed INTEGER NOT NULL DEFAULT 1,
    UNIQUE (account_id, name)
);

-- Message content, stored once however many mailboxes hold it; sha256 is checked on every read.
CREATE TABLE blobs (
    id INTEGER PRIMARY KEY,
    sha256 BLOB NOT NULL,
    size INTEGER NOT NULL,
    data BLOB NOT NULL
);

CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    blob_id INTEGER NOT NULL REFERENCES blobs(id),
    flags TEXT NOT NULL DEFAULT '',     -- space-separated system flags and keywords
    internal_date INTEGER NOT NULL,     -- unix seconds
    UNIQUE (mailbox_id, uid)
);
CREATE INDEX messages_blob ON messages(blob_id);
