"""Readiness follows the process's real dependencies (PostgreSQL, Redis); liveness does not."""

from __future__ import annotations

import contextlib

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from svckit.readiness import READINESS, Readiness, dependency_checks
from tests.integration.identity.fakes import closed_port

Status = health_pb2.HealthCheckResponse


async def _status(stub: health_pb2_grpc.HealthStub, service: str) -> str:
    try:
        resp = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    except grpc.aio.AioRpcError as err:
        return err.code().name
    return str(Status.ServingStatus.Name(resp.status))


async def test_readiness_turns_with_the_database_and_liveness_stays(pg_admin_dsn: str, redis_url: str) -> None:
    health = HealthServicer()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health.set("", Status.SERVING)  # what start_server sets: the process answers
    async with contextlib.AsyncExitStack() as stack, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        real = dependency_checks(pg_admin_dsn, redis_url, stack)
        gone = dependency_checks(f"postgresql://postgres@127.0.0.1:{closed_port()}/x", "", stack)
        assert sorted(real) == ["postgresql", "redis"] and sorted(gone) == ["postgresql"]
        database_up = {"now": True}

        async def database() -> object:
            return await (real if database_up["now"] else gone)["postgresql"]()

        readiness = Readiness(health, {"postgresql": database, "redis": real["redis"]})
        assert await _status(stub, READINESS) == "NOT_FOUND"  # not ready before the first check

        assert await readiness.check() is True
        assert await _status(stub, READINESS) == "SERVING" and readiness.failing == []

        database_up["now"] = False
        assert await readiness.check() is False
        assert await _status(stub, READINESS) == "NOT_SERVING" and readiness.failing == ["postgresql"]
        assert await _status(stub, "") == "SERVING"  # alive: no restart for a database outage

        database_up["now"] = True
        assert await readiness.check() is True
        assert await _status(stub, READINESS) == "SERVING"

        await health.enter_graceful_shutdown()  # SIGTERM: out of the endpoints at once
        assert await _status(stub, READINESS) == "NOT_SERVING"
    await server.stop(0)
