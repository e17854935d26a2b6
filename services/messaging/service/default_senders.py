"""Default senders (issue 21): a customer sets, lists, reads, changes and deletes them; the send path asks which
sender a message with an empty `from` goes out as (`sender_for`).

Setting one is privileged like the other sender writes: every sender it names must be an active sender identity of
the account at that moment (FAILED_PRECONDITION DEFAULT_SENDER_NOT_ACTIVE otherwise, nothing stored), and every
change is an audit event stored before it commits (messaging.sender.default_set / default_deleted: ids only,
never a sender, which may be the customer's own number).

The send path is hot (issue 17): a send with an empty `from` must not add a database query. The account's defaults
(with which of their senders were active when read) are cached per account for `CACHE_TTL_SECONDS` and dropped in
this process on every change here; an account without defaults is cached too. The sender chosen still goes
through the send path's live check of the account's active identities (`SenderIndex.refused`, the one query any
send naming a `from` makes), so a number released or a tag revoked since the cache was filled is refused
(INVALID_SENDER_ID) rather than used, for at most the TTL, after which the next strategy (or the shared number) is
chosen."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace

from sendsafe.audit.v1 import event_pb2
from services.messaging.domain.default_senders import (
    DefaultSender,
    DefaultSenderNotActive,
    StoredDefault,
    Strategy,
    check_country,
    check_product,
    check_strategies,
    choose_sender,
    named_senders,
    strategies_json,
    strategies_of,
)
from services.messaging.domain.errors import InvalidRecipient
from services.messaging.domain.recipients import parse_recipient
from services.messaging.domain.records import Caller, OutboundInput
from services.messaging.service.ports import SERVICE, Cipher, DefaultSenderStore, Record
from services.messaging.service.sender_index import SenderIndex
from svckit.audit import new_event
from svckit.envelope import aad_for
from svckit.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied
from svckit.ttlcache import TtlCache

CACHE_TTL_SECONDS = 5.0  # how long a send may use an account's defaults read earlier (module doc)
CACHE_ENTRIES = 10_000
RECORD = "default_sender.strategies"  # AAD record type of the sealed strategies
RESOURCE = "default_sender"
MAX_PAGE = 500
DEFAULT_PAGE = 10


class DefaultSenderNotFound(NotFound):
    reason = "DEFAULT_SENDER_NOT_FOUND"


class DefaultSenderExists(AlreadyExists):
    reason = "DEFAULT_SENDER_EXISTS"


@dataclass(frozen=True)
class DefaultPage:
    items: list[DefaultSender]
    next_cursor: int  # 0: the last page


@dataclass(frozen=True)
class _Cached:
    defaults: tuple[DefaultSender, ...]
    active: frozenset[str]  # their senders that were active identities when read


_NONE = _Cached((), frozenset())


class DefaultSenders:
    def __init__(self, store: DefaultSenderStore, senders: SenderIndex | None, cipher: Cipher, record: Record,
                 ttl: float = CACHE_TTL_SECONDS) -> None:
        self._store = store
        self._senders = senders
        self._cipher = cipher
        self._record = record
        self._cache: TtlCache[int, _Cached] = TtlCache(ttl, CACHE_ENTRIES)

    # -- the customer ------------------------------------------------------------------------------------------

    async def create(self, caller: Caller, country: str, product: str, strategies: Sequence[Strategy],
                     subaccount_id: int = 0) -> DefaultSender:
        _customer(caller)
        if subaccount_id < 0:
            raise InvalidArgument("subaccount_id must be a user id of the account, or 0 for every user")
        chosen = check_strategies(strategies)
        await self._check_active(caller.account_id, chosen)
        new_id = str(uuid.uuid4())
        acct = caller.account_id
        sealed = await self._seal(acct, new_id, chosen)
        row = StoredDefault(id=new_id, account_id=acct, user_id=caller.user_id, subaccount_id=subaccount_id,
                            country=check_country(country), product=check_product(product), strategies_ct=sealed)

        async def audit() -> None:
            await self._record(_event("messaging.sender.default_set", row))

        created = await self._store.create_default(row, audit)
        if created is None:
            raise DefaultSenderExists(
                f"The account already has a default sender for {row.country} and this user: change that one.")
        self._cache.pop(acct)
        return _open(created, chosen)

    async def page(self, caller: Caller, page_size: int, cursor: int) -> DefaultPage:
        _customer(caller)
        size = page_size or DEFAULT_PAGE
        if not 1 <= size <= MAX_PAGE:
            raise InvalidArgument(f"per_page must be 1-{MAX_PAGE}")
        rows = await self._store.defaults(caller.account_id, cursor, size + 1)
        items = [await self._read(r) for _, r in rows[:size]]
        return DefaultPage(items, rows[size - 1][0] if len(rows) > size else 0)

    async def get(self, caller: Caller, default_id: str) -> DefaultSender:
        _customer(caller)
        return await self._read(await self._found(caller, default_id))

    async def update(self, caller: Caller, default_id: str, strategies: Sequence[Strategy]) -> DefaultSender:
        _customer(caller)
        current = await self._found(caller, default_id)
        chosen = check_strategies(strategies)
        await self._check_active(caller.account_id, chosen)
        sealed = await self._seal(caller.account_id, current.id, chosen)

        async def audit() -> None:
            await self._record(_event("messaging.sender.default_set", current))

        row = await self._store.update_default(caller.account_id, current.id, caller.user_id, sealed, audit)
        if row is None:
            raise DefaultSenderNotFound("No such default sender.")
        self._cache.pop(caller.account_id)
        return _open(row, chosen)

    async def delete(self, caller: Caller, default_id: str) -> None:
        _customer(caller)
        current = await self._found(caller, default_id)

        async def audit() -> None:
            await self._record(_event("messaging.sender.default_deleted", current))

        if not await self._store.delete_default(caller.account_id, current.id, audit):
            raise DefaultSenderNotFound("No such default sender.")
        self._cache.pop(caller.account_id)

    # -- the send path -----------------------------------------------------------------------------------------

    async def sender_for(self, caller: Caller, inputs: Sequence[OutboundInput]) -> Sequence[OutboundInput]:
        """`inputs` with each empty `from` replaced by the caller's default sender for its destination country
        (unchanged when there is none; no query while the account's defaults are cached)."""
        if all(m.sender for m in inputs):
            return inputs
        cached = await self._cache.get_or_load(caller.account_id, lambda: self._load(caller.account_id))
        if not cached.defaults:
            return inputs
        out = list(inputs)
        for i, m in enumerate(inputs):
            if m.sender:
                continue
            try:
                country = parse_recipient(m.to, m.country).country
            except InvalidRecipient:
                continue  # validation reports it
            chosen = choose_sender(cached.defaults, caller.user_id, country, cached.active.__contains__,
                                   caller.limits.allows_sender)
            if chosen:
                out[i] = replace(m, sender=chosen)
        return out

    async def _load(self, account_id: int) -> _Cached:
        rows = await self._store.defaults(account_id)
        if not rows:
            return _NONE
        defaults = tuple([await self._read(r) for _, r in rows])
        named = sorted({s for d in defaults for s in named_senders(d.strategies)})
        refused = set(named) if self._senders is None else await self._senders.refused(account_id, named)
        return _Cached(defaults, frozenset(s for s in named if s not in refused))

    # -- helpers -----------------------------------------------------------------------------------------------

    async def _check_active(self, account_id: int, strategies: Sequence[Strategy]) -> None:
        named = named_senders(strategies)
        refused = set(named) if self._senders is None else await self._senders.refused(account_id, named)
        if refused:
            raise DefaultSenderNotActive(
                f"{len(refused)} of the senders named is not an active sender identity of the account: buy or"
                " verify the number, or have the alpha tag approved, before making it a default.")

    async def _found(self, caller: Caller, default_id: str) -> StoredDefault:
        try:
            uuid.UUID(default_id)
        except ValueError:
            raise DefaultSenderNotFound("No such default sender.") from None
        row = await self._store.default(caller.account_id, default_id)
        if row is None:
            raise DefaultSenderNotFound("No such default sender.")
        return row

    async def _seal(self, account_id: int, default_id: str, strategies: Sequence[Strategy]) -> bytes:
        return await self._cipher.encrypt(account_id, aad_for(account_id, RECORD, default_id),
                                          strategies_json(strategies))

    async def _read(self, row: StoredDefault) -> DefaultSender:
        raw = await self._cipher.decrypt(row.account_id, aad_for(row.account_id, RECORD, row.id), row.strategies_ct)
        return _open(row, strategies_of(raw))


def _open(row: StoredDefault, strategies: Sequence[Strategy]) -> DefaultSender:
    return DefaultSender(id=row.id, account_id=row.account_id, user_id=row.user_id, subaccount_id=row.subaccount_id,
                         country=row.country, strategies=tuple(strategies), product=row.product,
                         create_time=row.create_time, update_time=row.update_time)


def _event(action: str, row: StoredDefault) -> event_pb2.Event:
    """Ids only: never a sender (it may be the customer's own number)."""
    return new_event(SERVICE, action, resource_type=RESOURCE, resource_id=row.id,
                     details={"default_sender_id": row.id, "subaccount_id": str(row.subaccount_id)})


def _customer(caller: Caller) -> None:
    if caller.staff:
        raise PermissionDenied("Default senders are set by the account's own users.")
