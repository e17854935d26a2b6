"""svckit.tasks.drain: the one background loop of every service (queues, relays, receipts, cleanups)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from svckit import tasks

_wait_for = asyncio.wait_for


async def _run_until(loop: asyncio.Task[None], done: asyncio.Event) -> None:
    try:
        await _wait_for(done.wait(), 5)
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop


async def test_drain_repeats_at_once_while_the_step_finds_work() -> None:
    work = [3, 2, 1, 0]
    calls: list[int] = []
    done = asyncio.Event()

    async def step() -> int:
        n = work[len(calls)] if len(calls) < len(work) else 0
        calls.append(n)
        if len(calls) == len(work):
            done.set()
        return n

    # idle is an hour: only "found work, go again" can make four calls before the deadline.
    await _run_until(asyncio.create_task(tasks.drain("t", step, None, 3600.0)), done)
    assert calls == [3, 2, 1, 0]


async def test_drain_backs_off_while_failing_and_returns_to_idle_after(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []

    async def record_wait(aw: object, timeout: float) -> object:
        waits.append(timeout)
        return await _wait_for(aw, 0)  # type: ignore[arg-type]

    class _SeenAsyncio:  # asyncio as svckit.tasks sees it, with wait_for recorded (nothing else is touched)
        wait_for = staticmethod(record_wait)

        def __getattr__(self, name: str) -> object:
            return getattr(asyncio, name)

    monkeypatch.setattr(tasks, "asyncio", _SeenAsyncio())
    outcomes: list[object] = [RuntimeError, RuntimeError, RuntimeError, RuntimeError, 0, 0]
    done = asyncio.Event()

    async def step() -> int:
        if not outcomes:
            done.set()
            return 0
        o = outcomes.pop(0)
        if o is RuntimeError:
            raise RuntimeError("database down")
        return 0

    await _run_until(asyncio.create_task(tasks.drain("t", step, None, 1.0)), done)
    assert waits[:6] == [2.0, 4.0, 5.0, 5.0, 1.0, 1.0]


async def test_drain_wakes_early_when_told() -> None:
    wake = asyncio.Event()
    calls = 0
    second = asyncio.Event()

    async def step() -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            second.set()
        return 0

    loop = asyncio.create_task(tasks.drain("t", step, wake, 3600.0))
    while calls < 1:
        await asyncio.sleep(0)
    wake.set()
    await _run_until(loop, second)
    assert calls == 2
