-- Messages sent for immediate delivery are recorded in the outbox as ONE row per send transaction (the
-- ids of every message it queued) instead of one row per message. A 100-message send used to add 100
-- outbox rows and, once published, update all 100; it now adds one row and updates one. The row keeps
-- its meaning: until every message in it has settled, the relay publishes the unsettled ones again when
-- the row's time comes (a lost stream entry, a dead worker); a row whose messages have all settled is
-- deleted by the relay when it next comes due. Scheduled messages and retries keep their per-message
-- `outbox` rows (each has a time of its own).
CREATE TABLE outbox_batches (
    id bigserial PRIMARY KEY,
    message_ids uuid[] NOT NULL,
    available_time timestamptz NOT NULL,
    publish_count integer NOT NULL DEFAULT 0
);
CREATE INDEX outbox_batches_available ON outbox_batches (available_time);
