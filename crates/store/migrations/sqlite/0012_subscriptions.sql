-- sealmail schema version 12: subscriptions belong to names, not to mailboxes (RFC 3501
-- 6.3.6: a deleted mailbox stays subscribed until the client unsubscribes it; RFC 5258 lists
-- such names as \NonExistent \Subscribed). `mailboxes.subscribed` stays as a copy for the
-- mailboxes that exist, kept in step by every write that changes either.
CREATE TABLE subscriptions (
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    PRIMARY KEY (account_id, name)
);
INSERT INTO subscriptions (account_id, name) SELECT account_id, name FROM mailboxes WHERE subscribed = 1;
