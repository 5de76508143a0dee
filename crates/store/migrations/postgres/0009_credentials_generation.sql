-- sealmail schema version 9 (PostgreSQL): a store-wide credentials generation, bumped by
-- triggers on every password change and account removal, from whichever node or tool.
CREATE TABLE credentials_generation (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    generation BIGINT NOT NULL
);
INSERT INTO credentials_generation (id, generation) VALUES (1, 0);

CREATE FUNCTION bump_credentials_generation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE credentials_generation SET generation = generation + 1 WHERE id = 1;
    RETURN NULL;
END;
$$;

CREATE TRIGGER accounts_password_changed AFTER UPDATE OF password_hash ON accounts
    FOR EACH ROW EXECUTE FUNCTION bump_credentials_generation();

CREATE TRIGGER accounts_removed AFTER DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION bump_credentials_generation();
