-- sealmail schema version 10 (PostgreSQL): each account's storage use, kept current by
-- triggers in the transaction of every message stored or removed (see migrations/sqlite/0010).
ALTER TABLE accounts ADD COLUMN used_bytes BIGINT NOT NULL DEFAULT 0;

UPDATE accounts SET used_bytes = (
    SELECT COALESCE(SUM(b.size), 0)
    FROM mailboxes x JOIN messages m ON m.mailbox_id = x.id JOIN blobs b ON b.id = m.blob_id
    WHERE x.account_id = accounts.id
);

CREATE FUNCTION messages_count_in() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE accounts SET used_bytes = used_bytes + (SELECT size FROM blobs WHERE id = NEW.blob_id)
    WHERE id = (SELECT account_id FROM mailboxes WHERE id = NEW.mailbox_id);
    RETURN NULL;
END;
$$;

CREATE FUNCTION messages_count_out() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- When the account itself is being deleted (cascade), its row is gone: nothing to update.
    UPDATE accounts SET used_bytes = GREATEST(0, used_bytes - (SELECT size FROM blobs WHERE id = OLD.blob_id))
    WHERE id = (SELECT account_id FROM mailboxes WHERE id = OLD.mailbox_id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER messages_count_in AFTER INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION messages_count_in();
CREATE TRIGGER messages_count_out AFTER DELETE ON messages
    FOR EACH ROW EXECUTE FUNCTION messages_count_out();
