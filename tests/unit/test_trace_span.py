"""`svckit.telemetry.span` continues the one trace its work was handed over from, and links to each when a
batch gathers several (a stream batch, an audit append)."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from svckit import telemetry

A = "00-" + "a" * 32 + "-" + "1" * 16 + "-01"
B = "00-" + "b" * 32 + "-" + "2" * 16 + "-01"


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    out = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(out))
    monkeypatch.setattr(telemetry.trace, "get_tracer", lambda name, *a, **k: provider.get_tracer(name))
    return out


def test_one_origin_is_continued(exporter: InMemorySpanExporter) -> None:
    with telemetry.span("work", kind="consumer", traceparents=[A, A, ""], attributes={"n": 2}):
        assert telemetry.current_traceparent().split("-")[1] == "a" * 32
    (done,) = exporter.get_finished_spans()
    assert format(done.context.trace_id, "032x") == "a" * 32 and done.parent is not None
    assert format(done.parent.span_id, "016x") == "1" * 16 and done.kind is trace.SpanKind.CONSUMER
    assert not done.links and done.attributes == {"n": 2}


def test_several_origins_are_links_of_a_new_trace(exporter: InMemorySpanExporter) -> None:
    with telemetry.span("batch", traceparents=[A, B, "garbage"]):
        pass
    (done,) = exporter.get_finished_spans()
    assert done.parent is None and format(done.context.trace_id, "032x") not in ("a" * 32, "b" * 32)
    assert {format(link.context.trace_id, "032x") for link in done.links} == {"a" * 32, "b" * 32}


def test_no_origin_is_a_child_of_the_current_span(exporter: InMemorySpanExporter) -> None:
    with telemetry.span("outer") as outer, telemetry.span("inner", traceparents=[""]):
        pass
    inner = exporter.get_finished_spans()[0]
    assert inner.parent is not None and inner.parent.span_id == outer.get_span_context().span_id
