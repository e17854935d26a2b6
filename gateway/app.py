"""Composition root and request pipeline of the HTTPS gateway.

`build(settings)` wires everything (tracing, TLS, routes from descriptors, mTLS channels, the
authenticator, the audit client, the aiohttp app) and returns a `Gateway`; `start()` binds and
returns the port (port 0 supported), `stop()` stops accepting, drains in-flight requests, flushes the
audit client and closes the channels. `main()` is `python -m gateway`.

Every request goes through one middleware (`_edge`) that
- assigns the request id (a client `X-Request-Id` is kept only if it matches ^[A-Za-z0-9-]{8,64}$),
- starts the SERVER span `<METHOD> <route template>` continuing an incoming W3C `traceparent`
  (trace context only: client `baggage` is dropped at the edge),
- turns every failure into the surface's error body (ClickSend envelope on /v3, `{"error": ...}` else),
- adds `X-Request-Id` and `traceparent` (of the gateway span) to the response,
- records exactly one audit event.
Security headers go on every response in `on_response_prepare`. The per-route handler does:
body-size cap -> authentication -> the route's permission -> JSON/query/path -> proto -> the gRPC
call with the principal in `x-sendsafe-principal-bin` -> proto -> JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway import compat_clicksend, tls
from gateway.auth import (
    Authenticator,
    AuthFailure,
    Connection,
    Identity,
    anonymous_principal,
    build_principal,
    client_address,
    second_factor_within,
)
from gateway.config import Settings
from gateway.errors import (
    GatewayError,
    body_too_large,
    deidentified_user,
    dumps,
    error_body,
    forbidden,
    from_rpc_error,
    internal,
    key_forbidden,
    method_not_allowed,
    not_found,
    step_up_required,
    unauthenticated,
    unauthenticated_rate_limited,
)
from gateway.routes import Route, discover_routes
from gateway.surface import Surface
from gateway.transcode.body import parse_json
from gateway.transcode.fields import TranscodeError, message_class
from gateway.transcode.request import build_request
from gateway.transcode.response import message_to_json
from gateway.unauth import UnauthenticatedRequests
from sendsafe.audit.v1 import event_pb2
from sendsafe.context.v1 import principal_pb2
from sendsafe.identity.v1 import auth_service_pb2_grpc, identity_service_pb2_grpc
from sendsafe.keys.v1 import keys_service_pb2_grpc
from svckit import context as callctx
from svckit.access import access_for, destination_refused
from svckit.audit import AuditClient
from svckit.cache import make_redis
from svckit.keyevents import API_KEYS_CHANGED, Subscriber
from svckit.rpc import secure_channel
from svckit.telemetry import setup_tracing

_LOG = logging.getLogger(__name__)

SECURITY_HEADERS: dict[str, str] = {
    "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
}
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9-]{8,64}")
# A client's retry key for non-idempotent calls (SendSms), forwarded to the service as gRPC metadata.
IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_METADATA_KEY = "idempotency-key"
MAX_IDEMPOTENCY_KEY = 256
MAX_USER_AGENT = 512
MAX_AUDITED_PATH = 256
_JSON = "application/json"
# Only W3C trace context crosses the edge: client-supplied baggage is not forwarded to the services.
_TRACE_CONTEXT = TraceContextTextMapPropagator()

UnaryCall = Callable[..., Awaitable[Any]]


@dataclass
class _RequestState:
    request_id: str
    conn: Connection
    route: Route | None = None
    identity: Identity | None = None
    auth_failure: AuthFailure | None = None
    error: GatewayError | None = None
    upstream_code: str = ""
    unauthenticated: bool = False  # failed authentication, or no route and no credentials checked (gateway.unauth)
    rate_limited: bool = False


_STATE = web.RequestKey("sendsafe_state", _RequestState)


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
    _runner: web.AppRunner | None = field(default=None, repr=False)
    _health: Any = field(default=None, repr=False)

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
        _LOG.info("gateway listening on https://%s:%d", host, self.port, extra={"event": "gateway.listening"})
        return self.port

    async def stop(self) -> None:
        """Graceful: stop accepting, let in-flight requests finish, flush audit events, close channels."""
        if self._health is not None:
            servicer = self._health[0]
            await servicer.enter_graceful_shutdown()
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
    pipeline = _Pipeline(settings, routes, channels, authenticator, audit, unauth)
    return Gateway(
        settings=settings,
        app=pipeline.app,
        routes=routes,
        authenticator=authenticator,
        audit=audit,
        channels=channels,
        ssl_context=ssl_context,
        https=https,
        notices=notices,
        unauth=unauth,
    )


class _Pipeline:
    def __init__(
        self,
        settings: Settings,
        routes: list[Route],
        channels: dict[str, grpc.aio.Channel],
        authenticator: Authenticator,
        audit: AuditClient,
        unauth: UnauthenticatedRequests,
    ) -> None:
        self._settings = settings
        self._auth = authenticator
        self._audit = audit
        self._unauth = unauth
        self._trusted = settings.trusted_proxy_networks
        self._timeout = settings.upstream_timeout_seconds
        self._max_body = settings.max_body_bytes
        self._service = settings.service_name
        self._tracer = trace.get_tracer("sendsafe.gateway")
        self.app = web.Application(middlewares=[self._edge], client_max_size=settings.max_body_bytes)
        self.app.on_response_prepare.append(_security_headers)
        self._calls: dict[str, UnaryCall] = {}
        self._by_aiohttp_route: dict[Any, Route] = {}
        for route in routes:
            output_cls = message_class(route.output_desc)
            self._calls[route.key] = channels[route.service].unary_unary(
                route.rpc_path,
                request_serializer=_serialize,
                response_deserializer=output_cls.FromString,
            )
            aroute = self.app.router.add_route(route.http_method, route.aiohttp_path, self._handler_for(route))
            self._by_aiohttp_route[aroute] = route

    def _handler_for(self, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._serve(route, request)

        handler.__name__ = f"serve_{route.rpc_name}"
        return handler

    # -- the edge: ids, trace, errors, headers, audit ------------------------------------------------

    @web.middleware
    async def _edge(self, request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]) -> Any:
        supplied = request.headers.get("X-Request-Id", "")
        request_id = supplied if REQUEST_ID_RE.fullmatch(supplied) else uuid.uuid4().hex
        state = _RequestState(request_id=request_id, conn=self._connection(request))
        request[_STATE] = state
        route = self._by_aiohttp_route.get(request.match_info.route)
        state.route = route
        surface = route.surface if route is not None else Surface.for_path(request.path)
        template = route.template if route is not None else ""
        attributes: dict[str, Any] = {
            "http.method": request.method,
            "client.address": state.conn.client_address,
            "sendsafe.request_id": request_id,
        }
        if route is not None:
            attributes["http.route"] = template
            attributes["sendsafe.rpc"] = route.rpc_path
        parent = _TRACE_CONTEXT.extract(request.headers)
        name = f"{request.method} {template}" if template else request.method
        token = callctx.current.set(callctx.CallContext(self._service, None, request_id))
        try:
            with self._tracer.start_as_current_span(
                name, context=parent, kind=SpanKind.SERVER, attributes=attributes,
                record_exception=False, set_status_on_exception=False,
            ) as span:
                response = await self._respond(request, handler, state, surface)
                response.headers["X-Request-Id"] = request_id
                carrier: dict[str, str] = {}
                _TRACE_CONTEXT.inject(carrier)
                if "traceparent" in carrier:
                    response.headers["traceparent"] = carrier["traceparent"]
                span.set_attribute("http.status_code", response.status)
                if state.identity is not None:
                    span.set_attribute("sendsafe.account_id", state.identity.account_id)
                    span.set_attribute("sendsafe.api_key_id", state.identity.api_key_id)
                if response.status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                trace_id = format(span.get_span_context().trace_id, "032x")
                await self._record(request, state, response.status, trace_id)
                return response
        finally:
            callctx.current.reset(token)

    async def _respond(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[Any]], state: _RequestState,
        surface: Surface,
    ) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except GatewayError as err:
            state.error = err
        except AuthFailure as failure:
            state.auth_failure = failure
            refused = key_forbidden if failure.http_status == 403 else unauthenticated
            state.error = self._limited(state) or refused(failure.reason)
        except TranscodeError as exc:
            status = "NOT_FOUND" if exc.status == 404 else "INVALID_ARGUMENT"
            state.error = GatewayError(exc.status, status, exc.reason, exc.message)
        except web.HTTPException as exc:  # from the router (404/405) or aiohttp itself (413)
            error = _from_http_exception(exc, self._max_body)
            state.error = (self._limited(state) if state.route is None else None) or error
        except asyncio.CancelledError:
            raise
        except Exception:
            where = state.route.template if state.route else "-"
            _LOG.exception("unhandled error serving %s %s", request.method, where)
            state.error = internal(state.request_id)
        failed = state.error
        if failed.http_status >= 500:
            _LOG.warning("request failed: %s", failed, extra={"reason": failed.reason, "code": failed.status})
        return web.Response(
            status=failed.http_status, body=dumps(error_body(failed, surface)), content_type=_JSON,
            headers=failed.headers,
        )

    def _limited(self, state: _RequestState) -> GatewayError | None:
        """Count an unauthenticated failure against the client's network: the 429 when it is over its limit."""
        state.unauthenticated = True
        wait = self._unauth.hit(state.conn.client_address)
        if wait is None:
            return None
        state.rate_limited = True
        return unauthenticated_rate_limited(wait)

    # -- one route ---------------------------------------------------------------------------------

    async def _serve(self, route: Route, request: web.Request) -> web.StreamResponse:
        state = request[_STATE]
        length = request.content_length
        if length is not None and length > self._max_body:
            raise body_too_large(self._max_body)

        identity: Identity | None = None
        if not route.public:  # public routes (login) take no credentials and do their own throttling
            identity = await self._auth.authenticate(
                request.headers.get("Authorization"), state.request_id, state.conn.client_address
            )
            state.identity = identity
            if route.permission not in identity.permissions:
                raise forbidden(route.permission, outside_scope=route.permission in identity.outside_scope)
            if route.privileged and identity.auth_method == principal_pb2.AUTH_METHOD_SESSION:
                identity = await self._recent_second_factor(route, request, state)
            access = access_for(route.rpc_path)  # declared, or there would be no route
            if access is not None and destination_refused(access, identity.sms_deidentify_message):
                raise deidentified_user()

        body: Any = None
        if route.body:
            raw = await self._read_body(request)
            if raw.strip():
                if not _is_json(request.content_type):
                    raise GatewayError(
                        415, "INVALID_ARGUMENT", "UNSUPPORTED_MEDIA_TYPE", "Send the request body as application/json."
                    )
                body = parse_json(raw)
        path_params = {route.path_vars[k]: v for k, v in request.match_info.items() if k in route.path_vars}
        msg = build_request(
            route.input_desc, route.surface, body=body, body_field=route.body,
            query=request.query.items(), path_params=path_params,
        )

        principal = (
            build_principal(identity, state.conn, state.request_id)
            if identity is not None
            else anonymous_principal(state.conn, state.request_id)
        )
        metadata: tuple[tuple[str, str | bytes], ...] = (
            (callctx.PRINCIPAL_METADATA_KEY, principal.SerializeToString()),
            (callctx.REQUEST_ID_METADATA_KEY, state.request_id),
        )
        idempotency_key = request.headers.get(IDEMPOTENCY_HEADER, "")
        if idempotency_key:  # the service validates it (the header is forwarded as is, never logged)
            metadata += ((IDEMPOTENCY_METADATA_KEY, idempotency_key[:MAX_IDEMPOTENCY_KEY]),)
        try:
            reply = await self._calls[route.key](msg, metadata=metadata, timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            state.upstream_code = err.code().name
            if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL):
                _LOG.warning("%s failed upstream: %s %s", route.rpc_path, err.code().name, err.details())
            raise from_rpc_error(err) from None
        if route.surface is Surface.CLICKSEND:
            out = compat_clicksend.success_envelope(route, reply)
        else:
            out = message_to_json(reply, route.surface)
        return web.Response(status=200, body=dumps(out), content_type=_JSON)

    async def _recent_second_factor(self, route: Route, request: web.Request, state: _RequestState) -> Identity:
        """RFC 9470 step-up for every privileged route called with a session (API keys are machine credentials:
        scope them instead): a second factor verified within max_age, else 401 with the challenge. A cached
        principal may predate a step-up, so a stale one is resolved afresh once before the challenge."""
        max_age = self._settings.step_up_max_age_seconds
        identity = state.identity
        assert identity is not None
        if second_factor_within(identity, max_age):
            return identity
        identity = await self._auth.reauthenticate(
            request.headers.get("Authorization"), state.request_id, state.conn.client_address
        )
        state.identity = identity
        if route.permission not in identity.permissions:
            raise forbidden(route.permission)
        if not second_factor_within(identity, max_age):
            raise step_up_required(max_age)
        return identity

    async def _read_body(self, request: web.Request) -> bytes:
        try:
            return await request.read()  # bounded by client_max_size
        except web.HTTPRequestEntityTooLarge:
            raise body_too_large(self._max_body) from None

    # -- where from ----------------------------------------------------------------------------------

    def _connection(self, request: web.Request) -> Connection:
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        addr = str(peer[0]) if peer else ""
        if self._trusted:
            addr = client_address(addr, request.headers.getall("X-Forwarded-For", []), self._trusted)
        version = cipher = ""
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is not None:
            version = ssl_object.version() or ""
            negotiated = ssl_object.cipher()
            cipher = negotiated[0] if negotiated else ""
        return Connection(
            client_address=addr,
            user_agent=request.headers.get("User-Agent", "")[:MAX_USER_AGENT],
            tls_version=version,
            tls_cipher=cipher,
        )

    # -- evidence ------------------------------------------------------------------------------------

    async def _record(self, request: web.Request, state: _RequestState, status: int, trace_id: str) -> None:
        try:
            event = self._event(request, state, status, trace_id)
            if state.unauthenticated:  # limited and summarised before it reaches the permanent log
                await self._unauth.record(event, always_summarise=state.rate_limited)
            else:
                await self._audit.record(event)
        except Exception:  # never fail the request because of the audit client's buffer
            _LOG.exception("could not queue the audit event")

    def _event(self, request: web.Request, state: _RequestState, status: int, trace_id: str) -> event_pb2.Event:
        route = state.route
        err = state.error
        if route is None:
            action = "gateway.not_found"
            resource = request.path[:MAX_AUDITED_PATH]
        elif state.auth_failure is not None:
            action = "gateway.unauthenticated"
            resource = route.template
        else:
            action = f"gateway.{route.rpc_name}"
            resource = route.template
        if status < 400:
            outcome = event_pb2.OUTCOME_SUCCESS
        elif status in (401, 403):
            outcome = event_pb2.OUTCOME_DENIED
        else:
            outcome = event_pb2.OUTCOME_FAILURE
        details = {
            "http_status": str(status),
            "method": request.method,
            "route": route.template if route is not None else "",
            "rpc": route.rpc_path if route is not None else "",
        }
        if state.upstream_code:
            details["grpc_status"] = state.upstream_code
        now = time.time_ns()
        ev = event_pb2.Event(
            event_id=uuid.uuid4().hex,
            action=action,
            outcome=outcome,  # type: ignore[arg-type]
            error_reason=err.reason if err is not None else "",
            request_id=state.request_id,
            trace_id=trace_id,
            service=self._service,
            details=details,
        )
        ev.event_time.seconds, ev.event_time.nanos = divmod(now, 1_000_000_000)
        ev.resource.type = "http_route"
        ev.resource.id = resource
        ident = state.identity
        if ident is not None:
            ev.actor.type = "staff" if ident.staff else "user"
            ev.actor.id = str(ident.user_id)
            ev.actor.account_id = ident.account_id
            ev.actor.auth_method = ident.auth_method_name
            ev.actor.api_key_id = ident.api_key_id
            ev.actor.session_id = ident.session_id
        else:
            ev.actor.type = "anonymous"
            failure = state.auth_failure
            if failure is not None:
                # A real key used with the wrong username (say) is evidence for that key's account.
                ev.actor.account_id = failure.account_id
                ev.actor.api_key_id = failure.api_key_id
                ev.actor.auth_method = "api_key" if failure.api_key_id else ""
                ev.details["auth_detail"] = failure.detail
        ev.source.client_address = state.conn.client_address
        ev.source.user_agent = state.conn.user_agent
        ev.source.tls_version = state.conn.tls_version
        ev.source.tls_cipher = state.conn.tls_cipher
        return ev


def _serialize(msg: Any) -> bytes:
    data: bytes = msg.SerializeToString()
    return data


def _is_json(content_type: str) -> bool:
    return content_type == _JSON or (content_type.startswith("application/") and content_type.endswith("+json"))


def _from_http_exception(exc: web.HTTPException, max_body: int) -> GatewayError:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return method_not_allowed(set(exc.allowed_methods))
    if exc.status == 404:
        return not_found()
    if exc.status == 413:
        return body_too_large(max_body)
    status = "INTERNAL" if exc.status >= 500 else "INVALID_ARGUMENT"
    return GatewayError(exc.status, status, f"HTTP_{exc.status}", exc.reason)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)
    response.headers["Server"] = "SendSafe"


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
