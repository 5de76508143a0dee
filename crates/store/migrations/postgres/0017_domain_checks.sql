-- sealmail schema version 17 (PostgreSQL): the server's daily check of its own domains, the
-- last result per domain and the claim of the node running the next one; see the SQLite
-- migration of the same number for what each column is for and why it is a table.
CREATE TABLE domain_checks (
    domain TEXT PRIMARY KEY,
    checked_at BIGINT NOT NULL DEFAULT 0,
    grade TEXT,
    score BIGINT,
    report TEXT,
    node TEXT,
    claimed_by TEXT,
    claimed_until BIGINT NOT NULL DEFAULT 0
);
