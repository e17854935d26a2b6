-- Alert notifications are sends by the alert rule's owner (issue 12, "Notifications are sends").
-- `cause` marks what a message was sent for when the platform sent it on the customer's behalf
-- ('alert_delivery'): the delivery events it causes then carry that cause, and alert rules skip them.
ALTER TABLE messages ADD COLUMN cause text NOT NULL DEFAULT '';

-- Destinations (numbers, later addresses) an account verified for its alert notifications: a code was
-- sent to the destination and entered back. The number itself is not kept: its keyed hash (the account's
-- number index) matches it, and a masked form is shown.
CREATE TABLE notification_destinations (
    id               uuid PRIMARY KEY,
    account_id       bigint   NOT NULL,
    channel          smallint NOT NULL,
    to_hash          bytea    NOT NULL,
    to_masked        text     NOT NULL,
    code_hash        bytea,
    code_expire_time timestamptz,
    attempts         integer  NOT NULL DEFAULT 0,
    verify_time      timestamptz,
    create_user_id   bigint   NOT NULL,
    create_time      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, channel, to_hash)
);

-- Every verification code sent, for the per-account hourly limit.
CREATE TABLE destination_codes (
    account_id bigint      NOT NULL,
    send_time  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX destination_codes_account ON destination_codes (account_id, send_time);
