-- Default senders (issue 21, ClickSend's /v3/senders/default-senders): the `from` a message with an empty `from`
-- is sent as, per account and optionally per user (subaccount_id; 0 = every user of the account), per destination
-- country, for SMS. services/messaging/domain/default_senders.py holds the rules.
--
-- The strategies (ordered senders) may name the customer's own verified phone numbers, so they are stored only
-- sealed under the account's key (AES-GCM, bound to the row id: svckit.envelope), like messages' `to`. Nothing
-- else here is personal data. Deleting a default deletes its row (the audit log keeps every change).
CREATE TABLE default_senders (
    id             uuid        PRIMARY KEY,
    seq            bigserial   NOT NULL UNIQUE,              -- list order and page cursor
    account_id     bigint      NOT NULL CHECK (account_id > 0),
    user_id        bigint      NOT NULL,                     -- who set it last
    subaccount_id  bigint      NOT NULL DEFAULT 0 CHECK (subaccount_id >= 0),
    country        text        NOT NULL CHECK (country ~ '^[A-Z]{2}$'),
    product        text        NOT NULL DEFAULT 'SMS' CHECK (product = 'SMS'),
    strategies_ct  bytea       NOT NULL,                     -- sealed JSON list of strategies
    create_time    timestamptz NOT NULL DEFAULT now(),
    update_time    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, subaccount_id, country, product)
);
CREATE INDEX default_senders_by_account ON default_senders (account_id, seq);
