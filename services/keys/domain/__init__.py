"""Keys rules, pure (no I/O): errors, the API-key format and rules (restrictions, paging), the root key,
account key rings, envelope encryption under an account's KEK, and signed destruction receipts."""
