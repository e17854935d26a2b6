"""The export use cases over fakes: a job that fails marks the export FAILED with a stable reason and leaves an audit
event without content; the audit events of a whole life (requested, completed with counts and bytes, downloaded)
carry ids and numbers only; staff cannot export; a download of another state is refused before any key is used."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from sendsafe.audit.v1 import event_pb2
from services.messaging.domain.export_chunks import ChunkWriter
from services.messaging.domain.exports import (
    ExportAlreadyDownloaded,
    ExportNotReady,
    ExportRecord,
    ExportState,
    line,
)
from services.messaging.domain.limits import SendLimits
from services.messaging.domain.records import Caller
from services.messaging.service.exports import ExportOptions, Exports
from svckit.errors import PermissionDenied, Unavailable

MARKER = "MARKER-body-0412345678"


class FakeStore:
    def __init__(self) -> None:
        self.rows: dict[str, ExportRecord] = {}
        self.sealed: dict[str, list[bytes]] = {}
        self.token = "t-1"

    async def create_export(self, export_id: str, account_id: int, user_id: int) -> ExportRecord | None:
        self.rows[export_id] = ExportRecord(export_id, account_id, user_id, ExportState.PENDING, create_time=1)
        return self.rows[export_id]

    async def export(self, account_id: int, export_id: str) -> ExportRecord | None:
        found = self.rows.get(export_id)
        return found if found is not None and found.account_id == account_id else None

    async def claim_export(self, lease_s: float) -> tuple[ExportRecord, str] | None:
        for e in self.rows.values():
            if e.state is ExportState.PENDING:
                self.rows[e.id] = replace(e, state=ExportState.RUNNING)
                return self.rows[e.id], self.token
        return None

    async def set_key(self, export_id: str, token: str, wrapped_key: bytes) -> bool:
        self.rows[export_id] = replace(self.rows[export_id], wrapped_key=wrapped_key)
        return True

    async def put_chunk(self, export_id: str, token: str, number: int, sealed: bytes, total_bytes: int,
                        counts: dict[str, int], lease_s: float) -> bool:
        self.sealed.setdefault(export_id, []).append(sealed)
        self.rows[export_id] = replace(self.rows[export_id], chunks=number + 1, total_bytes=total_bytes,
                                       counts=counts)
        return True

    async def finish_export(self, export_id: str, token: str, download_s: float) -> ExportRecord | None:
        self.rows[export_id] = replace(self.rows[export_id], state=ExportState.READY, expire_time=10**12)
        return self.rows[export_id]

    async def fail_export(self, export_id: str, token: str, reason: str) -> bool:
        self.rows[export_id] = replace(self.rows[export_id], state=ExportState.FAILED, failure_reason=reason)
        self.sealed.pop(export_id, None)
        return True

    async def start_download(self, account_id: int, export_id: str, lease_s: float) -> bool:
        return True

    async def release_download(self, export_id: str) -> None:
        return None

    async def chunks(self, export_id: str) -> AsyncIterator[tuple[int, bytes]]:
        for i, c in enumerate(self.sealed.get(export_id, [])):
            yield i, c

    async def finish_download(self, export_id: str) -> bool:
        self.rows[export_id] = replace(self.rows[export_id], state=ExportState.DOWNLOADED)
        self.sealed.pop(export_id, None)
        return True


class Keys:
    def __init__(self) -> None:
        self.key = os.urandom(32)
        self.decrypts = 0

    async def generate(self, account_id: int) -> tuple[bytes, bytes]:
        return self.key, b"wrapped:" + str(account_id).encode()

    async def decrypt(self, account_id: int, wrapped_key: bytes) -> bytes:
        self.decrypts += 1
        assert wrapped_key == b"wrapped:" + str(account_id).encode()
        return self.key


class Writer:
    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail

    async def write(self, export: ExportRecord, out: ChunkWriter) -> None:
        await out.add("message", line({"type": "message", "body": MARKER}))
        if self.fail is not None:
            raise self.fail
        await out.finish()


def _exports(writer: Writer, store: FakeStore, keys: Keys, events: list[event_pb2.Event]) -> Exports:
    async def record(ev: event_pb2.Event) -> None:
        events.append(ev)

    return Exports(store, writer, keys, record, ExportOptions(chunk_bytes=64))  # type: ignore[arg-type]


def _caller(**kw: Any) -> Caller:
    return Caller(account_id=5, user_id=7, api_username="main", limits=SendLimits(), **kw)


async def test_a_whole_life_leaves_events_with_ids_and_numbers_only() -> None:
    store, keys, events = FakeStore(), Keys(), []
    ex = _exports(Writer(), store, keys, events)
    created = await ex.create(_caller())
    assert await ex.run_due() == 1 and await ex.run_due() == 0
    ready = await ex.get(_caller(), created.id)
    assert ready.state is ExportState.READY and ready.counts == {"message": 1}
    data = b"".join([piece async for piece in await ex.download(_caller(), created.id)])
    assert MARKER.encode() in data and keys.decrypts == 1
    assert (await ex.get(_caller(), created.id)).state is ExportState.DOWNLOADED
    assert [e.action for e in events] == ["messaging.export.requested", "messaging.export.completed",
                                          "messaging.export.downloaded"]
    assert events[1].details["count.message"] == "1" and int(events[1].details["bytes"]) == len(data)
    assert all(e.resource.id == created.id and e.actor.account_id == 5 for e in events)
    assert not any(MARKER in e.SerializeToString().decode("utf-8", "replace") for e in events)
    with pytest.raises(ExportAlreadyDownloaded):
        await ex.download(_caller(), created.id)


async def test_a_failing_job_marks_the_export_failed_with_a_stable_reason() -> None:
    class PeerDown(Unavailable):
        reason = "EXPORT_PEER_UNAVAILABLE"

    store, events = FakeStore(), []
    ex = _exports(Writer(fail=PeerDown("identity is down")), store, Keys(), events)
    created = await ex.create(_caller())
    assert await ex.run_due() == 1
    failed = await ex.get(_caller(), created.id)
    assert failed.state is ExportState.FAILED and failed.failure_reason == "EXPORT_PEER_UNAVAILABLE"
    assert created.id not in store.sealed
    assert events[-1].action == "messaging.export.failed" and events[-1].outcome == event_pb2.OUTCOME_FAILURE
    assert events[-1].details["reason"] == "EXPORT_PEER_UNAVAILABLE"

    unknown = _exports(Writer(fail=RuntimeError(MARKER)), store, Keys(), events)
    second = await unknown.create(_caller())
    await unknown.run_due()
    assert (await unknown.get(_caller(), second.id)).failure_reason == "EXPORT_JOB_FAILED"  # never the message


async def test_staff_cannot_export_and_a_pending_export_is_not_downloadable() -> None:
    store, keys, events = FakeStore(), Keys(), []
    ex = _exports(Writer(), store, keys, events)
    with pytest.raises(PermissionDenied):
        await ex.create(_caller(staff=True))
    created = await ex.create(_caller())
    with pytest.raises(ExportNotReady):
        await ex.download(_caller(), created.id)
    assert keys.decrypts == 0
