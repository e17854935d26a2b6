"""Group commit: concurrent sends share one transaction without changing any request's outcome."""

from __future__ import annotations

import asyncio

import pytest

from svckit.groupcommit import GroupCommit


async def test_idle_submission_commits_alone_and_at_once() -> None:
    batches: list[list[int]] = []

    async def commit(items: list[int]) -> list[int]:
        batches.append(items)
        return [i * 10 for i in items]

    gc: GroupCommit[int, int] = GroupCommit(commit)
    assert await gc.submit(1) == 10
    assert batches == [[1]]


async def test_submissions_arriving_during_a_commit_share_the_next_one() -> None:
    release = asyncio.Event()
    batches: list[list[int]] = []

    async def commit(items: list[int]) -> list[int]:
        batches.append(items)
        if len(batches) == 1:
            await release.wait()  # hold the first commit while others queue up
        return [-i for i in items]

    gc: GroupCommit[int, int] = GroupCommit(commit)
    first = asyncio.create_task(gc.submit(0))
    while not batches:
        await asyncio.sleep(0)
    rest = [asyncio.create_task(gc.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0)
    release.set()
    assert await first == 0
    assert [await t for t in rest] == [-1, -2, -3, -4, -5]  # each caller gets its own result
    assert batches == [[0], [1, 2, 3, 4, 5]]


async def test_batches_are_capped() -> None:
    batches: list[list[int]] = []
    gate = asyncio.Event()

    async def commit(items: list[int]) -> list[int]:
        batches.append(items)
        await gate.wait()
        return items

    gc: GroupCommit[int, int] = GroupCommit(commit, max_batch=3)
    tasks = [asyncio.create_task(gc.submit(i)) for i in range(7)]
    await asyncio.sleep(0)
    gate.set()
    assert [await t for t in tasks] == list(range(7))
    assert all(len(b) <= 3 for b in batches) and sum(len(b) for b in batches) == 7


async def test_a_failed_commit_fails_its_whole_batch_and_the_next_batch_still_runs() -> None:
    calls = 0
    hold = asyncio.Event()

    async def commit(items: list[str]) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            await hold.wait()
            return items
        if calls == 2:
            raise RuntimeError("database went away")
        return [i.upper() for i in items]

    gc: GroupCommit[str, str] = GroupCommit(commit)
    t0 = asyncio.create_task(gc.submit("a"))
    await asyncio.sleep(0)
    doomed = [asyncio.create_task(gc.submit(x)) for x in ("b", "c")]
    await asyncio.sleep(0)
    hold.set()
    assert await t0 == "a"
    for t in doomed:
        with pytest.raises(RuntimeError, match="went away"):
            await t
    assert await gc.submit("d") == "D"


async def test_a_cancelled_caller_does_not_cancel_the_commit() -> None:
    started, finish = asyncio.Event(), asyncio.Event()
    committed: list[list[int]] = []

    async def commit(items: list[int]) -> list[int]:
        started.set()
        await finish.wait()
        committed.append(items)
        return items

    gc: GroupCommit[int, int] = GroupCommit(commit)
    caller = asyncio.create_task(gc.submit(7))
    await started.wait()
    caller.cancel()
    finish.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    while not committed:
        await asyncio.sleep(0)
    assert committed == [[7]]  # stored whole, never half-done
