-- sealmail schema version 3: intrusion prevention (bans) and the security event log.

-- An IP address (or an IPv6 /64, written as its network) that is refused until `until`.
CREATE TABLE bans (
    id INTEGER PRIMARY KEY,
    address TEXT NOT NULL,              -- "192.0.2.7" or "2001:db8:1:2::/64"
    created_at INTEGER NOT NULL,        -- unix seconds
    until INTEGER NOT NULL,
    level INTEGER NOT NULL,             -- 1 for a first ban, doubling the duration each time
    reason TEXT NOT NULL,
    lifted INTEGER NOT NULL DEFAULT 0   -- set by `sealmail security unban`
);
CREATE INDEX bans_address ON bans(address, until);

CREATE TABLE security_events (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,                -- unix seconds
    kind TEXT NOT NULL,                 -- auth_failure, auth_success, ban_added, ...
    address TEXT,                       -- client IP
    account TEXT,
    listener TEXT,
    detail TEXT
);
CREATE INDEX security_events_at ON security_events(at);
CREATE INDEX security_events_address ON security_events(address, at);
