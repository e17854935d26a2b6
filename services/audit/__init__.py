"""The audit service: the append-only event log as an RFC 9162 Merkle tree with signed checkpoints (appends,
lists, staff search, proofs, verification, export), alert rules and their delivery, and SIEM forwarding.

__main__.py  the gRPC server process (python -m services.audit)
config.py    settings; app.py the composition root (builds the adapters, hands them to the use cases,
             starts the background loops and the /metrics endpoint)
api.py       gRPC <-> domain mapping (AuditServicer); the caller's principal becomes an account id / rule owner
service/     use cases (log: appending, reading, proofs, verification; alerts; forwarding) and their ports
domain/      pure rules and records (events, merkle, rules, evaluation, alerts, siem, ...)
adapters/    PostgreSQL (store/), messaging, customers' webhooks, Prometheus
migrations/  forward-only SQL
"""
