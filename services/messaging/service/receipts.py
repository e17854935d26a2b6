"""Delivery receipts as the customer reads them, and test receipts."""

from __future__ import annotations

from services.messaging.domain.errors import MessageNotFound
from services.messaging.domain.receipts import ReceiptPage, ReceiptRecord, TestModeOnly
from services.messaging.domain.records import Caller, check_message_id
from services.messaging.service.common import POLL, UseCases
from services.messaging.service.custom_strings import with_custom_string
from services.messaging.service.ids import new_message_id
from svckit.paging import PageWindow
from svckit.times import optional_unix_seconds


class ReceiptUseCases(UseCases):
    """Delivery receipts as the customer reads them, and test receipts."""

    async def list_receipts(self, caller: Caller, window: PageWindow) -> ReceiptPage:
        """Unread receipts, newest first (mark them read to take them off this list)."""
        total, rows = await self._store.unread_receipts(caller.account_id, window.offset, window.limit)
        return ReceiptPage(window, total, [await with_custom_string(self._cipher, r) for r in rows])

    async def get_receipt(self, caller: Caller, message_id: str) -> ReceiptRecord:
        r = await self._store.receipt(caller.account_id, check_message_id(message_id))
        if r is None:
            raise MessageNotFound("No receipt for this message (yet).")
        return await with_custom_string(self._cipher, r)

    async def mark_receipts_read(self, caller: Caller, date_before: int) -> int:
        before = optional_unix_seconds(date_before, "date_before")
        return await self._store.mark_receipts_read(caller.account_id, before)

    async def create_test_receipt(self, caller: Caller, url: str) -> ReceiptRecord:
        """Test mode only: a delivered receipt for a made-up message, kept for polling or pushed to `url`."""
        if not caller.test_mode:
            raise TestModeOnly("Test receipts are only available to test-mode accounts.")
        target = "" if url.strip().lower() in ("", POLL) else await self._webhook_url(url)
        return await self._store.add_test_receipt(caller.account_id, caller.user_id, new_message_id(), target)
