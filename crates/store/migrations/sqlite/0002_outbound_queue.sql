-- sealmail schema version 2: the outbound queue (filled by submission, drained by delivery).

CREATE TABLE queue_messages (
    id INTEGER PRIMARY KEY,
    blob_id INTEGER NOT NULL REFERENCES blobs(id),
    sender TEXT NOT NULL,               -- envelope MAIL FROM; '' for the null sender
    created_at INTEGER NOT NULL,
    require_tls INTEGER NOT NULL DEFAULT 0,   -- RFC 8689 REQUIRETLS
    dsn_envid TEXT,                     -- RFC 3461 ENVID
    dsn_ret TEXT                        -- RFC 3461 RET (FULL or HDRS)
);

CREATE TABLE queue_recipients (
    id INTEGER PRIMARY KEY,
    queue_id INTEGER NOT NULL REFERENCES queue_messages(id) ON DELETE CASCADE,
    address TEXT NOT NULL,
    domain TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',   -- pending | delivered | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error TEXT,
    dsn_notify TEXT,                    -- RFC 3461 NOTIFY
    dsn_orcpt TEXT                      -- RFC 3461 ORCPT
);
CREATE INDEX queue_recipients_due ON queue_recipients(status, next_attempt_at);
