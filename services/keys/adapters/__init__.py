"""What the keys service talks to: PostgreSQL (`store`), Redis (`last_used`), the root key (`root_key`).
The audit log and key notices are reached through svckit (AuditClient, keyevents.Publisher/Subscriber)."""
