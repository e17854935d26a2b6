"""Trace context and request ids cross every internal call even when no span is recorded.

Without an OTLP endpoint or span processor, `svckit.telemetry` leaves the OpenTelemetry gRPC
instrumentation out (it costs CPU for spans nobody receives); `svckit.rpc` then injects the W3C headers
and the server's Guard continues them. The scenario runs a real mTLS server and channel in a fresh
interpreter (other tests in this process observe spans, which installs the instrumentation for good) and
checks what the callee sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from opentelemetry import trace

from sendsafe.messaging.v1 import messaging_service_pb2 as pb
from sendsafe.messaging.v1 import messaging_service_pb2_grpc
from svckit import context as callctx
from svckit import telemetry
from svckit.rpc import secure_channel
from svckit.server import RunningServer, start_server
from svckit.tls import TlsFiles
from tests.integration.workload_pki import workload_files
from tools.pki import make_ca


class _Seen(messaging_service_pb2_grpc.MessagingServiceServicer):
    """Answers GetBalance with what the handler saw: trace id, parent span id, request id."""

    async def GetBalance(
        self, request: pb.GetBalanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetBalanceResponse:
        span = trace.get_current_span().get_span_context()
        seen = f"{span.trace_id:032x}/{span.span_id:016x}/{callctx.request_id()}"
        return pb.GetBalanceResponse(balance=seen)



@contextlib.asynccontextmanager
async def _server(files: TlsFiles) -> AsyncIterator[RunningServer]:
    server = await start_server(
        listen="127.0.0.1:0", tls=files,
        register=lambda s: messaging_service_pb2_grpc.add_MessagingServiceServicer_to_server(
            _Seen(), s  # type: ignore[abstract]
        ),
        service_names=[],
    )
    try:
        yield server
    finally:
        await server.stop(0)


def test_callee_continues_the_callers_trace_and_request_id_without_instrumentation() -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.test_trace_propagation"], cwd=root, capture_output=True,
        text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip() == "propagated", done.stdout


async def _scenario(tmp_path: Path) -> None:
    ca = make_ca("propagation test")
    server_files = workload_files(tmp_path, "server", ca, "messaging")
    client_files = workload_files(tmp_path, "client", ca, "identity")
    telemetry.setup_tracing("propagation-test")
    assert not telemetry.instrumented()
    tracer = trace.get_tracer(__name__)
    async with (
        _server(server_files) as server,
        secure_channel(f"127.0.0.1:{server.port}", client_files, server_name="messaging") as channel,
    ):
        stub = messaging_service_pb2_grpc.MessagingServiceStub(channel)
        token = callctx.current.set(callctx.CallContext("gateway", None, "req-123"))
        try:
            with tracer.start_as_current_span("caller") as span:
                ctx = span.get_span_context()
                reply = await stub.GetBalance(pb.GetBalanceRequest(account_id=1))
        finally:
            callctx.current.reset(token)
        trace_id, parent_span, request_id = reply.balance.split("/")
        assert ctx.is_valid and not span.is_recording()
        assert trace_id == f"{ctx.trace_id:032x}"
        assert parent_span == f"{ctx.span_id:016x}"
        assert request_id == "req-123"

        # Outside any trace or served call, the callee sees no trace and gets a request id of its own.
        reply = await stub.GetBalance(pb.GetBalanceRequest(account_id=1))
        trace_id, _, request_id = reply.balance.split("/")
        assert trace_id == "0" * 32
        assert request_id and request_id != "req-123"
    print("propagated")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_scenario(Path(tmp)))
