-- sealmail schema version 11 (PostgreSQL): IMAP \Recent (RFC 3501 2.3.2), see migrations/sqlite/0011.
ALTER TABLE mailboxes ADD COLUMN recent_uid BIGINT NOT NULL DEFAULT 0;
UPDATE mailboxes SET recent_uid = uid_next - 1;
