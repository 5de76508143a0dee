-- sealmail schema version 8: what retention and incremental clean-up need.
--
-- Expunge tombstones get the time of the expunge, so they can be dropped once no session can
-- still ask for them (IMAP sessions end after 30 idle minutes; tombstones are kept a day).
-- Rows from before this version get 0 and go at the first clean-up.
ALTER TABLE expunged ADD COLUMN at INTEGER NOT NULL DEFAULT 0;
CREATE INDEX expunged_at ON expunged(at);

-- A blob is removed when the last message or queue entry using it goes: that check looks a
-- blob up in both tables, so both need an index on their blob column.
CREATE INDEX queue_messages_blob ON queue_messages(blob_id);
