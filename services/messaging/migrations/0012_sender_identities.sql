-- Sender identities (issue 21): the numbers an account may send from, besides its approved alpha tags (0013).
-- services/messaging/domain/senders.py holds the rules (normal forms, states, codes).
--
-- number_inventory: the platform's dedicated numbers, loaded by the operator (python -m tools.numbers load).
-- They are the platform's, not personal data: stored in clear. holder_account_id is who holds one now (NULL: for
-- sale); not named account_id, so closing an account gives its numbers back (closures.py) instead of deleting them.
CREATE TABLE number_inventory (
    number        text          PRIMARY KEY CHECK (number ~ '^\+[1-9][0-9]{5,14}$'),  -- E.164
    country       text          NOT NULL CHECK (country ~ '^[A-Z]{2}$'),
    capabilities  text[]        NOT NULL DEFAULT '{sms}',
    price_setup   numeric(12,4) NOT NULL DEFAULT 0 CHECK (price_setup >= 0),
    price_monthly numeric(12,4) NOT NULL DEFAULT 0 CHECK (price_monthly >= 0),
    holder_account_id bigint    CHECK (holder_account_id > 0),
    assign_time   timestamptz,
    load_time     timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX number_inventory_available ON number_inventory (country, number) WHERE holder_account_id IS NULL;

-- sender_identities: an account's numbers. A dedicated number keeps its value in clear (`value`); a verified
-- number is the customer's own phone number (personal data): only sealed under the account's key (`value_ct`,
-- AAD {account, "sender.number", id}) and masked. Both carry `value_hash`, a PLATFORM-wide keyed hash of the
-- E.164 number (HMAC-SHA256 under MESSAGING_SENDER_INDEX_KEY, see README "Sender identities"), so one number is
-- held by at most one account at once (the unique index) and a reply to it finds its account, without any
-- account's key and without the number in clear.
CREATE TABLE sender_identities (
    id            uuid        PRIMARY KEY,
    seq           bigserial   NOT NULL UNIQUE,
    account_id    bigint      NOT NULL CHECK (account_id > 0),
    user_id       bigint      NOT NULL,                      -- who bought or verified it
    kind          text        NOT NULL CHECK (kind IN ('dedicated_number', 'verified_number')),
    state         text        NOT NULL CHECK (state IN ('pending', 'active', 'released')),
    value         text,                                      -- dedicated numbers only
    value_ct      bytea,                                     -- verified numbers only
    value_hash    bytea       NOT NULL,
    value_masked  text        NOT NULL,
    country       text        NOT NULL DEFAULT '',
    label         text        NOT NULL DEFAULT '',
    create_time   timestamptz NOT NULL DEFAULT now(),
    activate_time timestamptz,
    release_time  timestamptz,
    CHECK ((kind = 'dedicated_number') = (value IS NOT NULL)),
    CHECK ((kind = 'verified_number') = (value_ct IS NOT NULL))
);
CREATE UNIQUE INDEX sender_identities_held ON sender_identities (value_hash) WHERE state = 'active';
CREATE INDEX sender_identities_active ON sender_identities (account_id) INCLUDE (value_hash) WHERE state = 'active';
CREATE INDEX sender_identities_by_account ON sender_identities (account_id, seq);
-- One open verification per number and account (a second start reuses it with a new code).
CREATE UNIQUE INDEX sender_identities_pending ON sender_identities (account_id, value_hash) WHERE state = 'pending';

-- number_verifications: the codes sent to a number being verified (a send by the customer, code kept only as a
-- keyed hash, as notification destinations' are). Rows are kept for an hour's rate limits (per account and per
-- number across accounts), then deleted by the next start.
CREATE TABLE number_verifications (
    id           uuid        PRIMARY KEY,
    identity_id  uuid        NOT NULL REFERENCES sender_identities (id) ON DELETE CASCADE,
    account_id   bigint      NOT NULL,
    value_hash   bytea       NOT NULL,
    code_hash    bytea,                                      -- NULL once used, or if it could not be sent
    attempts     integer     NOT NULL DEFAULT 0,
    expire_time  timestamptz NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now(),
    verify_time  timestamptz
);
CREATE INDEX number_verifications_account ON number_verifications (account_id, create_time);
CREATE INDEX number_verifications_number ON number_verifications (value_hash, create_time);

-- The platform's sender index key when MESSAGING_SENDER_INDEX_KEY is not set (development only: a key kept
-- beside the hashes it makes lets whoever copies the database test guessed numbers; production sets the key).
CREATE TABLE sender_index_key (
    id   boolean PRIMARY KEY DEFAULT true CHECK (id),
    key  bytea   NOT NULL CHECK (length(key) = 32)
);
