-- sealmail schema version 6: whether a recipient's "delayed" notice (RFC 3464) has been sent,
-- so the sender gets one, not one per attempt.

ALTER TABLE queue_recipients ADD COLUMN delay_warned INTEGER NOT NULL DEFAULT 0;
