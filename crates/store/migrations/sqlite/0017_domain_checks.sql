-- sealmail schema version 17: the server's daily check of its own domains (`sealmail check`,
-- docs/CHECK-JSON.md). One row per served domain: the last result, so a lower grade is
-- noticed across restarts and the admin console can show the findings; and the claim of the
-- node running the next check, so nodes sharing a store check each domain once per interval
-- rather than once each.
--
-- A table rather than security events: the console needs the whole last report (every WARN
-- and FAIL with its fix), which is no event detail, and claiming a run must be one atomic
-- statement, which appending events is not. The history that matters (a drop of the grade)
-- is a security event all the same.
--
-- `grade`, `score` and `report` (the report's JSON, docs/CHECK-JSON.md) are NULL until the
-- first check of the domain finishes; `checked_at` is 0 until then. `claimed_by` names the
-- node running a check and `claimed_until` when its claim lapses (so a node that dies
-- mid-check blocks the others only that long). A row not checked for 30 days (a domain no
-- longer served, or the daily check turned off) is pruned with the hourly clean-up.
CREATE TABLE domain_checks (
    domain TEXT PRIMARY KEY,
    checked_at INTEGER NOT NULL DEFAULT 0,  -- unix seconds of the last finished check
    grade TEXT,
    score INTEGER,
    report TEXT,
    node TEXT,                              -- the node that made the last check
    claimed_by TEXT,
    claimed_until INTEGER NOT NULL DEFAULT 0
);
