-- The append-only event log. Each row commits to the previous one (hash chain); rows can never be
-- changed or removed: a trigger refuses UPDATE/DELETE/TRUNCATE, even for the owning role.
CREATE TABLE events (
    sequence     bigint PRIMARY KEY,
    event_id     text NOT NULL UNIQUE,
    event_time   timestamptz NOT NULL,
    account_id   bigint NOT NULL DEFAULT 0,
    actor_id     text NOT NULL DEFAULT '',
    action       text NOT NULL,
    outcome      smallint NOT NULL,
    trace_id     text NOT NULL DEFAULT '',
    body         bytea NOT NULL,
    prev_hash    bytea NOT NULL,
    hash         bytea NOT NULL,
    insert_time  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_account_sequence ON events (account_id, sequence);
CREATE INDEX events_trace ON events (trace_id) WHERE trace_id <> '';

CREATE TABLE chain_head (
    id        smallint PRIMARY KEY CHECK (id = 1),
    sequence  bigint NOT NULL,
    hash      bytea NOT NULL
);
INSERT INTO chain_head (id, sequence, hash) VALUES (1, 0, decode(repeat('00', 32), 'hex'));

CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only' USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER events_no_update_delete BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_append_only();
