"""Audit's adapter to the one outbound-webhook policy (svckit.webhooks) for alert webhooks and SIEM
forwarding: the shared URL check and client, plus audit's own reading of an attempt (a DeliveryError
with an UPPER_SNAKE reason the alert history shows, and whether to retry)."""

from __future__ import annotations

from pathlib import Path

from services.audit.service.ports import DeliveryError
from svckit.webhooks import WebhookClient, check_destination

_MAX_RESPONSE = 64 * 1024
_RETRYABLE_STATUS = frozenset({408, 425, 429})


class HttpsWebhooks:
    """`WebhookPoster` over svckit.webhooks."""

    def __init__(self, *, allow_private: bool = False, ca_file: Path | None = None, timeout: float = 5.0) -> None:
        self._allow_private = allow_private
        self._client = WebhookClient(allow_private=allow_private, ca_file=ca_file, timeout=timeout,
                                     max_answer=_MAX_RESPONSE)

    async def check(self, url: str) -> str:
        return await check_destination(url, allow_private=self._allow_private)

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        attempt = await self._client.post(url, body, headers)
        if attempt.ok:
            return
        if attempt.refused:
            raise DeliveryError("DESTINATION_NOT_ALLOWED", retryable=False)
        if attempt.status:  # 3xx included: redirects are not followed
            status = attempt.status
            raise DeliveryError(f"HTTP_{status}", retryable=status >= 500 or status in _RETRYABLE_STATUS)
        if attempt.error.startswith("TLS"):
            raise DeliveryError("TLS_ERROR", retryable=True)
        raise DeliveryError("CONNECTION_FAILED", retryable=True)
