-- Alert messages (SMS/email) sent per account and clock hour: an account's alerts stop at a cap
-- (AUDIT_ALERT_MESSAGES_PER_HOUR) and the first one held back records one audit event for that hour.
CREATE TABLE alert_message_counts (
    account_id bigint      NOT NULL,
    hour       timestamptz NOT NULL,
    sent       integer     NOT NULL,
    PRIMARY KEY (account_id, hour)
);
GRANT SELECT, INSERT, UPDATE, DELETE ON alert_message_counts TO sendsafe_audit_writer;
