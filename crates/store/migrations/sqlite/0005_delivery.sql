-- sealmail schema version 5: delivery bookkeeping and TLS-RPT (RFC 8460) results.

ALTER TABLE queue_recipients ADD COLUMN last_attempt_at INTEGER;
-- What the receiving server said, or why we gave up: kept after the final outcome for DSNs and
-- `sealmail queue show`.
ALTER TABLE queue_recipients ADD COLUMN final_at INTEGER;

-- One row per day, policy and outcome: what a daily TLS report (RFC 8460 4) is built from.
CREATE TABLE tls_results (
    day TEXT NOT NULL,              -- UTC date, YYYY-MM-DD
    policy_domain TEXT NOT NULL,    -- the recipient domain
    policy_type TEXT NOT NULL,      -- sts | tlsa | no-policy-found
    mx_host TEXT NOT NULL,          -- the receiving MX host ('' when none was reached)
    result_type TEXT NOT NULL,      -- 'success' or an RFC 8460 4.3 result type
    detail TEXT NOT NULL DEFAULT '',-- the last failure's additional information
    count INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, policy_domain, policy_type, mx_host, result_type)
);

-- MTA-STS policies (RFC 8461 5.1) kept across restarts, so that a policy stays in force for
-- its max_age even when an attacker blocks the next fetch.
CREATE TABLE mta_sts_policies (
    domain TEXT PRIMARY KEY,
    policy_id TEXT NOT NULL,
    body TEXT NOT NULL,
    expires_at INTEGER NOT NULL     -- Unix seconds
);
