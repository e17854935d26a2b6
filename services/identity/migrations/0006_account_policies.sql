-- An account's sign-in policy, set by its main user (issue 15): a second factor for every user, the networks
-- logins and sessions must come from, and an absolute session lifetime. No row: the defaults (none of it).
-- Networks are network facts, not personal data; the row is deleted with the account's other rows.
CREATE TABLE account_policies (
    account_id                bigint PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    require_second_factor     boolean NOT NULL DEFAULT false,
    allowed_networks          cidr[] NOT NULL DEFAULT '{}' CHECK (cardinality(allowed_networks) <= 20),
    session_lifetime_seconds  integer NOT NULL DEFAULT 0
        CHECK (session_lifetime_seconds BETWEEN 0 AND 2592000),
    update_time               timestamptz NOT NULL DEFAULT now(),
    updated_by                bigint NOT NULL
);

-- A policy change revokes the account's live sessions from outside its networks: find them without a scan.
CREATE INDEX sessions_account_live ON sessions (account_id) WHERE revoke_time IS NULL;
