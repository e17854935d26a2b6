"""Account closure, messaging's part: a closing account's sends stop (scheduled and queued messages cancelled and
refunded as CancelSms does, new ones refused), resume if the closure is cancelled, and once the account's keys are
destroyed every row of it is deleted. Identity drives it (internal RPCs); each step is an audit event."""

from __future__ import annotations

from collections.abc import Sequence

from services.messaging.domain.closure import AccountClosing, AccountNotClosing
from services.messaging.domain.errors import InvalidAccountId
from services.messaging.service.ports import SERVICE, ClosureStore, Record
from svckit.audit import new_event


class AccountClosures:
    def __init__(self, store: ClosureStore, record: Record | None = None) -> None:
        self._store = store
        self._record = record

    async def _event(self, action: str, account_id: int, details: dict[str, str]) -> None:
        if self._record is not None:
            await self._record(new_event(SERVICE, action, resource_type="account", resource_id=str(account_id),
                                         account_id=account_id, details=details))

    async def closing(self, account_ids: Sequence[int]) -> dict[int, AccountClosing]:
        """The refusal for each of `account_ids` that is closing (or closed): it sends nothing. One query for
        all the accounts of a group commit."""
        if not account_ids:
            return {}
        return {acct: AccountClosing("the account is closing: it sends nothing")
                for acct in await self._store.closing_accounts(account_ids)}

    async def stop_sends(self, account_id: int) -> int:
        _check(account_id)
        cancelled = await self._store.stop_sends(account_id)
        await self._event("messaging.account.sends_stopped", account_id, {"cancelled": str(cancelled)})
        return cancelled

    async def resume_sends(self, account_id: int) -> None:
        _check(account_id)
        if not await self._store.resume_sends(account_id):
            raise AccountNotClosing("the account's data is already deleted", reason="ACCOUNT_PURGED")
        await self._event("messaging.account.sends_resumed", account_id, {})

    async def purge(self, account_id: int) -> int:
        _check(account_id)
        deleted = await self._store.purge_account(account_id)
        if deleted is None:
            raise AccountNotClosing("the account's sends were not stopped: it is not closing")
        await self._event("messaging.account.purged", account_id, {"deleted_rows": str(deleted)})
        return deleted


def _check(account_id: int) -> None:
    if account_id <= 0:
        raise InvalidAccountId("account_id must be a positive account id")
