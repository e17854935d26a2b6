"""Readiness apart from liveness, on the health service kubelet probes (the plaintext HEALTH_LISTEN port).

- Liveness asks for the empty service name "": SERVING as long as the process's event loop answers at all
  (the server sets it once started), so kubelet restarts only a process that hangs.
- Readiness asks for `READINESS` ("readiness"): SERVING only while the process's own dependencies answer
  (its PostgreSQL database and its Redis: `SELECT 1`, `PING`), checked every `interval` seconds. A pod
  that loses PostgreSQL leaves the Service's endpoints instead of failing the requests sent to it, and
  comes back without a restart. It is unknown (probe fails) until the first check: build() has connected
  and migrated before that. On SIGTERM every status turns NOT_SERVING (`enter_graceful_shutdown`) while
  the preStop delay lets the endpoints drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from svckit.redisconn import make_redis
from svckit.tasks import every, spawn

_LOG = logging.getLogger(__name__)
READINESS = "readiness"
INTERVAL_SECONDS = 5.0
CHECK_TIMEOUT_SECONDS = 2.0
Check = Callable[[], Awaitable[object]]


def dependency_checks(
    database_url: str, redis_url: str, stack: contextlib.AsyncExitStack
) -> dict[str, Check]:
    """The checks of a process with this database and Redis (either may be empty: not checked)."""
    checks: dict[str, Check] = {}
    if database_url:
        async def postgres() -> None:
            conn = await asyncpg.connect(database_url, timeout=CHECK_TIMEOUT_SECONDS)
            try:
                await conn.fetchval("SELECT 1")
            finally:
                await conn.close()

        checks["postgresql"] = postgres
    if redis_url:
        client = make_redis(redis_url, timeout=CHECK_TIMEOUT_SECONDS)
        stack.push_async_callback(client.aclose)

        async def redis() -> None:
            await client.ping()

        checks["redis"] = redis
    return checks


class Readiness:
    """Keeps `READINESS` in `health` true to the checks."""

    def __init__(self, health: HealthServicer, checks: dict[str, Check]) -> None:
        self.health = health
        self.checks = checks
        self.failing: list[str] | None = None  # None: not checked yet

    async def check(self) -> bool:
        failing = []
        for name, check in self.checks.items():
            try:
                await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure means not ready; only its kind is logged
                failing.append(name)
                if self.failing is not None and name not in self.failing:
                    _LOG.warning("not ready: %s unreachable (%s)", name, type(exc).__name__,
                                 extra={"event": "readiness.failing", "dependency": name})
        if failing != self.failing:
            if not failing and self.failing:
                _LOG.info("ready again", extra={"event": "readiness.ready"})
            status = health_pb2.HealthCheckResponse.NOT_SERVING if failing else health_pb2.HealthCheckResponse.SERVING
            await self.health.set(READINESS, status)
            self.failing = failing
        return not failing

    def start(self, stack: contextlib.AsyncExitStack, interval: float = INTERVAL_SECONDS) -> asyncio.Task[object]:
        return spawn(stack, every("readiness", interval, self.check, first=0), "readiness")
