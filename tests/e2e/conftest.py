"""The whole suite as real processes, driven only through HTTPS like a customer would."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from svckit.testing import RUN_ID, CertBundle
from tools.suite import Suite, SuiteConfig, drop_suite_data, ensure_databases, ensure_root_key


@dataclass
class SpanRecord:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, str]


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
                                                     s.parent_span_id.hex(), attrs))
            self.arrived.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def wait_for(self, predicate, timeout: float = 20.0) -> list[SpanRecord]:  # type: ignore[no-untyped-def]
        """Block until `predicate(spans)` is true (spans arrive in export batches) or time out."""
        with self.arrived:
            self.arrived.wait_for(lambda: predicate(list(self.spans)), timeout)
            return list(self.spans)


@pytest.fixture(scope="session")
def otlp() -> Iterator[tuple[OtlpReceiver, int]]:
    receiver = OtlpReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield receiver, port
    server.stop(0)


@dataclass(frozen=True)
class Customer:
    url: str
    username: str
    api_key: str
    ca: Path


@pytest.fixture(scope="session")
def suite(
    certs: CertBundle, pg_admin_dsn: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory,
    otlp: tuple[OtlpReceiver, int],
) -> Iterator[Suite]:
    work = tmp_path_factory.mktemp("suite")
    config = SuiteConfig(
        workdir=work,
        certs=certs.dir,
        pg_admin_dsn=pg_admin_dsn,
        db_prefix=f"sst_{RUN_ID}_e2e",
        redis_url=redis_url,
        redis_prefix=f"sst:{RUN_ID}:e2e:",
        root_key_file=ensure_root_key(work / "root.key"),
        env={
            name: {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp[1]}",
                "OTEL_EXPORTER_OTLP_INSECURE": "true",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
                "MESSAGING_RECLAIM_IDLE_MS": "2000",
            }
            for name in ("audit", "keys", "messaging", "identity", "gateway", "worker")
        },
    )
    ensure_databases(config)
    s = Suite(config).start()
    yield s
    s.stop()
    drop_suite_data(config)


@pytest.fixture(scope="session")
def customer(suite: Suite, certs: CertBundle, tmp_path_factory: pytest.TempPathFactory) -> Customer:
    from tools.bootstrap import bootstrap

    out = tmp_path_factory.mktemp("demo") / "demo.env"
    creds = asyncio.run(
        bootstrap(identity=suite.addrs["identity"], keys=suite.addrs["keys"], certs=certs.dir, out=out,
                  gateway_url=suite.gateway_url)
    )
    return Customer(creds["SENDSAFE_URL"], creds["SENDSAFE_USERNAME"], creds["SENDSAFE_API_KEY"],
                    Path(creds["SENDSAFE_CA_CERT"]))
