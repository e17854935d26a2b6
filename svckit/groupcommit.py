"""Group commit: one `commit(batch)` for every submission that arrives while the previous commit runs, so
concurrent requests share one transaction (and one stream write) without changing any request's outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Runs one `commit(batch)` for all submissions that arrive while the previous one is running.

    The first submission commits at once (no added latency when idle); under load, requests that
    queued up meanwhile share the next commit, so a busy account's balance is locked once per batch
    instead of once per request and the database and stream see one write per batch. A failed commit
    fails every submission in it (nothing of that batch was stored).
    """

    def __init__(self, commit: Callable[[list[T]], Awaitable[list[R]]], *, max_batch: int = 200) -> None:
        self._commit = commit
        self._max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._draining = False

    async def submit(self, item: T) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, fut))
        if not self._draining:
            self._draining = True
            # The drain outlives a cancelled caller: a commit in flight always completes or fails whole.
            asyncio.get_running_loop().create_task(self._drain())
        return await asyncio.shield(fut)

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
                try:
                    results = await self._commit([item for item, _ in batch])
                except Exception as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut), result in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)
        finally:
            self._draining = False
