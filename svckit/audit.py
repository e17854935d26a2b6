"""The audit client every service and the gateway use to record events.

Events are buffered (bounded), sent in batches, and retried with backoff until the audit service
stores them; the audit service ignores duplicates by event id, so retries never double-record. When
the buffer is full, `record` waits (back-pressure) rather than dropping. A batch the service refuses as
invalid is split until the invalid event is alone: that one is dropped (logged; a strict caller gets
AuditUnavailable), so it can never hold up the events behind it. `record_strict` waits until
the event is stored and raises `AuditUnavailable` when it cannot be within its deadline: privileged
actions use it and are refused when their evidence cannot be written (fail closed). Inside an RPC the
protos declare `privileged` (the guard marks the call context), `record` of a successful action is
`record_strict`, so no use case can forget: call it before the change commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping

import grpc
from google.protobuf import timestamp_pb2

from sendsafe.audit.v1 import audit_service_pb2, audit_service_pb2_grpc, event_pb2
from svckit import context as callctx
from svckit.errors import Unavailable
from svckit.server import Denial, OnDenied
from svckit.telemetry import current_trace_id, current_traceparent, span

_LOG = logging.getLogger(__name__)
Outcome = event_pb2.Outcome


class AuditUnavailable(Unavailable):
    reason = "AUDIT_UNAVAILABLE"


def new_event(
    service: str,
    action: str,
    *,
    outcome: int = event_pb2.OUTCOME_SUCCESS,
    resource_type: str = "",
    resource_id: str = "",
    error_reason: str = "",
    details: Mapping[str, str] | None = None,
    account_id: int | None = None,
    subject_account_id: int = 0,
) -> event_pb2.Event:
    """An event with who/where/request/trace filled from the current call context. `subject_account_id`
    names the account acted on when it is not the actor's (staff access): the event then shows in that
    account's audit feed."""
    now = time.time_ns()
    ev = event_pb2.Event(
        event_id=uuid.uuid4().hex,
        event_time=timestamp_pb2.Timestamp(seconds=now // 1_000_000_000, nanos=now % 1_000_000_000),
        action=action,
        outcome=outcome,  # type: ignore[arg-type]
        error_reason=error_reason,
        request_id=callctx.request_id(),
        trace_id=current_trace_id(),
        service=service,
        details=dict(details or {}),
    )
    ev.resource.type = resource_type
    ev.resource.id = resource_id
    ctx = callctx.get()
    p = ctx.principal if ctx else None
    if p is not None:
        ev.actor.type = "staff" if p.staff else "user"
        ev.actor.id = str(p.user_id)
        ev.actor.account_id = p.account_id
        ev.actor.auth_method = {1: "api_key", 2: "session"}.get(p.auth_method, "")
        ev.actor.api_key_id = p.api_key_id
        ev.actor.session_id = p.session_id
        ev.source.client_address = p.client_address
        ev.source.user_agent = p.user_agent
        ev.source.tls_version = p.tls_version
        ev.source.tls_cipher = p.tls_cipher
    elif ctx is not None and ctx.caller:
        ev.actor.type = "service"
        ev.actor.id = ctx.caller
    else:
        ev.actor.type = "service"
        ev.actor.id = service
    if account_id is not None:
        ev.actor.account_id = account_id
    ev.subject_account_id = subject_account_id
    return ev


class AuditClient:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        batch_size: int = 500,
        max_buffer: int = 20_000,
        linger: float = 0.05,  # gathers a busy caller's events into ~20 calls a second
        rpc_timeout: float = 5.0,
        retry_cap: float = 2.0,
        stub: audit_service_pb2_grpc.AuditServiceStub | None = None,
        strict_timeout: float = 5.0,
    ) -> None:
        self._stub = stub or audit_service_pb2_grpc.AuditServiceStub(channel)
        self._queue: asyncio.Queue[tuple[event_pb2.Event, asyncio.Future[None] | None]] = asyncio.Queue(max_buffer)
        self._batch_size = batch_size
        self._linger = linger
        self._rpc_timeout = rpc_timeout
        self._retry_cap = retry_cap
        self._strict_timeout = strict_timeout
        self._task: asyncio.Task[None] | None = None
        # event id -> traceparent of the operation that recorded it: the append's span continues (or links to) it.
        self._origins: dict[str, str] = {}
        self.sent = 0
        self.refused = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="audit-flusher")

    async def record(self, event: event_pb2.Event) -> None:
        """Queue an event; waits only when the buffer is full. Inside a privileged call, a successful
        action's event is stored before this returns (`record_strict`): the action fails closed. (A refused
        or failed attempt changed nothing, so its event is only queued.)"""
        if event.outcome == event_pb2.OUTCOME_SUCCESS and callctx.privileged():
            await self.record_strict(event)
            return
        self._origin(event)
        await self._queue.put((event, None))

    async def record_strict(self, event: event_pb2.Event, timeout: float | None = None) -> None:
        """Store the event or raise AuditUnavailable within `timeout` seconds (the client's default)."""
        timeout = self._strict_timeout if timeout is None else timeout
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._origin(event)
        try:
            async with asyncio.timeout(timeout):
                await self._queue.put((event, fut))
                await asyncio.shield(fut)
        except TimeoutError:
            # The caller refuses the action; an event still waiting in the buffer is dropped so the log
            # does not later claim it happened. (One already in flight may still land: emitters record
            # a superseding failure event for that case.)
            fut.cancel()
            raise AuditUnavailable("the audit log cannot record this action now; it was not performed") from None

    def _origin(self, event: event_pb2.Event) -> None:
        traceparent = current_traceparent()
        if traceparent:
            self._origins[event.event_id] = traceparent

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything queued so far is stored."""
        async with asyncio.timeout(timeout):
            await self._queue.join()

    async def close(self, timeout: float = 10.0) -> None:
        with contextlib.suppress(TimeoutError):
            await self.flush(timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._queue.qsize():
            _LOG.error("audit client closed with %d events not stored", self._queue.qsize())

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            if self._linger:
                await asyncio.sleep(self._linger)
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            live = [(ev, fut) for ev, fut in batch if fut is None or not fut.cancelled()]
            origins = [self._origins.pop(ev.event_id, "") for ev, _ in batch]
            if live:
                # A span per append: one recording operation's events continue its trace, a batch gathered
                # from several links to each of theirs (attributes: counts only, never the events' details).
                with span("audit.append", traceparents=origins,
                          attributes={"sendsafe.audit.events": len(live)}):
                    await self._send(live)
            for _ in batch:
                self._queue.task_done()

    async def _send(self, batch: list[tuple[event_pb2.Event, asyncio.Future[None] | None]]) -> None:
        delay = 0.05
        while True:
            # A strict caller that gave up refused its action: its event must not be stored by a later retry.
            batch = [(ev, fut) for ev, fut in batch if fut is None or not fut.cancelled()]
            if not batch:
                return
            request = audit_service_pb2.AppendEventsRequest(events=[ev for ev, _ in batch])
            try:
                await self._stub.AppendEvents(request, timeout=self._rpc_timeout)
                break
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    await self._isolate(batch)
                    return
                _LOG.warning("audit append failed (%s); retrying %d events", err.code().name, len(batch))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_cap)
        self.sent += len(batch)
        for _, fut in batch:
            if fut is not None and not fut.done():
                fut.set_result(None)

    async def _isolate(self, batch: list[tuple[event_pb2.Event, asyncio.Future[None] | None]]) -> None:
        """The service refused the batch as invalid: send its halves, so only the bad event is refused."""
        if len(batch) > 1:
            half = len(batch) // 2
            await self._send(batch[:half])
            await self._send(batch[half:])
            return
        (ev, fut), = batch
        _LOG.error("the audit service refused event %s (%s) as invalid; it is dropped", ev.event_id, ev.action)
        self.refused += 1
        if fut is not None and not fut.done():
            fut.set_exception(AuditUnavailable("the audit log refused this action's event; it was not performed"))


def denial_recorder(record: Callable[[event_pb2.Event], Awaitable[None]], service: str) -> OnDenied:
    """An `on_denied` hook for svckit.server that records refused calls as audit events."""

    async def on_denied(denial: Denial) -> None:
        ev = new_event(
            service,
            "rpc.denied",
            outcome=event_pb2.OUTCOME_DENIED,
            resource_type="rpc",
            resource_id=denial.method,
            error_reason=denial.reason,
            details={"caller": denial.caller or "unknown", "peer": denial.peer},
        )
        ev.request_id = denial.request_id or ev.request_id
        p = denial.principal
        if p is not None:
            ev.actor.type = "user"
            ev.actor.id = str(p.user_id)
            ev.actor.account_id = p.account_id
            ev.actor.api_key_id = p.api_key_id
            ev.source.client_address = p.client_address
        else:
            ev.actor.type = "service"
            ev.actor.id = denial.caller or "unknown"
        await record(ev)

    return on_denied
