"""Login throughput: `POST /v1/auth/login` through the gateway (the whole suite as processes), with argon2id
at identity's default parameters, beside the raw argon2id verification rate of this machine in-process.

Every login verifies one argon2id hash (64 MiB, 3 passes, 1 lane by default), so logins/s is bounded by
cores / verification time; the in-process figure shows how close the service gets to that bound.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.load import run
from tools.suite import Suite, SuiteConfig, drop_suite_data, ensure_databases, ensure_root_key

PASSWORD = "bench correct horse battery staple"  # noqa: S105 - a throw-away account on a throw-away suite


async def _raw_verifications(seconds: float) -> tuple[float, str]:
    from services.identity.adapters.hasher import Hasher
    from services.identity.domain.credentials import Argon2Params

    hasher = Hasher(Argon2Params())  # identity's defaults (PASSWORD_ARGON2_* unset)
    stored = await hasher.hash(PASSWORD)
    workers = os.cpu_count() or 2
    done = 0
    stop = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            assert await hasher.verify(stored, PASSWORD)
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(workers)))
    elapsed = time.perf_counter() - t0
    hasher.close()
    p = hasher.params
    return done / elapsed, f"argon2id m={p.memory_kib // 1024} MiB, t={p.time_cost}, p={p.parallelism}"


async def _create_user(identity_addr: str, certs: Path, username: str) -> None:
    from sendsafe.identity.v1 import identity_service_pb2, identity_service_pb2_grpc
    from svckit.rpc import secure_channel
    from svckit.tls import TlsFiles

    tls = TlsFiles(certs / "ops.crt", certs / "ops.key", certs / "internal-ca.crt")
    async with secure_channel(identity_addr, tls, server_name="identity") as ch:
        await identity_service_pb2_grpc.IdentityServiceStub(ch).CreateAccount(
            identity_service_pb2.CreateAccountRequest(
                account_name="Bench", api_username=username, email=f"{username}@example.com", country="AU",
                password=PASSWORD,
            ),
            wait_for_ready=True,
        )


def main() -> int:
    seconds = float(os.environ.get("BENCH_SECONDS", "8"))
    conc = int(os.environ.get("BENCH_LOGIN_CONCURRENCY", "4"))
    raw, params = asyncio.run(_raw_verifications(min(seconds, 5.0)))
    print(f"in-process: {raw:.1f} argon2id verifications/s on {os.cpu_count()} cores ({params})")

    work = Path(tempfile.mkdtemp(prefix="sendsafe-bench-identity-"))
    from tools.certs import ensure_dev_certs

    certs = work / "certs"
    ensure_dev_certs(certs)
    run_id = uuid.uuid4().hex[:6]
    config = SuiteConfig(
        workdir=work / "run", certs=certs, db_prefix=f"ssbenchid_{run_id}",
        pg_admin_dsn=os.environ.get("PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
        redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), redis_prefix=f"ssbenchid:{run_id}:",
        root_key_file=ensure_root_key(work / "root.key"), log_level="WARNING", workers=0,
    )
    ensure_databases(config)
    suite = Suite(config)
    try:
        suite.start()
        username = f"bench{run_id}"
        asyncio.run(_create_user(suite.addrs["identity"], certs, username))
        body = json.dumps({"username": username, "password": PASSWORD}).encode()
        result = asyncio.run(
            run("POST /v1/auth/login (password only)", f"{suite.gateway_url}/v1/auth/login",
                ca=str(certs / "public-ca.crt"), concurrency=conc, seconds=seconds, method="POST",
                body=lambda: body, headers={"Content-Type": "application/json"})
        )
        print(result.line())
        print(f"through the gateway: {result.rps:.1f} logins/s = {result.rps / raw:.2f}x the in-process argon2id bound")
    finally:
        suite.stop()
        drop_suite_data(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
