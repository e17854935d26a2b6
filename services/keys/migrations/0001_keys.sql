-- Per-account key rings: which key-encryption-key (KEK) version new data keys use.
CREATE TABLE account_keys (
    account_id       bigint PRIMARY KEY CHECK (account_id > 0),
    current_version  integer NOT NULL CHECK (current_version > 0),
    create_time      timestamptz NOT NULL DEFAULT now()
);

-- Every KEK version of an account, wrapped by the root key named in root_key_id (AES-256-GCM, the account id
-- and version are its associated data). Versions are only ever added; old ones keep old data readable.
CREATE TABLE account_kek_versions (
    account_id   bigint NOT NULL REFERENCES account_keys (account_id),
    version      integer NOT NULL CHECK (version > 0),
    root_key_id  text NOT NULL,
    wrapped_kek  bytea NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, version)
);

-- Customer API keys. The secret is never stored: only HMAC-SHA256 of the key under a pepper derived from the
-- root key named by pepper_id.
CREATE TABLE api_keys (
    key_id          text PRIMARY KEY,
    account_id      bigint NOT NULL CHECK (account_id > 0),
    user_id         bigint NOT NULL CHECK (user_id > 0),
    name            text NOT NULL DEFAULT '',
    test_mode       boolean NOT NULL,
    scopes          text[] NOT NULL,
    secret_hmac     bytea NOT NULL CHECK (length(secret_hmac) = 32),
    pepper_id       text NOT NULL,
    create_time     timestamptz NOT NULL DEFAULT now(),
    expire_time     timestamptz,
    revoke_time     timestamptz,
    last_used_time  timestamptz
);
CREATE INDEX api_keys_account ON api_keys (account_id, create_time);
CREATE INDEX api_keys_user ON api_keys (user_id);
