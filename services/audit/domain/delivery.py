"""What every outbound delivery (alert notifications, SIEM forwarding) shares: the retry schedule and the
per-account webhook signing secret."""

from __future__ import annotations

import hashlib
import hmac


def retry_delay(attempts: int, base: float = 5.0, cap: float = 1800.0) -> float:
    """Seconds before the next try after `attempts` failures: 5 s doubling to 30 min (about 1 h in total
    for 8 attempts)."""
    return float(min(cap, base * (2 ** max(attempts - 1, 0))))


def webhook_secret(root: bytes, account_id: int, version: int) -> str:
    """The account's webhook signing secret, derived (never stored): HMAC(root, account, version). Shown
    as `whsec_` + 64 hex digits, which is valid base64: the Standard Webhooks key is its decoded 48 bytes
    (svckit.webhooks.secret_key), as the spec's libraries read it."""
    mac = hmac.new(root, f"sendsafe-audit-webhook:v1:{account_id}:{version}".encode(), hashlib.sha256)
    return "whsec_" + mac.hexdigest()
