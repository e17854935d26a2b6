"""grpc.aio server bootstrap: mTLS, caller authorization, error mapping, health, graceful shutdown.

Every RPC goes through `Guard`:
1. the caller's SPIFFE identity (from its client certificate) must be in the RPC's allowed callers;
2. an end-user principal is accepted only from the gateway, and the RPC's declared permission must be
   among the principal's permissions; one declared `session_only` is refused to anything but an interactive
   session (SESSION_REQUIRED: a leaked API key never changes a password, a second factor or sessions);
3. an RPC declared `privileged`, called with a session, needs a second factor verified within the step-up
   age (UNAUTHENTICATED, STEP_UP_REQUIRED; API keys are machine credentials and are scoped instead), and
   one declaring `data_out: DATA_OUT_DESTINATION` is refused to a de-identified user (DEIDENTIFIED_USER);
4. the call context (caller, principal, request id, privileged) is set for the handler: inside a
   privileged call the audit client stores every event before returning (fail closed, svckit.audit);
5. DomainError becomes the mapped gRPC status with google.rpc.Status + ErrorInfo; a database, Redis or
   other dependency that cannot be reached becomes UNAVAILABLE (BACKEND_UNAVAILABLE, retry); anything
   else becomes INTERNAL with a generic message (details go to the log with the trace id).
Denials are reported to `on_denied` (the audit client) before the call is refused. Calls of RPCs that declare
`coalesce`, carried together in one BatchService.CallBatch (svckit.batching), go through the same guard one by
one with their own metadata: the batch itself grants nothing.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import redis.exceptions
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from sendsafe.context.v1 import principal_pb2
from svckit import batching, metrics, telemetry
from svckit import context as callctx
from svckit.access import (
    DEIDENTIFIED_MESSAGE,
    DEIDENTIFIED_USER,
    SESSION_REQUIRED,
    SESSION_REQUIRED_MESSAGE,
    STEP_UP_REQUIRED,
    Access,
    access_for,
    destination_refused,
    second_factor_within,
)
from svckit.errors import ERROR_DOMAIN, DomainError
from svckit.tls import TlsFiles, peer_service, server_credentials

_LOG = logging.getLogger(__name__)
PRINCIPAL_ISSUERS = frozenset({"gateway"})
# Every connection is made again within this time (grpc adds +-10 % jitter): both sides handshake with
# their current certificates, and a caller's round_robin channel resolves a headless Service again, so
# pods added by a scale-up get calls within minutes rather than when a connection happens to break.
MAX_CONNECTION_AGE_SECONDS = 300.0
# A privileged RPC on a session needs a second factor at most this old (RFC 9470 max_age); every service
# and the gateway read it from STEP_UP_MAX_AGE_SECONDS.
STEP_UP_MAX_AGE_SECONDS = 300
_OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


# A store or peer that is down, restarting or out of connections: the same call can succeed a moment later.
_OUTAGES: tuple[type[BaseException], ...] = (
    ConnectionError,  # refused, reset, aborted, broken pipe
    socket.gaierror,  # its name does not resolve (yet)
    TimeoutError,
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08, and a connection lost mid-call
    asyncpg.CannotConnectNowError,  # starting up or shutting down
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    # asyncpg's report of a pooled connection the server terminated while it sat idle ("cannot switch to
    # state 15; another operation (2) is in progress"), seen when PostgreSQL restarts under load.
    asyncpg.InternalClientError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


def is_outage(exc: BaseException) -> bool:
    """The error, or one it was raised while handling (a transaction that cannot roll back on a
    connection the server closed raises InterfaceError over the original), is a store outage."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, _OUTAGES):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@dataclass(frozen=True)
class Denial:
    method: str
    caller: str | None
    reason: str
    principal: principal_pb2.Principal | None
    peer: str
    request_id: str = ""  # the refused call's own (the call context is not set yet when it is refused)


OnDenied = Callable[[Denial], Awaitable[None]]


class _RichStatus(grpc.Status):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, bytes], ...]) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing


def status_for(code: grpc.StatusCode, reason: str, message: str, metadata: dict[str, str] | None = None) -> Any:
    """A grpc.Status carrying google.rpc.Status with ErrorInfo, for context.abort_with_status."""
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata or {})
    detail = any_pb2.Any()
    detail.Pack(info)
    rich = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    _ABORTING.set((code.name, reason))
    return _RichStatus(code, message, (("grpc-status-details-bin", rich.SerializeToString()),))


# The code and reason of the status the current call is aborting with (status_for sets it), for its metrics.
_ABORTING: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("sendsafe_aborting", default=None)


