-- sealmail schema version 8 (PostgreSQL): what retention and incremental clean-up need.
ALTER TABLE expunged ADD COLUMN at BIGINT NOT NULL DEFAULT 0;
CREATE INDEX expunged_at ON expunged(at);
CREATE INDEX queue_messages_blob ON queue_messages(blob_id);
