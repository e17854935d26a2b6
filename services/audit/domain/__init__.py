"""The audit service's pure rules and records: no I/O, no transport (no grpc/asyncpg/redis/aiohttp/protobuf).

errors       domain errors and their UPPER_SNAKE reasons
events       incoming events and sealing them into leaves (sequence, per-account sequence)
merkle       the RFC 9162 Merkle tree, C2SP signed-note checkpoints and account heads (tools/audit_verify.py uses it)
checkpoints  stored checkpoints and which tree sizes may be asked for
integrity    what a full verification found, and how a differing leaf is named
filters      event filters (lists and staff search)
paging       page sizes and page tokens
siem         export/forwarding formats, CEF escaping, the export cursor
stats        the histogram the metrics endpoint reports
rules        alert rules, their validation and defaults, rule owners
evaluation   the alert engine's matching, windows and cooldowns
alerts       fired alerts, their deliveries, the alert text and the hourly message cap
delivery     what outbound deliveries share: the retry schedule and the webhook signing secret
forwarding   SIEM forwarding destinations
security_notices  security notifications: which events notify, the email templates, the new-address rule
"""
