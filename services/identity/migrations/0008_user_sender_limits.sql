-- Sender limits (issue 21): the sender ids (`from`) a user may send as, set by a user manager under the delegation
-- rule and inherited by the users it creates. A JSON array sealed under the account's data keys (associated data
-- {account, "identity.user.allowed_senders", user id}): it may hold the customer's own phone numbers.
-- NULL: no limit (any of the account's sender identities).
ALTER TABLE users ADD COLUMN allowed_senders_ct bytea;
