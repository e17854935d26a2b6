"""Per-account messaging settings (privacy and webhooks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

WEBHOOK_SECRET_RECORD: Final = "sms.webhook_secret"  # noqa: S105 (a record type name)


@dataclass(frozen=True, slots=True)
class MessagingSettings:
    account_id: int
    receipt_webhook_url: str = ""
    inbound_webhook_url: str = ""
    body_retention_days: int = 0
    staff_content_access: bool = False
    webhook_secret_ct: bytes | None = None
    update_time: int = 0

    @property
    def has_webhook_secret(self) -> bool:
        return self.webhook_secret_ct is not None


@dataclass(frozen=True, slots=True)
class SettingsUpdate:
    """Fields to change (None: leave as is)."""

    receipt_webhook_url: str | None = None
    inbound_webhook_url: str | None = None
    body_retention_days: int | None = None
    staff_content_access: bool | None = None
