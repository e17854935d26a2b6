"""The export job: writes one claimed export, section by section, each read in keyset pages and each page's lines
sealed into chunks as they fill (svckit-free: domain.export_chunks.ChunkWriter), so an account of any size is
exported in the memory of one page plus one chunk."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from services.messaging.domain.contacts import CONTACT_RECORD, LIST_RECORD
from services.messaging.domain.export_chunks import ChunkWriter
from services.messaging.domain.exports import (
    ExportRecord,
    alpha_tag_record,
    contact_list_record,
    contact_record,
    header_record,
    line,
    message_record,
    peer_record,
    receipt_record,
    reply_record,
    sender_record,
    settings_records,
)
from services.messaging.domain.senders import SENDER_NUMBER_RECORD, SenderKind
from services.messaging.service.custom_strings import with_custom_string
from services.messaging.service.history import open_message
from services.messaging.service.ports import Cipher, ExportIdentities, ExportPeers, ExportReads
from services.messaging.service.replies import Replies
from svckit.envelope import aad_for


class ClaimLost(Exception):
    """Another job took the export over (this one's lease ran out): stop writing."""


@dataclass(frozen=True)
class Section:
    record_type: str
    lines: AsyncIterator[bytes]


class ExportWriter:
    """Every section of one account's export, in the file's order."""

    def __init__(self, reads: ExportReads, cipher: Cipher, replies: Replies, peers: ExportPeers,
                 page_size: int, identities: ExportIdentities) -> None:
        self._reads = reads
        self._ids = identities
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
        async for kind, item in self._senders_and_contacts(acct):
            await out.add(kind, item)
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

    async def _senders_and_contacts(self, acct: int) -> AsyncIterator[tuple[str, bytes]]:
        """Numbers (a verified one opened), alpha tags, then every list and each list's contacts (opened), each
        read in keyset pages."""
        for kind in (SenderKind.DEDICATED_NUMBER, SenderKind.VERIFIED_NUMBER):
            after = 0
            while True:
                page = await self._ids.sender_identities_after(acct, kind, after, self._page)
                for _, ident, sealed in page:
                    number = ident.value if sealed is None else (await self._cipher.decrypt(
                        acct, aad_for(acct, SENDER_NUMBER_RECORD, ident.id), sealed)).decode()
                    record = sender_record(ident, number)
                    yield record["type"], line(record)
                if len(page) < self._page:
                    break
                after = page[-1][0]
        after = 0
        while True:
            tags = await self._ids.alpha_tags_after(acct, after, self._page)
            for _, tag in tags:
                yield "alpha_tag", line(alpha_tag_record(tag))
            if len(tags) < self._page:
                break
            after = tags[-1][0]
        list_ids: list[int] = []
        after = 0
        while True:
            lists = await self._ids.contact_lists_after(acct, after, self._page)
            for list_id, name_ct in lists:
                name = await self._cipher.decrypt(acct, aad_for(acct, LIST_RECORD, str(list_id)), name_ct)
                list_ids.append(list_id)
                yield "contact_list", line(contact_list_record(list_id, name.decode()))
            if len(lists) < self._page:
                break
            after = lists[-1][0]
        for list_id in list_ids:
            after = 0
            while True:
                contacts = await self._ids.contacts_after(acct, list_id, after, self._page)
                for cid, data_ct, created, updated in contacts:
                    raw = await self._cipher.decrypt(acct, aad_for(acct, CONTACT_RECORD, str(cid)), data_ct)
                    yield "contact", line(contact_record(cid, list_id, json.loads(raw), created, updated))
                if len(contacts) < self._page:
                    break
                after = contacts[-1][0]

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
