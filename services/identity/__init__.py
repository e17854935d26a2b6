"""Identity: accounts and their users (ClickSend sub-accounts, whose access flags grant permissions), passwords,
sessions, second factors, login throttling, and the staff directory.

- `__main__.py` the gRPC server process; `config.py` settings; `app.py` the composition root.
- `api.py` gRPC <-> domain for IdentityService, AuthService and StaffService; maps the principal to a `Caller`.
- `service/` use cases: `accounts.py` (accounts, users, sub-accounts), `sessions.py` (login, sessions, step-up),
  `factors.py` (one's TOTP, recovery codes, password), `staff.py` (staff directory, audited customer access);
  `ports.py` what they need from outside.
- `domain/` pure rules: `errors`, `flags`, `accounts`, `subaccounts` (paging, delegation), `sessions` (who logs
  in, throttling), `credentials` (password policy, TOTP, recovery codes, tokens), `staff`, `caller`.
- `adapters/` `store/` (all SQL), `hasher.py` (argon2id), `keys_client.py`, `messaging_client.py`.
- `migrations/` the schema, applied at start.
"""
