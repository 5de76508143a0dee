-- sealmail schema version 13 (PostgreSQL): what several nodes sharing one store need (docs/CLUSTER.md).
--
-- Queue leases: a node takes each due recipient for a while (`lease_until`, Unix seconds) and
-- names itself in `leased_by`; no other node takes it until the lease ends, so a recipient is
-- attempted by one node at a time, and a node that died leaves work another takes over.
ALTER TABLE queue_recipients ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0;
ALTER TABLE queue_recipients ADD COLUMN leased_by TEXT;

-- Which node saw a security event.
ALTER TABLE security_events ADD COLUMN node TEXT;

-- Abuse points per client key (an address or an IPv6 /64) counted toward a ban, shared by the
-- nodes so an attacker cannot spread guesses over them. Rows older than the counting window
-- are deleted as the key is counted again and by the hourly clean-up.
CREATE TABLE abuse_points (
    key TEXT NOT NULL,
    at BIGINT NOT NULL,                -- unix seconds
    points BIGINT NOT NULL
);
CREATE INDEX abuse_points_key ON abuse_points(key, at);
CREATE INDEX abuse_points_at ON abuse_points(at);

-- Per-account hourly allowances (messages, recipients) spent on any node; rows older than an
-- hour are deleted as the key spends again and by the hourly clean-up.
CREATE TABLE hourly_use (
    key TEXT NOT NULL,                  -- "messages:alice@example.org" and the like
    at BIGINT NOT NULL,
    amount BIGINT NOT NULL
);
CREATE INDEX hourly_use_key ON hourly_use(key, at);
CREATE INDEX hourly_use_at ON hourly_use(at);
