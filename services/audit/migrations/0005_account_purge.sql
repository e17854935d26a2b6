-- Account closure (issue 15): a closed account's configuration and pending work go (alert rules and their hits,
-- alert deliveries, SIEM forwarding, security notices and their counters); its events, alert history and the
-- Merkle tree stay, append-only as before (they hold ids and network facts, no message content).
GRANT DELETE ON alert_deliveries, forwardings, security_notices TO sendsafe_audit_writer;
