-- custom_string is customer free text: sealed under the account's keys (svckit.envelope, associated data
-- {account, "sms.custom_string", message id}) with a keyed hash of the exact value for `q=custom_string:` and
-- cancel-by-custom-string (HMAC under the account's index key, as `to_hash`). New messages leave the text
-- column empty; receipts and replies read the message's ciphertext through their message id.
ALTER TABLE messages ADD COLUMN custom_ct bytea, ADD COLUMN custom_hash bytea;
CREATE INDEX messages_custom_hash ON messages (account_id, custom_hash) WHERE custom_hash IS NOT NULL;
