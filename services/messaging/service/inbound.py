"""Replies: stored as they arrive from a carrier or the test hook, and read back by the customer."""

from __future__ import annotations

from services.messaging.domain.errors import MessageNotFound
from services.messaging.domain.receipts import InboundInput, InboundPage, InboundView, TestModeOnly
from services.messaging.domain.records import TO_RECORD, Caller, check_message_id
from services.messaging.service.common import POLL, UseCases
from svckit.envelope import aad_for
from svckit.paging import PageWindow
from svckit.times import optional_unix_seconds

TEST_INBOUND_BODY = "This is a test inbound message."
TEST_INBOUND_FROM = "+61411111111"
TEST_INBOUND_TO = "+61422222222"


class InboundUseCases(UseCases):
    """Replies as the customer reads them, and test replies."""

    async def list_inbound(self, caller: Caller, window: PageWindow) -> InboundPage:
        """Unread replies, newest first."""
        total, rows = await self._store.unread_inbound(caller.account_id, window.offset, window.limit)
        views = [await self.replies.view(r, deidentified=caller.deidentified) for r in rows]
        return InboundPage(window, total, views)

    async def get_inbound(self, caller: Caller, original_message_id: str) -> InboundView:
        """The first reply to one of the account's messages."""
        r = await self._store.inbound_for_original(caller.account_id, check_message_id(original_message_id))
        if r is None:
            raise MessageNotFound("No reply to this message.")
        return await self.replies.view(r, deidentified=caller.deidentified)

    async def mark_inbound_read(self, caller: Caller, date_before: int) -> int:
        return await self._store.mark_inbound_read(caller.account_id, optional_unix_seconds(date_before, "date_before"))

    async def mark_inbound_read_by_id(self, caller: Caller, message_id: str) -> int:
        return await self._store.mark_inbound_read_by_id(caller.account_id, check_message_id(message_id))

    async def create_test_inbound(
        self, caller: Caller, url: str, original_message_id: str = "", body: str = ""
    ) -> InboundView:
        """Test mode only: a reply, to one of the account's messages when `original_message_id` is given
        (its recipient is the sender; "STOP" opts them out), kept for polling or pushed to `url`."""
        if not caller.test_mode:
            raise TestModeOnly("Test replies are only available to test-mode accounts.")
        target = "" if url.strip().lower() in ("", POLL) else await self._webhook_url(url)
        acct = caller.account_id
        sender, to, custom, original = TEST_INBOUND_FROM, TEST_INBOUND_TO, "", ""
        if original_message_id:
            original = check_message_id(original_message_id)
            found = await self._store.message_to_ct(acct, original)
            if found is None:
                raise MessageNotFound("No such message.")
            to_ct, our_number, custom = found
            if to_ct is None:  # past retention: the recipient is gone, so nobody can reply as them
                raise MessageNotFound("This message's recipient is no longer kept.")
            sender = (await self._cipher.decrypt(acct, aad_for(acct, TO_RECORD, original), to_ct)).decode()
            to = our_number or TEST_INBOUND_TO
        item = InboundInput(carrier="test", carrier_ref="", sender=sender, to=to, body=body or TEST_INBOUND_BODY,
                            in_reply_to=original)
        new = await self.replies.seal(acct, item, original, custom, is_test=True)
        await self._store.add_inbound([new], test_url=target)
        stored = await self._store.inbound_by_id(new.id)
        assert stored is not None
        return await self.replies.view(stored, deidentified=caller.deidentified)
