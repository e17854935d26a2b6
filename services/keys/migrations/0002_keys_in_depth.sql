-- API keys: allow-lists, send limits, last-used address, roll links (issue 4).
ALTER TABLE api_keys
    ADD COLUMN allowed_cidrs      text[] NOT NULL DEFAULT '{}',
    ADD COLUMN send_per_minute    integer NOT NULL DEFAULT 0 CHECK (send_per_minute >= 0),
    ADD COLUMN send_per_day       integer NOT NULL DEFAULT 0 CHECK (send_per_day >= 0),
    ADD COLUMN send_countries     text[] NOT NULL DEFAULT '{}',
    ADD COLUMN last_used_address  text,
    ADD COLUMN rolled_from        text,
    ADD COLUMN rolled_to          text,
    ADD COLUMN created_by         text;
-- The owner's keys, newest first (ListApiKeys pages on create_time, key_id).
CREATE INDEX api_keys_owner ON api_keys (account_id, user_id, create_time DESC, key_id DESC);
CREATE INDEX api_keys_pepper ON api_keys (pepper_id);

-- Key rings: retirement, rotation policy and the destruction lifecycle.
ALTER TABLE account_keys
    ADD COLUMN min_decryption_version      integer NOT NULL DEFAULT 1 CHECK (min_decryption_version > 0),
    ADD COLUMN rotation_period_seconds     bigint NOT NULL DEFAULT 0 CHECK (rotation_period_seconds >= 0),
    ADD COLUMN state                       text NOT NULL DEFAULT 'enabled'
        CHECK (state IN ('enabled', 'pending_destruction', 'destroyed')),
    -- pending_destruction: when it will happen; destroyed: when it happened.
    ADD COLUMN destroy_time                timestamptz,
    ADD COLUMN destruction_scheduled_time  timestamptz,
    ADD COLUMN destruction_requested_by    text,
    ADD CONSTRAINT min_not_above_current CHECK (min_decryption_version <= current_version),
    ADD CONSTRAINT destroy_time_when_needed CHECK ((state = 'enabled') = (destroy_time IS NULL));
CREATE INDEX account_keys_pending ON account_keys (destroy_time) WHERE state = 'pending_destruction';

-- A destroyed version keeps its row (the receipt names it) but not its wrapped key.
ALTER TABLE account_kek_versions
    ALTER COLUMN wrapped_kek DROP NOT NULL,
    ADD COLUMN destroy_time timestamptz,
    ADD CONSTRAINT destroyed_has_no_key CHECK ((wrapped_kek IS NULL) = (destroy_time IS NOT NULL));
-- The root-key rewrap job walks what an old root key still wraps.
CREATE INDEX account_kek_versions_root ON account_kek_versions (root_key_id, account_id, version)
    WHERE wrapped_kek IS NOT NULL;

-- Public halves of the keys that have signed destruction receipts (kept forever: old receipts stay verifiable).
CREATE TABLE receipt_signing_keys (
    key_id       text PRIMARY KEY,
    public_key   bytea NOT NULL CHECK (length(public_key) = 32),
    create_time  timestamptz NOT NULL DEFAULT now()
);
