"""Background polling does not flood the trace UI: a database call outside any traced operation is not
recorded, the same call inside one is; a gRPC call always starts a trace (the callee's work hangs off it).
"""

from __future__ import annotations

import uuid

import asyncpg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from svckit.app import App
from svckit.telemetry import setup_tracing
from tests.conftest import channel_as
from tests.support import CertBundle, NewDatabase


async def test_only_operations_start_traces(new_database: NewDatabase, certs: CertBundle, audit_app: App) -> None:
    exporter = InMemorySpanExporter()
    setup_tracing("tracing-test", [SimpleSpanProcessor(exporter)])
    outside, inside = f"poll_{uuid.uuid4().hex}", f"job_{uuid.uuid4().hex}"
    conn = await asyncpg.connect(await new_database("tracing"))
    try:
        await conn.fetchval(f"SELECT 1 AS {outside}")  # a background loop's poll
        with trace.get_tracer("test").start_as_current_span("background job"):
            await conn.fetchval(f"SELECT 1 AS {inside}")
    finally:
        await conn.close()
    async with channel_as(certs, "gateway", audit_app.port, "audit") as ch:
        await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())

    spans = exporter.get_finished_spans()
    statements = " ".join(str(s.attributes.get("db.statement", "")) for s in spans if s.attributes)
    assert inside in statements and outside not in statements
    (job,) = [s for s in spans if s.name == "background job"]
    (query,) = [s for s in spans if s.attributes and inside in str(s.attributes.get("db.statement", ""))]
    assert query.parent is not None and query.parent.span_id == job.context.span_id
    (call,) = [s for s in spans if s.name == "/grpc.health.v1.Health/Check" and s.kind is trace.SpanKind.CLIENT]
    assert call.parent is None  # a root span, recorded
