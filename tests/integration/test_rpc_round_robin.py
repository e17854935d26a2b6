"""A channel to a target naming several replicas spreads its calls over all of them (round robin), as the
gateway does with `make bench`'s two messaging processes or a headless Service's pod addresses."""

from __future__ import annotations

import collections
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from sendsafe.messaging.v1 import messaging_service_pb2 as pb
from sendsafe.messaging.v1 import messaging_service_pb2_grpc
from svckit.rpc import secure_channel
from svckit.server import RunningServer, start_server
from svckit.tls import TlsFiles
from tests.integration.workload_pki import workload_files
from tools.pki import make_ca


class _Replica(messaging_service_pb2_grpc.MessagingServiceServicer):
    def __init__(self, name: str) -> None:
        self.name = name

    async def GetBalance(
        self, request: pb.GetBalanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetBalanceResponse:
        return pb.GetBalanceResponse(balance=self.name)



@contextlib.asynccontextmanager
async def _replica(files: TlsFiles, name: str) -> AsyncIterator[RunningServer]:
    server = await start_server(
        listen="127.0.0.1:0", tls=files, service_names=[],
        register=lambda s: messaging_service_pb2_grpc.add_MessagingServiceServicer_to_server(
            _Replica(name), s  # type: ignore[abstract]
        ),
    )
    try:
        yield server
    finally:
        await server.stop(0)


async def test_calls_are_spread_over_every_replica_in_the_target(tmp_path: Path) -> None:
    ca = make_ca("round robin test")
    server_files = workload_files(tmp_path, "server", ca, "messaging")
    client_files = workload_files(tmp_path, "client", ca, "identity")
    async with _replica(server_files, "a") as a, _replica(server_files, "b") as b:
        target = f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}"
        async with secure_channel(target, client_files, server_name="messaging") as channel:
            stub = messaging_service_pb2_grpc.MessagingServiceStub(channel)
            seen = collections.Counter(
                [(await stub.GetBalance(pb.GetBalanceRequest(account_id=1))).balance for _ in range(20)]
            )
    # Round robin over two ready backends alternates; allow for the first calls landing before both are up.
    assert set(seen) == {"a", "b"} and min(seen.values()) >= 5, seen
