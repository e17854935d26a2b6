"""Contact lists: lists and contacts (ClickSend's /v3/lists shapes), CSV imports run by a job, and the numbers a
send to a list goes to.

A list's name and each contact (all its fields as one JSON object) are sealed under the account's keys; a contact's
number is also kept as the account's keyed number hash (the one messages and opt-outs use) and its email as a keyed
hash, so the store de-duplicates without opening anything. A de-identified user reads contacts with numbers masked
and no email or address (as history masks numbers).

An import is all-or-nothing: the job reads the sealed file, checks every line, seals the contacts in batches
(`encrypt_many`) and inserts them with COPY in ONE transaction that also records the counts and drops the file; a
job that dies part-way leaves nothing, and the lease lets the next claim start the import again. Every change is an
audit event with ids and counts only (never a number, name or email), stored before the change commits."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sendsafe.audit.v1 import event_pb2
from services.messaging.domain.contacts import (
    CONTACT_RECORD,
    IMPORT_FILE_RECORD,
    LIST_RECORD,
    CleanContact,
    Contact,
    ContactImport,
    ContactImportNotFound,
    ContactList,
    ContactListNotFound,
    ContactNotFound,
    DuplicateContact,
    InvalidImport,
    ListNotPermitted,
    ParsedImport,
    check_id,
    check_list_name,
    clean_contact,
    email_index,
    field_order,
    parse_import,
)
from services.messaging.domain.privacy import mask_number
from services.messaging.service.index_keys import IndexKeys
from services.messaging.service.ports import SERVICE, Cipher, ContactStore, Record
from svckit.audit import new_event
from svckit.envelope import aad_for
from svckit.errors import PermissionDenied
from svckit.paging import PageWindow, page_window

_LOG = logging.getLogger(__name__)
SEAL_BATCH = 2000
MAX_IMPORT_ATTEMPTS = 5
IMPORT_POLL_SECONDS = 2.0  # how often a replica looks for imports another one queued (its own wake it at once)
MAX_IMPORT_BYTES = 8 * 1024 * 1024
_HIDDEN_WHEN_DEIDENTIFIED = ("email", "address_line_1", "address_line_2", "address_postal_code")


@dataclass(frozen=True)
class Page:
    window: PageWindow
    total: int
    items: list[Any]


class ContactLists:
    def __init__(self, store: ContactStore, cipher: Cipher, keys: IndexKeys, record: Record, *,
                 lease_s: float = 120.0, wake: Callable[[], None] | None = None) -> None:
        self._store = store
        self._cipher = cipher
        self._keys = keys
        self._record = record
        self._lease = lease_s
        self._wake = wake or (lambda: None)

    # -- lists ---------------------------------------------------------------------------------------------------

    async def create_list(self, caller: Any, name: str) -> ContactList:
        value = check_list_name(name)
        acct = caller.account_id
        (list_id,) = await self._store.new_ids("list", 1)
        name_ct = await self._cipher.encrypt(acct, aad_for(acct, LIST_RECORD, str(list_id)), value.encode())

        async def audit() -> None:
            await self._event("messaging.contact_list.created", list_id)

        await self._store.create_list(list_id, acct, name_ct, audit)
        return ContactList(list_id, acct, value)

    async def _list(self, acct: int, row: Any) -> ContactList:
        name = await self._cipher.decrypt(acct, aad_for(acct, LIST_RECORD, str(row["list_id"])), row["name_ct"])
        return ContactList(row["list_id"], acct, name.decode(), int(row["contacts_count"]), bool(row["importing"]))

    async def lists(self, caller: Any, page: int, limit: int) -> Page:
        w = page_window(page, limit)
        total, rows = await self._store.lists(caller.account_id, w.offset, w.limit)
        return Page(w, total, [await self._list(caller.account_id, r) for r in rows])

    async def get_list(self, caller: Any, list_id: int) -> ContactList:
        row = await self._store.contact_list(caller.account_id, check_id(list_id, "list_id"))
        if row is None:
            raise ContactListNotFound("No such list.")
        return await self._list(caller.account_id, row)

    async def rename_list(self, caller: Any, list_id: int, name: str) -> ContactList:
        lid, value, acct = check_id(list_id, "list_id"), check_list_name(name), caller.account_id
        name_ct = await self._cipher.encrypt(acct, aad_for(acct, LIST_RECORD, str(lid)), value.encode())

        async def audit() -> None:
            await self._event("messaging.contact_list.renamed", lid)

        if not await self._store.rename_list(acct, lid, name_ct, audit):
            raise ContactListNotFound("No such list.")
        return await self.get_list(caller, lid)

    async def delete_list(self, caller: Any, list_id: int) -> None:
        lid = check_id(list_id, "list_id")

        async def audit(count: int) -> None:
            await self._event("messaging.contact_list.deleted", lid, contacts_removed=str(count))

        if not await self._store.delete_list(caller.account_id, lid, audit):
            raise ContactListNotFound("No such list.")

    # -- contacts ------------------------------------------------------------------------------------------------

    async def _seal(self, acct: int, pairs: list[tuple[int, CleanContact]]) -> list[tuple[int, bytes, bytes | None,
                                                                                          bytes | None]]:
        index = await self._keys.indexer(acct)
        key = await self._keys.get(acct)
        out: list[tuple[int, bytes, bytes | None, bytes | None]] = []
        for start in range(0, len(pairs), SEAL_BATCH):
            chunk = pairs[start:start + SEAL_BATCH]
            blobs = await self._cipher.encrypt_many(acct, [
                (aad_for(acct, CONTACT_RECORD, str(cid)), json.dumps(c.fields, separators=(",", ":")).encode())
                for cid, c in chunk])
            out.extend((cid, blob, index(c.phone) if c.phone else None,
                        email_index(key, c.email) if c.email else None)
                       for (cid, c), blob in zip(chunk, blobs, strict=True))
        return out

    async def _contact(self, caller: Any, list_id: int, row: Any) -> Contact:
        acct = caller.account_id
        raw = await self._cipher.decrypt(acct, aad_for(acct, CONTACT_RECORD, str(row["contact_id"])), row["data_ct"])
        fields: dict[str, str] = json.loads(raw)
        if caller.deidentified:
            fields = {k: mask_number(v) if k in ("phone_number", "fax_number") else v for k, v in fields.items()
                      if k not in _HIDDEN_WHEN_DEIDENTIFIED}
        return Contact(row["contact_id"], list_id, acct, fields, int(row["create_time"].timestamp()),
                       int(row["update_time"].timestamp()))

    async def add_contact(self, caller: Any, list_id: int, fields: dict[str, str]) -> Contact:
        lid, acct = check_id(list_id, "list_id"), caller.account_id
        contact = clean_contact(fields)
        (cid,) = await self._store.new_ids("contact", 1)
        (row,) = await self._seal(acct, [(cid, contact)])

        async def audit() -> None:
            await self._event("messaging.contact.created", lid, contact_id=str(cid))

        outcome = await self._store.add_contact(acct, lid, row, audit)
        if outcome == "no_list":
            raise ContactListNotFound("No such list.")
        if outcome == "duplicate":
            raise DuplicateContact("The list already has a contact with this phone number (or email).")
        return await self.get_contact(caller, lid, cid)

    async def contacts(self, caller: Any, list_id: int, page: int, limit: int) -> Page:
        lid = check_id(list_id, "list_id")
        if await self._store.contact_list(caller.account_id, lid) is None:
            raise ContactListNotFound("No such list.")
        w = page_window(page, limit)
        total, rows = await self._store.contacts(caller.account_id, lid, w.offset, w.limit)
        return Page(w, total, [await self._contact(caller, lid, r) for r in rows])

    async def get_contact(self, caller: Any, list_id: int, contact_id: int) -> Contact:
        lid, cid = check_id(list_id, "list_id"), check_id(contact_id, "contact_id")
        row = await self._store.contact(caller.account_id, lid, cid)
        if row is None:
            raise ContactNotFound("No such contact in this list.")
        return await self._contact(caller, lid, row)

    async def update_contact(self, caller: Any, list_id: int, contact_id: int, fields: dict[str, str]) -> Contact:
        """ClickSend's PUT: the fields given replace theirs; the others stay."""
        current = await self.get_contact(caller, list_id, contact_id)
        if caller.deidentified:
            raise PermissionDenied("A de-identified user cannot change contacts (it cannot see them whole).",
                                   reason="DEIDENTIFIED_USER")
        merged = {**current.fields, **{k: v for k, v in fields.items() if v}}
        contact = clean_contact(merged)
        (row,) = await self._seal(caller.account_id, [(current.contact_id, contact)])

        async def audit() -> None:
            await self._event("messaging.contact.updated", current.list_id, contact_id=str(current.contact_id))

        outcome = await self._store.update_contact(caller.account_id, current.list_id, row, audit)
        if outcome == "missing":
            raise ContactNotFound("No such contact in this list.")
        if outcome == "duplicate":
            raise DuplicateContact("Another contact of the list has this phone number (or email).")
        return await self.get_contact(caller, current.list_id, current.contact_id)

    async def delete_contact(self, caller: Any, list_id: int, contact_id: int) -> None:
        lid, cid = check_id(list_id, "list_id"), check_id(contact_id, "contact_id")

        async def audit() -> None:
            await self._event("messaging.contact.deleted", lid, contact_id=str(cid))

        if not await self._store.delete_contact(caller.account_id, lid, cid, audit):
            raise ContactNotFound("No such contact in this list.")

    # -- imports -------------------------------------------------------------------------------------------------

    async def start_import(self, caller: Any, list_id: int, data: bytes, order: str, has_header: bool
                           ) -> ContactImport:
        """Keep the uploaded CSV sealed and queue it for the import job (it answers at once)."""
        lid, acct = check_id(list_id, "list_id"), caller.account_id
        names = field_order(order)
        if not data.strip():
            raise InvalidImport("The request body must be the CSV file (text/csv).")
        if len(data) > MAX_IMPORT_BYTES:
            raise InvalidImport(f"A file may be at most {MAX_IMPORT_BYTES} bytes.")
        (iid,) = await self._store.new_ids("import", 1)
        file_ct = await self._cipher.encrypt(acct, aad_for(acct, IMPORT_FILE_RECORD, str(iid)), data)

        async def audit() -> None:
            await self._event("messaging.contact_import.started", lid, import_id=str(iid), bytes=str(len(data)))

        if not await self._store.create_import(iid, acct, caller.user_id, lid, file_ct, names, has_header, audit):
            raise ContactListNotFound("No such list.")
        self._wake()
        return await self.get_import(caller, lid, iid)

    async def get_import(self, caller: Any, list_id: int, import_id: int) -> ContactImport:
        found = await self._store.contact_import(caller.account_id, check_id(list_id, "list_id"),
                                                 check_id(import_id, "import_id"))
        if found is None:
            raise ContactImportNotFound("No such import of this list.")
        return found

    async def run_imports(self) -> int:
        """Claim and run one waiting import (the job calls it while it finds work)."""
        claim = await self._store.claim_import(self._lease)
        if claim is None:
            return 0
        claimed, token = claim
        iid, acct = claimed["import_id"], claimed["account_id"]
        if claimed["attempts"] > MAX_IMPORT_ATTEMPTS:  # it failed every time it ran: stop trying
            await self._fail(claimed, token, "IMPORT_FAILED", f"gave up after {MAX_IMPORT_ATTEMPTS} attempts")
            return 1
        try:
            data = await self._cipher.decrypt(acct, aad_for(acct, IMPORT_FILE_RECORD, str(iid)), claimed["file_ct"])
            parsed = parse_import(data, list(claimed["field_order"]), claimed["has_header"])
        except InvalidImport as exc:
            await self._fail(claimed, token, exc.reason, exc.message)
            return 1
        await self._store.import_progress(iid, token, parsed.rows_read)
        outcome = await self._commit_import(claimed, token, parsed)
        if outcome == "no_list":
            _LOG.info("contact import %s: its list was deleted", iid)
        elif outcome == "duplicate":  # a contact was added meanwhile: the import runs again, against the new list
            _LOG.info("contact import %s: the list changed while it ran; it runs again", iid)
            await self._store.release_import(iid, token)
        return 1

    async def _commit_import(self, claimed: Any, token: str, parsed: ParsedImport) -> str:
        iid, lid, acct = claimed["import_id"], claimed["list_id"], claimed["account_id"]
        index = await self._keys.indexer(acct)
        key = await self._keys.get(acct)
        phones = [index(c.phone) for _, c in parsed.contacts if c.phone]
        emails = [email_index(key, c.email) for _, c in parsed.contacts if not c.phone]
        have_phone, have_email = await self._store.existing_hashes(lid, phones, emails)
        fresh: list[tuple[int, CleanContact]] = []
        for line, c in parsed.contacts:
            if (c.phone and index(c.phone) in have_phone) or (not c.phone and email_index(key, c.email) in have_email):
                parsed.problem(line, "DUPLICATE")
            else:
                fresh.append((line, c))
        problems = sorted(parsed.problems, key=lambda p: p.line)
        ids = await self._store.new_ids("contact", len(fresh)) if fresh else []
        rows = await self._seal(acct, [(cid, c) for cid, (_, c) in zip(ids, fresh, strict=True)])
        counts = {"rows_read": parsed.rows_read, "imported": len(rows), "duplicates": parsed.duplicates,
                  "invalid": parsed.invalid}

        async def audit() -> None:
            await self._event("messaging.contact_import.completed", lid, import_id=str(iid), account=acct,
                              rows_read=str(counts["rows_read"]), imported=str(counts["imported"]),
                              duplicates=str(counts["duplicates"]), invalid=str(counts["invalid"]))

        return await self._store.finish_import(claimed, token, rows, counts, problems, audit)

    async def _fail(self, claimed: Any, token: str, reason: str, message: str) -> None:
        iid, lid, acct = claimed["import_id"], claimed["list_id"], claimed["account_id"]
        _LOG.info("contact import %s failed: %s", iid, reason)

        async def audit() -> None:
            await self._event("messaging.contact_import.failed", lid, import_id=str(iid), reason=reason,
                              account=acct, failed=True)

        await self._store.fail_import(iid, token, f"{reason}: {message}", audit)

    # -- sends ---------------------------------------------------------------------------------------------------

    async def recipients(self, account_id: int, list_id: str) -> list[tuple[int, str]]:
        """(contact id, E.164) of every contact with a number in the account's list; ListNotPermitted for a list
        that is not the account's (or does not exist: the two are not told apart)."""
        try:
            lid = int(list_id)
        except ValueError:
            lid = 0
        rows = await self._store.list_recipients(account_id, lid) if lid > 0 else None
        if rows is None:
            raise ListNotPermitted("The account has no list with this list_id.")
        out = []
        for cid, blob in rows:
            fields = json.loads(await self._cipher.decrypt(account_id, aad_for(account_id, CONTACT_RECORD, str(cid)),
                                                           blob))
            out.append((cid, fields.get("phone_number", "")))
        return out

    async def _event(self, action: str, list_id: int, *, account: int | None = None, failed: bool = False,
                     **details: str) -> None:
        """An event of the list (the job's name the account: no caller is in its context)."""
        await self._record(new_event(SERVICE, action, resource_type="contact_list", resource_id=str(list_id),
                                     details={"list_id": str(list_id), **details}, account_id=account,
                                     outcome=event_pb2.OUTCOME_FAILURE if failed else event_pb2.OUTCOME_SUCCESS))
