"""Keys use cases: `api_keys` (ApiKeyService), `key_rings` (KeyRingService, with the shared `kek_cache`),
`audit_trail` (fail-closed evidence), and `ports` (what they need from the outside world)."""
