"""Alpha tags over the real messaging API (mTLS), real PostgreSQL and the real audit service: a customer's request,
staff decisions and their refusals (no reason, a protected name without evidence, the wrong state, a customer
claiming a staff permission), the protected list, and the events each step leaves in the customer's and the
platform's feeds -- with nothing changed by a refused call."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest

from sendsafe.messaging.v1 import alpha_tag_service_pb2 as pb
from sendsafe.messaging.v1 import alpha_tag_service_pb2_grpc
from svckit.app import App
from svckit.rpcstatus import error_reason
from tests.conftest import channel_as
from tests.integration.messaging.conftest import Messaging, principal_md
from tests.integration.messaging.test_api import eventually
from tests.support import CertBundle

PLATFORM = 1
CUSTOMER = ("alpha_tags.read", "alpha_tags.write")
REVIEWER = ("staff.alpha_tags.read", "staff.alpha_tags.review")


def _staff(*perms: str, staff_id: int = 501) -> Any:
    return principal_md(PLATFORM, *perms, user_id=staff_id, api_username="reviewer", staff=True)


async def _refused(call: Any, code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    assert error_reason(err.value) == reason, err.value.details()


async def _events(audit_app: App, tag_id: str) -> list[tuple[str, int, int]]:
    """(action, actor account, subject account) of every event about one tag, in order."""
    from sendsafe.audit.v1 import event_pb2

    rows = await audit_app.extras["pool"].fetch("SELECT body FROM events ORDER BY sequence")
    out = []
    for r in rows:
        ev = event_pb2.Event.FromString(bytes(r["body"]))
        if ev.details.get("alpha_tag_id") == tag_id:
            out.append((ev.action, ev.actor.account_id, ev.subject_account_id))
    return out


async def test_a_request_is_reviewed_by_staff_with_reasons_and_evidence_for_protected_names(
    messaging: Messaging, certs: CertBundle, audit_app: App,
) -> None:
    account = 8100 + uuid.uuid4().int % 500
    me = principal_md(account, *CUSTOMER)
    async with channel_as(certs, "gateway", messaging.api.port, "messaging") as ch:
        stub = alpha_tag_service_pb2_grpc.AlphaTagServiceStub(ch)
        shop = (await stub.RequestAlphaTag(pb.RequestAlphaTagRequest(
            alpha_tag="Cafe Roma", reason="our cafe's name", countries=["au"]), metadata=me)).alpha_tag
        assert (shop.status, shop.reason, list(shop.countries)) == ("PENDING", "our cafe's name", ["AU"])
        await _refused(stub.RequestAlphaTag(pb.RequestAlphaTagRequest(alpha_tag="CAFE ROMA", reason="again"),
                                            metadata=me), grpc.StatusCode.FAILED_PRECONDITION, "ALPHA_TAG_EXISTS")
        await _refused(stub.RequestAlphaTag(pb.RequestAlphaTagRequest(alpha_tag="12345", reason="digits"),
                                            metadata=me), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ALPHA_TAG")
        await _refused(stub.RequestAlphaTag(pb.RequestAlphaTagRequest(alpha_tag="Shop"), metadata=me),
                       grpc.StatusCode.INVALID_ARGUMENT, "REASON_REQUIRED")
        bank = (await stub.RequestAlphaTag(pb.RequestAlphaTagRequest(
            alpha_tag="W3stpac SMS", reason="we are the bank"), metadata=me)).alpha_tag

        # Staff see both waiting, the bank one flagged with the name it imitates.
        pending = (await stub.ListAlphaTagReviews(pb.ListAlphaTagReviewsRequest(), metadata=_staff(*REVIEWER)))
        mine = {t.alpha_tag_id: t for t in pending.alpha_tags if t.account_id == account}
        assert mine[shop.id].protected_name == "" and mine[bank.id].protected_name == "Westpac"
        assert mine[bank.id].request_reason == "we are the bank"

        # A customer holding every customer permission cannot review; staff without a reason cannot either.
        await _refused(stub.ApproveAlphaTag(pb.ApproveAlphaTagRequest(alpha_tag_id=shop.id, reason="ok"),
                                            metadata=me), grpc.StatusCode.PERMISSION_DENIED, "MISSING_PERMISSION")
        await _refused(stub.ApproveAlphaTag(pb.ApproveAlphaTagRequest(alpha_tag_id=shop.id, reason=" "),
                                            metadata=_staff(*REVIEWER)), grpc.StatusCode.INVALID_ARGUMENT,
                       "REASON_REQUIRED")
        # A protected name without evidence: refused, and nothing changed.
        await _refused(stub.ApproveAlphaTag(pb.ApproveAlphaTagRequest(alpha_tag_id=bank.id, reason="looks fine"),
                                            metadata=_staff(*REVIEWER)), grpc.StatusCode.FAILED_PRECONDITION,
                       "PROTECTED_SENDER_NAME")
        got = (await stub.GetAlphaTag(pb.GetAlphaTagRequest(alpha_tag_id=bank.id), metadata=me)).alpha_tag
        assert (got.status, got.reason) == ("PENDING", "we are the bank")

        approved = (await stub.ApproveAlphaTag(pb.ApproveAlphaTagRequest(
            alpha_tag_id=shop.id, reason="business name matches the ABN register"),
            metadata=_staff(*REVIEWER))).alpha_tag
        assert approved.state == pb.ALPHA_TAG_STATE_APPROVED and approved.reviewer_staff_id == 501
        await _refused(stub.ApproveAlphaTag(pb.ApproveAlphaTagRequest(alpha_tag_id=shop.id, reason="twice"),
                                            metadata=_staff(*REVIEWER)), grpc.StatusCode.FAILED_PRECONDITION,
                       "ALPHA_TAG_WRONG_STATE")
        with_evidence = (await stub.ApproveAlphaTag(pb.ApproveAlphaTagRequest(
            alpha_tag_id=bank.id, reason="the bank's own account", evidence="APRA licence 123 checked"),
            metadata=_staff(*REVIEWER, staff_id=502))).alpha_tag
        assert (with_evidence.protected_name, with_evidence.evidence) == ("Westpac", "APRA licence 123 checked")
        assert await messaging.pool.fetch(
            "SELECT tag FROM alpha_tags WHERE account_id = $1 AND state = 'approved' ORDER BY tag", account) == [
            ("Cafe Roma",), ("W3stpac SMS",)]

        # The customer sees the reviewer's reason; a revoke is shown the same way; another account sees nothing.
        view = (await stub.GetAlphaTag(pb.GetAlphaTagRequest(alpha_tag_id=shop.id), metadata=me)).alpha_tag
        assert (view.status, view.reason) == ("APPROVED", "business name matches the ABN register")
        await stub.RevokeAlphaTag(pb.RevokeAlphaTagRequest(alpha_tag_id=shop.id, reason="reported as spam"),
                                  metadata=_staff(*REVIEWER))
        view = (await stub.GetAlphaTag(pb.GetAlphaTagRequest(alpha_tag_id=shop.id), metadata=me)).alpha_tag
        assert (view.status, view.reason) == ("REVOKED", "reported as spam")
        await _refused(stub.GetAlphaTag(pb.GetAlphaTagRequest(alpha_tag_id=shop.id),
                                        metadata=principal_md(account + 1, *CUSTOMER)),
                       grpc.StatusCode.NOT_FOUND, "ALPHA_TAG_NOT_FOUND")
        listed = (await stub.ListAlphaTags(pb.ListAlphaTagsRequest(page_size=1), metadata=me))
        assert [t.id for t in listed.alpha_tags] == [shop.id] and listed.metadata.pagination.next
        # The customer gives the bank tag up; it cannot be cancelled twice.
        await stub.DeleteAlphaTag(pb.DeleteAlphaTagRequest(alpha_tag_id=bank.id), metadata=me)
        await _refused(stub.DeleteAlphaTag(pb.DeleteAlphaTagRequest(alpha_tag_id=bank.id), metadata=me),
                       grpc.StatusCode.FAILED_PRECONDITION, "ALPHA_TAG_WRONG_STATE")

    # Each decision is in the customer's feed (subject account) and the platform's; the approval also records
    # the new sender identity in the customer's feed. Refused calls changed nothing and left no success event.
    assert await _events(audit_app, shop.id) == [
        ("messaging.alpha_tag.requested", account, 0),
        ("messaging.alpha_tag.approved", PLATFORM, account),
        ("messaging.alpha_tag.approved", PLATFORM, 0),
        ("messaging.sender.activated", PLATFORM, account),
        ("messaging.alpha_tag.revoked", PLATFORM, account),
        ("messaging.alpha_tag.revoked", PLATFORM, 0),
    ]
    want = ["messaging.alpha_tag.requested", "messaging.alpha_tag.approved", "messaging.alpha_tag.approved",
            "messaging.sender.activated", "messaging.alpha_tag.cancelled"]  # the last one is queued, not awaited

    async def cancelled_recorded() -> bool:
        return [a for a, _, _ in await _events(audit_app, bank.id)] == want

    await eventually(cancelled_recorded, what="the cancellation's event")


async def test_protected_names_are_edited_by_security_staff_with_a_reason(
    messaging: Messaging, certs: CertBundle,
) -> None:
    security = _staff("staff.alpha_tags.read", "staff.protected_names.write", staff_id=601)
    async with channel_as(certs, "gateway", messaging.api.port, "messaging") as ch:
        stub = alpha_tag_service_pb2_grpc.AlphaTagServiceStub(ch)
        seeded = (await stub.ListProtectedSenderNames(pb.ListProtectedSenderNamesRequest(), metadata=security)).names
        assert {"Commonwealth Bank", "ATO", "Telstra"} <= {n.name for n in seeded}
        await _refused(stub.AddProtectedSenderName(pb.AddProtectedSenderNameRequest(
            name="Acme Energy", category="brand", reason="  "), metadata=security),
            grpc.StatusCode.INVALID_ARGUMENT, "REASON_REQUIRED")
        await _refused(stub.AddProtectedSenderName(pb.AddProtectedSenderNameRequest(
            name="Acme Energy", category="brand", reason="phishing wave"), metadata=_staff(*REVIEWER)),
            grpc.StatusCode.PERMISSION_DENIED, "MISSING_PERMISSION")
        added = (await stub.AddProtectedSenderName(pb.AddProtectedSenderNameRequest(
            name="Acme Energy", category="brand", reason="phishing wave"), metadata=security)).name
        assert (added.skeleton, added.added_by) == ("ACMEENERGY", "staff:601")
        await _refused(stub.AddProtectedSenderName(pb.AddProtectedSenderNameRequest(
            name="ACME-3NERGY", category="brand", reason="again"), metadata=security),
            grpc.StatusCode.FAILED_PRECONDITION, "PROTECTED_NAME_EXISTS")
        await stub.RemoveProtectedSenderName(pb.RemoveProtectedSenderNameRequest(
            skeleton=added.skeleton, reason="wave over"), metadata=security)
        await _refused(stub.RemoveProtectedSenderName(pb.RemoveProtectedSenderNameRequest(
            skeleton=added.skeleton, reason="wave over"), metadata=security),
            grpc.StatusCode.NOT_FOUND, "PROTECTED_NAME_NOT_FOUND")
