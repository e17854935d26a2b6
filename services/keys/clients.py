"""The keys service calls only the audit service (svckit.audit.AuditClient, wired in app.py)."""
