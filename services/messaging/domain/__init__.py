"""Messaging domain rules: pure functions and values, no I/O (only the standard library, `phonenumbers` and
`svckit.errors`/`svckit.times`/`svckit.paging`, themselves transport-free).

- errors: per-message status codes and the shared domain errors
- encoding: GSM 03.38 / UCS-2 encoding, part counting and splitting
- recipients: E.164 recipients (and ClickSend's test numbers), sender ids, schedules
- outbound: a whole outbound message and a whole send request, validated
- pricing: price table, credit allocation, currencies, price and balance formats
- statuses: the message state machine and ClickSend's status vocabulary
- records: plain values passed between service, store, queue and carriers; message ids
- history: history search, sort and pages
- privacy: blind indexes of numbers, masking, body retention
- optouts: STOP/START keywords
- idempotency: idempotency keys and the stored answer
- limits: rate limits, the key's send limits, destination-prefix velocity
- delivery: claim/submit/retry rules, receipts, carrier callback signatures
- receipts: receipts and replies as read back
- settings, webhooks: per-account settings; customer webhook jobs, log and payloads
- destinations: verified notification destinations and the alert owner's re-check
"""
