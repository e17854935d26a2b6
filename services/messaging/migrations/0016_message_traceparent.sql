-- Issue 16: receipts and webhooks joined to the send's trace. Each message keeps the W3C traceparent of the
-- request that sent it (written with the row by the send's one insert statement: no extra round trip), so
-- the outbox relay republishes a retry with it (the worker's delivery continues or links to the send's
-- trace, not an unrelated one), and a receipt's span and its webhook's span link to it. A receipt webhook
-- job copies it from its message when the receipt creates the job. A traceparent is ids only (trace id,
-- span id, flags): no personal data. NULL = sent outside a trace (or before this migration). No default and no
-- CHECK, so adding the columns rewrites and scans nothing (instant on a large table); the writer bounds it.
ALTER TABLE messages ADD COLUMN traceparent text;
ALTER TABLE webhook_outbox ADD COLUMN traceparent text;
