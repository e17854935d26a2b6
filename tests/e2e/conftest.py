"""The whole suite as real processes, driven only through HTTPS like a customer would.

The fixtures `suite`, `customer` and `otlp` live in tests/conftest.py: tests/security shares the one suite."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass
class SpanRecord:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, str]
    links: tuple[str, ...] = ()  # the trace ids this span links to


@dataclass
class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A minimal OTLP/gRPC trace receiver: what every process exports lands here."""

    spans: list[SpanRecord] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.arrived = threading.Condition(self.lock)

    def Export(self, request, context):  # type: ignore[no-untyped-def]
        with self.lock:
            for rs in request.resource_spans:
                service = next(
                    (a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), ""
                )
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        attrs = {a.key: str(getattr(a.value, a.value.WhichOneof("value") or "string_value"))
                                 for a in s.attributes}
                        self.spans.append(SpanRecord(service, s.name, s.trace_id.hex(), s.span_id.hex(),
                                                     s.parent_span_id.hex(), attrs,
                                                     tuple(link.trace_id.hex() for link in s.links)))
            self.arrived.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def wait_for(self, predicate, timeout: float = 20.0) -> list[SpanRecord]:  # type: ignore[no-untyped-def]
        """Block until `predicate(spans)` is true (spans arrive in export batches) or time out."""
        with self.arrived:
            self.arrived.wait_for(lambda: predicate(list(self.spans)), timeout)
            return list(self.spans)


@dataclass(frozen=True)
class Customer:
    url: str
    username: str
    api_key: str
    ca: Path
