"""The account export holds the account's sender identities and contacts, with the real messaging API and job, real
PostgreSQL and the real keys service over mTLS: a bought dedicated number, a verified own number (opened: its
number is sealed at rest), an alpha tag request, and a contact list with its contacts (every field opened), as
JSON Lines sections with ClickSend's field names. Before, the export left all of them out."""

from __future__ import annotations

import json
import uuid

from sendsafe.messaging.v1 import alpha_tag_service_pb2 as apb
from sendsafe.messaging.v1 import (
    alpha_tag_service_pb2_grpc,
    contact_service_pb2_grpc,
    export_service_pb2_grpc,
    sender_service_pb2_grpc,
)
from sendsafe.messaging.v1 import contact_service_pb2 as cpb
from sendsafe.messaging.v1 import export_service_pb2 as epb
from sendsafe.messaging.v1 import sender_service_pb2 as spb
from tests.conftest import channel_as
from tests.integration.messaging.conftest import Messaging, principal_md
from tests.integration.messaging.test_exports import OWNER, PAGE, _download, _ready, exporting  # noqa: F401
from tests.integration.messaging.test_senders import _code
from tests.support import CertBundle

PERMS = (*OWNER, "senders.read", "senders.write", "alpha_tags.read", "alpha_tags.write", "contacts.read",
         "contacts.write")


async def test_the_export_holds_numbers_alpha_tags_lists_and_contacts_opened(
    exporting: Messaging, certs: CertBundle  # noqa: F811
) -> None:
    m = exporting
    account = 8700 + uuid.uuid4().int % 200
    me = principal_md(account, *PERMS)
    mark = uuid.uuid4().hex[:8]
    dedicated = f"+614801{uuid.uuid4().int % 100000:05d}"
    own = f"+6141255{uuid.uuid4().int % 10000:04d}"
    async with (channel_as(certs, "gateway", m.api.port, "messaging") as gw,
                channel_as(certs, "ops", m.api.port, "messaging") as ops):
        senders = sender_service_pb2_grpc.SenderServiceStub(gw)
        await sender_service_pb2_grpc.SenderServiceStub(ops).LoadNumberInventory(spb.LoadNumberInventoryRequest(
            numbers=[spb.InventoryNumber(number=dedicated, country="AU", capabilities=["sms"])]))
        await senders.BuyNumber(spb.BuyNumberRequest(dedicated_number=dedicated), metadata=me)
        started = (await senders.RequestOwnNumberVerification(spb.RequestOwnNumberVerificationRequest(
            phone_number=own, country="AU", label=f"mobile {mark}"), metadata=me)).verification
        await senders.VerifyOwnNumber(spb.VerifyOwnNumberRequest(
            verification_id=started.id, code=await _code(m, account)), metadata=me)
        tag = (await alpha_tag_service_pb2_grpc.AlphaTagServiceStub(gw).RequestAlphaTag(apb.RequestAlphaTagRequest(
            alpha_tag="Cafe Roma", reason=f"our cafe {mark}", countries=["au"]), metadata=me)).alpha_tag
        contacts = contact_service_pb2_grpc.ContactServiceStub(gw)
        lists = [(await contacts.CreateContactList(cpb.CreateContactListRequest(list_name=f"{mark} list {i}"),
                                                   metadata=me)).list.list_id for i in range(2)]
        n_contacts = PAGE + 2  # more than a page: the contacts are read in keyset pages
        for i in range(n_contacts):
            await contacts.CreateContact(cpb.CreateContactRequest(
                list_id=lists[0], phone_number=f"+614123{i:05d}", first_name=f"{mark}First{i}",
                email=f"c{i}.{mark}@example.com"), metadata=me)
        await contacts.CreateContact(cpb.CreateContactRequest(
            list_id=lists[1], phone_number="+61412399999", last_name=f"{mark}Last"), metadata=me)

        estub = export_service_pb2_grpc.AccountExportServiceStub(gw)
        created = (await estub.CreateAccountExport(epb.CreateAccountExportRequest(), metadata=me)).export
        ready = await _ready(estub, me, created.export_id)
        assert ready.counts["dedicated_number"] == 1 and ready.counts["own_number"] == 1
        assert ready.counts["alpha_tag"] == 1 and ready.counts["contact_list"] == 2
        assert ready.counts["contact"] == n_contacts + 1
        records = [json.loads(x) for x in (await _download(estub, me, created.export_id)).decode().splitlines()]

    assert {"dedicated_number", "own_number", "alpha_tag", "contact_list", "contact"} <= set(
        records[0]["record_types"])
    by_type: dict[str, list[dict[str, object]]] = {}
    for r in records:
        by_type.setdefault(str(r["type"]), []).append(r)
    (number,) = by_type["dedicated_number"]
    assert (number["dedicated_number"], number["country"], number["_state"]) == (dedicated, "AU", "active")
    (mine,) = by_type["own_number"]  # opened: the store keeps it sealed and masked
    assert (mine["phone_number"], mine["label"], mine["status"]) == (own, f"mobile {mark}", "APPROVED")
    (alpha,) = by_type["alpha_tag"]
    assert (alpha["id"], alpha["alpha_tag"], alpha["status"], alpha["countries"]) == (
        tag.id, "Cafe Roma", "PENDING", ["AU"])
    assert alpha["_request_reason"] == f"our cafe {mark}"
    assert [(x["list_id"], x["list_name"]) for x in by_type["contact_list"]] == [
        (lists[0], f"{mark} list 0"), (lists[1], f"{mark} list 1")]
    first = [c for c in by_type["contact"] if c["list_id"] == lists[0]]
    assert [(c["phone_number"], c["first_name"], c["email"]) for c in first] == [
        (f"+614123{i:05d}", f"{mark}First{i}", f"c{i}.{mark}@example.com") for i in range(n_contacts)]
    (second,) = [c for c in by_type["contact"] if c["list_id"] == lists[1]]
    assert (second["phone_number"], second["last_name"]) == ("+61412399999", f"{mark}Last")
    assert all(isinstance(c["contact_id"], int) and c["date_added"] > 0 for c in by_type["contact"])
    # The sections sit in the header's order, before the other services' records and the audit section.
    order = [r["type"] for r in records if r["type"] in records[0]["record_types"]]
    assert order == sorted(order, key=records[0]["record_types"].index)
