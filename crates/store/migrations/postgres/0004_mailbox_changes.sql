-- sealmail schema version 4 (PostgreSQL): change tracking for IMAP (RFC 7162 mod-sequences);
-- see migrations/sqlite/0004 for how mod-sequences and tombstones are used.

ALTER TABLE mailboxes ADD COLUMN highest_modseq BIGINT NOT NULL DEFAULT 1;
ALTER TABLE messages ADD COLUMN modseq BIGINT NOT NULL DEFAULT 1;
CREATE INDEX messages_modseq ON messages(mailbox_id, modseq);

CREATE TABLE expunged (
    mailbox_id BIGINT NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid BIGINT NOT NULL,
    modseq BIGINT NOT NULL
);
CREATE INDEX expunged_modseq ON expunged(mailbox_id, modseq);

-- Store-wide counters; 'uid_validity' is the last UIDVALIDITY handed out, so a mailbox that is
-- deleted and created again under the same name never gets the same UIDVALIDITY.
CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO counters (name, value) SELECT 'uid_validity', COALESCE(MAX(uid_validity), 0) FROM mailboxes;
