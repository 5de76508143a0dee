-- sealmail schema version 11: IMAP \Recent (RFC 3501 2.3.2).
--
-- A message is recent in the first session that learns of it and in no other, across sessions
-- and processes: each mailbox remembers the highest UID some session has claimed as recent.
-- A read-write SELECT (and each later check for new mail in it) claims every UID above that
-- mark in one write; EXAMINE and STATUS only read it. Messages already stored are not recent.
ALTER TABLE mailboxes ADD COLUMN recent_uid INTEGER NOT NULL DEFAULT 0;
UPDATE mailboxes SET recent_uid = uid_next - 1;
