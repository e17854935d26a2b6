-- SMPP mobile-originated messages name no message of ours: a reply is matched by the numbers (the newest
-- message from the number replied to, to the replying handset, in the last days). This finds the accounts
-- that sent from a number recently without reading the whole table.
CREATE INDEX messages_sender_recent ON messages (sender, create_time);
