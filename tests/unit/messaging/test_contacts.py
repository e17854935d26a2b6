"""Contact lists: the pure rules (a contact's fields, field orders, CSV parsing with line-numbered problems, the email
index), a send's list expansion, and the use cases over an in-memory store (sealed values, de-duplication by keyed
hash, the import job's all-or-nothing commit, audit events with ids and counts only)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from sendsafe.audit.v1 import event_pb2
from services.messaging.domain.contacts import (
    MAX_REPORTED_PROBLEMS,
    ContactImport,
    ContactListNotFound,
    DuplicateContact,
    ImportProblem,
    InvalidContact,
    InvalidImport,
    ListNotPermitted,
    clean_contact,
    email_index,
    field_order,
    parse_import,
)
from services.messaging.domain.errors import MessageStatusCode
from services.messaging.domain.outbound import TooManyRecipients
from services.messaging.domain.pricing import CURRENCIES
from services.messaging.domain.records import Caller, OutboundInput, SendItem, SendResult
from services.messaging.service.contacts import ContactLists
from services.messaging.service.index_keys import IndexKeys
from services.messaging.service.list_sends import MAX_EXPANDED, expand_lists, for_caller
from svckit.envelope import Envelope
from svckit.errors import PermissionDenied
from tests.unit.messaging.test_service import FakeKeys, FakeStore

# -- the rules ----------------------------------------------------------------------------------------------------


def test_a_contact_is_normalised_and_refused_by_reason_never_by_value() -> None:
    c = clean_contact({"phone_number": " 0412 345 678 ", "address_country": "au", "email": "Ann@Example.COM",
                       "first_name": "Ann", "last_name": ""})
    assert (c.phone, c.email) == ("+61412345678", "ann@example.com")
    assert c.fields == {"phone_number": "+61412345678", "address_country": "au", "email": "Ann@Example.COM",
                        "first_name": "Ann"}
    assert clean_contact({"email": "x@y.org"}).phone == ""
    for fields, reason in (
        ({"phone_number": "0412345678"}, "INVALID_PHONE_NUMBER"),  # national without a country
        ({"phone_number": "call me"}, "INVALID_PHONE_NUMBER"),
        ({"first_name": "Ann"}, "MISSING_PHONE_NUMBER"),
        ({"email": "nobody-at-all"}, "INVALID_EMAIL"),
        ({"email": "a@b.co", "first_name": "x" * 501}, "FIELD_TOO_LONG"),
        ({"email": "a@b.co", "first_name": "a\x00b"}, "CONTROL_CHARACTER"),
        ({"email": "a@b.co", "shoe_size": "44"}, "INVALID_CONTACT"),
    ):
        with pytest.raises(InvalidContact) as err:
            clean_contact(fields)
        assert err.value.reason == reason
        assert not any(v in err.value.message for v in fields.values() if len(v) > 3 and v != "44"), err.value.message


def test_a_field_order_names_known_fields_once_with_a_number_or_an_email() -> None:
    assert field_order("Phone, first_name,skip,,email") == ["phone_number", "first_name", "skip", "", "email"]
    assert field_order("") == []
    for bad in ("phone_number,shoe", "phone_number,phone", "first_name,last_name"):
        with pytest.raises(InvalidImport):
            field_order(bad)


def test_a_file_is_read_line_by_line_with_its_problems_by_line_number() -> None:
    data = ("\ufeffphone_number,first_name,email\r\n"
            "+61412345678,Ann,ann@example.com\r\n"
            "\r\n"
            "\"+61 412 345 679\",\"Lee, Jr\",\r\n"
            "+61412345678,Again,\r\n"
            ",NoNumber,\r\n"
            ",Mailonly,M@x.org\r\n"
            ",Mailtwice,m@X.org\r\n"
            "+61412345670,a,b,c\r\n").encode()
    parsed = parse_import(data, [], has_header=False)
    assert parsed.rows_read == 7
    assert [(line, c.phone or c.email) for line, c in parsed.contacts] == [
        (2, "+61412345678"), (4, "+61412345679"), (7, "m@x.org")]
    assert parsed.contacts[1][1].fields["first_name"] == "Lee, Jr"
    assert parsed.problems == [ImportProblem(5, "DUPLICATE"), ImportProblem(6, "MISSING_PHONE_NUMBER"),
                               ImportProblem(8, "DUPLICATE"), ImportProblem(9, "TOO_MANY_COLUMNS")]
    assert (parsed.duplicates, parsed.invalid) == (2, 2)
    # With a field order the first line is data unless has_header says otherwise.
    assert len(parse_import(b"+61412345678\n", ["phone_number"], has_header=False).contacts) == 1
    assert len(parse_import(b"number\n+61412345678\n", ["phone_number"], has_header=True).contacts) == 1
    with pytest.raises(InvalidImport):
        parse_import(b"\xff\xfe", ["phone_number"], has_header=False)
    with pytest.raises(InvalidImport):
        parse_import(b"", [], has_header=False)
    many = ("phone_number\n" + "bad\n" * (MAX_REPORTED_PROBLEMS + 5)).encode()
    lots = parse_import(many, [], has_header=False)
    assert lots.invalid == MAX_REPORTED_PROBLEMS + 5 and len(lots.problems) == MAX_REPORTED_PROBLEMS


def test_the_email_index_is_keyed_and_ignores_case() -> None:
    k1, k2 = b"k" * 32, b"j" * 32
    assert email_index(k1, "A@b.org") == email_index(k1, "a@B.ORG") != email_index(k2, "a@b.org")
    assert b"a@b.org" not in email_index(k1, "a@b.org")


# -- the list expansion of a send ---------------------------------------------------------------------------------


class FakeLists:
    def __init__(self, lists: dict[str, list[tuple[int, str]]]) -> None:
        self.lists = lists
        self.calls: list[tuple[int, str]] = []

    async def recipients(self, account_id: int, list_id: str) -> list[tuple[int, str]]:
        self.calls.append((account_id, list_id))
        if list_id not in self.lists:
            raise ListNotPermitted("no")
        return self.lists[list_id]


async def test_a_list_id_becomes_one_message_per_contact() -> None:
    caller = Caller(account_id=5, user_id=1, api_username="a")
    plain = [OutboundInput(body="hi", to="+61412345678")]
    fake = FakeLists({"7": [(1, "+61400000001"), (2, "+61400000002")]})
    assert await expand_lists(fake, caller, plain) is plain and fake.calls == []
    out = await expand_lists(fake, caller, [
        OutboundInput(body="a", list_id="7", to="ignored", custom_string="c"), *plain,
        OutboundInput(body="b", to="", list_id="7")])
    assert [(m.body, m.to, m.list_id, m.contact_id, m.custom_string) for m in out] == [
        ("a", "+61400000001", "7", "1", "c"), ("a", "+61400000002", "7", "2", "c"),
        ("hi", "+61412345678", "", "", ""), ("b", "+61400000001", "7", "1", ""), ("b", "+61400000002", "7", "2", "")]
    assert fake.calls == [(5, "7")]  # read once per request
    with pytest.raises(ListNotPermitted):
        await expand_lists(fake, caller, [OutboundInput(body="x", to="", list_id="8")])
    big = FakeLists({"9": [(i, f"+6140{i:07d}") for i in range(MAX_EXPANDED + 1)]})
    with pytest.raises(TooManyRecipients):
        await expand_lists(big, caller, [OutboundInput(body="x", to="", list_id="9")])
    assert await expand_lists(None, caller, [OutboundInput(body="x", to="", list_id="9")]) == [
        OutboundInput(body="x", to="", list_id="9")]


def test_a_deidentified_user_reads_list_recipients_masked() -> None:
    typed = OutboundInput(body="a", to="+61412345678")
    listed = OutboundInput(body="a", to="+61400000001", list_id="7", contact_id="1")
    result = SendResult(date=1, items=[SendItem(typed, MessageStatusCode.SUCCESS, to=typed.to),
                                       SendItem(listed, MessageStatusCode.SUCCESS, to=listed.to)],
                        currency=next(iter(CURRENCIES.values())))
    seen = for_caller(Caller(1, 2, "ro", deidentified=True), result)
    assert [(i.to, i.input.to) for i in seen.items] == [("+61412345678", "+61412345678"),
                                                        ("+61******001", "+61******001")]
    assert for_caller(Caller(1, 2, "me"), result) is result


# -- the use cases over an in-memory store --------------------------------------------------------------------------


class Row(dict[str, Any]):
    pass


class MemoryContacts:
    """ContactStore in memory (the subset the use cases below reach)."""

    def __init__(self) -> None:
        self.seq = 0
        self.lists: dict[int, Row] = {}
        self.contacts: dict[int, Row] = {}
        self.imports: dict[int, Row] = {}
        self.fail_next_commit = False

    async def new_ids(self, kind: str, count: int) -> list[int]:
        self.seq += count
        return list(range(self.seq - count + 1, self.seq + 1))

    def _list_row(self, lid: int) -> Row:
        n = sum(1 for c in self.contacts.values() if c["list_id"] == lid)
        busy = any(i["list_id"] == lid and i["state"] in ("pending", "running") for i in self.imports.values())
        return Row(list_id=lid, name_ct=self.lists[lid]["name_ct"], contacts_count=n, importing=busy)

    async def create_list(self, list_id: int, account_id: int, name_ct: bytes,
                          before_commit: Callable[[], Awaitable[None]]) -> None:
        await before_commit()
        self.lists[list_id] = Row(account_id=account_id, name_ct=name_ct)

    async def contact_list(self, account_id: int, list_id: int) -> Row | None:
        x = self.lists.get(list_id)
        return self._list_row(list_id) if x is not None and x["account_id"] == account_id else None

    def _dup(self, lid: int, phone: bytes | None, email: bytes | None, skip: int = 0) -> bool:
        for cid, c in self.contacts.items():
            if c["list_id"] == lid and cid != skip and (
                    (phone and c["phone_hash"] == phone) or (not phone and email and c["email_hash"] == email)):
                return True
        return False

    async def add_contact(self, account_id: int, list_id: int, row: tuple[int, bytes, bytes | None, bytes | None],
                          before_commit: Callable[[], Awaitable[None]]) -> str:
        if await self.contact_list(account_id, list_id) is None:
            return "no_list"
        if self._dup(list_id, row[2], row[3]):
            return "duplicate"
        await before_commit()
        now = datetime.now(UTC)
        self.contacts[row[0]] = Row(contact_id=row[0], list_id=list_id, account_id=account_id, data_ct=row[1],
                                    phone_hash=row[2], email_hash=row[3], create_time=now, update_time=now)
        return "ok"

    async def contact(self, account_id: int, list_id: int, contact_id: int) -> Row | None:
        c = self.contacts.get(contact_id)
        return c if c is not None and c["list_id"] == list_id and c["account_id"] == account_id else None

    async def list_recipients(self, account_id: int, list_id: int) -> list[tuple[int, bytes]] | None:
        if await self.contact_list(account_id, list_id) is None:
            return None
        return [(cid, c["data_ct"]) for cid, c in sorted(self.contacts.items())
                if c["list_id"] == list_id and c["phone_hash"]]

    async def create_import(self, import_id: int, account_id: int, user_id: int, list_id: int, file_ct: bytes,
                            order: Sequence[str], has_header: bool,
                            before_commit: Callable[[], Awaitable[None]]) -> bool:
        if await self.contact_list(account_id, list_id) is None:
            return False
        await before_commit()
        self.imports[import_id] = Row(import_id=import_id, list_id=list_id, account_id=account_id, user_id=user_id,
                                      file_ct=file_ct, field_order=list(order), has_header=has_header,
                                      state="pending", rows_read=0, counts={}, problems=[])
        return True

    async def contact_import(self, account_id: int, list_id: int, import_id: int) -> ContactImport | None:
        i = self.imports.get(import_id)
        if i is None or i["account_id"] != account_id or i["list_id"] != list_id:
            return None
        c = i["counts"]
        return ContactImport(import_id, list_id, account_id, i["state"], rows_read=i["rows_read"],
                             imported=c.get("imported", 0), duplicates=c.get("duplicates", 0),
                             invalid=c.get("invalid", 0), problems=tuple(i["problems"]))

    async def claim_import(self, lease_s: float) -> tuple[Row, str] | None:
        for i in self.imports.values():
            if i["state"] in ("pending", "running"):
                i["state"] = "running"
                i["attempts"] = i.get("attempts", 0) + 1
                return i, "token"
        return None

    async def import_progress(self, import_id: int, token: str, rows_read: int) -> None:
        self.imports[import_id]["rows_read"] = rows_read

    async def existing_hashes(self, list_id: int, phones: list[bytes], emails: list[bytes]
                              ) -> tuple[set[bytes], set[bytes]]:
        have = [c for c in self.contacts.values() if c["list_id"] == list_id]
        return ({c["phone_hash"] for c in have if c["phone_hash"] in phones},
                {c["email_hash"] for c in have if not c["phone_hash"] and c["email_hash"] in emails})

    async def finish_import(self, claimed: Row, token: str, rows: Sequence[tuple[int, bytes, bytes | None,
                                                                                   bytes | None]],
                            counts: dict[str, int], problems: Sequence[ImportProblem],
                            before_commit: Callable[[], Awaitable[None]]) -> str:
        if self.fail_next_commit:  # the transaction rolls back: nothing of it stays
            self.fail_next_commit = False
            raise ConnectionError("lost the database")
        await before_commit()
        now = datetime.now(UTC)
        for cid, ct, ph, em in rows:
            self.contacts[cid] = Row(contact_id=cid, list_id=claimed["list_id"], account_id=claimed["account_id"],
                                     data_ct=ct, phone_hash=ph, email_hash=em, create_time=now, update_time=now)
        claimed.update(state="done", counts=counts, problems=list(problems), file_ct=None)
        return "ok"

    async def release_import(self, import_id: int, token: str) -> None:
        self.imports[import_id]["state"] = "pending"

    async def fail_import(self, import_id: int, token: str, failure: str,
                          before_commit: Callable[[], Awaitable[None]]) -> None:
        await before_commit()
        self.imports[import_id].update(state="failed", file_ct=None)


def _lists() -> tuple[ContactLists, MemoryContacts, list[event_pb2.Event]]:
    events: list[event_pb2.Event] = []

    async def record(ev: event_pb2.Event) -> None:
        events.append(ev)

    store = MemoryContacts()
    cipher = Envelope(FakeKeys())
    return ContactLists(store, cipher, IndexKeys(FakeStore(), cipher), record), store, events  # type: ignore[arg-type]


ME = Caller(account_id=31, user_id=1, api_username="me")
OTHER = Caller(account_id=32, user_id=2, api_username="other")


async def test_contacts_are_sealed_deduplicated_and_private_to_their_account() -> None:
    lists, store, events = _lists()
    made = await lists.create_list(ME, "  Regulars ")
    assert made.name == "Regulars" and b"Regulars" not in store.lists[made.list_id]["name_ct"]
    ann = await lists.add_contact(ME, made.list_id, {"phone_number": "+61412345678", "first_name": "Ann"})
    assert ann.fields == {"phone_number": "+61412345678", "first_name": "Ann"}
    blob = store.contacts[ann.contact_id]["data_ct"]
    assert b"Ann" not in blob and b"412345678" not in blob
    with pytest.raises(DuplicateContact):
        await lists.add_contact(ME, made.list_id, {"phone_number": "0412 345 678", "address_country": "AU"})
    with pytest.raises(ContactListNotFound):
        await lists.add_contact(OTHER, made.list_id, {"phone_number": "+61412345679"})
    with pytest.raises(ListNotPermitted):
        await lists.recipients(OTHER.account_id, str(made.list_id))
    assert await lists.recipients(ME.account_id, str(made.list_id)) == [(ann.contact_id, "+61412345678")]
    masked = await lists.get_contact(Caller(31, 3, "ro", deidentified=True), made.list_id, ann.contact_id)
    assert masked.fields["phone_number"] == "+61******678"
    with pytest.raises(PermissionDenied):
        await lists.update_contact(Caller(31, 3, "ro", deidentified=True), made.list_id, ann.contact_id,
                                   {"first_name": "Bob"})
    assert [e.action for e in events] == ["messaging.contact_list.created", "messaging.contact.created"]
    assert "Ann" not in str(events) and "412345678" not in str(events) and "Regulars" not in str(events)


async def test_an_import_is_all_or_nothing_and_runs_again_after_a_failed_commit() -> None:
    lists, store, events = _lists()
    lid = (await lists.create_list(ME, "imports")).list_id
    await lists.add_contact(ME, lid, {"phone_number": "+61400000001"})
    data = "phone_number,first_name\n" + "".join(f"+614000000{i:02d},N{i}\n" for i in range(50)) + "nope,x\n"
    started = await lists.start_import(ME, lid, data.encode(), "", False)
    assert started.state == "pending"
    assert b"+61400000010" not in store.imports[started.import_id]["file_ct"]
    assert (await lists.get_list(ME, lid)).import_in_progress
    store.fail_next_commit = True
    with pytest.raises(ConnectionError):
        await lists.run_imports()
    assert sum(1 for c in store.contacts.values() if c["list_id"] == lid) == 1  # nothing of it
    assert await lists.run_imports() == 1  # claimed again (the lease) and done whole
    assert await lists.run_imports() == 0
    done = await lists.get_import(ME, lid, started.import_id)
    assert (done.state, done.rows_read, done.imported, done.duplicates, done.invalid) == ("done", 51, 49, 1, 1)
    assert done.problems == (ImportProblem(3, "DUPLICATE"), ImportProblem(52, "INVALID_PHONE_NUMBER"))
    listed = await lists.get_list(ME, lid)
    assert (listed.contacts_count, listed.import_in_progress) == (50, False)
    finished = [e for e in events if e.action == "messaging.contact_import.completed"]
    assert len(finished) == 1 and dict(finished[0].details) == {
        "list_id": str(lid), "import_id": str(started.import_id), "rows_read": "51", "imported": "49",
        "duplicates": "1", "invalid": "1"}
    assert finished[0].actor.account_id == ME.account_id
    with pytest.raises(ContactListNotFound):
        await lists.start_import(OTHER, lid, b"phone_number\n+61400000099\n", "", False)


async def test_a_file_that_cannot_be_read_fails_the_import_with_nothing_added() -> None:
    lists, store, events = _lists()
    lid = (await lists.create_list(ME, "bad")).list_id
    started = await lists.start_import(ME, lid, b"\xff\xfe\x00bad", "phone_number", False)
    assert await lists.run_imports() == 1
    assert (await lists.get_import(ME, lid, started.import_id)).state == "failed"
    assert not store.contacts and store.imports[started.import_id]["file_ct"] is None
    failed = [e for e in events if e.action == "messaging.contact_import.failed"]
    assert failed and failed[0].outcome == event_pb2.OUTCOME_FAILURE
    assert json.dumps(dict(failed[0].details)).find("bad") == -1


async def test_an_import_that_fails_every_time_is_given_up() -> None:
    lists, store, _ = _lists()
    lid = (await lists.create_list(ME, "flaky")).list_id
    started = await lists.start_import(ME, lid, b"phone_number\n+61400000001\n", "", False)
    for _ in range(5):
        store.fail_next_commit = True
        with pytest.raises(ConnectionError):
            await lists.run_imports()
    assert await lists.run_imports() == 1
    assert (await lists.get_import(ME, lid, started.import_id)).state == "failed" and not store.contacts
