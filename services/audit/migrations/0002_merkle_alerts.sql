-- The log becomes an RFC 9162 Merkle tree with signed checkpoints; events gain the columns the query API
-- filters on and a per-account sequence; alert rules, alert history and SIEM forwarding arrive; and the
-- service runs as a role that can only INSERT and SELECT the evidence (the trigger stays as a second lock).

ALTER TABLE events
    ADD COLUMN actor_type         text   NOT NULL DEFAULT '',
    ADD COLUMN subject_account_id bigint NOT NULL DEFAULT 0,
    ADD COLUMN account_sequence   bigint NOT NULL DEFAULT 0,
    ADD COLUMN client_inet        inet,
    ADD COLUMN resource_type      text   NOT NULL DEFAULT '',
    ADD COLUMN resource_id        text   NOT NULL DEFAULT '',
    ADD COLUMN request_id         text   NOT NULL DEFAULT '';
-- `account_id` is now the account whose feed the event belongs to (the subject's, else the actor's);
-- rows written before this migration had no subject, so theirs is the actor's as before.
COMMENT ON COLUMN events.account_id IS 'feed account: subject_account_id, else the actor''s account';
COMMENT ON COLUMN events.hash IS 'RFC 9162 leaf hash of body (hash-chain link for rows before 0002)';
COMMENT ON COLUMN events.prev_hash IS 'empty since 0002 (hash-chain link before)';
CREATE INDEX events_request ON events (request_id) WHERE request_id <> '';

-- Every complete perfect subtree: level 0 are the leaf hashes (leaf index = sequence - 1).
CREATE TABLE merkle_nodes (
    level  smallint NOT NULL,
    idx    bigint   NOT NULL,
    hash   bytea    NOT NULL,
    PRIMARY KEY (level, idx)
);

-- The tree's current size, its frontier (perfect-node hashes, largest first) and root. The one row is
-- locked by every append, which serializes sequence numbers and commits them in order.
CREATE TABLE tree_head (
    id          smallint PRIMARY KEY CHECK (id = 1),
    size        bigint   NOT NULL,
    frontier    bytea[]  NOT NULL,
    root        bytea    NOT NULL,
    update_time timestamptz NOT NULL DEFAULT now()
);
INSERT INTO tree_head (id, size, frontier, root) VALUES (1, 0, '{}', sha256(''::bytea));
DROP TABLE chain_head;

-- How many events each feed holds (the next account_sequence is count + 1).
CREATE TABLE account_heads (
    account_id bigint PRIMARY KEY,
    count      bigint NOT NULL
);

-- Signed checkpoints (C2SP signed notes).
CREATE TABLE checkpoints (
    tree_size       bigint PRIMARY KEY,
    root_hash       bytea  NOT NULL,
    checkpoint_time timestamptz NOT NULL,
    key_id          text   NOT NULL,
    note            text   NOT NULL
);

CREATE TRIGGER merkle_nodes_no_update_delete BEFORE UPDATE OR DELETE ON merkle_nodes
    FOR EACH ROW EXECUTE FUNCTION events_append_only();
CREATE TRIGGER merkle_nodes_no_truncate BEFORE TRUNCATE ON merkle_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION events_append_only();
CREATE TRIGGER checkpoints_no_update_delete BEFORE UPDATE OR DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION events_append_only();
CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION events_append_only();

-- Alerts -----------------------------------------------------------------------------------------------

