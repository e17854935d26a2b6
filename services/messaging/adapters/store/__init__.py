"""All SQL of the messaging service (and of its built-in carrier simulator's ledger); asyncpg is imported
only here and in app.py.

- pg: `PgMessageStore`, composed of messages (send transaction, outbox relay, idempotency, balance,
  history, cancelling, index keys; `sending` holds the send transaction's writes), receipts, inbound
  (replies, opt-outs), settings (+ retention, webhook jobs and log) and delivery (claims, results, receipts)
- rows: the pool and row <-> value conversions they share
- destinations: `PgDestinationStore`; simulator: `PgSimulatorStore`
"""
