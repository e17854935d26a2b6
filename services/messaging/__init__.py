"""Messaging: the ClickSend-compatible SMS API (send, price, history, receipts, replies, cancel, settings),
delivery through a Redis stream to a carrier, customer webhooks, and alert SMS to verified destinations.

- __main__, app: `python -m services.messaging [api|worker|notifier]`; app.py is the composition root
- config: settings; api: gRPC <-> use cases (MessagingServicer, NotificationServicer)
- service/: use cases, one module per resource, with their ports (service/ports.py)
- domain/: pure rules and values, one module per topic
- adapters/: store/ (all SQL), stream (Redis dispatch stream), limits (Redis limiter), carriers
  (simulator, HTTP), keys_client, audit_client, identity_client
- entrypoints/: dispatch_worker (stream consumer loops), callback_receiver (carrier callbacks over HTTPS)
- migrations/: forward-only SQL
"""
