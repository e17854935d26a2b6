-- Sender limits (issue 21): the sender ids (`from`) a key may send as - numbers in E.164 form, alpha tags as given.
-- Empty: any of the account's sender identities. Rolled keys copy them; keys minted with a limited key stay within.
ALTER TABLE api_keys ADD COLUMN send_senders text[] NOT NULL DEFAULT '{}';
