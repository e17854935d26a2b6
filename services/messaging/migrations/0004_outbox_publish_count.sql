-- How often the relay has published a message that nobody claimed: the next republication waits twice
-- as long each time (redeliver interval x 2^n, n capped), so a long backlog is not published again and
-- again while the workers catch up.
ALTER TABLE outbox ADD COLUMN publish_count integer NOT NULL DEFAULT 0;
