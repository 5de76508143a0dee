-- sealmail schema version 7: which daily TLS reports (RFC 8460) have been sent, so a report is
-- sent once per day and domain, whatever restarts in between.

CREATE TABLE tls_reports_sent (
    day TEXT NOT NULL,              -- UTC date, YYYY-MM-DD
    policy_domain TEXT NOT NULL,
    sent_at INTEGER NOT NULL,       -- Unix seconds
    PRIMARY KEY (day, policy_domain)
);
