"""Tracing (OpenTelemetry, W3C propagation, OTLP when configured) and JSON logs with trace ids.

Spans carry who/what/where attributes but never secrets or message content: asyncpg spans hold the
SQL text without parameters, Redis spans hold the command name with arguments replaced by `?`.

The grpc.aio, asyncpg and redis instrumentation is installed once spans are observed (an OTLP
endpoint is set, or a test passes a span processor). Until then it would only cost: its interceptors
took about a quarter of a service's CPU per call in `make bench`, for spans nobody receives. Trace
context still crosses every call without it: `svckit.rpc` injects the W3C headers into outgoing
metadata (`outgoing_trace_metadata`) and the server's `Guard` continues them (`continue_trace`), so
trace ids in responses, logs and audit events stay the same either way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

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
        self._on: Sampler = ParentBased(ALWAYS_ON)

    def configure(self, env: Mapping[str, str]) -> None:
        """The standard OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG choice (default parentbased_always_on)."""
        self._on = sampler_from_env(env)

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
_SAMPLERS = {"always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off",
             "parentbased_traceidratio"}


def sampler_from_env(env: Mapping[str, str]) -> Sampler:
    """OTEL_TRACES_SAMPLER (one of `_SAMPLERS`; default parentbased_always_on) with OTEL_TRACES_SAMPLER_ARG
    (the ratio, 0..1, for the *traceidratio ones; default 1). An unknown name or ratio is a start-up error."""
    name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
    if name not in _SAMPLERS:
        raise ValueError(f"OTEL_TRACES_SAMPLER: one of {', '.join(sorted(_SAMPLERS))} (got {name!r})")
    raw = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip() or "1"
    try:
        ratio = float(raw)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"OTEL_TRACES_SAMPLER_ARG: a ratio between 0 and 1 (got {raw!r})")
    root: Sampler = {"always_on": ALWAYS_ON, "always_off": ALWAYS_OFF}.get(
        name.removeprefix("parentbased_"), TraceIdRatioBased(ratio))
    return ParentBased(root) if name.startswith("parentbased_") else root


def setup_tracing(service_name: str, processors: Iterable[SpanProcessor] = ()) -> TracerProvider:
    """Install the process-wide tracer provider (once); once spans are observed, instrument grpc.aio,
    asyncpg and redis (servers and channels built after that carry the gRPC interceptors)."""
    global _instrumented
    procs = list(processors)
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        provider = current
    else:
        _SAMPLER.configure(os.environ)
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}), sampler=_SAMPLER)
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            _SAMPLER.observed = True
        trace.set_tracer_provider(provider)
    for proc in procs:
        provider.add_span_processor(proc)
        _SAMPLER.observed = True
    if _SAMPLER.observed and not _instrumented:
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcAioInstrumentorServer
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        GrpcAioInstrumentorServer().instrument()
        GrpcAioInstrumentorClient().instrument()
        AsyncPGInstrumentor(capture_parameters=False).instrument()
        RedisInstrumentor().instrument()
        _instrumented = True
    return provider


def instrumented() -> bool:
    """Whether the OpenTelemetry instrumentation carries trace context over gRPC (else svckit does)."""
    return _instrumented


def outgoing_trace_metadata() -> list[tuple[str, str]]:
    """The W3C trace headers of the current context, for an outgoing call's metadata; none when the
    gRPC instrumentation is installed (its client interceptor adds them with its own client span)."""
    if _instrumented:
        return []
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return list(carrier.items())


def trace_headers() -> list[tuple[str, str]]:
    """The W3C trace headers of the current context, always (a call carried inside a batch needs its own:
    the instrumentation only propagates the batch call's)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return list(carrier.items())


def continue_trace(metadata: Mapping[str, Any], *, always: bool = False) -> object | None:
    """Make the caller's trace (W3C headers in `metadata`) current for the call being served; returns
    the token for `end_trace`. None when the gRPC instrumentation is installed (it does this itself),
    unless `always`: a call carried inside a batch, whose own headers the instrumentation never sees."""
    if _instrumented and not always:
        return None
    return otel_context.attach(propagate.extract(metadata))


def end_trace(token: object | None) -> None:
    if token is not None:
        otel_context.detach(token)  # type: ignore[arg-type]


def shutdown_tracing() -> None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush(5000)
        provider.shutdown()


_W3C = TraceContextTextMapPropagator()


def current_traceparent() -> str:
    """The W3C `traceparent` of the current span ("" outside any trace): what work handed over through a
    queue carries, so whoever takes it up continues or links to the trace that asked for it."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier.get("traceparent", "")


def _span_contexts(traceparents: Iterable[str]) -> list[trace.SpanContext]:
    """The valid span contexts named by W3C traceparents, each once, in order."""
    found: dict[tuple[int, int], trace.SpanContext] = {}
    for header in traceparents:
        if header:
            ctx = trace.get_current_span(_W3C.extract({"traceparent": header})).get_span_context()
            if ctx.is_valid:
                found.setdefault((ctx.trace_id, ctx.span_id), ctx)
    return list(found.values())


def link_traces(traceparents: Iterable[str]) -> None:
    """Link the current span to the spans the traceparents name (at most 128): for work that learns which
    traces it serves only as it runs, e.g. a receipt that finds the send's stored traceparent."""
    current = trace.get_current_span()
    if current.is_recording():
        for ctx in _span_contexts(traceparents)[:128]:
            current.add_link(ctx)


@contextlib.contextmanager
def span(name: str, *, kind: str = "internal", attributes: Mapping[str, Any] | None = None,
         traceparents: Iterable[str] = (), links: Iterable[str] = ()) -> Iterator[trace.Span]:
    """A span of `name` around a unit of work, for modules that must not import OpenTelemetry (the service
    layer). With `traceparents` (from `current_traceparent`, e.g. carried by a stream entry) the span
    continues that trace when they all name one span, and starts its own trace linking to each of them
    otherwise (a batch gathered from several requests). `links` (traceparents too) are only linked: the
    span stays where it is (work done long after, such as a webhook for a send's receipt). Attributes are
    ids, counts and outcomes: never a secret, a body or a phone number."""
    parents = _span_contexts(traceparents)
    context = None
    linked: list[trace.Link] = []
    if len(parents) == 1:
        context = trace.set_span_in_context(trace.NonRecordingSpan(parents[0]))
    elif parents:
        linked = [trace.Link(ctx) for ctx in parents[:128]]
        context = otel_context.Context()  # a new trace of its own, linked to every request in the batch
    linked += [trace.Link(ctx) for ctx in _span_contexts(links)[:128]]
    tracer = trace.get_tracer("sendsafe")
    with tracer.start_as_current_span(name, context=context, kind=SpanKind[kind.upper()],
                                      attributes=dict(attributes or {}), links=linked) as current:
        yield current


def set_span_attributes(**attributes: Any) -> None:
    """Add attributes to the current span (ids, counts, outcomes; never secrets, bodies or numbers)."""
    trace.get_current_span().set_attributes(attributes)


def current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


# LogRecord's own attributes: everything else on a record came from `extra=` and is logged.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
# Extra fields whose NAME says they may hold a secret, a body or personal data are logged as "<redacted>"
# (as `svckit.config` shows secret settings); ids such as `api_key_id` stay. Values that look like an
# API key are redacted whatever their name, in the message too.
_SECRET_NAME = re.compile(
    r"pass(word|wd|phrase)?|secret|token|authori[sz]ation|cookie|credential|private|signature"
    r"|api_?key$|body|content|phone|msisdn|number|email|^to$|^from$|otp|recovery|query",
    re.IGNORECASE,
)
_API_KEY_VALUE = re.compile(r"ss_(live|test)_[0-9A-Za-z]{12}_[0-9A-Za-z]{20,}")
REDACTED = "<redacted>"


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _API_KEY_VALUE.sub(REDACTED, value)
    if isinstance(value, Mapping):
        return {str(k): REDACTED if _SECRET_NAME.search(str(k)) else _scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_scrub(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _scrub(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, service, trace/span/request ids, and every
    `extra=` field of the record (redacted by name: `_SECRET_NAME`)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        span_ctx = trace.get_current_span().get_span_context()
        out: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": _scrub(record.getMessage()),
            "service": self.service,
        }
        if span_ctx.is_valid:
            out["trace_id"] = format(span_ctx.trace_id, "032x")
            out["span_id"] = format(span_ctx.span_id, "016x")
        rid = callctx.request_id()
        if rid:
            out["request_id"] = rid
        if record.exc_info:
            out["error"] = _scrub(self.formatException(record.exc_info))
        for key, value in record.__dict__.items():
            if key in _RECORD_ATTRS or key.startswith("_") or key in ("time", "level", "logger", "service"):
                continue
            out[key] = REDACTED if _SECRET_NAME.search(key) else _scrub(value)
        return json.dumps(out, default=str)


def setup_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("asyncio").setLevel("WARNING")
