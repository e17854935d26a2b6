-- Retention de-identifies numbers too: past an account's body retention a message keeps its country (the
-- `country` column) but loses its recipient (to_ct) and the recipient's keyed hash (to_hash); a reply loses
-- its sender (from_ct, from_hash). History then shows only the country calling code ("+61").
ALTER TABLE messages ALTER COLUMN to_ct DROP NOT NULL;
ALTER TABLE inbound_messages ALTER COLUMN from_ct DROP NOT NULL, ALTER COLUMN from_hash DROP NOT NULL;
