"""Per-account settings (privacy, webhook URLs) and the webhook signing secret; the webhook log."""

from __future__ import annotations

from dataclasses import fields

from services.messaging.domain.privacy import check_retention_days
from services.messaging.domain.records import Caller
from services.messaging.domain.settings import WEBHOOK_SECRET_RECORD, MessagingSettings, SettingsUpdate
from services.messaging.domain.webhooks import WebhookDelivery
from services.messaging.service.common import UseCases
from services.messaging.service.ports import SERVICE
from svckit.audit import new_event
from svckit.envelope import aad_for
from svckit.webhooks import new_secret


class SettingsUseCases(UseCases):
    """Per-account settings: privacy, webhook URLs and the webhook signing secret; the webhook log."""

    async def get_settings(self, caller: Caller) -> MessagingSettings:
        return await self._store.settings(caller.account_id)

    async def update_settings(self, caller: Caller, update: SettingsUpdate) -> tuple[MessagingSettings, str]:
        """Change settings; the first webhook URL creates the signing secret, returned once."""
        clean = SettingsUpdate(
            receipt_webhook_url=None if update.receipt_webhook_url is None else (
                await self._webhook_url(update.receipt_webhook_url) if update.receipt_webhook_url.strip() else ""),
            inbound_webhook_url=None if update.inbound_webhook_url is None else (
                await self._webhook_url(update.inbound_webhook_url) if update.inbound_webhook_url.strip() else ""),
            body_retention_days=None if update.body_retention_days is None else check_retention_days(
                update.body_retention_days),
            staff_content_access=update.staff_content_access,
        )
        current = await self._store.settings(caller.account_id)
        secret, blob = "", None
        if not current.has_webhook_secret and (clean.receipt_webhook_url or clean.inbound_webhook_url):
            secret, blob = await self._new_secret(caller.account_id)
        details = {
            "fields": ",".join(sorted(f.name for f in fields(update) if getattr(update, f.name) is not None)),
            "secret_created": str(bool(secret)).lower(),
        }
        # Privileged: the event is stored before the change commits (the audit client waits in a privileged call).
        saved = await self._store.update_settings(
            caller.account_id, clean, blob,
            before_commit=lambda _: self._audit("messaging.settings.updated", caller.account_id, details),
        )
        return saved, secret

    async def rotate_webhook_secret(self, caller: Caller) -> str:
        secret, blob = await self._new_secret(caller.account_id)
        await self._store.update_settings(
            caller.account_id, SettingsUpdate(), blob,
            before_commit=lambda _: self._audit("messaging.webhook_secret.rotated", caller.account_id, {}),
        )
        return secret

    async def _new_secret(self, account_id: int) -> tuple[str, bytes]:
        secret = new_secret()
        aad = aad_for(account_id, WEBHOOK_SECRET_RECORD, str(account_id))
        return secret, await self._cipher.encrypt(account_id, aad, secret.encode())

    async def webhook_deliveries(self, caller: Caller, limit: int, before_id: int) -> list[WebhookDelivery]:
        return await self._store.webhook_deliveries(caller.account_id, max(1, min(limit or 50, 100)),
                                                    max(0, before_id))

    async def _audit(self, action: str, account_id: int, details: dict[str, str]) -> None:
        if self._record is not None:
            await self._record(new_event(SERVICE, action, resource_type="messaging_settings",
                                         resource_id=str(account_id), account_id=account_id, details=details))
