"""Account exports with the real messaging API (and its job), real PostgreSQL, and the real keys, identity and audit
services over mTLS: the job streams the account in keyset pages into sealed chunks, the owner downloads the JSON
Lines once (bodies and numbers as sent, the audit section verifying offline), then the content is gone; an export
nobody downloads expires through the sweep (issue 15)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from sendsafe.messaging.v1 import export_service_pb2 as epb
from sendsafe.messaging.v1 import export_service_pb2_grpc
from sendsafe.messaging.v1 import messaging_service_pb2 as pb
from services.audit.service.formats import to_incoming
from services.messaging.config import Settings
from services.messaging.service.exports import Exports
from svckit.app import App
from svckit.audit import new_event
from svckit.rpcstatus import error_reason
from tests.conftest import channel_as
from tests.integration.messaging.conftest import Messaging, principal_md
from tests.integration.messaging.test_api import REAL_NUMBER, eventually, sms, stub_for
from tests.support import CertBundle, NewDatabase
from tools.audit_verify import verify

PAGE = 7
N_MESSAGES = 40
OWNER = ("account.export", "sms.send", "sms.read", "sms.settings")


@pytest.fixture
async def exporting(messaging_settings: Settings) -> AsyncIterator[Messaging]:
    """Messaging with a small page and chunk size, so even a small account takes many of each."""
    from services.messaging.app import build, build_worker

    settings = dataclasses.replace(messaging_settings, export_page_size=PAGE, export_chunk_bytes=2048,
                                   export_poll_seconds=0.1)
    api = await build(settings)
    workers: list[App] = []

    async def start_worker(**overrides: object) -> App:
        w = await build_worker(dataclasses.replace(settings, **overrides))  # type: ignore[arg-type]
        workers.append(w)
        return w

    yield Messaging(settings, api, start_worker)
    for w in workers:
        await w.stop()
    await api.stop()


def _exports(m: Messaging) -> Exports:
    exports = m.api.extras["exports"]
    assert isinstance(exports, Exports)
    return exports


async def _ready(stub: Any, md: Any, export_id: str) -> epb.AccountExport:
    got: list[epb.AccountExport] = []

    async def ready() -> bool:
        e = (await stub.GetAccountExport(epb.GetAccountExportRequest(export_id=export_id), metadata=md)).export
        got.append(e)
        assert e.state != epb.ACCOUNT_EXPORT_STATE_FAILED, e.failure_reason
        return bool(e.state == epb.ACCOUNT_EXPORT_STATE_READY)

    await eventually(ready, timeout=30, what="the export to be ready")
    return got[-1]


async def _download(stub: Any, md: Any, export_id: str) -> bytes:
    out = b""
    async for piece in stub.DownloadAccountExport(epb.DownloadAccountExportRequest(export_id=export_id), metadata=md):
        assert piece.content_type == "application/x-ndjson"
        out += piece.data
    return out


async def test_the_job_streams_the_account_into_sealed_chunks_downloaded_once(
    exporting: Messaging, certs: CertBundle, monkeypatch: pytest.MonkeyPatch, audit_app: App,
) -> None:
    m = exporting
    account = 7700 + uuid.uuid4().int % 200
    md = principal_md(account, *OWNER, test_mode=True)
    marker = f"EXPORT-MARK-{uuid.uuid4().hex[:12]}"
    await m.start_worker()
    pages: list[int] = []
    fetch = m.store.messages_after

    async def counted(account_id: int, after_seq: int, limit: int) -> Any:
        rows = await fetch(account_id, after_seq, limit)
        pages.append(len(rows))
        return rows

    monkeypatch.setattr(m.store, "messages_after", counted)
    ch, stub = stub_for(m, certs)
    ech = channel_as(certs, "gateway", m.api.port, "messaging")
    estub = export_service_pb2_grpc.AccountExportServiceStub(ech)
    async with ch, ech:
        sent = await stub.SendSms(pb.SendSmsRequest(  # type: ignore[attr-defined]
            messages=[sms(REAL_NUMBER, f"{marker} {i}") for i in range(N_MESSAGES)]), metadata=md)
        first = sent.messages[0].message_id
        await stub.CreateTestInboundSms(pb.CreateTestInboundSmsRequest(  # type: ignore[attr-defined]
            original_message_id=first, body=f"reply {marker}"), metadata=md)
        await eventually(lambda: _receipts(m, account), what="receipts")

        # An event of the account under a signed checkpoint: the audit section holds what the latest checkpoint
        # covers, and a checkpoint is signed at most once a second (the export's own events may come after it).
        log = audit_app.extras["service"]
        await log.append_events([to_incoming(new_event("messaging", "test.before_export", account_id=account))])
        assert await log.sign_checkpoint() is not None
        created = (await estub.CreateAccountExport(epb.CreateAccountExportRequest(), metadata=md)).export
        assert created.state == epb.ACCOUNT_EXPORT_STATE_PENDING and created.user_id == 7
        ready = await _ready(estub, md, created.export_id)
        assert ready.counts["message"] == N_MESSAGES and ready.counts["reply"] == 1
        assert ready.counts["receipt"] >= 1 and ready.counts["audit_event"] >= 1
        assert ready.chunks > 3 and ready.bytes > ready.chunks * 1000
        assert ready.expire_time.seconds > ready.complete_time.seconds
        # Streamed: the messages came in keyset pages of PAGE rows, never in one query.
        assert len(pages) == N_MESSAGES // PAGE + 1 and max(pages) == PAGE
        sealed = await m.pool.fetch("SELECT sealed FROM account_export_chunks WHERE export_id = $1::uuid",
                                    created.export_id)
        assert len(sealed) == ready.chunks
        assert not any(marker.encode() in bytes(r["sealed"]) or REAL_NUMBER.encode() in bytes(r["sealed"])
                       for r in sealed)
        listed = (await estub.ListAccountExports(epb.ListAccountExportsRequest(), metadata=md)).exports
        assert [e.export_id for e in listed] == [created.export_id]

        data = await _download(estub, md, created.export_id)
        records = [json.loads(x) for x in data.decode().splitlines()]
        assert records[0]["type"] == "export" and records[0]["export_id"] == created.export_id
        messages = [r for r in records if r["type"] == "message"]
        assert sorted(r["body"] for r in messages) == sorted(f"{marker} {i}" for i in range(N_MESSAGES))
        assert {r["to"] for r in messages} == {REAL_NUMBER}
        replies = [r for r in records if r["type"] == "reply"]
        assert replies[0]["body"] == f"reply {marker}" and replies[0]["from"] == REAL_NUMBER
        assert replies[0]["original_message_id"] == first
        audit = [json.dumps(r) for r in records if r["type"] in ("checkpoint", "event")]
        vkey = next(r["verifier_key"] for r in records if r["type"] == "checkpoint")
        report = verify(audit, vkey)
        assert report.ok and report.events >= 1, report.problem
        assert any(r.get("event", {}).get("action") == "test.before_export" for r in records)

        with pytest.raises(grpc.aio.AioRpcError) as again:
            await _download(estub, md, created.export_id)
        assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(again.value) == "EXPORT_ALREADY_DOWNLOADED"
        assert await m.pool.fetchval("SELECT count(*) FROM account_export_chunks WHERE export_id = $1::uuid",
                                     created.export_id) == 0
        row = await m.pool.fetchrow("SELECT state, wrapped_key FROM account_exports WHERE id = $1::uuid",
                                    created.export_id)
        assert row["state"] == "DOWNLOADED" and row["wrapped_key"] is None

        other = principal_md(account + 1000, *OWNER, test_mode=True)  # another account sees no such export
        with pytest.raises(grpc.aio.AioRpcError) as foreign:
            await estub.GetAccountExport(epb.GetAccountExportRequest(export_id=created.export_id), metadata=other)
        assert error_reason(foreign.value) == "EXPORT_NOT_FOUND"


async def _receipts(m: Messaging, account: int) -> bool:
    return bool(await m.pool.fetchval("SELECT count(*) FROM receipts WHERE account_id = $1", account))


async def test_an_export_not_downloaded_in_time_is_swept(exporting: Messaging, certs: CertBundle) -> None:
    m = exporting
    account = 7900 + uuid.uuid4().int % 90
    md = principal_md(account, *OWNER, test_mode=True)
    ech = channel_as(certs, "gateway", m.api.port, "messaging")
    estub = export_service_pb2_grpc.AccountExportServiceStub(ech)
    async with ech:
        created = (await estub.CreateAccountExport(epb.CreateAccountExportRequest(), metadata=md)).export
        await _ready(estub, md, created.export_id)
        assert await m.pool.fetchval("SELECT count(*) FROM account_export_chunks WHERE export_id = $1::uuid",
                                     created.export_id) >= 1
        await m.pool.execute("UPDATE account_exports SET expire_time = now() - interval '1 second' WHERE id = $1::uuid",
                             created.export_id)
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await _download(estub, md, created.export_id)
        assert error_reason(late.value) == "EXPORT_EXPIRED"
        assert await _exports(m).sweep() >= 1
        after = (await estub.GetAccountExport(epb.GetAccountExportRequest(export_id=created.export_id),
                                              metadata=md)).export
        assert after.state == epb.ACCOUNT_EXPORT_STATE_EXPIRED
        assert await m.pool.fetchval("SELECT count(*) FROM account_export_chunks WHERE export_id = $1::uuid",
                                     created.export_id) == 0


async def test_only_the_main_user_permission_opens_exports(exporting: Messaging, certs: CertBundle) -> None:
    ech = channel_as(certs, "gateway", exporting.api.port, "messaging")
    estub = export_service_pb2_grpc.AccountExportServiceStub(ech)
    async with ech:
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # every other permission, but not account.export
            await estub.CreateAccountExport(epb.CreateAccountExportRequest(),
                                            metadata=principal_md(7999, "sms.send", "sms.read", "sms.settings"))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_reason(refused.value) == "MISSING_PERMISSION"


async def test_replicas_never_claim_the_same_export_and_a_lost_lease_stops_writes(new_database: NewDatabase) -> None:
    """What several messaging replicas do at once, on the real table: each export goes to exactly one job (FOR
    UPDATE SKIP LOCKED); a job whose lease ran out is taken over and can no longer write; one export at a time per
    account."""
    from services.messaging.adapters.store.exports import PgExportStore
    from services.messaging.app import MIGRATIONS
    from services.messaging.domain.exports import new_export_id
    from svckit.db import create_pool, migrate

    pool = await create_pool(await new_database("exports_claims"), max_size=10)
    try:
        await migrate(pool, MIGRATIONS)
        store = PgExportStore(pool)
        ids = [new_export_id() for _ in range(5)]
        for i, export_id in enumerate(ids):
            assert await store.create_export(export_id, 500 + i, 1) is not None
        assert await store.create_export(new_export_id(), 500, 1) is None  # account 500 has one pending

        claims = await asyncio.gather(*(store.claim_export(60) for _ in range(8)))
        taken = [c for c in claims if c is not None]
        assert sorted(c[0].id for c in taken) == sorted(ids)  # each once, none twice
        assert len({token for _, token in taken}) == len(taken)

        export, old = taken[0]
        assert await store.put_chunk(export.id, old, 0, b"sealed-0", 10, {"message": 1}, 60)
        await pool.execute("UPDATE account_exports SET claim_until = now() - interval '1 second' WHERE id = $1::uuid",
                           export.id)
        again = await store.claim_export(60)
        assert again is not None and again[0].id == export.id and again[1] != old
        assert again[0].chunks == 0 and again[0].counts == {}  # started over
        assert await store.put_chunk(export.id, old, 0, b"late", 10, {}, 60) is False
        assert await store.finish_export(export.id, old, 60) is None
        assert await store.put_chunk(export.id, again[1], 0, b"sealed-0", 10, {"message": 1}, 60)
        assert await pool.fetchval("SELECT count(*) FROM account_export_chunks WHERE export_id = $1::uuid",
                                   export.id) == 1
    finally:
        await pool.close()
