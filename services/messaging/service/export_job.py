"""The export job: writes one claimed export, section by section, each read in keyset pages and each page's lines
sealed into chunks as they fill (svckit-free: domain.export_chunks.ChunkWriter), so an account of any size is
exported in the memory of one page plus one chunk."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from services.messaging.domain.export_chunks import ChunkWriter
from services.messaging.domain.exports import (
    ExportRecord,
    header_record,
    line,
    message_record,
    peer_record,
    receipt_record,
    reply_record,
    settings_records,
)
from services.messaging.service.custom_strings import with_custom_string
from services.messaging.service.history import open_message
from services.messaging.service.ports import Cipher, ExportPeers, ExportReads
from services.messaging.service.replies import Replies


class ClaimLost(Exception):
    """Another job took the export over (this one's lease ran out): stop writing."""


@dataclass(frozen=True)
class Section:
    record_type: str
    lines: AsyncIterator[bytes]


class ExportWriter:
    """Every section of one account's export, in the file's order."""

    def __init__(self, reads: ExportReads, cipher: Cipher, replies: Replies, peers: ExportPeers,
                 page_size: int) -> None:
        self._reads = reads
        self._cipher = cipher
        self._replies = replies
        self._peers = peers
        self._page = page_size

    async def write(self, export: ExportRecord, out: ChunkWriter) -> None:
        acct = export.account_id
        await out.add("export", line(header_record(export.id, acct, export.create_time)))
        async for item in self._messages(acct):
            await out.add("message", item)
        async for item in self._receipts(acct):
            await out.add("receipt", item)
        async for item in self._replies_of(acct):
            await out.add("reply", item)
        for record in settings_records(await self._reads.settings(acct)):
            await out.add(record["type"], line(record))
        async for kind, item in self._peer_records(acct):
            await out.add(kind, item)
        async for kind, item in self._audit(acct):
            await out.add(kind, item)
        await out.finish()

    async def _messages(self, acct: int) -> AsyncIterator[bytes]:
        after = 0
        while True:
            page = await self._reads.messages_after(acct, after, self._page)
            for _, m in page:
                yield line(message_record(await open_message(self._cipher, m)))
            if len(page) < self._page:
                return
            after = page[-1][0]

    async def _receipts(self, acct: int) -> AsyncIterator[bytes]:
        after = 0
        while True:
            page = await self._reads.receipts_after(acct, after, self._page)
            for r in page:
                yield line(receipt_record(await with_custom_string(self._cipher, r)))
            if len(page) < self._page:
                return
            after = page[-1].id

    async def _replies_of(self, acct: int) -> AsyncIterator[bytes]:
        after = 0
        while True:
            page = await self._reads.inbound_after(acct, after, self._page)
            for _, r in page:
                yield line(reply_record(await self._replies.view(r)))
            if len(page) < self._page:
                return
            after = page[-1][0]

    async def _peer_records(self, acct: int) -> AsyncIterator[tuple[str, bytes]]:
        after_user = 0
        while True:
            users, after_user = await self._peers.users(acct, after_user)
            for u in users:
                yield "subaccount", line(peer_record("subaccount", u))
            if not after_user:
                break
        token = ""
        while True:
            keys, token = await self._peers.api_keys(acct, token)
            for k in keys:
                yield "api_key", line(peer_record("api_key", k))
            if not token:
                break
        for rule in await self._peers.alert_rules(acct):
            yield "alert_rule", line(peer_record("alert_rule", rule))

    async def _audit(self, acct: int) -> AsyncIterator[tuple[str, bytes]]:
        """The audit log's own export lines, unchanged (they verify offline as they are)."""
        cursor = ""
        while True:
            data, cursor, complete = await self._peers.audit_events(acct, cursor)
            for text in data.splitlines():
                if text.strip():
                    kind = json.loads(text).get("type")
                    yield ("audit_checkpoint" if kind == "checkpoint" else "audit_event"), (text + "\n").encode()
            if complete:
                return
