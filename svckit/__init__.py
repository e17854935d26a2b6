"""svckit: the small shared toolkit every SendSafe service and the gateway are built on.

config (typed settings from the environment), tls (mTLS credentials and caller identity),
server (grpc.aio bootstrap with authz, error mapping, health, graceful shutdown), errors (the one
error table), telemetry (tracing and JSON logs), db (asyncpg pool and migrations), cache (Redis),
audit (batched audit client), rpc (outbound channels), metrics (Prometheus instruments, scrape-time
collectors and the plaintext /metrics of every process).
"""
