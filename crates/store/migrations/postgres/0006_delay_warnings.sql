-- sealmail schema version 6 (PostgreSQL): whether a recipient's "delayed" notice (RFC 3464)
-- has been sent.

ALTER TABLE queue_recipients ADD COLUMN delay_warned BOOLEAN NOT NULL DEFAULT FALSE;
