-- Users' personal data is envelope-encrypted under the account's keys (svckit.envelope, associated data
-- {account, "identity.user.<field>", user id}): one ciphertext column per field. New rows write only these;
-- the plaintext columns become nullable and are emptied by identity's backfill at startup
-- (services/identity/adapters/store/personal.py), and a later migration drops them once every deployment
-- has run it. A NULL notes_ct means "no notes" (ClickSend's null); other fields are always sealed.
ALTER TABLE users
    ADD COLUMN email_ct        bytea,
    ADD COLUMN phone_number_ct bytea,
    ADD COLUMN first_name_ct   bytea,
    ADD COLUMN last_name_ct    bytea,
    ADD COLUMN notes_ct        bytea,
    ALTER COLUMN email DROP NOT NULL,
    ALTER COLUMN phone_number DROP NOT NULL,
    ALTER COLUMN phone_number DROP DEFAULT,
    ALTER COLUMN first_name DROP NOT NULL,
    ALTER COLUMN first_name DROP DEFAULT,
    ALTER COLUMN last_name DROP NOT NULL,
    ALTER COLUMN last_name DROP DEFAULT;
-- The backfill finds what is left to seal without a scan of the whole table.
CREATE INDEX users_personal_in_clear ON users (id)
    WHERE email IS NOT NULL OR phone_number IS NOT NULL OR first_name IS NOT NULL OR last_name IS NOT NULL
       OR notes IS NOT NULL;
