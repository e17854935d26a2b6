"""Audit: how fast the log takes events, and what verifying 100k events costs.

The audit service runs as a process (tools.suite) over mTLS on its own database.
1. AppendEvents from BENCH_AUDIT_CLIENTS (default 8) concurrent emitters, batches of 500 realistic gateway
   events (~330 bytes): events/s stored (sequenced, sealed, Merkle tree extended, one transaction per
   batch); the same with batches of 1 for contrast; and through svckit.audit.AuditClient (what every
   service uses: buffered, batched, retried) from 64 concurrent producers.
2. With 100k events of one account in the log: a server-side full verification (VerifyLog: every leaf
   recomputed, the tree rebuilt and compared with the stored nodes and signed checkpoints), an inclusion
   proof's latency, exporting the account's 100k events with proofs (GET /v1/audit/export pages of 1000), and
   the offline verifier (tools.audit_verify) on that file.

BENCH_SECONDS (default 8) for the timed append figures; BENCH_AUDIT_EVENTS (default 100000).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from tools.suite import Suite, SuiteConfig, drop_suite_data

ACCOUNT = 424242


def _event(i: int, account: int = ACCOUNT):  # type: ignore[no-untyped-def]
    from sendsafe.audit.v1 import event_pb2
    from svckit.audit import new_event

    ev = new_event("gateway", "gateway.SendSms", resource_type="http_route", resource_id="/v3/sms/send",
                   account_id=account, details={"http_status": "200", "method": "POST", "route": "/v3/sms/send",
                                                "rpc": "/sendsafe.messaging.v1.MessagingService/SendSms"})
    ev.actor.type, ev.actor.id, ev.actor.auth_method, ev.actor.api_key_id = "user", "17", "api_key", "k_3f9a2b7c"
    ev.source.client_address, ev.source.user_agent = f"203.0.113.{i % 250}", "clicksend-python/6.0.2"
    ev.source.tls_version, ev.source.tls_cipher = "TLSv1.3", "TLS_AES_256_GCM_SHA384"
    ev.request_id, ev.trace_id = uuid.uuid4().hex, uuid.uuid4().hex
    ev.outcome = event_pb2.OUTCOME_SUCCESS
    return ev


def _principal(*perms: str) -> tuple[tuple[str, bytes], ...]:
    from sendsafe.context.v1 import principal_pb2

    p = principal_pb2.Principal(account_id=ACCOUNT, user_id=17, permissions=list(perms), staff="audit.verify" in perms)
    return (("x-sendsafe-principal-bin", p.SerializeToString()),)


async def _append_rate(addr: str, certs: Path, seconds: float, clients: int, batch: int) -> tuple[int, float]:
    from sendsafe.audit.v1 import audit_service_pb2, audit_service_pb2_grpc
    from svckit.rpc import secure_channel
    from svckit.tls import TlsFiles

    tls = TlsFiles(certs / "gateway.crt", certs / "gateway.key", certs / "internal-ca.crt")
    stored = 0
    stop = time.perf_counter() + seconds

    async def emitter() -> None:
        nonlocal stored
        async with secure_channel(addr, tls, server_name="audit", timeout=30) as ch:
            stub = audit_service_pb2_grpc.AuditServiceStub(ch)
            while time.perf_counter() < stop:
                req = audit_service_pb2.AppendEventsRequest(events=[_event(i) for i in range(batch)])
                resp = await stub.AppendEvents(req)
                stored += resp.last_sequence - resp.first_sequence + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(emitter() for _ in range(clients)))
    return stored, time.perf_counter() - t0


async def _client_rate(addr: str, certs: Path, seconds: float, producers: int) -> tuple[int, float]:
    from svckit.audit import AuditClient
    from svckit.rpc import secure_channel
    from svckit.tls import TlsFiles

    tls = TlsFiles(certs / "gateway.crt", certs / "gateway.key", certs / "internal-ca.crt")
    async with secure_channel(addr, tls, server_name="audit", timeout=30) as ch:
        client = AuditClient(ch)
        client.start()
        made = 0
        stop = time.perf_counter() + seconds
        t0 = time.perf_counter()

        async def producer() -> None:
            nonlocal made
            i = 0
            while time.perf_counter() < stop:
                await client.record(_event(i))
                made += 1
                i += 1
                if i % 64 == 0:
                    await asyncio.sleep(0)

        await asyncio.gather(*(producer() for _ in range(producers)))
        await client.flush(timeout=120)
        elapsed = time.perf_counter() - t0
        await client.close()
        return client.sent, elapsed


async def _fill(addr: str, certs: Path, total: int, have: int) -> None:
    """Top the log up to `total` events of ACCOUNT (those appended by the timed runs count too)."""
    from sendsafe.audit.v1 import audit_service_pb2, audit_service_pb2_grpc
    from svckit.rpc import secure_channel
    from svckit.tls import TlsFiles

    tls = TlsFiles(certs / "gateway.crt", certs / "gateway.key", certs / "internal-ca.crt")
    async with secure_channel(addr, tls, server_name="audit", timeout=60) as ch:
        stub = audit_service_pb2_grpc.AuditServiceStub(ch)
        left = total - have
        while left > 0:
            n = min(2000, left)
            await stub.AppendEvents(audit_service_pb2.AppendEventsRequest(events=[_event(i) for i in range(n)]))
            left -= n


async def _verification(addr: str, certs: Path, work: Path) -> list[str]:
    from sendsafe.audit.v1 import audit_service_pb2 as pb
    from sendsafe.audit.v1 import audit_service_pb2_grpc, evidence_pb2
    from svckit.rpc import secure_channel
    from svckit.tls import TlsFiles
    from tools import audit_verify

    tls = TlsFiles(certs / "gateway.crt", certs / "gateway.key", certs / "internal-ca.crt")
    out: list[str] = []
    async with secure_channel(addr, tls, server_name="audit", timeout=600) as ch:
        stub = audit_service_pb2_grpc.AuditServiceStub(ch)
        reader = _principal("audit.read")
        cp = await stub.GetCheckpoint(pb.GetCheckpointRequest(fresh=True), metadata=reader)
        t0 = time.perf_counter()
        result = await stub.VerifyLog(pb.VerifyLogRequest(), metadata=_principal("audit.verify"))
        took = time.perf_counter() - t0
        out.append(f"server-side full verification of {result.tree_size} events (ok={result.ok}):"
                   f" {took:.2f} s ({result.tree_size / took:,.0f} events/s)")
        page = await stub.ListEvents(pb.ListEventsRequest(page_size=200), metadata=reader)
        lat = []
        for ev in page.events:
            t = time.perf_counter()
            await stub.GetEventProof(pb.GetEventProofRequest(event_id=ev.event_id), metadata=reader)
            lat.append(time.perf_counter() - t)
        out.append(f"inclusion proof (GetEventProof) in a tree of {cp.checkpoint.tree_size}:"
                   f" p50 {1000 * statistics.median(lat):.2f} ms, max {1000 * max(lat):.2f} ms")
        export = work / "export.jsonl"
        t0 = time.perf_counter()
        cursor, count = "", 0
        with export.open("w") as fh:
            while True:
                p = await stub.ExportEvents(pb.ExportEventsRequest(format=evidence_pb2.EXPORT_FORMAT_JSONL,
                                                                   cursor=cursor, page_size=1000), metadata=reader)
                fh.write(p.data)
                count += p.count
                cursor = p.next_cursor
                if p.complete:
                    break
        took = time.perf_counter() - t0
        size_mb = export.stat().st_size / 1e6
        out.append(f"export of the account's {count} events with proofs: {took:.2f} s ({size_mb:.0f} MB)")
        t0 = time.perf_counter()
        with export.open() as fh:
            report = audit_verify.verify(fh, cp.verifier_key)
        took = time.perf_counter() - t0
        out.append(f"offline verification (tools.audit_verify) of {report.events} events (ok={report.ok}):"
                   f" {took:.2f} s ({report.events / took:,.0f} events/s)")
    return out


def main() -> int:
    seconds = float(os.environ.get("BENCH_SECONDS", "8"))
    clients = int(os.environ.get("BENCH_AUDIT_CLIENTS", "8"))
    total = int(os.environ.get("BENCH_AUDIT_EVENTS", "100000"))
    work = Path(tempfile.mkdtemp(prefix="sendsafe-bench-audit-"))
    from svckit.db import ensure_database
    from tools.certs import ensure_dev_certs

    certs = work / "certs"
    ensure_dev_certs(certs)
    run_id = uuid.uuid4().hex[:6]
    config = SuiteConfig(
        workdir=work / "run", certs=certs, db_prefix=f"ssbenchaudit_{run_id}",
        pg_admin_dsn=os.environ.get("PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
        redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), redis_prefix=f"ssbenchaudit:{run_id}:",
        log_level="WARNING", env={"audit": {"AUDIT_CHECKPOINT_INTERVAL_SECONDS": "5",
                                            "AUDIT_VERIFY_INTERVAL_SECONDS": "0"}},
    )
    config.workdir.mkdir(parents=True)
    asyncio.run(ensure_database(config.database_url("audit")))
    suite = Suite(config)
    try:
        suite.start_process("audit")
        addr = suite.addrs["audit"]
        n, took = asyncio.run(_append_rate(addr, certs, seconds, clients, 500))
        print(f"AppendEvents, {clients} emitters, batches of 500:   {n / took:9,.0f} events/s ({n} events)")
        m, took1 = asyncio.run(_append_rate(addr, certs, min(seconds, 4.0), clients, 1))
        print(f"AppendEvents, {clients} emitters, batches of 1:     {m / took1:9,.0f} events/s")
        k, took2 = asyncio.run(_client_rate(addr, certs, min(seconds, 4.0), 64))
        print(f"svckit AuditClient, 64 producers (batched 500):  {k / took2:9,.0f} events/s stored")
        asyncio.run(_fill(addr, certs, total, n + m + k))
        for line in asyncio.run(_verification(addr, certs, work)):
            print(line)
    finally:
        suite.stop()
        drop_suite_data(config)
    return 0
