"""Replies (from a carrier or the test hook) stored: the number and body encrypted, a keyed hash of the
number, the opt-out change a STOP/START makes; and read back, decrypted or masked."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from services.messaging.domain.errors import InvalidRecipient
from services.messaging.domain.optouts import opt_action
from services.messaging.domain.privacy import MASKED_BODY, deidentified_number, mask_number, number_index
from services.messaging.domain.receipts import (
    InboundInput,
    InboundRecord,
    InboundView,
    NewInbound,
    OriginalMessage,
)
from services.messaging.domain.recipients import parse_recipient
from services.messaging.domain.records import BODY_RECORD, TO_RECORD
from services.messaging.service.custom_strings import with_custom_string
from services.messaging.service.ids import new_message_id
from services.messaging.service.index_keys import IndexKeys
from services.messaging.service.ports import Cipher, InboundStore
from services.messaging.service.sender_index import SenderIndex
from svckit.envelope import DecryptFailed, aad_for

_LOG = logging.getLogger(__name__)


class Replies:
    """Stores replies to the account's messages (from a carrier or the test hook): the sender's number and
    the body encrypted, a keyed hash of the number, and the opt-out change a STOP/START makes."""

    def __init__(self, store: InboundStore, cipher: Cipher, keys: IndexKeys, senders: SenderIndex | None = None
                 ) -> None:
        self._store = store
        self._cipher = cipher
        self._keys = keys
        self._senders = senders
        self.unmatched = 0

    async def receive(self, items: Sequence[InboundInput]) -> list[str]:
        """Replies as a carrier reports them: matched to the outbound message by our id or the carrier's
        reference, or, when the carrier names none (SMPP MO), by the numbers: a reply to a number that is an
        account's active sender identity (dedicated or verified) belongs to that account (to its newest message
        to the replying number from that number, else to no message); otherwise to the newest message to the
        replying number from the number it replied to (else from the shared number) in the last 7 days. A
        reply that matches nothing is counted and dropped (its content is not kept)."""
        new: list[NewInbound] = []
        for item in items:
            original = (await self._store.original(item.in_reply_to) if item.in_reply_to
                        else await self._by_numbers(item))
            if original is None:
                self.unmatched += 1
                _LOG.warning("dropped a reply that matches no message (carrier %s)", item.carrier)
                continue
            new.append(await self.seal(original.account_id, item, original.id, original.custom_string,
                                       is_test=False))
        return await self._store.add_inbound(new) if new else []

    async def _by_numbers(self, item: InboundInput) -> OriginalMessage | None:
        try:
            handset = parse_recipient(item.sender, None).e164
        except InvalidRecipient:
            return None
        ours = item.to.strip().lstrip("+")
        if ours.isdigit() and self._senders is not None:  # first: the account whose sender identity it is
            holder = await self._senders.holder("+" + ours)
            if holder is not None:
                senders = [ours, "+" + ours]
                latest: OriginalMessage | None = await self._store.latest_sent_to(
                    [(holder, (await self._keys.indexer(holder))(handset))], senders)
                return latest or OriginalMessage("", holder, 0, "", "+" + ours)
        for senders in ([ours, "+" + ours] if ours else [], [""]):
            accounts = await self._store.reply_candidates(senders) if senders else []
            if accounts:
                pairs = [(a, (await self._keys.indexer(a))(handset)) for a in accounts]
                found: OriginalMessage | None = await self._store.latest_sent_to(pairs, senders)
                if found is not None:
                    return found
        return None

    async def seal(self, account_id: int, item: InboundInput, original_id: str, custom_string: str,
                   *, is_test: bool) -> NewInbound:
        try:
            sender = parse_recipient(item.sender, None).e164
        except InvalidRecipient:
            sender = item.sender.strip()[:32]
        mid = new_message_id()
        key = await self._keys.get(account_id)
        from_ct, body_ct = await self._cipher.encrypt_many(account_id, [
            (aad_for(account_id, TO_RECORD, mid), sender.encode()),
            (aad_for(account_id, BODY_RECORD, mid), item.body.encode("utf-8", "replace")),
        ])
        return NewInbound(
            id=mid, account_id=account_id, original_message_id=original_id, from_ct=from_ct,
            from_hash=number_index(key, sender), to=item.to[:32], body_ct=body_ct, custom_string=custom_string,
            carrier=item.carrier, carrier_ref=item.carrier_ref[:128], is_test=is_test, action=opt_action(item.body),
        )

    async def view(self, r: InboundRecord, *, deidentified: bool = False) -> InboundView:
        acct = r.account_id
        r = await with_custom_string(self._cipher, r)
        sender = (deidentified_number(r.original_country) if r.from_ct is None else
                  (await self._cipher.decrypt(acct, aad_for(acct, TO_RECORD, r.id), r.from_ct)).decode())
        if deidentified:
            return InboundView(r, mask_number(sender), MASKED_BODY, MASKED_BODY)
        body = "" if r.body_ct is None else (
            await self._cipher.decrypt(acct, aad_for(acct, BODY_RECORD, r.id), r.body_ct)).decode()
        original = ""
        if r.original_body_ct is not None and r.original_message_id:
            try:
                original = (await self._cipher.decrypt(
                    acct, aad_for(acct, BODY_RECORD, r.original_message_id), r.original_body_ct)).decode()
            except DecryptFailed:
                original = ""
        return InboundView(r, sender, body, original)
