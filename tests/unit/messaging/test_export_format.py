"""The export file's format: chunks of whole JSON Lines sealed in place (a chunk moved, swapped, cut off or altered
does not open), and each record's JSON Lines mapping (ClickSend's field names, no secrets)."""

from __future__ import annotations

import json
import os
from decimal import Decimal

import pytest

from services.messaging.domain.export_chunks import ChunkUnreadable, ChunkWriter, open_chunk, seal_chunk
from services.messaging.domain.exports import (
    ExportAlreadyDownloaded,
    ExportExpired,
    ExportNotFound,
    ExportNotReady,
    ExportRecord,
    ExportState,
    check_export_id,
    line,
    message_record,
    peer_record,
    receipt_record,
    refusal,
    reply_record,
    settings_records,
)
from services.messaging.domain.history import HistoryItem
from services.messaging.domain.receipts import InboundRecord, InboundView, ReceiptRecord
from services.messaging.domain.records import StoredMessage
from services.messaging.domain.settings import MessagingSettings
from services.messaging.domain.statuses import MessageStatus, clicksend_history_view

KEY = os.urandom(32)
EID = "5f0c3d1e-8a4b-4c2d-9e6f-7a8b9c0d1e2f"


async def _write(lines: list[bytes], chunk_bytes: int) -> list[tuple[int, bytes, int, dict[str, int]]]:
    stored: list[tuple[int, bytes, int, dict[str, int]]] = []

    async def store(number: int, sealed: bytes, total: int, counts: dict[str, int]) -> None:
        stored.append((number, sealed, total, counts))

    w = ChunkWriter(KEY, EID, store, chunk_bytes)
    for data in lines:
        await w.add("message", data)
    await w.finish()
    assert w.chunks == len(stored)
    return stored


async def test_lines_are_cut_into_chunks_of_whole_lines_that_open_in_order() -> None:
    lines = [line({"type": "message", "i": i, "body": "x" * (i % 50)}) for i in range(200)]
    stored = await _write(lines, chunk_bytes=1000)
    assert len(stored) > 5  # streamed: many chunks, none holding more than one limit's worth plus a line
    opened = [open_chunk(KEY, EID, n, n == len(stored) - 1, sealed) for n, sealed, _, _ in stored]
    assert all(len(p) < 1000 + max(map(len, lines)) for p in opened)
    assert all(p == b"" or p.endswith(b"\n") for p in opened)  # a line never spans two chunks
    assert b"".join(opened) == b"".join(lines)
    assert stored[-1][2] == sum(map(len, lines)) and stored[-1][3] == {"message": 200}


async def test_an_empty_export_still_has_its_final_chunk() -> None:
    stored = await _write([], chunk_bytes=10)
    assert len(stored) == 1 and open_chunk(KEY, EID, 0, True, stored[0][1]) == b""


async def test_a_chunk_opens_only_at_its_own_place() -> None:
    stored = await _write([line({"i": i}) for i in range(30)], chunk_bytes=40)
    first, second, last = stored[0][1], stored[1][1], stored[-1][1]
    n = len(stored)
    with pytest.raises(ChunkUnreadable):  # swapped
        open_chunk(KEY, EID, 0, False, second)
    with pytest.raises(ChunkUnreadable):  # moved to another export
        open_chunk(KEY, "00000000-0000-4000-8000-000000000000", 0, False, first)
    with pytest.raises(ChunkUnreadable):  # the file cut short: the new last chunk was not sealed as final
        open_chunk(KEY, EID, n - 2, True, stored[-2][1])
    with pytest.raises(ChunkUnreadable):  # continued past its end
        open_chunk(KEY, EID, n - 1, False, last)
    with pytest.raises(ChunkUnreadable):  # altered
        open_chunk(KEY, EID, 0, False, first[:-1] + bytes([first[-1] ^ 1]))
    with pytest.raises(ChunkUnreadable):  # another key
        open_chunk(os.urandom(32), EID, 0, False, first)
    with pytest.raises(ChunkUnreadable):
        open_chunk(KEY, EID, 0, False, b"\x01short")
    assert open_chunk(KEY, EID, 0, False, first)


