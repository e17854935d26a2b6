"""Reading the log: an account's events, staff search (recorded before anything is returned) and export
(JSON Lines with proofs, or CEF)."""

from __future__ import annotations

from dataclasses import dataclass

from services.audit.domain import merkle
from services.audit.domain.checkpoints import StoredCheckpoint
from services.audit.domain.events import SERVICE
from services.audit.domain.filters import EventFilter
from services.audit.domain.paging import page_size_of
from services.audit.domain.siem import FORMAT_CEF, ExportCursor
from services.audit.service import formats
from services.audit.service.appending import Appending
from services.audit.service.proofs import Proofs
from svckit.audit import new_event


@dataclass(frozen=True)
class ExportPage:
    data: str
    cursor: ExportCursor
    complete: bool
    count: int
    checkpoint: StoredCheckpoint | None


class Reading(Appending, Proofs):
    """Lists, staff search and export (part of `LogService`); search records through `Appending`, export proves
    through `Proofs`."""

    trace_url_template = ""  # AUDIT_TRACE_URL_TEMPLATE: exports link each event's trace (domain/trace_links.py)

    async def list_events(self, f: EventFilter) -> list[tuple[int, bytes]]:
        return await self._store.list_events(f)

    async def search_events(self, f: EventFilter, justification: str) -> list[tuple[int, bytes]]:
        """Staff search. Recorded before anything is returned (refused if it cannot be): one event in the
        platform's own feed and one in the feed of each account concerned (access transparency)."""
        rows = await self._store.list_events(f)
        accounts = {f.account_id} if f.account_id is not None else {
            formats.facts(s, b).account_id for s, b in rows
        }
        scope = str(f.account_id) if f.account_id is not None else "all"
        details = {"scope": scope, "returned": str(len(rows)), "justification": justification[:200]}
        events = [new_event(SERVICE, "audit.events.searched", resource_type="audit_log", resource_id=scope,
                            details=details)]
        for acct in sorted(a for a in accounts if a > 0):
            ev = new_event(SERVICE, "audit.events.read_by_staff", resource_type="audit_log",
                           resource_id=str(acct), details=details)
            ev.subject_account_id = acct
            events.append(ev)
        await self.append_events([formats.to_incoming(e) for e in events])
        return rows

    async def export(self, account_id: int, cursor: ExportCursor, fmt: int, page_size: int,
                     omit_proofs: bool) -> ExportPage:
        limit = page_size_of(page_size, 1000)
        if fmt == FORMAT_CEF or omit_proofs:
            rows = await self._store.account_events(account_id, cursor.after_sequence, None, limit)
            if fmt == FORMAT_CEF:
                lines = [formats.cef_line(s, leaf, self.trace_url_template) for s, leaf in rows]
            else:
                lines = [formats.jsonl_line(s, leaf, None, None, self.trace_url_template) for s, leaf in rows]
            last = rows[-1][0] if rows else cursor.after_sequence
            return ExportPage(_text(lines), ExportCursor(last, 0), len(rows) < limit, len(rows), None)
        lines = []
        if cursor.tree_size:
            cp = await self.checkpoint(cursor.tree_size)
        else:
            # A new segment of the export, pinned to the latest checkpoint: its line carries the checkpoint
            # and a signed account head (how many of the account's events that tree holds), so a verifier
            # can tell if any event of the account was left out, at the end included.
            cp = await self.checkpoint(fresh=True)
            count = await self._store.account_count_at(account_id, cp.tree_size)
            head = merkle.AccountHead(self.signer.name, account_id, count, cp.tree_size)
            lines.append(formats.checkpoint_line(cp, self.verifier_key, self.signer.sign_text(head.text()),
                                                 cursor.after_sequence))
        rows = await self._store.account_events(account_id, cursor.after_sequence, cp.tree_size, limit)
        paths = await self._paths([s - 1 for s, _ in rows], cp.tree_size) if rows else []
        lines += [formats.jsonl_line(s, leaf, cp.tree_size, p, self.trace_url_template)
                  for (s, leaf), p in zip(rows, paths, strict=True)]
        complete = len(rows) < limit
        last = rows[-1][0] if rows else cursor.after_sequence
        return ExportPage(_text(lines), ExportCursor(last, 0 if complete else cp.tree_size), complete, len(rows), cp)


def _text(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)
