"""gRPC edge of the audit service: protobuf <-> domain, nothing else."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc

from sendsafe.audit.v1 import audit_service_pb2, audit_service_pb2_grpc, event_pb2
from services.audit.domain import EventFilter, IncomingEvent, page_size, parse_page_token
from services.audit.service import Service
from svckit import context as callctx
from svckit.errors import PermissionDenied


def to_incoming(ev: event_pb2.Event) -> IncomingEvent:
    clean = event_pb2.Event()
    clean.CopyFrom(ev)
    clean.ClearField("sequence")
    clean.ClearField("prev_hash")
    clean.ClearField("hash")
    when = ev.event_time.ToDatetime(tzinfo=UTC) if ev.HasField("event_time") else datetime.now(UTC)
    return IncomingEvent(
        event_id=ev.event_id,
        event_time=when,
        account_id=ev.actor.account_id,
        actor_id=ev.actor.id,
        action=ev.action,
        outcome=int(ev.outcome),
        trace_id=ev.trace_id,
        body=clean.SerializeToString(deterministic=True),
    )


def to_proto(sequence: int, body: bytes, prev_hash: bytes, h: bytes) -> event_pb2.Event:
    ev = event_pb2.Event.FromString(body)
    ev.sequence = sequence
    ev.prev_hash = prev_hash.hex()
    ev.hash = h.hex()
    return ev


def _time(ts: object, present: bool) -> datetime | None:
    return ts.ToDatetime(tzinfo=UTC) if present else None  # type: ignore[attr-defined]


class AuditServicer(audit_service_pb2_grpc.AuditServiceServicer):
    def __init__(self, service: Service) -> None:
        self.service = service

    async def AppendEvents(
        self, request: audit_service_pb2.AppendEventsRequest, context: grpc.aio.ServicerContext
    ) -> audit_service_pb2.AppendEventsResponse:
        first, last = await self.service.append_events([to_incoming(e) for e in request.events])
        return audit_service_pb2.AppendEventsResponse(first_sequence=first, last_sequence=last)

    async def ListEvents(
        self, request: audit_service_pb2.ListEventsRequest, context: grpc.aio.ServicerContext
    ) -> audit_service_pb2.ListEventsResponse:
        principal = callctx.principal()
        if principal is None or not principal.account_id:
            raise PermissionDenied("listing events needs an account principal")
        limit = page_size(request.page_size)
        rows = await self.service.list_events(
            EventFilter(
                account_id=principal.account_id,
                start_time=_time(request.start_time, request.HasField("start_time")),
                end_time=_time(request.end_time, request.HasField("end_time")),
                action=request.action,
                actor_id=request.actor_id,
                after_sequence=parse_page_token(request.page_token),
                limit=limit,
            )
        )
        events = [to_proto(*r) for r in rows]
        token = str(rows[-1][0]) if len(rows) == limit else ""
        return audit_service_pb2.ListEventsResponse(events=events, next_page_token=token)