def test_sealed_chunks_hide_their_content() -> None:
    sealed = seal_chunk(KEY, EID, 0, True, b'{"body":"MARKER-123"}\n')
    assert b"MARKER" not in sealed and sealed != seal_chunk(KEY, EID, 0, True, b'{"body":"MARKER-123"}\n')


def _message() -> StoredMessage:
    return StoredMessage(
        id="AB12", account_id=5, user_id=7, api_username="alice", status=MessageStatus.DELIVERED, body_ct=b"x",
        to_ct=b"y", sender="SendSafe", country="AU", parts=1, price=Decimal("0.0770"), custom_string="c-1",
        from_email="", list_id="", contact_id="", schedule=0, date=1700000000, error_code=None, carrier="sim",
        cause="", custom_ct=None)


def test_a_message_has_clicksend_history_fields_with_body_and_number() -> None:
    m = _message()
    rec = message_record(HistoryItem(m, "hello body", "+61412345678", clicksend_history_view(m.status, None)))
    assert rec["type"] == "message" and rec["body"] == "hello body" and rec["to"] == "+61412345678"
    assert rec["from"] == "SendSafe" and rec["message_id"] == "AB12" and rec["_api_username"] == "alice"
    assert rec["message_price"] == "0.0770" and rec["user_id"] == 5 and rec["subaccount_id"] == 7
    assert {"direction", "date", "status", "status_code", "status_text", "custom_string", "country"} <= rec.keys()
    assert json.loads(line(rec)) == rec and line(rec).endswith(b"\n") and line(rec).count(b"\n") == 1


def test_receipt_reply_settings_and_peer_records() -> None:
    r = receipt_record(ReceiptRecord(id=1, account_id=5, user_id=7, message_id="AB12",
                                     status=MessageStatus.DELIVERED, error_code=None, custom_string="c-1",
                                     timestamp_send=1, timestamp=2, custom_ct=None))
    assert r["type"] == "receipt" and r["message_id"] == "AB12" and r["status_code"] and r["message_type"] == "sms"
    rec = InboundRecord(id="CD34", account_id=5, original_message_id="AB12", from_ct=b"f", to="+61400000000",
                        body_ct=b"b", custom_string="", timestamp=3, original_body_ct=None, original_account_id=5,
                        custom_ct=None, original_country="AU")
    reply = reply_record(InboundView(rec, "+61412345678", "STOP now", "hello"))
    assert reply == {"type": "reply", "timestamp": 3, "from": "+61412345678", "body": "STOP now",
                     "original_body": "hello", "original_message_id": "AB12", "to": "+61400000000",
                     "custom_string": "", "message_id": "CD34", "_keyword": "STOP"}
    settings = settings_records(MessagingSettings(5, receipt_webhook_url="https://h.example/r",
                                                  webhook_secret_ct=b"sealed-secret", body_retention_days=30))
    assert [s["type"] for s in settings] == ["settings", "webhook"]
    assert settings[1] == {"type": "webhook", "event": "sms.receipt", "url": "https://h.example/r", "secret_set": True}
    assert b"sealed-secret" not in b"".join(line(s) for s in settings)
    assert peer_record("api_key", {"key_id": "k1", "type": "x"}) == {"type": "api_key", "key_id": "k1"}


def test_what_a_download_is_refused_for() -> None:
    base = ExportRecord(id=EID, account_id=5, user_id=7, state=ExportState.READY, expire_time=2000)
    assert refusal(base, 1000) is None
    assert isinstance(refusal(base, 2000), ExportExpired)
    from dataclasses import replace
    assert isinstance(refusal(replace(base, state=ExportState.DOWNLOADED), 1000), ExportAlreadyDownloaded)
    assert isinstance(refusal(replace(base, state=ExportState.EXPIRED), 1000), ExportExpired)
    assert isinstance(refusal(replace(base, state=ExportState.RUNNING), 1000), ExportNotReady)
    assert check_export_id(EID.upper()) == EID
    with pytest.raises(ExportNotFound):
        check_export_id("mx-missing-0")
