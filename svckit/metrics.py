"""Prometheus metrics of every process: the instruments, scrape-time gauges and the plaintext `/metrics`.

Library: `prometheus-client`, not OpenTelemetry metrics. What SREs consume here is Prometheus (the
PrometheusRule alerts, the Grafana dashboard), and prometheus-client is that format's reference library:
a counter increment or histogram observation is a lock and an add (no SDK pipeline, views or readers
in the send path), and scrape-time collectors are native. OpenTelemetry's Prometheus exporter is a
beta that wraps prometheus-client anyway. Traces stay OpenTelemetry (svckit.telemetry).

Where: `METRICS_LISTEN` (host:port; empty = off), a plaintext HTTP port next to the plaintext gRPC
health port and never the mTLS port. It serves `GET /metrics` and nothing else. The health port cannot
carry it: kubelet's gRPC probe needs that port to speak HTTP/2 gRPC only, and Prometheus scrapes over
HTTP/1.1.

What (one place each):
- RED of every RPC, in the svckit guard (`observe_rpc`): `sendsafe_rpc_requests_total{method,code,reason}`
  and `sendsafe_rpc_duration_seconds{method}`; of every gateway route, in its edge middleware
  (`observe_http`): `sendsafe_http_requests_total{route,method,status,reason}` and
  `sendsafe_http_request_duration_seconds{route,method}`. Labels are bounded sets (method names, route
  templates, codes, UPPER_SNAKE reasons): never account ids, key ids or numbers.
- `sendsafe_build_info{service,version}`, `sendsafe_tls_cert_expiry_seconds{certificate}` (from the
  certificate file as loaded, re-read when it changes), `sendsafe_db_pool_connections{state}`.
- Anything that needs a query (stream length, dead letters, checkpoint age) is computed when scraped by
  a `Scrape` collector of the process (`Scrape.add`), never in a request's path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LOG = logging.getLogger(__name__)
VERSION = os.environ.get("SERVICE_VERSION", "0.1.0")
SCRAPE_TIMEOUT_SECONDS = 5.0
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

RPC_REQUESTS = Counter("sendsafe_rpc_requests", "RPCs this process served, by method, gRPC code and reason.",
                       ["method", "code", "reason"])
RPC_DURATION = Histogram("sendsafe_rpc_duration_seconds", "Seconds an RPC took in this process's server.",
                         ["method"], buckets=LATENCY_BUCKETS)
HTTP_REQUESTS = Counter("sendsafe_http_requests", "HTTP requests the gateway answered, by route template, "
                        "method, status and reason.", ["route", "method", "status", "reason"])
HTTP_DURATION = Histogram("sendsafe_http_request_duration_seconds", "Seconds the gateway took to answer.",
                          ["route", "method"], buckets=LATENCY_BUCKETS)
BUILD_INFO = Gauge("sendsafe_build_info", "1, labelled with the process's service and version.",
                   ["service", "version"])
WEBHOOK_DELIVERIES = Counter("sendsafe_webhook_deliveries", "Outbound webhook attempts (customers' message and "
                             "alert webhooks, SIEM forwarding) by outcome.", ["outcome"])
SCRAPE_ERRORS = Counter("sendsafe_metrics_collector_errors", "Scrape-time collectors that failed or timed out.",
                        ["collector"])

Collect = Callable[[], Awaitable[Iterable[Metric]]]


# The labelled children each request updates, by label values (bounded sets): `labels()` validates and
# locks on every call, a dict lookup does not (measured on this 2-core machine under load: 25-29 us -> 5.6 us
# per request for the counter and the histogram together).
_RPC_CHILDREN: dict[tuple[str, str, str], tuple[Any, Any]] = {}
_HTTP_CHILDREN: dict[tuple[str, str, int, str], tuple[Any, Any]] = {}


def observe_rpc(method: str, code: str, reason: str, seconds: float) -> None:
    key = (method, code, reason)
    children = _RPC_CHILDREN.get(key)
    if children is None:
        children = _RPC_CHILDREN[key] = (RPC_REQUESTS.labels(method, code, reason), RPC_DURATION.labels(method))
    children[0].inc()
    children[1].observe(seconds)


def observe_http(route: str, method: str, status: int, reason: str, seconds: float) -> None:
    key = (route, method, status, reason)
    children = _HTTP_CHILDREN.get(key)
    if children is None:
        children = _HTTP_CHILDREN[key] = (HTTP_REQUESTS.labels(route, method, str(status), reason),
                                          HTTP_DURATION.labels(route, method))
    children[0].inc()
    children[1].observe(seconds)


def gauge(name: str, help_text: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    """One scrape-time gauge sample (for a `Scrape` collector)."""
    if not labels:
        return GaugeMetricFamily(name, help_text, value=value)
    fam = GaugeMetricFamily(name, help_text, labels=list(labels))
    fam.add_metric(list(labels.values()), value)
    return fam


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


class CertificateExpiry:
    """Seconds until a certificate file's notAfter; the file is parsed again only when it changes."""

    def __init__(self, path: Path | str) -> None:
        self._path = Path(path)
        self._seen: tuple[float, float] | None = None  # (mtime, not_after)

    def seconds_left(self, now: float | None = None) -> float:
        mtime = self._path.stat().st_mtime
        if self._seen is None or self._seen[0] != mtime:
            from cryptography import x509

            cert = x509.load_pem_x509_certificate(self._path.read_bytes())
            self._seen = (mtime, cert.not_valid_after_utc.astimezone(UTC).timestamp())
        return self._seen[1] - (time.time() if now is None else now)


