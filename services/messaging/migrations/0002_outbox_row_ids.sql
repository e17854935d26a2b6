-- An outbox row is one publication of a message, not the message: the row the API publishes right after
-- commit and a retry row the worker adds after a temporary failure can exist side by side, and deleting
-- the first (once published) must never delete the second. Rows get their own id; deletes name the row.
ALTER TABLE outbox DROP CONSTRAINT outbox_pkey;
ALTER TABLE outbox ADD COLUMN id bigserial PRIMARY KEY;
CREATE INDEX outbox_message ON outbox (message_id);
