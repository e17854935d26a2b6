-- Messaging owns: account credit, outbound messages (body and recipient encrypted at rest), the outbox
-- that makes "stored" imply "eventually queued", and the carrier simulator's own record of submissions.

-- Credit per account, created on first use with the configured trial credit. Never negative.
CREATE TABLE balances (
    account_id   bigint PRIMARY KEY,
    balance      numeric(20, 6) NOT NULL CHECK (balance >= 0),
    update_time  timestamptz NOT NULL DEFAULT now()
);

-- One outbound SMS. `body_ct` and `to_ct` are svckit.envelope blobs (AES-256-GCM, associated data
-- binding them to {account, "sms.body"|"sms.to", id}); no plaintext body or number is ever stored.
CREATE TABLE messages (
    id                 uuid PRIMARY KEY,
    seq                bigserial NOT NULL,
    account_id         bigint NOT NULL,
    user_id            bigint NOT NULL DEFAULT 0,
    api_username       text NOT NULL DEFAULT '',
    status             text NOT NULL CHECK (status IN
                           ('QUEUED', 'SCHEDULED', 'SENDING', 'SENT', 'DELIVERED', 'FAILED', 'CANCELLED')),
    body_ct            bytea NOT NULL,
    to_ct              bytea NOT NULL,
    sender             text NOT NULL DEFAULT '',
    country            text NOT NULL DEFAULT '',
    encoding           text NOT NULL,
    parts              integer NOT NULL CHECK (parts BETWEEN 1 AND 8),
    price              numeric(20, 6) NOT NULL CHECK (price >= 0),
    is_test            boolean NOT NULL DEFAULT false,
    custom_string      text NOT NULL DEFAULT '',
    source             text NOT NULL DEFAULT '',
    from_email         text NOT NULL DEFAULT '',
    list_id            text NOT NULL DEFAULT '',
    contact_id         text NOT NULL DEFAULT '',
    schedule_time      timestamptz,
    create_time        timestamptz NOT NULL DEFAULT now(),
    status_time        timestamptz NOT NULL DEFAULT now(),
    attempts           integer NOT NULL DEFAULT 0,
    next_attempt_time  timestamptz,
    carrier            text NOT NULL DEFAULT '',
    carrier_ref        text NOT NULL DEFAULT '',
    error_code         integer,
    sent_time          timestamptz,
    final_time         timestamptz
);
CREATE INDEX messages_account_seq ON messages (account_id, seq DESC);
CREATE INDEX messages_account_time ON messages (account_id, create_time);

-- Messages committed but not yet known to be on the dispatch stream. The API publishes right after
-- commit and deletes the row; the relay publishes whatever is still here once `available_time` passes
-- (a crash between commit and publish, a scheduled message falling due, a retry after backoff).
CREATE TABLE outbox (
    message_id      uuid PRIMARY KEY,
    available_time  timestamptz NOT NULL,
    create_time     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_available ON outbox (available_time);

-- The built-in carrier simulator's own ledger: what it accepted, how often, and its receipts.
CREATE TABLE carrier_sim_submissions (
    message_id         uuid PRIMARY KEY,
    carrier_ref        text NOT NULL,
    submit_count       integer NOT NULL DEFAULT 1,
    first_submit_time  timestamptz NOT NULL DEFAULT now(),
    last_submit_time   timestamptz NOT NULL DEFAULT now(),
    receipt_due_time   timestamptz NOT NULL,
    receipt_time       timestamptz
);
CREATE INDEX carrier_sim_receipts_due ON carrier_sim_submissions (receipt_due_time) WHERE receipt_time IS NULL;
