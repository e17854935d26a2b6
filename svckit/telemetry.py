"""Tracing (OpenTelemetry, W3C propagation, OTLP when configured) and JSON logs with trace ids.

Spans carry who/what/where attributes but never secrets or message content: asyncpg spans hold the
SQL text without parameters, Redis spans hold the command name with arguments replaced by `?`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler, SamplingResult
from opentelemetry.trace import SpanKind

from svckit import context as callctx

_instrumented = False


class _RecordWhenObserved(Sampler):
    """Trace and span ids are always made and propagated (responses and audit events carry them), but
    spans are recorded only once something receives them (an OTLP exporter or a test's processor):
    no cost for data nobody reads. Once observed, the usual parent-based choice applies, so
    OTEL_TRACES_SAMPLER-style ratio sampling can be layered in front by the operator.

    A database or Redis call outside any traced operation (a background loop's poll: several a second
    per process) is not recorded: each would be a one-span trace of its own, burying the requests in
    the trace UI. Such a loop's real work is traced by starting a span for it; its calls hang off that.
    gRPC client calls (names `/package.Service/Method`) always start a trace: the callee's work hangs
    off them."""

    def __init__(self) -> None:
        self.observed = False
        self._on = ParentBased(ALWAYS_ON)

    def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
                      *args: Any, **kwargs: Any) -> SamplingResult:
        if not self.observed or (
            kind is SpanKind.CLIENT
            and not name.startswith("/")
            and not trace.get_current_span(parent_context).get_span_context().is_valid
        ):
            return ALWAYS_OFF.should_sample(parent_context, trace_id, name, kind, *args, **kwargs)
        return self._on.should_sample(parent_context, trace_id, name, kind, *args, **kwargs)

    def get_description(self) -> str:
        return "RecordWhenObserved"


_SAMPLER = _RecordWhenObserved()


def setup_tracing(service_name: str, processors: Iterable[SpanProcessor] = ()) -> TracerProvider:
    """Install the process-wide tracer provider (once) and instrument grpc.aio, asyncpg and redis."""
    global _instrumented
    procs = list(processors)
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        provider = current
    else:
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}), sampler=_SAMPLER)
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            _SAMPLER.observed = True
        trace.set_tracer_provider(provider)
    for proc in procs:
        provider.add_span_processor(proc)
        _SAMPLER.observed = True
    if not _instrumented:
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcAioInstrumentorServer
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        GrpcAioInstrumentorServer().instrument()
        GrpcAioInstrumentorClient().instrument()
        AsyncPGInstrumentor(capture_parameters=False).instrument()
        RedisInstrumentor().instrument()
        _instrumented = True
    return provider


def shutdown_tracing() -> None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush(5000)
        provider.shutdown()


def current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, service, trace/span/request ids."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        span_ctx = trace.get_current_span().get_span_context()
        out: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self.service,
        }
        if span_ctx.is_valid:
            out["trace_id"] = format(span_ctx.trace_id, "032x")
            out["span_id"] = format(span_ctx.span_id, "016x")
        rid = callctx.request_id()
        if rid:
            out["request_id"] = rid
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        for key in ("event", "method", "code", "reason"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        return json.dumps(out, default=str)


def setup_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("asyncio").setLevel("WARNING")
