"""Account exports (portability): start one (main user), follow it, download it once within the download window,
and the background work -- the job that writes claimed exports and the sweep that deletes expired ones.

Every step leaves an audit event without personal data (ids, counts, bytes): requested (stored before the export
exists: fail closed), completed or failed, downloaded (stored before the content is deleted), expired."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from sendsafe.audit.v1 import event_pb2
from services.messaging.domain.export_chunks import ChunkWriter, open_chunk
from services.messaging.domain.exports import (
    ExportDownloadInProgress,
    ExportInProgress,
    ExportNotFound,
    ExportRecord,
    check_export_id,
    new_export_id,
    refusal,
)
from services.messaging.domain.records import Caller
from services.messaging.service.export_job import ClaimLost, ExportWriter
from services.messaging.service.ports import SERVICE, DataKeys, ExportStore, Record
from svckit.audit import new_event
from svckit.errors import DomainError, PermissionDenied

_LOG = logging.getLogger(__name__)
RESOURCE = "account_export"


@dataclass(frozen=True)
class ExportOptions:
    download_seconds: float = 86_400.0  # how long a ready export can be downloaded
    chunk_bytes: int = 256 * 1024  # JSON Lines bytes per sealed chunk
    page_size: int = 500  # rows per keyset page
    lease_seconds: float = 120.0  # a job's claim, renewed with every chunk
    download_lease_seconds: float = 900.0  # one download holds the export this long at most


class Exports:
    """The export use cases over the export store, the writer of its sections, data keys and the audit log."""

    def __init__(self, store: ExportStore, writer: ExportWriter, keys: DataKeys, record: Record,
                 options: ExportOptions | None = None, clock: Callable[[], float] = time.time,
                 wake: Callable[[], None] | None = None) -> None:
        self._store = store
        self._writer = writer
        self._keys = keys
        self._record = record
        self._opts = options or ExportOptions()
        self._clock = clock
        self._wake = wake  # tells this process's job that an export waits (other replicas poll)

    # -- the owner's use cases ---------------------------------------------------------------------------------

    async def create(self, caller: Caller) -> ExportRecord:
        """A new export of the caller's account, PENDING until a job picks it up; one at a time per account."""
        if caller.staff:
            raise PermissionDenied("Staff cannot export a customer's account.")
        export_id = new_export_id()
        # Recorded (stored: the call is privileged) before the export exists: no audit log, no export.
        await self._record(self._event("messaging.export.requested", export_id, caller.account_id))
        created = await self._store.create_export(export_id, caller.account_id, caller.user_id)
        if created is None:
            raise ExportInProgress("An export of this account is already being written; wait for it to finish.")
        if self._wake is not None:
            self._wake()
        return created

    async def get(self, caller: Caller, export_id: str) -> ExportRecord:
        found = await self._store.export(caller.account_id, check_export_id(export_id))
        if found is None:
            raise ExportNotFound("No such export.")
        return found

    async def list(self, caller: Caller, limit: int) -> list[ExportRecord]:
        return await self._store.exports(caller.account_id, min(max(limit, 0) or 20, 100))

    async def download(self, caller: Caller, export_id: str) -> AsyncIterator[bytes]:
        """The export's JSON Lines, chunk by chunk (opened one at a time). Once the last chunk is out, the download
        is recorded and the export's content deleted; a download cut short leaves it downloadable."""
        export = await self.get(caller, export_id)
        refused = refusal(export, self._clock())
        if refused is not None:
            raise refused
        if not await self._store.start_download(caller.account_id, export.id, self._opts.download_lease_seconds):
            export = await self.get(caller, export_id)  # it changed meanwhile, or another download holds it
            raise refusal(export, self._clock()) or ExportDownloadInProgress(
                "This export is being downloaded right now.")
        return self._stream(export)

    async def _stream(self, export: ExportRecord) -> AsyncIterator[bytes]:
        finished = False
        try:
            assert export.wrapped_key is not None  # READY exports keep theirs
            key = await self._keys.decrypt(export.account_id, export.wrapped_key)
            async for number, sealed in self._store.chunks(export.id):
                yield open_chunk(key, export.id, number, number == export.chunks - 1, sealed)
            await self._record(self._event("messaging.export.downloaded", export.id, export.account_id,
                                           {"bytes": str(export.total_bytes), "chunks": str(export.chunks)}))
            finished = await self._store.finish_download(export.id)
        finally:
            if not finished:
                await self._store.release_download(export.id)

    # -- background work ------------------------------------------------------------------------------------

    async def run_due(self) -> int:
        """Claim the oldest waiting export (any replica may; SKIP LOCKED) and write it; 1 if there was one."""
        claimed = await self._store.claim_export(self._opts.lease_seconds)
        if claimed is None:
            return 0
        export, token = claimed
        try:
            await self._write(export, token)
        except ClaimLost:
            _LOG.warning("export %s was taken over by another job", export.id)
        except Exception as exc:
            reason = exc.reason if isinstance(exc, DomainError) else "EXPORT_JOB_FAILED"
            _LOG.exception("export %s failed (%s)", export.id, reason)
            if await self._store.fail_export(export.id, token, reason):
                await self._record(self._event("messaging.export.failed", export.id, export.account_id,
                                               {"reason": reason}, failed=True))
        return 1

    async def _write(self, export: ExportRecord, token: str) -> None:
        plaintext_key, wrapped = await self._keys.generate(export.account_id)
        if not await self._store.set_key(export.id, token, wrapped):
            raise ClaimLost()

        async def store(number: int, sealed: bytes, total: int, counts: dict[str, int]) -> None:
            if not await self._store.put_chunk(export.id, token, number, sealed, total, counts,
                                               self._opts.lease_seconds):
                raise ClaimLost()

        out = ChunkWriter(plaintext_key, export.id, store, self._opts.chunk_bytes)
        await self._writer.write(export, out)
        done = await self._store.finish_export(export.id, token, self._opts.download_seconds)
        if done is None:
            raise ClaimLost()
        details = {f"count.{k}": str(v) for k, v in sorted(out.counts.items())}
        details |= {"bytes": str(out.bytes), "chunks": str(out.chunks)}
        await self._record(self._event("messaging.export.completed", export.id, export.account_id, details))

    async def sweep(self) -> int:
        """Exports not downloaded within the window expire (their content deleted); leftover chunks go."""
        expired = await self._store.expire_exports(100)
        for e in expired:
            await self._record(self._event("messaging.export.expired", e.id, e.account_id,
                                           {"bytes": str(e.total_bytes), "chunks": str(e.chunks)}))
        return len(expired) + await self._store.delete_leftover_chunks(1000)

    @staticmethod
    def _event(action: str, export_id: str, account_id: int, details: dict[str, str] | None = None,
               *, failed: bool = False) -> event_pb2.Event:
        return new_event(SERVICE, action, resource_type=RESOURCE, resource_id=export_id, details=details,
                         account_id=account_id,
                         outcome=event_pb2.OUTCOME_FAILURE if failed else event_pb2.OUTCOME_SUCCESS)
