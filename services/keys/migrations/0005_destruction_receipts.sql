-- Account closure (issue 15): the signed destruction receipt stays with the key ring's tombstone, so identity can
-- fetch it (PurgeAccountKeys) and email it to the account's owner after the keys are gone; the same receipt is in
-- the audit log (keys.account_keys.destroyed). Neither reveals anything about the destroyed key material.
ALTER TABLE account_keys
    ADD COLUMN receipt                 bytea,
    ADD COLUMN receipt_signature       bytea,
    ADD COLUMN receipt_signing_key_id  text;
