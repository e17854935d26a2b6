"""Each account's index key (for keyed hashes of phone numbers), shared by the API and the worker."""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict

from services.messaging.domain.privacy import INDEX_KEY_RECORD, INDEX_KEY_SIZE, NumberIndexer
from services.messaging.service.ports import Cipher, KeyStore
from svckit.envelope import aad_for


class IndexKeys:
    """Each account's index key (for keyed hashes of numbers): created on first use, stored encrypted under
    the account's own key, cached in memory (bounded)."""

    def __init__(self, store: KeyStore, cipher: Cipher, *, max_entries: int = 10_000) -> None:
        self._store = store
        self._cipher = cipher
        self._max = max_entries
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._inflight: dict[int, asyncio.Task[bytes]] = {}
        self._indexers: dict[int, tuple[bytes, NumberIndexer]] = {}

    async def get(self, account_id: int) -> bytes:
        key = self._cache.get(account_id)
        if key is not None:
            self._cache.move_to_end(account_id)
            return key
        task = self._inflight.get(account_id)
        if task is None:
            task = asyncio.ensure_future(self._load(account_id))
            self._inflight[account_id] = task
            task.add_done_callback(lambda _t: self._inflight.pop(account_id, None))
        key = await asyncio.shield(task)
        self._cache[account_id] = key
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return key

    async def indexer(self, account_id: int) -> NumberIndexer:
        """The account's number hasher, its key schedule done once per cached key."""
        key = await self.get(account_id)
        hasher = self._indexers.get(account_id)
        if hasher is None or hasher[0] is not key:
            hasher = (key, NumberIndexer(key))
            self._indexers[account_id] = hasher
            while len(self._indexers) > self._max:
                self._indexers.pop(next(iter(self._indexers)))
        return hasher[1]

    async def _load(self, account_id: int) -> bytes:
        aad = aad_for(account_id, INDEX_KEY_RECORD, str(account_id))
        blob = await self._store.index_key_ct(account_id)
        if blob is None:
            fresh = await self._cipher.encrypt(account_id, aad, os.urandom(INDEX_KEY_SIZE))
            blob = await self._store.add_index_key_ct(account_id, fresh)
        return await self._cipher.decrypt(account_id, aad, blob)