def _outcome(exc: BaseException | None, context: grpc.aio.ServicerContext) -> tuple[str, str]:
    """A finished call's gRPC code and reason (bounded sets: codes and UPPER_SNAKE reasons)."""
    if exc is None:
        return "OK", ""
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED", ""
    aborting = _ABORTING.get()
    if aborting is not None:
        return aborting
    code = context.code() if isinstance(exc, grpc.aio.AbortError) else None
    return (code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"), ""


async def _abort_for(method: str, context: grpc.aio.ServicerContext, exc: Exception) -> None:
    """End a call that raised: a DomainError as its mapped status, an outage as UNAVAILABLE (retry), anything
    else as INTERNAL with a generic message (the details go to the log)."""
    if isinstance(exc, DomainError):
        await context.abort_with_status(status_for(grpc.StatusCode[exc.code], exc.reason, exc.message, exc.metadata))
    rid = callctx.request_id()
    if is_outage(exc):
        _LOG.warning("%s: a dependency is unavailable: %s: %s", method, type(exc).__name__, exc)
        await context.abort_with_status(status_for(
            grpc.StatusCode.UNAVAILABLE, "BACKEND_UNAVAILABLE",
            f"a system this service depends on is unavailable right now; try again shortly"
            f" (request id {rid})", {"retry_after_seconds": "1"},
        ))
    _LOG.error("unhandled error in %s", method, exc_info=exc)
    await context.abort_with_status(
        status_for(grpc.StatusCode.INTERNAL, "INTERNAL", f"internal error (request id {rid})")
    )


class Guard(grpc.aio.ServerInterceptor):
    def __init__(self, on_denied: OnDenied | None = None, *, step_up_max_age_seconds: int = STEP_UP_MAX_AGE_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self._on_denied = on_denied
        self._step_up_max_age = step_up_max_age_seconds
        self._clock = clock
        # A server's handlers are fixed once it starts, so each method's guarded handler is built once.
        self._guarded: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        known = self._guarded.get(method)
        if known is not None:
            return known
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(_OPEN_PREFIXES):
            return handler
        guard = self
        if handler.unary_stream is not None:  # server streaming (a download): the same checks, then each item
            stream = handler.unary_stream

            async def guarded_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started = time.perf_counter()
                failure: BaseException | None = None
                try:
                    trace_token, token = await guard._admit(method, context)
                    try:
                        async for item in stream(request, context):
                            yield item
                    except (asyncio.CancelledError, grpc.aio.AbortError):
                        raise
                    except Exception as exc:
                        await _abort_for(method, context, exc)
                    finally:
                        callctx.current.reset(token)
                        telemetry.end_trace(trace_token)
                except BaseException as exc:
                    failure = exc
                    raise
                finally:
                    metrics.observe_rpc(method, *_outcome(failure, context), time.perf_counter() - started)

            self._guarded[method] = grpc.unary_stream_rpc_method_handler(
                guarded_stream, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
            return self._guarded[method]
        if handler.unary_unary is None:
            raise NotImplementedError("only unary and server-streaming RPCs are guarded so far")
        self._guarded[method] = grpc.unary_unary_rpc_method_handler(
            self.guard_unary(method, handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        return self._guarded[method]

    def guard_unary(self, method: str, inner: Callable[[Any, Any], Awaitable[Any]], *, batched: bool = False
                    ) -> Callable[[Any, Any], Awaitable[Any]]:
        """`inner` behind every check, with its metrics and error mapping. `batched`: a call that came inside
        a BatchService.CallBatch (svckit.batching): its method must declare `coalesce`, and its own trace
        headers are continued even when the gRPC instrumentation continues the batch's."""
        guard = self

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            failure: BaseException | None = None
            try:
                trace_token, token = await guard._admit(method, context, batched=batched)
                try:
                    if batched and telemetry.instrumented():  # the instrumentation's span is the batch's
                        with telemetry.span(method.lstrip("/"), kind="server", attributes={"rpc.batched": True}):
                            return await inner(request, context)
                    return await inner(request, context)
                except (asyncio.CancelledError, grpc.aio.AbortError):
                    raise
                except Exception as exc:
                    await _abort_for(method, context, exc)
                finally:
                    callctx.current.reset(token)
                    telemetry.end_trace(trace_token)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                metrics.observe_rpc(method, *_outcome(failure, context), time.perf_counter() - started)

        return guarded

    async def _admit(self, method: str, context: grpc.aio.ServicerContext, *, batched: bool = False
                     ) -> tuple[object | None, Any]:
        """Continue the caller's trace, check the caller and permission, set the call context; returns
        the tokens that undo the last two (a refused call ends here, its trace token left to the task)."""
        metadata = {k: v for k, v in (context.invocation_metadata() or ())}
        trace_token = telemetry.continue_trace(metadata, always=batched)
        access = access_for(method)
        caller = peer_service(dict(context.auth_context()))  # type: ignore[arg-type]
        principal: principal_pb2.Principal | None = None
        raw = metadata.get(callctx.PRINCIPAL_METADATA_KEY)
        if raw and caller in PRINCIPAL_ISSUERS:
            principal = principal_pb2.Principal.FromString(raw if isinstance(raw, bytes) else raw.encode())
        request_id = str(metadata.get(callctx.REQUEST_ID_METADATA_KEY) or "") or (
            principal.request_id if principal and principal.request_id else uuid.uuid4().hex
        )
        refused = self._refusal(method, access, caller, principal, batched)
        if refused is not None:
            await self._deny(context, Denial(method, caller, refused[0], principal, context.peer(), request_id),
                             *refused[1:])
        return trace_token, callctx.current.set(
            callctx.CallContext(caller or "", principal, request_id, privileged=bool(access and access.privileged))
        )

    def _refusal(self, method: str, access: Access | None, caller: str | None,
                 principal: principal_pb2.Principal | None, batched: bool
                 ) -> tuple[str, str, grpc.StatusCode, dict[str, str] | None] | None:
        """Why the call is refused (reason, message, code, ErrorInfo metadata), or None when it may go on."""
        denied = grpc.StatusCode.PERMISSION_DENIED
        if access is None or caller is None or caller not in access.allowed_callers:
            return "CALLER_NOT_ALLOWED", f"service {caller or 'unknown'!s} may not call {method}", denied, None
        if batched and not access.coalesce:
            return "NOT_COALESCIBLE", f"{method} does not declare coalesce: call it on its own", denied, None
        if access.permission and (principal is None or access.permission not in principal.permissions):
            return "MISSING_PERMISSION", f"this call needs the {access.permission!r} permission", denied, None
        if access.session_only and (principal is None or principal.auth_method != principal_pb2.AUTH_METHOD_SESSION):
            return SESSION_REQUIRED, SESSION_REQUIRED_MESSAGE, denied, None
        if access.privileged and principal is not None and not self._stepped_up(principal):
            max_age = self._step_up_max_age
            return (STEP_UP_REQUIRED, f"this action needs a second factor verified within the last {max_age}"
                    " seconds: POST /v1/auth/step-up, then retry",
                    grpc.StatusCode.UNAUTHENTICATED, {"max_age": str(max_age)})
        if principal is not None and destination_refused(access, principal.sms_deidentify_message):
            return DEIDENTIFIED_USER, DEIDENTIFIED_MESSAGE, denied, None
        return None

    def _stepped_up(self, p: principal_pb2.Principal) -> bool:
        """A session's second factor is recent enough; API keys are machine credentials (scoped instead)."""
        if p.auth_method != principal_pb2.AUTH_METHOD_SESSION:
            return True
        mfa = p.mfa_time.seconds + p.mfa_time.nanos / 1e9 if p.HasField("mfa_time") else None
        return second_factor_within(mfa, self._step_up_max_age, self._clock())

    async def _deny(self, context: grpc.aio.ServicerContext, denial: Denial, message: str, code: grpc.StatusCode,
                    metadata: dict[str, str] | None) -> None:
        if self._on_denied is not None:
            try:
                await self._on_denied(denial)
            except Exception:
                _LOG.exception("could not record denial")
        await context.abort_with_status(status_for(code, denial.reason, message, metadata))


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: HealthServicer
    health_server: grpc.aio.Server | None
    health_port: int | None

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self.health_server is not None:
            await self.health_server.stop(0)


async def start_server(
    *,
    listen: str,
    tls: TlsFiles,
    register: Callable[[grpc.aio.Server], None],
    service_names: Iterable[str],
    on_denied: OnDenied | None = None,
    health_listen: str = "",
    max_connection_age_seconds: float = MAX_CONNECTION_AGE_SECONDS,
    step_up_max_age_seconds: int = STEP_UP_MAX_AGE_SECONDS,
) -> RunningServer:
    """Start an mTLS server on `listen` (use port 0 in tests) with the guard and health service.

    Connections are closed gracefully (GOAWAY; clients reconnect by themselves) after
    `max_connection_age_seconds`, so every connection makes a fresh handshake within that time: a
    rotated certificate or trust bundle, on either side, is in force everywhere without a restart.
    """
    age_ms = int(max_connection_age_seconds * 1000)
    guard = Guard(on_denied, step_up_max_age_seconds=step_up_max_age_seconds)
    server = grpc.aio.server(
        interceptors=[guard],
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_connection_age_ms", age_ms),
            ("grpc.max_connection_age_grace_ms", 30_000),  # calls in flight get this long to finish
        ],
    )
    recorder = batching.HandlerRecorder(server)
    register(recorder)  # type: ignore[arg-type]  # stands for the server, keeping its handlers
    names = list(service_names)
    if batching.add_batch_service(
        server, recorder.handlers, lambda method, inner: guard.guard_unary(method, inner, batched=True),
        lambda method: bool((access := access_for(method)) and access.coalesce),
    ):
        names.append(batching.SERVICE_NAME)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_secure_port(listen, server_credentials(tls))
    if port == 0:
        raise OSError(f"cannot bind {listen}")
    await server.start()
    health_server = None
    health_port = None
    if health_listen:
        # Plaintext, health only: kubelet's native gRPC probe cannot present a client certificate.
        health_server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health, health_server)
        health_port = health_server.add_insecure_port(health_listen)
        await health_server.start()
    for name in ["", *names]:
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, port, health, health_server, health_port)


async def wait_for_shutdown_signal() -> None:
    """Return on SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
