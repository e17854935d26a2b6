"""The edge: the one middleware every request goes through, and the headers every response carries.

The middleware
- assigns the request id (a client `X-Request-Id` is kept only if it matches ^[A-Za-z0-9-]{8,64}$),
- starts the SERVER span `<METHOD> <route template>` of a new trace, linked to an incoming W3C
  `traceparent` (trace context only: client `baggage` is dropped at the edge),
- turns every failure into the surface's error body (ClickSend envelope on /v3, `{"error": ...}` else),
- adds `X-Request-Id` and `traceparent` (of the gateway span) to the response,
- records exactly one audit event (`gateway.evidence`).
Security headers go on every response in `on_response_prepare` (`security_headers`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.auth import AuthFailure
from gateway.config import Network
from gateway.errors import (
    JSON_CONTENT_TYPE,
    GatewayError,
    body_too_large,
    dumps,
    error_body,
    internal,
    key_forbidden,
    method_not_allowed,
    not_found,
    unauthenticated,
    unauthenticated_rate_limited,
)
from gateway.evidence import Evidence
from gateway.principal import Connection, client_address
from gateway.request_state import STATE, RequestState
from gateway.routes import Route
from gateway.surface import Surface
from gateway.transcode.fields import TranscodeError
from gateway.unauth import UnauthenticatedRequests
from svckit import context as callctx
from svckit import metrics

_LOG = logging.getLogger(__name__)
# One line per request (`_access_line`): ids, method, route TEMPLATE, status, latency, bytes, client, key id.
# Never the path's values, the query, a header or a body.
ACCESS_LOG = logging.getLogger("gateway.access")

SECURITY_HEADERS: dict[str, str] = {
    "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
}
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9-]{8,64}")
MAX_USER_AGENT = 512
# Only W3C trace context crosses the edge: client-supplied baggage is not forwarded to the services.
_TRACE_CONTEXT = TraceContextTextMapPropagator()
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Edge:
    """The middleware (`middleware`): ids, trace, errors, headers, audit; `route_of` names the request's route."""

    def __init__(
        self,
        *,
        service: str,
        trusted_proxies: tuple[Network, ...],
        max_body: int,
        route_of: Callable[[web.Request], Route | None],
        unauth: UnauthenticatedRequests,
        evidence: Evidence,
        access_log_level: str = "INFO",
    ) -> None:
        self._service = service
        self._trusted = trusted_proxies
        self._max_body = max_body
        self._route_of = route_of
        self._unauth = unauth
        self._evidence = evidence
        self._tracer = trace.get_tracer("sendsafe.gateway")
        level = access_log_level.upper()
        self._access_level = 0 if level == "OFF" else logging.getLevelName(level)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]) -> Any:
        supplied = request.headers.get("X-Request-Id", "")
        request_id = supplied if REQUEST_ID_RE.fullmatch(supplied) else uuid.uuid4().hex
        state = RequestState(request_id=request_id, conn=self._connection(request))
        request[STATE] = state
        route = self._route_of(request)
        state.route = route
        surface = route.surface if route is not None else Surface.for_path(request.path)
        template = route.template if route is not None else ""
        attributes: dict[str, Any] = {
            "http.request.method": request.method,
            "client.address": state.conn.client_address,
            "sendsafe.request_id": request_id,
        }
        if route is not None:
            attributes["http.route"] = template
            # The template, not the path: a path's values may be phone numbers or ids.
            attributes["url.path"] = template
            attributes["sendsafe.rpc"] = route.rpc_path
        # The gateway starts its own trace: the ids in audit evidence are the platform's choice, not the
        # client's. A client's `traceparent` is kept as a link, so its trace still leads here.
        client = trace.get_current_span(_TRACE_CONTEXT.extract(request.headers)).get_span_context()
        links = [trace.Link(client, {"sendsafe.link": "client"})] if client.is_valid else []
        name = f"{request.method} {template}" if template else request.method
        token = callctx.current.set(callctx.CallContext(self._service, None, request_id))
        started = time.perf_counter()
        try:
            with self._tracer.start_as_current_span(
                name, context=otel_context.Context(), kind=SpanKind.SERVER, attributes=attributes, links=links,
                record_exception=False, set_status_on_exception=False,
            ) as span:
                response = await self._respond(request, handler, state, surface)
                response.headers["X-Request-Id"] = request_id
                carrier: dict[str, str] = {}
                _TRACE_CONTEXT.inject(carrier)
                if "traceparent" in carrier:
                    response.headers["traceparent"] = carrier["traceparent"]
                span.set_attribute("http.response.status_code", response.status)
                if state.error is not None:
                    span.set_attribute("error.type", state.error.reason or str(response.status))
                if state.identity is not None:
                    span.set_attribute("sendsafe.account_id", state.identity.account_id)
                    span.set_attribute("sendsafe.api_key_id", state.identity.api_key_id)
                if response.status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                trace_id = format(span.get_span_context().trace_id, "032x")
                await self._evidence.record(request, state, response.status, trace_id)
                # RED by route template (a request no route matched: "unmatched"), never by path or ids.
                elapsed = time.perf_counter() - started
                metrics.observe_http(template or "unmatched", request.method if route is not None else "other",
                                     response.status, state.error.reason if state.error else "", elapsed)
                self._access_line(request, state, template, response, trace_id, elapsed)
                return response
        finally:
            callctx.current.reset(token)

    async def _respond(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[Any]], state: RequestState,
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
            status=failed.http_status, body=dumps(error_body(failed, surface)), content_type=JSON_CONTENT_TYPE,
            headers=failed.headers,
        )

    def _access_line(self, request: web.Request, state: RequestState, template: str,
                     response: web.StreamResponse, trace_id: str, elapsed: float) -> None:
        if not self._access_level or not ACCESS_LOG.isEnabledFor(self._access_level):
            return
        sent = response.body_length if response.prepared else (response.content_length or 0)
        ACCESS_LOG.log(self._access_level, "%s %s %d", request.method, template or "unmatched", response.status, extra={
            "event": "http.access",
            "request_id": state.request_id,
            "trace_id": trace_id,
            "method": request.method if state.route is not None or request.method in _METHODS else "other",
            "route": template or "unmatched",
            "status": response.status,
            "latency_ms": round(elapsed * 1000, 3),
            "bytes": sent,
            "client_address": state.conn.client_address,
            "key_id": state.identity.api_key_id if state.identity is not None else "",
            "reason": state.error.reason if state.error else "",
        })

    def _limited(self, state: RequestState) -> GatewayError | None:
        """Count an unauthenticated failure against the client's network: the 429 when it is over its limit."""
        state.unauthenticated = True
        wait = self._unauth.hit(state.conn.client_address)
        if wait is None:
            return None
        state.rate_limited = True
        return unauthenticated_rate_limited(wait)

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


def _from_http_exception(exc: web.HTTPException, max_body: int) -> GatewayError:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return method_not_allowed(set(exc.allowed_methods))
    if exc.status == 404:
        return not_found()
    if exc.status == 413:
        return body_too_large(max_body)
    status = "INTERNAL" if exc.status >= 500 else "INVALID_ARGUMENT"
    return GatewayError(exc.status, status, f"HTTP_{exc.status}", exc.reason)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)
    response.headers["Server"] = "SendSafe"
