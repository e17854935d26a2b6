-- Account closure (issue 15). An account is open, closing (its keys pending destruction; the main user may cancel)
-- or closed (keys destroyed, every row of it deleted but this one, reduced to its id, state, times and the SHA-256 of
-- the signed destruction receipt). A closure in progress has a row in account_closures: the steps already done (the
-- sweep retries the others), and the owner's email address sealed under the platform account's key (the account's
-- own keys fail during the window and are gone after it), erased with the row once the receipt was emailed.
ALTER TABLE accounts
    ADD COLUMN state text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'closing', 'closed')),
    ADD COLUMN close_time timestamptz,
    ADD COLUMN destruction_receipt_sha256 text,
    ALTER COLUMN name DROP NOT NULL,
    ALTER COLUMN country DROP NOT NULL,
    ALTER COLUMN timezone DROP NOT NULL;

CREATE TABLE account_closures (
    account_id      bigint PRIMARY KEY REFERENCES accounts (id),
    requested_by    text NOT NULL,
    request_time    timestamptz NOT NULL DEFAULT now(),
    destroy_time    timestamptz NOT NULL,
    steps_done      text[] NOT NULL DEFAULT '{}',
    owner_email_ct  bytea,
    update_time     timestamptz NOT NULL DEFAULT now()
);
