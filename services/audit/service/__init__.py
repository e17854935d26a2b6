"""The audit service's use cases. They import the domain, `ports` (what they need from outside) and svckit,
never an adapter, the api or the app.

ports         the Protocols the adapters implement (stores, webhook poster, notifier, recorder), DeliveryError
log           LogService: the log's use cases, composed of the four modules below
appending     append (checked, group-committed)
reading       lists, staff search (recorded first) and export
proofs        checkpoints, inclusion and consistency proofs
verification  full verification of the stored log against its signed checkpoints
alerts        AlertService: alert rules, alert history, webhook secret, the alert engine and notification delivery
security_notices  SecurityNotices: security notifications to the account's owners (recorded by the alert
              engine's pass, emailed through messaging, retried, listed)
forwarding    ForwardingService: SIEM forwarding destinations and pushing events to them
formats       events between their stored bytes and what leaves the service (protobuf, JSON, JSONL, CEF, payloads)
"""