class Scrape:
    """A process's scrape-time collectors (per process object, so in-process tests keep theirs apart)."""

    def __init__(self) -> None:
        self._collectors: list[tuple[str, Collect]] = []

    def add(self, name: str, collect: Collect) -> None:
        self._collectors.append((name, collect))

    def certificate(self, label: str, path: Path | str) -> None:
        expiry = CertificateExpiry(path)

        async def collect() -> list[Metric]:
            fam = GaugeMetricFamily("sendsafe_tls_cert_expiry_seconds",
                                    "Seconds until the certificate this process loaded expires.",
                                    labels=["certificate"])
            fam.add_metric([label], expiry.seconds_left())
            return [fam]

        self.add(f"certificate {label}", collect)

    def pool(self, pool: Any) -> None:
        async def collect() -> list[Metric]:
            fam = GaugeMetricFamily("sendsafe_db_pool_connections", "PostgreSQL pool connections by state.",
                                    labels=["state"])
            size, idle = pool.get_size(), pool.get_idle_size()
            fam.add_metric(["in_use"], size - idle)
            fam.add_metric(["idle"], idle)
            fam.add_metric(["max"], pool.get_max_size())
            return [fam]

        self.add("db pool", collect)

    def cache(self, name: str, cache: Any) -> None:
        """A svckit.ttlcache's lookups by result (its hit ratio), read when scraped."""

        async def collect() -> list[Metric]:
            fam = CounterMetricFamily("sendsafe_cache_lookups", "Cache lookups by cache and result.",
                                      labels=["cache", "result"])
            fam.add_metric([name, "hit"], cache.hits)
            fam.add_metric([name, "miss"], cache.misses)
            return [fam]

        self.add(f"cache {name}", collect)

    async def render(self) -> bytes:
        async def one(name: str, collect: Collect) -> list[Metric]:
            try:
                return list(await asyncio.wait_for(collect(), SCRAPE_TIMEOUT_SECONDS))
            except Exception as exc:  # one failing source must not hide the others
                SCRAPE_ERRORS.labels(name).inc()
                _LOG.warning("metrics collector %s failed: %s", name, type(exc).__name__)
                return []

        results = await asyncio.gather(*(one(n, c) for n, c in self._collectors))
        merged: dict[str, Metric] = {}
        for fams in results:
            for fam in fams:
                if fam.name in merged:  # the same family from two collectors (certificates): one block
                    merged[fam.name].samples.extend(fam.samples)
                else:
                    merged[fam.name] = fam
        return generate_latest(REGISTRY) + generate_latest(_Families(list(merged.values())))  # type: ignore[arg-type]


async def start_endpoint(listen: str, scrape: Scrape, service: str) -> tuple[web.AppRunner, int]:
    """Serve GET /metrics in plaintext on `listen` (host:port, port 0 = any); returns the runner and port.
    With METRICS_PORT_FILE set the bound port is written there (launchers start processes on port 0)."""
    BUILD_INFO.labels(service, VERSION).set(1)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=await scrape.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
    bound = int(runner.addresses[0][1])
    path = os.environ.get("METRICS_PORT_FILE")
    if path:
        Path(f"{path}.tmp").write_text(str(bound))
        os.replace(f"{path}.tmp", path)
    return runner, bound
