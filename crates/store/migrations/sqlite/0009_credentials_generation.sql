-- sealmail schema version 9: a store-wide credentials generation.
--
-- Logged-in sessions must end soon after their account's password changes or the account is
-- removed, whichever process (the server, the admin CLI) or tool made the change. Every server
-- polls this one row, which is cheap however many sessions it holds, and only when the number
-- moved do its sessions look up their own account. Triggers bump it, so no write path (now or
-- later, e.g. app-password revocation) can change a credential and forget to.
CREATE TABLE credentials_generation (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL
);
INSERT INTO credentials_generation (id, generation) VALUES (1, 0);

CREATE TRIGGER accounts_password_changed AFTER UPDATE OF password_hash ON accounts
BEGIN
    UPDATE credentials_generation SET generation = generation + 1 WHERE id = 1;
END;

CREATE TRIGGER accounts_removed AFTER DELETE ON accounts
BEGIN
    UPDATE credentials_generation SET generation = generation + 1 WHERE id = 1;
END;
