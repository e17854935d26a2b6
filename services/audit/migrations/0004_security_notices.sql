-- Security notifications to an account's owners (issue 14): one row per notifying event, written by the
-- alert engine's pass over new events (in its transaction), then emailed through messaging and retried.
CREATE TABLE security_notices (
    id                bigserial PRIMARY KEY,
    account_id        bigint      NOT NULL,
    kind              text        NOT NULL,
    event_id          text        NOT NULL,
    event_sequence    bigint      NOT NULL UNIQUE,  -- one notice per event, however often the engine restarts
    event_time        timestamptz NOT NULL,
    subject           text        NOT NULL,
    body              text        NOT NULL,
    status            smallint    NOT NULL DEFAULT 1,  -- 1 pending, 2 sent, 3 failed, 4 not sent (no email)
    attempts          integer     NOT NULL DEFAULT 0,
    last_error        text        NOT NULL DEFAULT '',
    next_attempt_time timestamptz NOT NULL DEFAULT now(),
    create_time       timestamptz NOT NULL DEFAULT now(),
    update_time       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX security_notices_account ON security_notices (account_id, id);
CREATE INDEX security_notices_due ON security_notices (next_attempt_time) WHERE status = 1;

-- "A sign-in from an address not seen before" looks up the user's earlier successful sign-ins.
CREATE INDEX events_sign_ins ON events (account_id, actor_id, sequence) INCLUDE (event_time, client_inet)
    WHERE action = 'auth.login' AND outcome = 1;

GRANT SELECT, INSERT, UPDATE ON security_notices TO sendsafe_audit_writer;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO sendsafe_audit_writer;
