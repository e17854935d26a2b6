"""The account's message history, searched and sorted over ciphertext (see domain.history), a staff
member's view of a customer's history, and body retention."""

from __future__ import annotations

from services.messaging.domain.destinations import DESTINATION_VERIFICATION
from services.messaging.domain.errors import InvalidAccountId
from services.messaging.domain.history import (
    SEARCH_WINDOW,
    HistoryItem,
    HistoryPage,
    HistoryQuery,
    HistorySort,
    check_content_search,
    matches_content,
)
from services.messaging.domain.privacy import (
    MASKED_BODY,
    custom_string_index,
    deidentified_number,
    mask_number,
    number_index,
)
from services.messaging.domain.records import BODY_RECORD, TO_RECORD, Caller, StoredMessage
from services.messaging.domain.statuses import clicksend_history_view
from services.messaging.service.common import UseCases
from services.messaging.service.custom_strings import with_custom_string
from services.messaging.service.ports import SERVICE, Cipher
from svckit.audit import new_event
from svckit.envelope import aad_for
from svckit.errors import PermissionDenied
from svckit.paging import PageWindow


class HistoryUseCases(UseCases):
    """The account's message history (and a staff member's view of it); body retention."""

    async def list_history(self, caller: Caller, query: HistoryQuery) -> HistoryPage:
        """A page of the account's messages, bodies and numbers decrypted (masked for de-identified users).

        Filters on plain columns and the keyed hash of `to` run in the database; a body filter and sorting
        by `to` or `body` run over the newest SEARCH_WINDOW matching messages, decrypted in memory."""
        f, sort, w = query.filter, query.sort, query.window
        check_content_search(f, sort, deidentified=caller.deidentified)
        acct = caller.account_id
        to_hash = number_index(await self.keys.get(acct), f.to) if f.to is not None else None
        custom_hash = (custom_string_index(await self.keys.get(acct), f.custom_string)
                       if f.custom_string else None)
        if f.body_contains is None and not sort.on_content:
            total, rows = await self._store.history(
                acct, query.date_from, query.date_to, w.offset, w.limit, f, sort, to_hash, custom_hash)
            items = [await self._item(m, masked=caller.deidentified) for m in rows]
            return HistoryPage(window=w, total=total, items=items)
        _, rows = await self._store.history(
            acct, query.date_from, query.date_to, 0, SEARCH_WINDOW, f,
            HistorySort() if sort.on_content else sort, to_hash, custom_hash)
        found = [it for it in [await self._item(m) for m in rows] if matches_content(f, it.body, it.to)]
        if sort.on_content:
            found.sort(key=lambda it: it.message.date, reverse=True)
            found.sort(key=lambda it: (it.to if sort.field == "to" else it.body.casefold()), reverse=sort.descending)
        return HistoryPage(window=w, total=len(found), items=found[w.offset:w.offset + w.limit])

    async def _item(self, m: StoredMessage, *, masked: bool = False) -> HistoryItem:
        return await open_message(self._cipher, m, masked=masked)

    async def staff_history(
        self, caller: Caller, account_id: int, window: PageWindow, date_from: int | None, date_to: int | None
    ) -> tuple[HistoryPage, bool]:
        """A customer's history for a staff member: metadata always, content only if the customer granted
        staff access. Recorded in the customer's audit feed before anything is shown (fails closed)."""
        if not caller.staff:
            raise PermissionDenied("Only SendSafe staff may read another account's history.")
        if account_id <= 0:
            raise InvalidAccountId("account_id must be a positive account id")
        visible = (await self._store.settings(account_id)).staff_content_access
        if self._record is not None:
            ev = new_event(SERVICE, "messaging.staff.history_read", resource_type="account",
                           resource_id=str(account_id), details={"content_visible": str(visible).lower()})
            if hasattr(ev, "subject_account_id"):
                ev.subject_account_id = account_id
            await self._record(ev)
        total, rows = await self._store.history(account_id, date_from, date_to, window.offset, window.limit)
        items = [await self._item(m, masked=not visible) for m in rows]
        return HistoryPage(window=window, total=total, items=items), visible

    async def redact_expired(self) -> int:
        """Apply every account's body retention (bodies go, metadata stays)."""
        return await self._store.redact_expired(1000)


async def open_message(cipher: Cipher, m: StoredMessage, *, masked: bool = False) -> HistoryItem:
    """A stored message as history shows it: body and number opened (masked for de-identified users; the country
    alone past retention; a destination-verification code never)."""
    acct = m.account_id
    m = await with_custom_string(cipher, m)
    if m.to_ct is None:  # de-identified by retention: the country alone
        return HistoryItem(m, MASKED_BODY, deidentified_number(m.country),
                           clicksend_history_view(m.status, m.error_code))
    to = (await cipher.decrypt(acct, aad_for(acct, TO_RECORD, m.id), m.to_ct)).decode()
    if masked:
        return HistoryItem(m, MASKED_BODY, mask_number(to), clicksend_history_view(m.status, m.error_code))
    if m.cause == DESTINATION_VERIFICATION:  # the code is for the destination's holder only
        return HistoryItem(m, MASKED_BODY, to, clicksend_history_view(m.status, m.error_code))
    body = "" if m.body_ct is None else (
        await cipher.decrypt(acct, aad_for(acct, BODY_RECORD, m.id), m.body_ct)).decode()
    return HistoryItem(m, body, to, clicksend_history_view(m.status, m.error_code))
