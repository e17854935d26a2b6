"""Messaging use cases: one module per resource, one transaction per use case. They reach the outside world
only through `ports` (never adapters, api or app).

- ports: the Protocols adapters implement (stores, queue, cipher, limiter, carrier, webhook sender, owners)
- messaging: `MessagingService`, the API process's use cases, composed of
  sending (send, price, cancel, outbox relay), history, receipts, inbound, settings (+ webhook secret),
  over `common` (shared ports and options)
- replies, index_keys, ids: storing/reading replies, each account's index key, message ids (API and worker)
- delivery: `DeliveryService`, the dispatch worker's (deliver, receipts, replies from the carrier)
- webhooks: `WebhookService`, customer webhooks (worker or notifier)
- notifications: alert SMS and verified notification destinations
"""
