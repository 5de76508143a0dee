-- sealmail schema version 10: each account's storage use, kept current by triggers.
--
-- The quota check runs at every RCPT to a local user (on mx, before any login): summing the
-- sizes of all of an account's messages there would let anyone make the store scan a large
-- mailbox with each RCPT. The sum is kept instead, in the same transaction as every message
-- stored or removed (deleting a mailbox or an account cascades to its messages, which fires the
-- delete trigger), so no write path can forget it.
ALTER TABLE accounts ADD COLUMN used_bytes INTEGER NOT NULL DEFAULT 0;

UPDATE accounts SET used_bytes = (
    SELECT COALESCE(SUM(b.size), 0)
    FROM mailboxes x JOIN messages m ON m.mailbox_id = x.id JOIN blobs b ON b.id = m.blob_id
    WHERE x.account_id = accounts.id
);

CREATE TRIGGER messages_count_in AFTER INSERT ON messages
BEGIN
    UPDATE accounts SET used_bytes = used_bytes + (SELECT size FROM blobs WHERE id = NEW.blob_id)
    WHERE id = (SELECT account_id FROM mailboxes WHERE id = NEW.mailbox_id);
END;

CREATE TRIGGER messages_count_out AFTER DELETE ON messages
BEGIN
    UPDATE accounts SET used_bytes = MAX(0, used_bytes - (SELECT size FROM blobs WHERE id = OLD.blob_id))
    WHERE id = (SELECT account_id FROM mailboxes WHERE id = OLD.mailbox_id);
END;
