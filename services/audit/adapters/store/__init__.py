"""All SQL of the audit service: events.py (the log: events, Merkle nodes, tree head, checkpoints), alerts.py
(alert engine, rules, history, deliveries, forwarding), roles.py (the writer role connections work as),
security_notices.py (sign-in history, security notices)."""
