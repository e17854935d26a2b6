-- Messaging in depth: receipts, replies, opt-outs, idempotency keys, per-account settings (privacy and
-- webhooks), the webhook outbox and its delivery log, and an outbox that holds a message until it settles.

-- Per-account index key (32 random bytes, an svckit.envelope blob under the account's own key): keyed
-- hashes of phone numbers made with it let the database match a number without holding it.
CREATE TABLE account_keys (
    account_id    bigint PRIMARY KEY,
    index_key_ct  bytea NOT NULL,
    create_time   timestamptz NOT NULL DEFAULT now()
);

-- Keyed hash of the recipient (exact `to:` search, reply matching); NULL for rows sent before this.
-- A redacted body (retention) is NULL; the metadata stays.
ALTER TABLE messages ADD COLUMN to_hash bytea;
ALTER TABLE messages ALTER COLUMN body_ct DROP NOT NULL;
ALTER TABLE messages ADD COLUMN redact_time timestamptz;
CREATE INDEX messages_account_to ON messages (account_id, to_hash) WHERE to_hash IS NOT NULL;
CREATE INDEX messages_scheduled ON messages (account_id, custom_string) WHERE status = 'SCHEDULED';
CREATE INDEX messages_carrier_ref ON messages (carrier_ref) WHERE carrier_ref <> '';
CREATE INDEX messages_unredacted ON messages (account_id, create_time) WHERE body_ct IS NOT NULL;

-- The outbox now holds ONE row per message until the message settles (sent, failed, cancelled): after a
-- publish, a claim or a retry the row's time moves forward instead of the row going away, so a message
-- whose stream entry is lost (Redis restarted without persistence, a worker died holding it) is published
-- again when its time comes. Keep the newest row of any message that has several.
DELETE FROM outbox a USING outbox b WHERE a.message_id = b.message_id AND a.id < b.id;
DROP INDEX outbox_message;
CREATE UNIQUE INDEX outbox_message ON outbox (message_id);

-- Idempotency keys (24 h): a client retry with the same key gets the first answer (an envelope blob),
-- and nothing is stored, sent or charged again. The key itself is kept only as a SHA-256.
CREATE TABLE idempotency_keys (
    account_id    bigint NOT NULL,
    key_hash      bytea NOT NULL,
    request_hash  bytea NOT NULL,
    result_ct     bytea,
    create_time   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, key_hash)
);
CREATE INDEX idempotency_keys_age ON idempotency_keys (create_time);

-- Delivery receipts: one per message that reached a final state (plus test receipts), written in the
-- same transaction as the state change, so a receipt is never lost or applied twice.
CREATE TABLE receipts (
    id             bigserial PRIMARY KEY,
    account_id     bigint NOT NULL,
    user_id        bigint NOT NULL DEFAULT 0,
    message_id     uuid NOT NULL UNIQUE,
    status         text NOT NULL CHECK (status IN ('DELIVERED', 'FAILED')),
    error_code     integer,
    custom_string  text NOT NULL DEFAULT '',
    send_time      timestamptz NOT NULL,
    receipt_time   timestamptz NOT NULL DEFAULT now(),
    read_time      timestamptz,
    is_test        boolean NOT NULL DEFAULT false
);
CREATE INDEX receipts_unread ON receipts (account_id, id DESC) WHERE read_time IS NULL;

-- Replies. The sender's number and the body are envelope blobs; `from_hash` is the keyed hash.
CREATE TABLE inbound_messages (
    id                   uuid PRIMARY KEY,
    seq                  bigserial NOT NULL,
    account_id           bigint NOT NULL,
    original_message_id  uuid,
    from_ct              bytea NOT NULL,
    from_hash            bytea NOT NULL,
    to_number            text NOT NULL DEFAULT '',
    body_ct              bytea,
    custom_string        text NOT NULL DEFAULT '',
    carrier              text NOT NULL DEFAULT '',
    carrier_ref          text NOT NULL DEFAULT '',
    opt_action           text NOT NULL DEFAULT '',
    is_test              boolean NOT NULL DEFAULT false,
    create_time          timestamptz NOT NULL DEFAULT now(),
    read_time            timestamptz,
    redact_time          timestamptz
);
CREATE UNIQUE INDEX inbound_carrier_ref ON inbound_messages (carrier, carrier_ref) WHERE carrier_ref <> '';
CREATE INDEX inbound_unread ON inbound_messages (account_id, seq DESC) WHERE read_time IS NULL;
CREATE INDEX inbound_original ON inbound_messages (original_message_id, seq);

-- Numbers that replied STOP (keyed hashes only). Sends to them are refused per message.
CREATE TABLE opt_outs (
    account_id   bigint NOT NULL,
    number_hash  bytea NOT NULL,
    source       text NOT NULL DEFAULT 'inbound',
    create_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, number_hash)
);

-- Per-account privacy and webhook settings.
CREATE TABLE account_settings (
    account_id            bigint PRIMARY KEY,
    receipt_webhook_url   text NOT NULL DEFAULT '',
    inbound_webhook_url   text NOT NULL DEFAULT '',
    webhook_secret_ct     bytea,
    body_retention_days   integer NOT NULL DEFAULT 0 CHECK (body_retention_days BETWEEN 0 AND 3650),
    staff_content_access  boolean NOT NULL DEFAULT false,
    update_time           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX account_settings_retention ON account_settings (account_id) WHERE body_retention_days > 0;

-- Webhook notifications waiting to be delivered (written with the receipt or reply they announce).
-- `url` is empty for the account's configured URL, set for a test hook's one-off URL.
CREATE TABLE webhook_outbox (
    id              bigserial PRIMARY KEY,
    account_id      bigint NOT NULL,
    event           text NOT NULL,
    ref             text NOT NULL,
    url             text NOT NULL DEFAULT '',
    attempts        integer NOT NULL DEFAULT 0,
    available_time  timestamptz NOT NULL DEFAULT now(),
    create_time     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (available_time);

-- Every webhook attempt: where to (host only), the outcome, never the payload.
CREATE TABLE webhook_deliveries (
    id           bigserial PRIMARY KEY,
    account_id   bigint NOT NULL,
    event        text NOT NULL,
    ref          text NOT NULL,
    host         text NOT NULL,
    attempt      integer NOT NULL,
    outcome      text NOT NULL,
    http_status  integer NOT NULL DEFAULT 0,
    error        text NOT NULL DEFAULT '',
    duration_ms  integer NOT NULL DEFAULT 0,
    create_time  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_account ON webhook_deliveries (account_id, id DESC);
