"""Background work of every process, in one place: `spawn` a task that the process's exit stack cancels
and awaits on shutdown, `every` N seconds, or `drain` a queue while it has work and wait for a wake-up
otherwise. Each loop survives its step failing (logged, retried)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

_LOG = logging.getLogger(__name__)


async def drain(
    name: str, step: Callable[[], Awaitable[int]], wake: asyncio.Event | None, idle: float, settle: float = 0.0,
    full: int = 0,
) -> None:
    """Run `step` while it finds work; otherwise wait for `wake` (set after appends; None: nothing wakes it)
    or `idle` seconds, then `settle` seconds more so that a stream of small appends is taken in a few larger
    steps. With `full` set, a step that found work but less than `full` items also waits `settle` before
    the next: under a steady stream of appends the step runs a few times a second on what gathered, not
    once per append (each alert evaluation is some ten queries, whatever the number of events); a full
    batch is followed at once, so a backlog drains at full speed. A failing step is retried after a delay
    that doubles (up to 5 s, or `idle` if longer) until it succeeds again."""
    wake = wake or asyncio.Event()
    failures = 0
    while True:
        wake.clear()
        try:
            n = await step()
            failures = 0
        except asyncio.CancelledError:
            raise
        except Exception:
            failures += 1
            _LOG.exception("%s failed; retrying", name)
            n = 0
        if n:
            await asyncio.sleep(settle if n < full else 0)
            continue
        wait = min(idle * 2 ** min(failures, 16), max(idle, 5.0)) if failures else idle
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), wait)
        if settle:
            await asyncio.sleep(settle)


async def every(name: str, seconds: float, step: Callable[[], Awaitable[Any]], first: float | None = None) -> None:
    """Run `step` every `seconds` (the first time after `first` seconds, default `seconds`)."""
    delay = seconds if first is None else first
    while True:
        await asyncio.sleep(delay)
        delay = seconds
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            _LOG.exception("%s failed; retrying in %.0fs", name, seconds)


def spawn(stack: contextlib.AsyncExitStack, coro: Coroutine[Any, Any, object], name: str) -> asyncio.Task[Any]:
    """A task cancelled (and awaited) when `stack` closes."""
    task = asyncio.create_task(coro, name=name)

    async def cancel() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(cancel)
    return task
