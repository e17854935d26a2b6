"""Running a service process: logging, tracing, build, serve until SIGTERM, graceful stop.

Each service's `app.py` is its composition root: `build(settings) -> App` wires the pool, Redis,
clients, the `Service` and its servicer and starts the server (port 0 in tests); `main()` loads the
settings from the environment once and calls `serve`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from svckit import metrics
from svckit.config import ConfigError, KitSettings
from svckit.readiness import Readiness, dependency_checks
from svckit.server import RunningServer, wait_for_shutdown_signal
from svckit.telemetry import setup_logging, setup_tracing, shutdown_tracing

_LOG = logging.getLogger(__name__)
S = TypeVar("S", bound=KitSettings)


@dataclass
class App:
    """A started service: its server and everything to close when it stops."""

    server: RunningServer
    stack: contextlib.AsyncExitStack
    grace: float = 5.0
    extras: dict[str, object] = field(default_factory=dict)
    metrics: metrics.Scrape = field(default_factory=metrics.Scrape)  # its scrape-time collectors

    @property
    def port(self) -> int:
        return self.server.port

    async def stop(self) -> None:
        await self.server.stop(self.grace)
        await self.stack.aclose()


# Young objects are collected after this many net allocations (CPython's default is 700; 10 and 10 stay).
GC_YOUNG_THRESHOLD = 50_000


def settle_heap() -> None:
    """Once a process has started: keep the collector off what start-up made and will live as long as
    the process (modules, descriptors, pools: gc.freeze), and collect young objects less often. A request
    makes many short-lived containers; with the defaults a full collection regularly walked the whole
    heap in the middle of a request. In `make bench` this took p99 of single sends from ~80 to ~62 ms."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


def write_port_file(port: int) -> None:
    """Tell a launcher which port was bound (PORT_FILE set: tests and `make run` use port 0)."""
    path = os.environ.get("PORT_FILE")
    if path:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as fh:
            fh.write(str(port))
        os.replace(tmp, path)


async def expose_metrics(app: App, settings: KitSettings) -> None:
    """Serve the process's /metrics on METRICS_LISTEN (once; empty = off) with the collectors every
    process has: its certificate's expiry and, when it has one, its database pool."""
    if not settings.metrics_listen or "metrics_port" in app.extras:
        return
    app.metrics.certificate("internal", settings.tls_cert_file)
    pool = app.extras.get("pool")
    if pool is not None:
        app.metrics.pool(pool)
    for name, part in app.extras.items():  # parts that report figures when scraped (messaging's stream)
        collect = getattr(part, "collect_metrics", None)
        if collect is not None:
            app.metrics.add(name, collect)
    runner, port = await metrics.start_endpoint(settings.metrics_listen, app.metrics, settings.service_name)
    app.stack.push_async_callback(runner.cleanup)
    app.extras["metrics_port"] = port


async def serve(build: Callable[[S], Awaitable[App]], settings: S) -> None:
    setup_logging(settings.service_name, settings.log_level)
    setup_tracing(settings.service_name)
    try:
        app = await build(settings)
    except ConfigError as exc:  # found only once connected (a root key that does not open the stored keys)
        _LOG.error("%s cannot start: %s", settings.service_name, exc)
        raise SystemExit(2) from None
    # Built: connected and migrated. Readiness (health status "readiness") now follows the database and Redis;
    # liveness ("") stays the process answering at all (svckit.readiness).
    checks = dependency_checks(settings.database_url, settings.redis_url, app.stack)
    Readiness(app.server.health, checks).start(app.stack)
    await expose_metrics(app, settings)
    settle_heap()
    _LOG.info("%s serving on port %d", settings.service_name, app.port)
    write_port_file(app.port)
    try:
        await wait_for_shutdown_signal()
        _LOG.info("%s shutting down", settings.service_name)
    finally:
        await app.stop()
        shutdown_tracing()
