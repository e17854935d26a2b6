-- Send limits belong to a key's lineage (issue 12): a rolled successor, and a key minted with a limited API key,
-- draw from the counters of the lineage's first key, so rolling or minting never resets what was sent.
-- NULL: the key starts its own lineage (its counters are its own).
ALTER TABLE api_keys ADD COLUMN limits_root_key_id text;
