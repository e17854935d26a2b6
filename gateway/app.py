"""Composition root of the HTTPS gateway.

`build(settings)` wires everything (tracing, TLS, routes from descriptors, mTLS channels, the
authenticator, the audit client, the aiohttp app) and returns a `Gateway`; `start()` binds and
returns the port (port 0 supported), `stop()` stops accepting, drains in-flight requests, flushes the
audit client and closes the channels. `main()` is `python -m gateway`.

A request passes the edge middleware (`gateway.edge`: request id, trace, error bodies, audit evidence
through `gateway.evidence`) and then its route's handler (`gateway.dispatch`: authentication, permission,
transcoding, the gRPC call). The map of the package's files is in `gateway/__init__.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from opentelemetry.sdk.trace import SpanProcessor

from gateway import openapi, tls
from gateway.auth import Authenticator
from gateway.config import Settings
from gateway.dispatch import Dispatcher
from gateway.edge import Edge, security_headers
from gateway.evidence import Evidence
from gateway.routes import Route, discover_routes
from gateway.unauth import UnauthenticatedRequests
from sendsafe.identity.v1 import auth_service_pb2_grpc, identity_service_pb2_grpc
from sendsafe.keys.v1 import keys_service_pb2_grpc
from svckit import metrics
from svckit.audit import AuditClient
from svckit.keyevents import API_KEYS_CHANGED, Subscriber
from svckit.readiness import Readiness, dependency_checks
from svckit.redisconn import make_redis
from svckit.rpc import secure_channel
from svckit.telemetry import setup_tracing

_LOG = logging.getLogger(__name__)


@dataclass
class Gateway:
    settings: Settings
    app: web.Application
    routes: list[Route]
    authenticator: Authenticator
    audit: AuditClient
    channels: dict[str, grpc.aio.Channel]
    ssl_context: Any
    https: tls.ReloadingCertificate | None = None  # follows the rotated public certificate
    # Key notices from the keys service (revoked/rolled API keys leave the auth cache at once); None: no Redis.
    notices: Subscriber | None = None
    unauth: UnauthenticatedRequests | None = None  # limits and summarises unauthenticated failures
    port: int = 0
    health_port: int | None = None
    metrics_port: int | None = None
    _runner: web.AppRunner | None = field(default=None, repr=False)
    _health: Any = field(default=None, repr=False)
    _readiness: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack, repr=False)
    _metrics: web.AppRunner | None = field(default=None, repr=False)

    async def start(self) -> int:
        """Bind the HTTPS listener (port 0 = any free port) and return the bound port."""
        self.audit.start()
        if self.unauth is not None:
            self.unauth.start()
        if self.notices is not None:
            self.notices.start()
            if not await self.notices.wait_ready(timeout=2.0):
                _LOG.warning("key notices: not subscribed yet; cached API keys expire within %gs meanwhile",
                             self.settings.auth_cache_seconds)
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=self.settings.shutdown_grace_seconds
        )
        await self._runner.setup()
        host, port = self.settings.listen_host_port()
        site = web.TCPSite(self._runner, host, port, ssl_context=self.ssl_context, backlog=1024)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        if self.settings.health_listen:
            self._health = await _start_health(self.settings.health_listen)
            self.health_port = self._health[2]
            # Readiness ("readiness") follows Redis (key notices); the gateway has no database, and its gRPC
            # upstreams reconnect by themselves. Liveness ("") is the process answering.
            checks = dependency_checks("", self.settings.redis_url, self._readiness)
            Readiness(self._health[0], checks).start(self._readiness)
        if self.settings.metrics_listen:
            scrape = metrics.Scrape()
            scrape.certificate("https", self.settings.https_cert_file)
            scrape.certificate("internal", self.settings.tls_cert_file)
            scrape.cache("gateway_auth", self.authenticator.cache)  # API key and session verifications
            self._metrics, self.metrics_port = await metrics.start_endpoint(
                self.settings.metrics_listen, scrape, self.settings.service_name)
        _LOG.info("gateway listening on https://%s:%d", host, self.port, extra={"event": "gateway.listening"})
        return self.port

    async def stop(self) -> None:
        """Graceful: stop accepting, let in-flight requests finish, flush audit events, close channels."""
        if self._health is not None:
            servicer = self._health[0]
            await servicer.enter_graceful_shutdown()
            await self._readiness.aclose()
        if self._runner is not None:
            await self._runner.cleanup()  # closes the listener, drains handlers (shutdown_timeout)
            self._runner = None
        if self.unauth is not None:
            await self.unauth.close()  # summaries of open windows, before the audit client flushes
        await self.audit.close(timeout=self.settings.shutdown_grace_seconds + 5)
        if self.notices is not None:
            await self.notices.close()
            await self.notices.redis.aclose()
        for channel in self.channels.values():
            await channel.close()
        if self._health is not None:
            await self._health[1].stop(0)
            self._health = None
        if self._metrics is not None:
            await self._metrics.cleanup()
            self._metrics = None
        _LOG.info("gateway stopped", extra={"event": "gateway.stopped"})


async def build(settings: Settings, *, span_processors: Iterable[SpanProcessor] = ()) -> Gateway:
    """The composition root. Must run inside the event loop that will serve requests."""
    # Tracing first: it patches grpc.aio channel constructors so trace context reaches the services.
    setup_tracing(settings.service_name, span_processors)
    https = tls.ReloadingCertificate(settings.https_cert_file, settings.https_key_file)
    ssl_context = https.context
    if not tls.tls13_restricted(ssl_context):
        _LOG.warning(
            "TLS 1.3 suites are not restricted to AES-GCM (offering %s); start with OPENSSL_CONF=%s"
            " (python -m gateway does this itself)", sorted(tls.tls13_suites(ssl_context)), tls.OPENSSL_CNF,
        )
    routes = discover_routes()
    services = {"identity", "keys", "audit"} | {r.service for r in routes}
    channels = {
        svc: secure_channel(
            settings.upstream_addr(svc), settings.tls, server_name=svc, timeout=settings.upstream_timeout_seconds
        )
        for svc in sorted(services)
    }
    authenticator = Authenticator(
        keys_service_pb2_grpc.KeysServiceStub(channels["keys"]),
        identity_service_pb2_grpc.IdentityServiceStub(channels["identity"]),
        cache_seconds=settings.auth_cache_seconds,
        timeout=settings.upstream_timeout_seconds,
        sessions=auth_service_pb2_grpc.AuthServiceStub(channels["identity"]),
    )
    audit = AuditClient(channels["audit"])
    unauth = UnauthenticatedRequests(
        audit.record, limit=settings.unauth_limit, window=settings.unauth_window_seconds,
        dedup=settings.unauth_dedup_seconds,
    )
    notices = None
    if settings.redis_url:
        notices = Subscriber(
            make_redis(settings.redis_url), settings.redis_prefix, on_notice=authenticator.on_key_notice,
            on_resync=authenticator.cache.clear, kinds=(API_KEYS_CHANGED,),
        )
    return Gateway(
        settings=settings,
        app=http_app(settings, routes, channels, authenticator, audit, unauth),
        routes=routes,
        authenticator=authenticator,
        audit=audit,
        channels=channels,
        ssl_context=ssl_context,
        https=https,
        notices=notices,
        unauth=unauth,
    )


def http_app(
    settings: Settings,
    routes: list[Route],
    channels: dict[str, grpc.aio.Channel],
    authenticator: Authenticator,
    audit: AuditClient,
    unauth: UnauthenticatedRequests,
) -> web.Application:
    """The aiohttp application: the edge middleware around one handler per route."""
    dispatcher = Dispatcher(settings, routes, channels, authenticator)
    edge = Edge(
        service=settings.service_name,
        trusted_proxies=settings.trusted_proxy_networks,
        max_body=settings.max_body_bytes,
        route_of=dispatcher.route_of,
        unauth=unauth,
        evidence=Evidence(audit, unauth, settings.service_name),
        access_log_level=settings.access_log_level,
    )
    # GET /openapi.json (public) is answered before the edge: the document of these routes, built once, here.
    app = web.Application(middlewares=[openapi.middleware(routes), edge.middleware],
                          client_max_size=settings.max_body_bytes)
    app.on_response_prepare.append(security_headers)
    dispatcher.mount(app)
    return app


async def _start_health(listen: str) -> tuple[Any, grpc.aio.Server, int]:
    """Plaintext gRPC health (kubelet's gRPC probe cannot present a client certificate)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_health.v1._async import HealthServicer

    servicer = HealthServicer()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot bind the health port {listen}")
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return servicer, server, port


# -- python -m gateway -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from svckit.config import ConfigError, load
    from svckit.telemetry import setup_logging

    try:
        settings = load(Settings)
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.service_name, settings.log_level)
    loop_factory = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but the gateway runs without it
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_run(settings))


async def _run(settings: Settings) -> int:
    from svckit.app import settle_heap, write_port_file
    from svckit.server import wait_for_shutdown_signal
    from svckit.telemetry import shutdown_tracing

    gateway = await build(settings)
    settle_heap()
    write_port_file(await gateway.start())
    try:
        await wait_for_shutdown_signal()
        _LOG.info("shutting down", extra={"event": "gateway.stopping"})
    finally:
        await gateway.stop()
        with contextlib.suppress(Exception):
            shutdown_tracing()
    return 0
