"""The send path's and the replies' view of sender identities (issue 21): the platform sender index key and one
store query each. Sends that name no `from` never come here (no query on the shared number's path)."""

from __future__ import annotations

from collections.abc import Sequence

from services.messaging.domain.senders import SENDER_INDEX_KEY_SIZE, ActiveSenders, allowed, sender_hash
from services.messaging.service.ports import SenderDirectory


class SenderIndex:
    """Nothing is cached: a released number or a revoked tag stops working for the very next send."""

    def __init__(self, directory: SenderDirectory, key: bytes) -> None:
        if len(key) != SENDER_INDEX_KEY_SIZE:
            raise ValueError(f"the sender index key must be {SENDER_INDEX_KEY_SIZE} bytes")
        self._directory = directory
        self._key = key

    def hash(self, number: str) -> bytes:
        return sender_hash(self._key, number)

    async def refused(self, account_id: int, senders: Sequence[str]) -> set[str]:
        """The non-empty `from` values among `senders` that are not the account's active identities."""
        wanted = {s for s in senders if s}
        if not wanted:
            return set()
        active: ActiveSenders = await self._directory.active_sender_ids(account_id)
        return {s for s in wanted if not allowed(s, active, self._key)}

    async def holder(self, number: str) -> int | None:
        """The account holding `number` as an active sender identity, if any."""
        return await self._directory.sender_holder(self.hash(number))
