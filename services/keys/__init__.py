"""The keys service: customer API keys (only a keyed hash is stored) and envelope encryption under per-account
key rings (data keys, rotation, retirement, destruction with signed receipts, root-key rotation).

`__main__` runs `app.py` (the only wiring) → `api.py` (gRPC ↔ domain, the principal → `Caller`) →
`service/` (`api_keys`, `key_rings` with its `kek_cache`, `audit_trail`, `ports`) → `domain/` (pure rules) and
`adapters/` (`store`: all SQL, `last_used`: Redis, `root_key`). `config.py` reads the settings and the root key;
`migrations/` holds the forward-only SQL."""
