"""Contact lists over the real messaging API (mTLS), real PostgreSQL, keys and audit: lists and contacts with their
refusals (a bad number, a duplicate, another account's list, a de-identified reader), a CSV import run by the job
(all or nothing, its bad lines by number and reason), sends to a list (opted-out contacts refused, another
account's list refused whole with nothing stored), and what is stored: no name, email or number in clear, audit
events with ids and counts only."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest

from sendsafe.messaging.v1 import contact_service_pb2 as pb
from sendsafe.messaging.v1 import contact_service_pb2_grpc, messaging_service_pb2_grpc, sms_pb2
from sendsafe.messaging.v1 import messaging_service_pb2 as mpb
from svckit.app import App
from svckit.rpcstatus import error_reason
from tests.conftest import channel_as
from tests.integration.messaging.conftest import Messaging, principal_md
from tests.integration.messaging.test_api import eventually
from tests.support import CertBundle

PERMS = ("contacts.read", "contacts.write", "sms.send", "sms.read")
MARK = "Zqxmarker"


def _acct() -> int:
    return 20_000 + uuid.uuid4().int % 100_000


async def _refused(call: Any, code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    assert error_reason(err.value) == reason, err.value.details()


async def _all_text(m: Messaging, *tables: str) -> str:
    out = []
    for t in tables:
        out.append(str([tuple(r.values()) for r in await m.pool.fetch(f"SELECT t.* FROM {t} t")]))
    return "\n".join(out)


async def test_lists_and_contacts_are_sealed_and_refuse_bad_input(messaging: Messaging, certs: CertBundle,
                                                                  audit_app: App) -> None:
    account, other = _acct(), _acct()
    me, them = principal_md(account, *PERMS), principal_md(other, *PERMS)
    async with channel_as(certs, "gateway", messaging.api.port, "messaging") as ch:
        stub = contact_service_pb2_grpc.ContactServiceStub(ch)
        made = (await stub.CreateContactList(pb.CreateContactListRequest(list_name=f"{MARK} VIPs"), metadata=me)).list
        assert made.list_name == f"{MARK} VIPs" and made.list_id > 0 and made.contacts_count == 0
        lid = made.list_id
        await _refused(stub.CreateContactList(pb.CreateContactListRequest(list_name=" "), metadata=me),
                       grpc.StatusCode.INVALID_ARGUMENT, "INVALID_LIST_NAME")
        first = (await stub.CreateContact(pb.CreateContactRequest(
            list_id=lid, phone_number="0412 345 678", address_country="AU", first_name=f"{MARK}Ann",
            email=f"ann.{MARK}@example.com"), metadata=me)).contact
        assert (first.phone_number, first.first_name, first.list_id) == ("+61412345678", f"{MARK}Ann", lid)
        await _refused(stub.CreateContact(pb.CreateContactRequest(list_id=lid, phone_number="+61412345678"),
                                          metadata=me), grpc.StatusCode.INVALID_ARGUMENT, "DUPLICATE_CONTACT")
        await _refused(stub.CreateContact(pb.CreateContactRequest(list_id=lid, phone_number="12ab"), metadata=me),
                       grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PHONE_NUMBER")
        await _refused(stub.CreateContact(pb.CreateContactRequest(list_id=lid, first_name="x"), metadata=me),
                       grpc.StatusCode.INVALID_ARGUMENT, "MISSING_PHONE_NUMBER")
        # Another account sees nothing of the list.
        await _refused(stub.GetContactList(pb.GetContactListRequest(list_id=lid), metadata=them),
                       grpc.StatusCode.NOT_FOUND, "LIST_NOT_FOUND")
        await _refused(stub.CreateContact(pb.CreateContactRequest(list_id=lid, phone_number="+61412345679"),
                                          metadata=them), grpc.StatusCode.NOT_FOUND, "LIST_NOT_FOUND")
        await _refused(stub.GetContact(pb.GetContactRequest(list_id=lid, contact_id=first.contact_id), metadata=them),
                       grpc.StatusCode.NOT_FOUND, "CONTACT_NOT_FOUND")
        # A change keeps the fields it does not name.
        changed = (await stub.UpdateContact(pb.UpdateContactRequest(list_id=lid, contact_id=first.contact_id,
                                                                    last_name=f"{MARK}Lee"), metadata=me)).contact
        assert (changed.first_name, changed.last_name, changed.phone_number) == (
            f"{MARK}Ann", f"{MARK}Lee", "+61412345678")
        # A de-identified user reads a masked number and no email.
        masked = (await stub.GetContact(pb.GetContactRequest(list_id=lid, contact_id=first.contact_id),
                                        metadata=principal_md(account, *PERMS, deidentified=True))).contact
        assert masked.phone_number == "+61******678" and masked.email == ""
        page = await stub.ListContacts(pb.ListContactsRequest(list_id=lid), metadata=me)
        assert page.total == 1 and [c.contact_id for c in page.data] == [first.contact_id]
        listed = await stub.ListContactLists(pb.ListContactListsRequest(), metadata=me)
        assert [(x.list_id, x.contacts_count) for x in listed.data] == [(lid, 1)]
        assert (await stub.ListContactLists(pb.ListContactListsRequest(), metadata=them)).total == 0

        stored = await _all_text(messaging, "contact_lists", "contacts")
        assert MARK not in stored and "412345678" not in stored and "example.com" not in stored

        await stub.DeleteContact(pb.DeleteContactRequest(list_id=lid, contact_id=first.contact_id), metadata=me)
        await _refused(stub.DeleteContact(pb.DeleteContactRequest(list_id=lid, contact_id=first.contact_id),
                                          metadata=me), grpc.StatusCode.NOT_FOUND, "CONTACT_NOT_FOUND")
        await stub.DeleteContactList(pb.DeleteContactListRequest(list_id=lid), metadata=me)
        await _refused(stub.GetContactList(pb.GetContactListRequest(list_id=lid), metadata=me),
                       grpc.StatusCode.NOT_FOUND, "LIST_NOT_FOUND")

    from sendsafe.audit.v1 import event_pb2

    async def events() -> list[event_pb2.Event]:
        rows = await audit_app.extras["pool"].fetch("SELECT body FROM events ORDER BY sequence")
        evs = [event_pb2.Event.FromString(bytes(r["body"])) for r in rows]
        return [e for e in evs if e.details.get("list_id") == str(lid)]

    async def all_recorded() -> bool:
        return len(await events()) >= 5

    await eventually(all_recorded, what="the list's audit events")
    evs = await events()
    assert [e.action for e in evs] == [
        "messaging.contact_list.created", "messaging.contact.created", "messaging.contact.updated",
        "messaging.contact.deleted", "messaging.contact_list.deleted"]
    assert all(e.actor.account_id == account for e in evs)
    assert MARK not in str(evs) and "412345678" not in str(evs)


def _csv(n: int) -> bytes:
    lines = ["phone_number,first_name,email"]
    lines += [f"+614{10_000_000 + i:08d},{MARK}{i},p{i}.{MARK}@example.com" for i in range(n)]
    lines.insert(3, "+61410000001,again,dup@example.com")  # line 4: the second row's number again
    lines.insert(5, "not-a-number,bad,bad@example.com")  # line 6
    lines.append("+61410000002,too,many,columns")
    return ("\n".join(lines) + "\n").encode()


async def test_an_import_adds_every_good_line_at_once_and_reports_the_others(
    messaging: Messaging, certs: CertBundle,
) -> None:
    account = _acct()
    me = principal_md(account, *PERMS)
    async with channel_as(certs, "gateway", messaging.api.port, "messaging") as ch:
        stub = contact_service_pb2_grpc.ContactServiceStub(ch)
        lid = (await stub.CreateContactList(pb.CreateContactListRequest(list_name="imports"), metadata=me)).list.list_id
        await stub.CreateContact(pb.CreateContactRequest(list_id=lid, phone_number="+61410000003"), metadata=me)
        await _refused(stub.ImportContacts(pb.ImportContactsRequest(list_id=lid, field_order="phone_number,shoe"),
                                           metadata=me), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_IMPORT")
        await _refused(stub.ImportContacts(pb.ImportContactsRequest(list_id=lid), metadata=me),
                       grpc.StatusCode.INVALID_ARGUMENT, "INVALID_IMPORT")
        await _refused(stub.ImportContacts(pb.ImportContactsRequest(list_id=lid + 10_000, file={"data": b"x"}),
                                           metadata=me), grpc.StatusCode.NOT_FOUND, "LIST_NOT_FOUND")
        started = (await stub.ImportContacts(pb.ImportContactsRequest(
            list_id=lid, file={"content_type": "text/csv", "data": _csv(200)}), metadata=me)).contact_import
        assert started.state in (pb.CONTACT_IMPORT_STATE_PENDING, pb.CONTACT_IMPORT_STATE_RUNNING,
                                 pb.CONTACT_IMPORT_STATE_DONE)

        async def done() -> bool:
            got = (await stub.GetContactImport(pb.GetContactImportRequest(list_id=lid, import_id=started.import_id),
                                               metadata=me)).contact_import
            return got.state == pb.CONTACT_IMPORT_STATE_DONE

        await eventually(done, what="the import")
        got = (await stub.GetContactImport(pb.GetContactImportRequest(list_id=lid, import_id=started.import_id),
                                           metadata=me)).contact_import
        # 203 lines: 200 good ones of which +61410000003 was in the list already, a repeat, a bad number, 4 columns.
        assert (got.rows_read, got.imported, got.duplicates, got.invalid) == (203, 199, 2, 2)
        assert [(p.line, p.reason) for p in got.problems] == [
            (4, "DUPLICATE"), (6, "INVALID_PHONE_NUMBER"), (7, "DUPLICATE"), (204, "TOO_MANY_COLUMNS")]
        lst = (await stub.GetContactList(pb.GetContactListRequest(list_id=lid), metadata=me)).list
        assert (lst.contacts_count, lst.import_in_progress) == (200, 0)
        stored = await _all_text(messaging, "contacts", "contact_imports")
        assert MARK not in stored and "61410000" not in stored

        # A file that is not UTF-8 fails as a whole, with nothing added.
        bad = (await stub.ImportContacts(pb.ImportContactsRequest(
            list_id=lid, field_order="phone_number", file={"data": b"\xff\xfe+61410000999\n"}), metadata=me)
               ).contact_import

        async def failed() -> bool:
            got = (await stub.GetContactImport(pb.GetContactImportRequest(list_id=lid, import_id=bad.import_id),
                                               metadata=me)).contact_import
            return got.state == pb.CONTACT_IMPORT_STATE_FAILED

        await eventually(failed, what="the bad import to fail")
        lst = (await stub.GetContactList(pb.GetContactListRequest(list_id=lid), metadata=me)).list
        assert lst.contacts_count == 200


async def test_a_send_to_a_list_reaches_each_contact_but_opted_out_ones(messaging: Messaging, certs: CertBundle
                                                                         ) -> None:
    account, other = _acct(), _acct()
    me = principal_md(account, *PERMS, test_mode=True)
    async with channel_as(certs, "gateway", messaging.api.port, "messaging") as ch:
        stub = contact_service_pb2_grpc.ContactServiceStub(ch)
        sms = messaging_service_pb2_grpc.MessagingServiceStub(ch)
        lid = (await stub.CreateContactList(pb.CreateContactListRequest(list_name="send"), metadata=me)).list.list_id
        numbers = [f"+6141300000{i}" for i in range(5)]
        for n in numbers:
            await stub.CreateContact(pb.CreateContactRequest(list_id=lid, phone_number=n), metadata=me)
        await stub.CreateContact(pb.CreateContactRequest(list_id=lid, email="no.number@example.com"), metadata=me)
        index = await messaging.service.keys.indexer(account)
        await messaging.pool.execute("INSERT INTO opt_outs (account_id, number_hash) VALUES ($1, $2)",
                                     account, index(numbers[2]))

        before = await messaging.pool.fetchval("SELECT count(*) FROM messages")
        await _refused(sms.SendSms(mpb.SendSmsRequest(messages=[sms_pb2.OutboundSms(body="hi", list_id=str(lid))]),
                                   metadata=principal_md(other, *PERMS)),
                       grpc.StatusCode.PERMISSION_DENIED, "NOT_ENOUGH_PERMISSION_TO_LIST_ID")
        await _refused(sms.SendSms(mpb.SendSmsRequest(messages=[sms_pb2.OutboundSms(body="hi", list_id="x1")]),
                                   metadata=me), grpc.StatusCode.PERMISSION_DENIED, "NOT_ENOUGH_PERMISSION_TO_LIST_ID")
        assert await messaging.pool.fetchval("SELECT count(*) FROM messages") == before

        out = await sms.SendSms(mpb.SendSmsRequest(messages=[sms_pb2.OutboundSms(body="sale", list_id=str(lid))]),
                                metadata=me)
        assert sorted((m.to, m.status) for m in out.messages) == sorted(
            (n, "RECIPIENT_OPTED_OUT" if n == numbers[2] else "SUCCESS") for n in numbers)
        assert (out.queued_count, out.blocked_count) == (4, 1)
        assert {m.list_id for m in out.messages} == {str(lid)} and all(m.contact_id for m in out.messages)
        rows = await messaging.pool.fetch("SELECT list_id, contact_id FROM messages WHERE account_id = $1", account)
        assert len(rows) == 4 and {r["list_id"] for r in rows} == {str(lid)}
        # A de-identified user, who reads the list's numbers masked, gets them masked in an answer too.
        priced = await sms.PriceSms(mpb.PriceSmsRequest(messages=[{"body": "sale", "list_id": str(lid)}]),
                                    metadata=principal_md(account, *PERMS, test_mode=True, deidentified=True))
        assert sorted(m.to for m in priced.messages) == sorted(f"+61******{n[-3:]}" for n in numbers)
        assert "RECIPIENT_OPTED_OUT" in [m.status for m in priced.messages]