-- Accounts the alert engine has met: default rules are created once, and the webhook secret's version.
CREATE TABLE alert_accounts (
    account_id     bigint  PRIMARY KEY,
    secret_version integer NOT NULL DEFAULT 1,
    create_time    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE alert_rules (
    id             bigserial PRIMARY KEY,
    account_id     bigint  NOT NULL,
    spec           jsonb   NOT NULL,
    is_default     boolean NOT NULL DEFAULT false,
    last_fire_time timestamptz,
    create_time    timestamptz NOT NULL DEFAULT now(),
    update_time    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_rules_account ON alert_rules (account_id);

-- Matches of threshold rules still inside some window (pruned as windows pass).
CREATE TABLE alert_hits (
    rule_id    bigint NOT NULL,
    event_time timestamptz NOT NULL,
    amount     bigint NOT NULL,
    sequence   bigint NOT NULL
);
CREATE INDEX alert_hits_rule_time ON alert_hits (rule_id, event_time);

-- Alert history: append-only like the log; deliveries carry the changing status.
CREATE TABLE alerts (
    id             bigserial PRIMARY KEY,
    account_id     bigint NOT NULL,
    rule_id        bigint NOT NULL,
    rule_name      text   NOT NULL,
    fire_time      timestamptz NOT NULL,
    event_id       text   NOT NULL,
    event_sequence bigint NOT NULL,
    action         text   NOT NULL,
    match_count    bigint NOT NULL,
    window_seconds integer NOT NULL
);
CREATE INDEX alerts_account ON alerts (account_id, id);
CREATE TRIGGER alerts_no_update_delete BEFORE UPDATE OR DELETE ON alerts
    FOR EACH ROW EXECUTE FUNCTION events_append_only();

CREATE TABLE alert_deliveries (
    id                bigserial PRIMARY KEY,
    alert_id          bigint   NOT NULL REFERENCES alerts (id),
    account_id        bigint   NOT NULL,
    channel           text     NOT NULL,
    target            text     NOT NULL,
    status            smallint NOT NULL DEFAULT 1,  -- 1 pending, 2 delivered, 3 failed
    attempts          integer  NOT NULL DEFAULT 0,
    last_error        text     NOT NULL DEFAULT '',
    next_attempt_time timestamptz NOT NULL DEFAULT now(),
    update_time       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_deliveries_alert ON alert_deliveries (alert_id);
CREATE INDEX alert_deliveries_due ON alert_deliveries (next_attempt_time) WHERE status = 1;

-- Consumers of the log that must see every event once, in order (the alert engine).
CREATE TABLE processor_cursors (
    name     text   PRIMARY KEY,
    sequence bigint NOT NULL
);
-- Events already stored are history: alerts start with the next one.
INSERT INTO processor_cursors (name, sequence) SELECT 'alerts', coalesce(max(sequence), 0) FROM events;

-- SIEM forwarding, one destination per account, with its delivery cursor (a log sequence).
CREATE TABLE forwardings (
    account_id           bigint   PRIMARY KEY,
    enabled              boolean  NOT NULL,
    kind                 smallint NOT NULL,
    url                  text     NOT NULL,
    format               smallint NOT NULL,
    delivered_sequence   bigint   NOT NULL,
    last_error           text     NOT NULL DEFAULT '',
    consecutive_failures integer  NOT NULL DEFAULT 0,
    next_attempt_time    timestamptz NOT NULL DEFAULT now(),
    last_delivery_time   timestamptz,
    update_time          timestamptz NOT NULL DEFAULT now()
);

-- The role the service works as -------------------------------------------------------------------------
-- Roles are cluster-wide: create it once, tolerate a concurrent creator.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'sendsafe_audit_writer') THEN
        CREATE ROLE sendsafe_audit_writer NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

GRANT USAGE ON SCHEMA public TO sendsafe_audit_writer;
GRANT SELECT, INSERT ON events, merkle_nodes, checkpoints, alerts TO sendsafe_audit_writer;
GRANT SELECT, UPDATE ON tree_head, processor_cursors TO sendsafe_audit_writer;
GRANT SELECT, INSERT, UPDATE ON account_heads, alert_accounts, alert_deliveries, forwardings TO sendsafe_audit_writer;
GRANT SELECT, INSERT, UPDATE, DELETE ON alert_rules, alert_hits TO sendsafe_audit_writer;
GRANT SELECT ON schema_migrations TO sendsafe_audit_writer;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO sendsafe_audit_writer;
