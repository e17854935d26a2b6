-- Account exports (issue 15): the job's metadata and the export file as sealed chunks.
-- The chunks live here rather than in a local file so that any messaging replica can write or serve an export
-- (the job may run on one pod and the download land on another) and backups, retention and deletion stay one
-- mechanism. Each chunk is AES-256-GCM under the export's own data key, which is stored only wrapped by the
-- keys service under the account's key; nothing here is readable without keys.
CREATE TABLE account_exports (
    id uuid PRIMARY KEY,
    account_id bigint NOT NULL,
    user_id bigint NOT NULL,
    state text NOT NULL DEFAULT 'PENDING'
        CHECK (state IN ('PENDING', 'RUNNING', 'READY', 'DOWNLOADED', 'EXPIRED', 'FAILED')),
    wrapped_key bytea,                         -- the export's data key, wrapped under the account's key
    counts jsonb NOT NULL DEFAULT '{}'::jsonb, -- records written per type
    bytes bigint NOT NULL DEFAULT 0,           -- JSON Lines bytes written (before sealing)
    chunks integer NOT NULL DEFAULT 0,
    failure_reason text NOT NULL DEFAULT '',
    claim_token uuid,                          -- the job writing it (a lease: claim_until)
    claim_until timestamptz,
    download_until timestamptz,                -- a download in progress holds it until then
    create_time timestamptz NOT NULL DEFAULT now(),
    complete_time timestamptz,
    expire_time timestamptz,
    download_time timestamptz
);
CREATE INDEX account_exports_by_account ON account_exports (account_id, create_time DESC);
CREATE INDEX account_exports_to_do ON account_exports (create_time) WHERE state IN ('PENDING', 'RUNNING');
CREATE INDEX account_exports_ready ON account_exports (expire_time) WHERE state = 'READY';

CREATE TABLE account_export_chunks (
    export_id uuid NOT NULL REFERENCES account_exports (id) ON DELETE CASCADE,
    number integer NOT NULL,
    sealed bytea NOT NULL,
    PRIMARY KEY (export_id, number)
);

-- The export reads an account's receipts and replies in keyset pages.
CREATE INDEX receipts_by_account ON receipts (account_id, id);
CREATE INDEX inbound_by_account ON inbound_messages (account_id, seq);
