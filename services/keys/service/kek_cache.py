"""The in-memory cache of account rings and unwrapped KEKs that the key-ring use cases share."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Hashable
from datetime import datetime
from typing import Any, TypeVar

from services.keys.domain.crypto import new_key
from services.keys.domain.envelope import Kek, check_blob_account, kek_aad, parse_blob
from services.keys.domain.errors import DecryptFailed, KeysDestroyed, KeyVersionUnknown
from services.keys.domain.key_rings import AccountRing, StoredKek, check_account_id
from services.keys.service.audit_trail import ring_event
from services.keys.service.ports import Audit, KeyRingStore, RootKeyProvider, utcnow
from svckit.ttlcache import TtlCache

_LOG = logging.getLogger(__name__)
T = TypeVar("T")


class KekCache:
    """Account rings and unwrapped KEKs, cached in memory for a short, bounded time, so data-key calls are
    normally pure CPU. Concurrent misses for one key share one load; a ring is created on its first use.

    A load that was running when the account's keys changed (`forget_account` / `forget_all`) is returned to
    its callers but not cached, and later callers start a fresh one: it may have read the ring from before a
    rotation, retirement or scheduled destruction."""

    def __init__(
        self,
        store: KeyRingStore,
        root: RootKeyProvider,
        audit: Audit,
        *,
        seconds: float = 60.0,
        entries: int = 10_000,
        service_name: str = "keys",
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self._root = root
        self._audit = audit
        self._name = service_name
        self._now = now
        self._rings: TtlCache[int, AccountRing] = TtlCache(seconds, entries)
        self._keks: TtlCache[tuple[int, int], Kek] = TtlCache(seconds, entries)
        self._inflight: dict[Hashable, asyncio.Task[Any]] = {}
        self._epoch = 0  # bumped by every forget: a load that started in an older epoch is not cached
        self._hits = 0  # ring and KEK lookups served from memory / that had to load (or join a load)
        self._misses = 0

    def lookups(self) -> tuple[int, int]:
        """(hits, misses) of the ring and KEK caches together, for the cache hit ratio metric."""
        return self._hits, self._misses

    async def ring(self, account_id: int, *, create: bool) -> AccountRing:
        check_account_id(account_id)
        ring = self._rings.get(account_id)
        if ring is not None:
            self._hits += 1
            return ring
        self._misses += 1
        return await self._single(("ring", account_id, create), lambda: self._load_ring(account_id, create))

    async def _load_ring(self, account_id: int, create: bool) -> AccountRing:
        epoch = self._epoch
        ring = await self._store.ring(account_id)
        if ring is None:
            if not create:
                raise KeyVersionUnknown()
            now = self._now()
            wrapped = await self._root.wrap(new_key(), kek_aad(account_id, 1))
            ring, created = await self._store.create_first_kek(StoredKek(account_id, 1, wrapped, now))
            if created:
                details = {"version": "1", "root_key_id": wrapped.key_id}
                await self._audit.record(ring_event(self._name, "keys.kek.created", account_id, details))
        if epoch == self._epoch:
            self._rings.put(account_id, ring)
        return ring

    async def current_kek(self, account_id: int) -> Kek:
        ring = await self.ring(account_id, create=True)
        ring.check_usable()
        return await self.kek(account_id, ring.current_version)

    async def kek_for(self, account_id: int, blob: bytes) -> Kek:
        """The KEK version a blob names, after every check that can fail before any cryptography."""
        check_account_id(account_id)
        header = parse_blob(blob)
        check_blob_account(header, account_id)
        ring = await self.ring(account_id, create=False)
        ring.check_decrypt(header.version)
        return await self.kek(account_id, header.version)

    async def kek(self, account_id: int, version: int) -> Kek:
        kek = self._keks.get((account_id, version))
        if kek is not None:
            self._hits += 1
            return kek
        self._misses += 1
        return await self._single(("kek", account_id, version), lambda: self._load_kek(account_id, version))

    async def _load_kek(self, account_id: int, version: int) -> Kek:
        epoch = self._epoch
        stored = await self._store.kek_version(account_id, version)
        if stored is None:
            raise KeyVersionUnknown()
        if stored.wrapped is None:
            raise KeysDestroyed()
        try:
            raw = await self._root.unwrap(stored.wrapped, kek_aad(account_id, version))
        except (DecryptFailed, KeyVersionUnknown):
            # Not the caller's fault: the stored KEK or the root key configuration is wrong. INTERNAL.
            raise RuntimeError(
                f"stored KEK of account {account_id} version {version} does not unwrap under root key"
                f" {stored.wrapped.key_id!r}"
            ) from None
        kek = Kek.of(account_id, version, raw)
        if epoch == self._epoch:
            self._keks.put((account_id, version), kek)
        return kek

    def forget_account(self, account_id: int) -> None:
        """Drop what this process caches about an account's keys (on a notice from another replica)."""
        self._epoch += 1
        for key in [k for k in self._inflight if k[1] == account_id]:  # type: ignore[index]
            del self._inflight[key]
        self._rings.pop(account_id)
        self._keks.pop_where(lambda k, _kek: k[0] == account_id)

    def forget_all(self) -> None:
        self._epoch += 1
        self._inflight.clear()
        self._rings.clear()
        self._keks.clear()

    async def _single(self, key: Hashable, load: Callable[[], Awaitable[T]]) -> T:
        """Run `load` once for concurrent callers with the same `key`; a cancelled caller leaves it running.

        Not TtlCache.get_or_load: that runs the load in the first caller's task (cancelling that caller fails
        every waiter) and shares one load per cache key (a ring load here also depends on `create`)."""
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(load())
            self._inflight[key] = task
            task.add_done_callback(functools.partial(_forget, self._inflight, key))
        result: T = await asyncio.shield(task)
        return result


def _forget(inflight: dict[Hashable, asyncio.Task[Any]], key: Hashable, task: asyncio.Task[Any]) -> None:
    if inflight.get(key) is task:
        del inflight[key]
    if not task.cancelled():
        task.exception()  # mark retrieved: waiters may all have gone
