"""A small closed-loop HTTP(S) load generator (aiohttp client) used for every figure, so ratios compare
like with like: the same client, the same connection count, the same machine, the same run.

`accept(status, body)` decides which answers count (default: HTTP 200); `ca=None` means plain HTTP (the peer
benchmark's Jasmin); `on_measure_start` runs when the warm-up ends, so a caller can read CPU and delivery
counters over exactly the measured window."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp


@dataclass
class Result:
    label: str
    requests: int
    items: int
    errors: int
    seconds: float
    latencies: list[float]
    completed: int = 0  # every request that finished, warm-up included (for CPU per request)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds

    def pct(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(p / 100 * len(data)))] * 1000

    def line(self, unit: str = "req") -> str:
        return (
            f"{self.label:<44} {self.rps:9.0f} {unit}/s  {self.items_per_s:9.0f} items/s  "
            f"p50 {self.pct(50):7.1f} ms  p99 {self.pct(99):7.1f} ms  errors {self.errors}"
        )


async def run(
    label: str, url: str, *, ca: str | None, concurrency: int, seconds: float, method: str = "GET",
    body: Callable[[], bytes] | None = None, headers: dict[str, str] | None = None, items_per_request: int = 1,
    warmup: float = 1.0, accept: Callable[[int, bytes], bool] | None = None,
    on_measure_start: Callable[[], Awaitable[None]] | None = None,
) -> Result:
    ctx: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca) if ca else False
    conn = aiohttp.TCPConnector(ssl=ctx, limit=concurrency)
    latencies: list[float] = []
    errors = 0
    done = 0
    completed = 0
    async with aiohttp.ClientSession(connector=conn, headers=headers) as session:
        stop_at = time.perf_counter() + warmup + seconds
        measure_from = time.perf_counter() + warmup

        async def worker() -> None:
            nonlocal errors, done, completed
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                try:
                    async with session.request(method, url, data=body() if body else None) as resp:
                        data = await resp.read()
                        ok = accept(resp.status, data) if accept else resp.status == 200
                except aiohttp.ClientError:
                    ok = False
                t1 = time.perf_counter()
                completed += 1
                if t0 >= measure_from:
                    if ok:
                        latencies.append(t1 - t0)
                        done += 1
                    else:
                        errors += 1

        async def mark() -> None:
            await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
            if on_measure_start is not None:
                await on_measure_start()

        await asyncio.gather(mark(), *(worker() for _ in range(concurrency)))
    return Result(label, done, done * items_per_request, errors, seconds, latencies, completed)
