"""Everything the audit service says to the outside world (use cases see these only through service/ports.py).

store/             all SQL (PostgreSQL through asyncpg): events.py (the log), alerts.py (alerts and forwarding),
                   roles.py (the restricted writer role every connection switches to),
                   security_notices.py (sign-in history, security notices and their deliveries)
messaging_client   messaging's NotificationService: alert SMS/email sent as the rule's owner, verified destinations,
                   security notices emailed to the account's owners
webhooks           customers' HTTPS endpoints (alert webhooks, SIEM forwarding) through svckit.webhooks
prometheus         the log's figures for the process's /metrics (METRICS_LISTEN, svckit.metrics)
"""
