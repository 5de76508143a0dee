-- sealmail schema version 4: change tracking for IMAP (RFC 7162 mod-sequences).
--
-- Every change to a mailbox (new message, flag change, expunge) takes the mailbox's next
-- mod-sequence. A message row carries the mod-sequence of its last change; an expunged message
-- leaves a tombstone with the mod-sequence of its removal. An IMAP session that has seen
-- everything up to mod-sequence N asks for rows and tombstones above N, and so learns exactly
-- what other sessions and SMTP delivery changed.

ALTER TABLE mailboxes ADD COLUMN highest_modseq INTEGER NOT NULL DEFAULT 1;
ALTER TABLE messages ADD COLUMN modseq INTEGER NOT NULL DEFAULT 1;
CREATE INDEX messages_modseq ON messages(mailbox_id, modseq);

CREATE TABLE expunged (
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    modseq INTEGER NOT NULL
);
CREATE INDEX expunged_modseq ON expunged(mailbox_id, modseq);

-- Store-wide counters; 'uid_validity' is the last UIDVALIDITY handed out, so a mailbox that is
-- deleted and created again under the same name never gets the same UIDVALIDITY.
CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO counters (name, value) SELECT 'uid_validity', COALESCE(MAX(uid_validity), 0) FROM mailboxes;
