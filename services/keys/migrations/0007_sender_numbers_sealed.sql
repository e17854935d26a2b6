-- The numbers of a key's sender limit may be the customer's own phone numbers (issue 21): they are kept sealed under
-- the account's key (a JSON array, context {record: keys.api_key.allowed_senders, key_id}); send_senders keeps the
-- alpha tags only. NULL: the limit holds no number.
ALTER TABLE api_keys ADD COLUMN send_sender_numbers_ct bytea;
