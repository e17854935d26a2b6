"""Streamed routes: a server-streaming RPC that returns `google.api.HttpBody` (a download, e.g. an account export)
is written to the client chunk by chunk as the service sends it, with the first message's content type -- never
gathered in the gateway's memory. Like every route, it is built from the descriptors (no gateway code per route).

The first message is awaited before anything is sent, so a refusal (not found, already downloaded, step-up...)
is an ordinary JSON error with its HTTP status. A failure after the headers went out cannot change the status:
the connection is then cut before the end of the chunked body, so the client sees an incomplete download rather
than a complete-looking one. Each message must arrive within the upstream timeout (an idle stream is cut too).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import grpc
from aiohttp import web
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.errors import GatewayError, from_rpc_error
from gateway.request_state import RequestState

_LOG = logging.getLogger(__name__)
DEFAULT_CONTENT_TYPE = "application/octet-stream"
_TRACE_CONTEXT = TraceContextTextMapPropagator()

StreamCall = Callable[..., Any]  # grpc.aio UnaryStreamMultiCallable


async def serve_stream(
    request: web.Request, state: RequestState, call: StreamCall, msg: Any, metadata: Any, idle_timeout: float
) -> web.StreamResponse:
    """Call the streaming RPC and write each HttpBody's data to the client as it arrives."""
    stream = call(msg, metadata=metadata)
    try:
        first = await _next(stream, state, idle_timeout)
    except BaseException:
        stream.cancel()
        raise
    response = web.StreamResponse(status=200)
    response.content_type = (first.content_type if first is not None else "") or DEFAULT_CONTENT_TYPE
    response.headers["X-Request-Id"] = state.request_id  # the edge adds these after the handler: too late here
    carrier: dict[str, str] = {}
    _TRACE_CONTEXT.inject(carrier)
    if "traceparent" in carrier:
        response.headers["traceparent"] = carrier["traceparent"]
    await response.prepare(request)
    try:
        piece = first
        while piece is not None:
            if piece.data:
                await response.write(piece.data)
            piece = await _next(stream, state, idle_timeout)
    except (GatewayError, ConnectionError, asyncio.CancelledError) as exc:
        stream.cancel()
        if not isinstance(exc, asyncio.CancelledError):
            _LOG.warning("%s: stream cut after the headers: %s", state.route.rpc_path if state.route else "-",
                         getattr(exc, "reason", type(exc).__name__))
            response.force_close()
            if request.transport is not None:
                request.transport.close()  # no final chunk: the client knows the body is incomplete
        if isinstance(exc, asyncio.CancelledError):
            raise
        if isinstance(exc, GatewayError):
            state.error = exc  # the audit event says the download did not complete
        return response
    await response.write_eof()
    return response


async def _next(stream: Any, state: RequestState, idle_timeout: float) -> Any:
    """The next HttpBody, None at the end; a gRPC error as the GatewayError it maps to."""
    try:
        async with asyncio.timeout(idle_timeout):
            piece = await stream.read()
    except grpc.aio.AioRpcError as err:
        state.upstream_code = err.code().name
        raise from_rpc_error(err) from None
    except TimeoutError:
        state.upstream_code = grpc.StatusCode.DEADLINE_EXCEEDED.name
        raise GatewayError(504, "DEADLINE_EXCEEDED", "UPSTREAM_TIMEOUT", "The download stalled; try again.") from None
    if piece is grpc.aio.EOF:
        return None
    return piece
