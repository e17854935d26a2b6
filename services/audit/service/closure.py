"""A closed account's configuration is deleted (identity asks, once the account's keys are destroyed): alert rules,
alert deliveries, forwarding, security notices. Its events stay: the log is append-only, and they hold ids and
network facts, no content. The purge is itself an event."""

from __future__ import annotations

from services.audit.domain.events import SERVICE
from services.audit.service.ports import AccountPurgeStore, Record
from svckit.audit import new_event
from svckit.errors import InvalidArgument


class AccountConfigPurge:
    def __init__(self, store: AccountPurgeStore, record: Record) -> None:
        self._store = store
        self._record = record

    async def purge(self, account_id: int) -> int:
        if account_id <= 0:
            raise InvalidArgument("give an account_id", reason="ACCOUNT_REQUIRED")
        deleted = await self._store.purge_account(account_id)
        await self._record([new_event(SERVICE, "audit.account.purged", resource_type="account",
                                      resource_id=str(account_id), account_id=account_id,
                                      details={"deleted_rows": str(deleted)})])
        return deleted
